//! Count (Poisson) diffusion: the third state space beside the Gaussian and categorical ones.
//! Data are tensors of non-negative counts (pixel intensities 0..255, bag-of-words vectors,
//! histograms); noise is *thinning*: each unit of count survives to step t with probability
//! alpha_t, and generation runs the other way, *thickening* an all-zero start with Poisson (or
//! binomial) jumps until step 0.
//!
//! - [`schedule`]: the survival schedule alpha_t from its log-SNR endpoints (JUMP's beta-linear,
//!   log-linear as in Blackout's pure-death process, cosine) and the scaling lambda.
//! - [`process`]: [`process::JumpProcess`], the forward process in its two forms (binomial
//!   thinning of integer data, z_t ~ Binomial(x_0, alpha_t), exact at t = 0; and JUMP's Poisson
//!   thinning, z_t ~ Poisson(lambda alpha_t x_0), for any non-negative data), the network's
//!   input, the x_0 / eps / deaths parameterisations and the Poisson-KL training losses.
//! - [`sample`]: generation and inpainting with the Poisson thickening sampler (Chen & Zhou
//!   2023, "Learning to Jump") or the binomial-bridge sampler of a death process (Santos et al.
//!   2023, "Blackout Diffusion").
//! - [`likelihood`]: the variational bound (prior, T thickening terms, decoder) in nats and bits
//!   per dimension, defined for binomial thinning, where step 0 is the data itself.
//! - [`emd`]: earth mover's distance between the marginals of two count tables.
//!
//! Schedules are f64 on the CPU; the draws come from libtorch's generator, so seeded runs repeat.

pub mod emd;
pub mod likelihood;
pub mod process;
pub mod sample;
pub mod schedule;

pub use process::{JumpConfig, JumpLoss, JumpPrediction, JumpProcess, Thinning};
pub use sample::JumpSampler;
pub use schedule::AlphaSchedule;

use tch::{Kind, Tensor};

/// A network over latent counts: the process's network input `[B, ...]` (see
/// [`JumpProcess::network_input`]) and the timestep `t - 1` in `0..T` as f32 `[B]` (diffusers'
/// convention, so image UNets take it unchanged) give an output of the same shape, read by the
/// process's [`JumpPrediction`].
pub trait CountDenoiser {
    fn forward(&self, input: &Tensor, t: &Tensor) -> Tensor;
}

/// A count denoiser from a closure, for tests and examples.
pub struct FnCountDenoiser<F: Fn(&Tensor, &Tensor) -> Tensor> {
    pub f: F,
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> CountDenoiser for FnCountDenoiser<F> {
    fn forward(&self, input: &Tensor, t: &Tensor) -> Tensor {
        (self.f)(input, t)
    }
}

/// Smallest rate the Poisson terms take logs of: a zero predicted rate where the truth is
/// positive costs about 27.6 nats per unit instead of infinity.
pub const MIN_RATE: f64 = 1e-12;

/// KL(Poisson(a) || Poisson(b)) elementwise: a log(a / b) - a + b (0 log 0 = 0), the Bregman
/// divergence of the generalised negative entropy. Gradients flow to both arguments.
pub fn poisson_kl(a: &Tensor, b: &Tensor) -> Tensor {
    let b = b.clamp_min(MIN_RATE);
    a.special_xlogy(a) - a.special_xlogy(&b) - a + b
}

/// log Poisson(k; mu) elementwise.
pub fn poisson_log_pmf(k: &Tensor, mu: &Tensor) -> Tensor {
    k.special_xlogy(&mu.clamp_min(MIN_RATE)) - mu - (k + 1.0).lgamma()
}

/// Round `x >= 0` up with probability equal to its fractional part, so the result's mean is `x`
/// (the binomial bridge needs a whole number of trials, and plain rounding would bias it).
pub fn stochastic_round(x: &Tensor) -> Tensor {
    let floor = x.floor();
    let frac = x - &floor;
    floor + frac.rand_like().lt_tensor(&frac).to_kind(x.kind())
}

/// A float tensor of the counts' kind (f32 at least), for arithmetic.
pub(crate) fn as_float(x: &Tensor) -> Tensor {
    match x.kind() {
        Kind::Float | Kind::Double => x.shallow_clone(),
        _ => x.to_kind(Kind::Float),
    }
}

/// Negative-binomial draws with the given means and shape r (variance mean + mean^2 / r), as a
/// Gamma-Poisson mixture: Poisson(G) with G ~ Gamma(r, mean / r). For toy count data in tests
/// and benchmarks; libtorch's generator supplies both draws.
pub fn negative_binomial(mean: &Tensor, shape: f64) -> Tensor {
    let mean = as_float(mean);
    let gamma = mean.full_like(shape).internal_standard_gamma() * (&mean / shape);
    gamma.poisson()
}
