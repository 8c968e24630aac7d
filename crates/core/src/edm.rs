//! EDM: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models".
//!
//! Everything here lives in variance-exploding (VE) coordinates: a sample at noise level sigma is
//! x = x_0 + sigma n, n ~ N(0, I), and the denoiser D(x; sigma) estimates x_0.
//!
//! - [`EdmConfig`]: the paper's settings (Table 1 and Algorithm 2), with its defaults.
//! - Preconditioning (Table 1): D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x;
//!   c_noise(sigma)) with F the raw network ([`EdmNetwork`]) and [`EdmDenoiser`] the wrapper.
//! - [`edm_loss`]: the training loss (eq. 2 with the weighting and sigma distribution of Table 1).
//! - [`edm_sigmas`] and [`edm_sample`]: the time steps (eq. 5) and the stochastic Heun sampler
//!   (Algorithm 2; Algorithm 1 when `s_churn` = 0).
//! - [`EdmAsEpsilon`]: an EDM denoiser as an epsilon-predicting [`Denoiser`], so it runs under every
//!   sampler of [`crate::samplers`] (see its documentation for the convention).

use crate::denoiser::Denoiser;
use crate::prediction::PredictionType;
use crate::samplers::StepInfo;
use crate::schedule::{karras_sigmas, NoiseSchedule};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The settings of EDM training and sampling; defaults are the paper's (Table 1, Algorithm 2 with
/// S_churn = 0, i.e. the deterministic sampler).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdmConfig {
    /// sigma_data: the standard deviation of the data (0.5 for images in [-1, 1]).
    pub sigma_data: f64,
    /// Mean of ln sigma during training (P_mean).
    pub p_mean: f64,
    /// Standard deviation of ln sigma during training (P_std).
    pub p_std: f64,
    /// Smallest sampling noise level.
    pub sigma_min: f64,
    /// Largest sampling noise level (the initial noise's standard deviation).
    pub sigma_max: f64,
    /// The time-step exponent of eq. 5.
    pub rho: f64,
    /// S_churn: total stochasticity of the sampler (0: deterministic).
    pub s_churn: f64,
    /// Noise is added only for sigma in [S_tmin, S_tmax].
    pub s_tmin: f64,
    /// Upper end of the churn range; infinite by default (JSON: null, "Infinity" or any number at or
    /// above 1e300 read as infinity; written as 1e308).
    #[serde(
        deserialize_with = "crate::json_float::null_is_infinity",
        serialize_with = "crate::json_float::write_finite"
    )]
    pub s_tmax: f64,
    /// S_noise: the added noise's standard deviation relative to the churned sigma increment.
    pub s_noise: f64,
}

impl Default for EdmConfig {
    fn default() -> Self {
        EdmConfig {
            sigma_data: 0.5,
            p_mean: -1.2,
            p_std: 1.2,
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl EdmConfig {
    /// Check every setting: positive sigma_data, sigma_min and rho, sigma_min < sigma_max (finite),
    /// p_std, s_churn and s_noise non-negative, all finite except s_tmax (which may be +inf).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(format!("EDM config: {what}")));
        let finite = [
            ("sigma_data", self.sigma_data),
            ("p_mean", self.p_mean),
            ("p_std", self.p_std),
            ("sigma_min", self.sigma_min),
            ("sigma_max", self.sigma_max),
            ("rho", self.rho),
            ("s_churn", self.s_churn),
            ("s_tmin", self.s_tmin),
            ("s_noise", self.s_noise),
        ];
        if let Some((name, v)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return bad(format!("{name} must be finite, got {v}"));
        }
        if self.s_tmax.is_nan() {
            return bad("s_tmax must be a number or +infinity, got NaN".into());
        }
        if self.sigma_data <= 0.0 {
            return bad(format!(
                "sigma_data must be positive, got {}",
                self.sigma_data
            ));
        }
        if self.p_std < 0.0 {
            return bad(format!("p_std must be non-negative, got {}", self.p_std));
        }
        if self.sigma_min <= 0.0 {
            return bad(format!(
                "sigma_min must be positive, got {}",
                self.sigma_min
            ));
        }
        if self.sigma_min >= self.sigma_max {
            return bad(format!(
                "sigma_min ({}) must be below sigma_max ({})",
                self.sigma_min, self.sigma_max
            ));
        }
        if self.rho <= 0.0 {
            return bad(format!("rho must be positive, got {}", self.rho));
        }
        if self.s_churn < 0.0 {
            return bad(format!(
                "s_churn must be non-negative, got {}",
                self.s_churn
            ));
        }
        if self.s_noise < 0.0 {
            return bad(format!(
                "s_noise must be non-negative, got {}",
                self.s_noise
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Preconditioning (Table 1). The functions act elementwise on sigma tensors of any shape.

/// c_skip = sigma_data^2 / (sigma^2 + sigma_data^2).
pub fn c_skip(sigma: &Tensor, sigma_data: f64) -> Tensor {
    let sd2 = sigma_data * sigma_data;
    (sigma.square() + sd2).reciprocal() * sd2
}

/// c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2).
pub fn c_out(sigma: &Tensor, sigma_data: f64) -> Tensor {
    sigma * sigma_data / (sigma.square() + sigma_data * sigma_data).sqrt()
}

/// c_in = 1 / sqrt(sigma^2 + sigma_data^2).
pub fn c_in(sigma: &Tensor, sigma_data: f64) -> Tensor {
    (sigma.square() + sigma_data * sigma_data).rsqrt()
}

/// c_noise = ln(sigma) / 4.
pub fn c_noise(sigma: &Tensor) -> Tensor {
    sigma.log() / 4.0
}

/// The loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2.
pub fn loss_weight(sigma: &Tensor, sigma_data: f64) -> Tensor {
    (sigma.square() + sigma_data * sigma_data) / (sigma * sigma_data).square()
}

/// Per-example sigmas `[B]` as `[B, 1, ...]` with `like`'s number of dimensions, kind and device.
pub fn broadcast_sigma(sigma: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    sigma
        .to_kind(like.kind())
        .to_device(like.device())
        .reshape(&shape)
}

/// The coefficients of Table 1 for a batch: `c_skip`, `c_out`, `c_in` and `weight` shaped
/// `[B, 1, ...]` to broadcast against the samples, `c_noise` `[B]` (the network's noise input).
pub struct Preconditioning {
    pub c_skip: Tensor,
    pub c_out: Tensor,
    pub c_in: Tensor,
    pub c_noise: Tensor,
    pub weight: Tensor,
}

impl Preconditioning {
    /// The coefficients at per-example sigmas `[B]`, in the kind and on the device of `like`
    /// (a `[B, ...]` sample).
    pub fn new(sigma: &Tensor, sigma_data: f64, like: &Tensor) -> Self {
        let s = broadcast_sigma(sigma, like);
        Preconditioning {
            c_skip: c_skip(&s, sigma_data),
            c_out: c_out(&s, sigma_data),
            c_in: c_in(&s, sigma_data),
            c_noise: c_noise(
                &sigma
                    .to_kind(like.kind())
                    .to_device(like.device())
                    .reshape([-1]),
            ),
            weight: loss_weight(&s, sigma_data),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Networks and denoisers.

/// The raw network F of EDM: it sees the scaled input c_in x `[B, ...]` and the noise conditioning
/// c_noise `[B]`, and returns a tensor shaped like its input. Closures implement it.
pub trait EdmNetwork {
    fn forward(&self, x_in: &Tensor, c_noise: &Tensor) -> Tensor;
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> EdmNetwork for F {
    fn forward(&self, x_in: &Tensor, c_noise: &Tensor) -> Tensor {
        self(x_in, c_noise)
    }
}

/// A denoiser in VE coordinates: D(x; sigma), the estimate of x_0 from x = x_0 + sigma n, for
/// `x` `[B, ...]` and per-example `sigma` `[B]` (all positive).
pub trait SigmaDenoiser {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor;
}

/// A borrowed denoiser is a denoiser too (one network can serve `edm_sample` and the
/// [`EdmAsEpsilon`] bridge at once).
impl<T: SigmaDenoiser + ?Sized> SigmaDenoiser for &T {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        (**self).denoise(x, sigma)
    }
}

/// D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Table 1, eq. 7).
pub struct EdmDenoiser<N> {
    pub net: N,
    pub sigma_data: f64,
}

impl<N: EdmNetwork> EdmDenoiser<N> {
    pub fn new(net: N, sigma_data: f64) -> Self {
        EdmDenoiser { net, sigma_data }
    }
}

impl<N: EdmNetwork> SigmaDenoiser for EdmDenoiser<N> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        let p = Preconditioning::new(sigma, self.sigma_data, x);
        let f = self.net.forward(&(x * &p.c_in), &p.c_noise);
        x * &p.c_skip + f * &p.c_out // eq. 7
    }
}

// ---------------------------------------------------------------------------------------------
// Training.

/// Training sigmas: ln sigma ~ N(p_mean, p_std^2), one per example (Table 1, "noise distribution").
pub fn training_sigmas(batch: i64, config: &EdmConfig, device: Device) -> Tensor {
    (Tensor::randn([batch], (Kind::Double, device)) * config.p_std + config.p_mean).exp()
}

/// The EDM loss for a batch of clean data `x0` `[B, ...]`: per example ln sigma ~ N(p_mean, p_std^2),
/// n = sigma eps with eps ~ N(0, I), and the scalar mean over every element of
/// lambda(sigma) (D(x0 + n; sigma) - x0)^2. `config.sigma_data` must be the denoiser's.
/// Draws B normals for the sigmas, then the noise, from libtorch's generator.
pub fn edm_loss(denoiser: &dyn SigmaDenoiser, x0: &Tensor, config: &EdmConfig) -> Result<Tensor> {
    config.validate()?;
    if x0.dim() < 1 || x0.size()[0] == 0 {
        return Err(Error::InvalidArgument(format!(
            "edm_loss needs a non-empty batch [B, ...], got shape {:?}",
            x0.size()
        )));
    }
    let sigma = training_sigmas(x0.size()[0], config, x0.device()).to_kind(x0.kind()); // Table 1: ln sigma ~ N(P_mean, P_std^2)
    let s = broadcast_sigma(&sigma, x0);
    let n = x0.randn_like() * &s; // eq. 2: n ~ N(0, sigma^2 I)
    let d = denoiser.denoise(&(x0 + &n), &sigma); // eq. 7: D(y + n; sigma)
    let weight = loss_weight(&s, config.sigma_data); // eq. 8 / Table 1: lambda(sigma) = 1 / c_out^2
    Ok((weight * (d - x0).square()).mean(x0.kind())) // eq. 2 (expectation as a batch mean)
}

// ---------------------------------------------------------------------------------------------
// Sampling.

/// The paper's time steps: `n` sigmas from sigma_max down to sigma_min evenly spaced in
/// sigma^(1/rho) (eq. 5), then a final 0; n + 1 values in all.
pub fn edm_sigmas(n: usize, config: &EdmConfig) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "EDM sampling needs at least 1 step".into(),
        ));
    }
    config.validate()?;
    let mut sigmas = karras_sigmas(config.sigma_min, config.sigma_max, n, config.rho);
    sigmas.push(0.0);
    Ok(sigmas)
}

/// Algorithm 2 of the paper: from `x` (noise already scaled to `sigmas[0]`, e.g.
/// `randn * sigma_max`) down the decreasing `sigmas` (the last may be 0, as [`edm_sigmas`] gives).
/// Each step i optionally churns (gamma_i = min(S_churn / N, sqrt 2 - 1) for sigma_i in
/// [S_tmin, S_tmax], N = number of steps), takes an Euler step, and corrects it with Heun's method
/// unless it lands on sigma = 0: N steps cost 2N - 1 evaluations when the last sigma is 0.
///
/// `on_step` runs after every step with `t` = sigma_i (the level the step started from), the new
/// sample and the denoiser's last estimate of x_0. The denoiser runs without gradients; noise comes
/// from libtorch's generator (only for steps with gamma_i > 0).
pub fn edm_sample(
    denoiser: &dyn SigmaDenoiser,
    x: Tensor,
    sigmas: &[f64],
    config: &EdmConfig,
    mut on_step: impl FnMut(&StepInfo<'_>),
) -> Result<Tensor> {
    config.validate()?;
    if sigmas.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "EDM sampling needs at least two sigmas (one step), got {}",
            sigmas.len()
        )));
    }
    if sigmas.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(Error::InvalidArgument(
            "EDM sigmas must be finite and non-negative".into(),
        ));
    }
    if sigmas.windows(2).any(|w| w[1] >= w[0]) {
        return Err(Error::InvalidArgument(format!(
            "EDM sigmas must decrease strictly, got {sigmas:?}"
        )));
    }
    if x.dim() < 1 || x.size()[0] == 0 {
        return Err(Error::InvalidArgument(format!(
            "EDM sampling needs a non-empty batch [B, ...], got shape {:?}",
            x.size()
        )));
    }
    let steps = sigmas.len() - 1;
    let batch = x.size()[0];
    let options = (x.kind(), x.device());
    let d = |x: &Tensor, sigma: f64| {
        tch::no_grad(|| denoiser.denoise(x, &Tensor::full([batch], sigma, options)))
    };
    let mut x = x;
    for i in 0..steps {
        let (t_cur, t_next) = (sigmas[i], sigmas[i + 1]);
        // Algorithm 2, line 4: gamma_i, only within [S_tmin, S_tmax].
        let gamma = if config.s_tmin <= t_cur && t_cur <= config.s_tmax {
            (config.s_churn / steps as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        };
        let t_hat = t_cur + gamma * t_cur; // line 6: increase the noise level
        let x_hat = if gamma > 0.0 {
            // lines 5 and 7: x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps, eps ~ N(0, S_noise^2 I)
            &x + x.randn_like() * (config.s_noise * (t_hat * t_hat - t_cur * t_cur).sqrt())
        } else {
            x.shallow_clone()
        };
        let mut x0 = d(&x_hat, t_hat);
        let d_cur = (&x_hat - &x0) / t_hat; // line 8: dx/dt at t_hat (eq. 4 with sigma(t) = t)
        let mut x_next = &x_hat + &d_cur * (t_next - t_hat); // line 9: Euler step
        if t_next != 0.0 {
            // lines 10-12: second-order (Heun) correction
            x0 = d(&x_next, t_next);
            let d_prime = (&x_next - &x0) / t_next;
            x_next = &x_hat + (d_cur + d_prime) * (0.5 * (t_next - t_hat));
        }
        x = x_next;
        on_step(&StepInfo {
            index: i,
            total: steps,
            t: t_cur,
            sample: &x,
            pred_original_sample: &x0,
        });
    }
    Ok(x)
}

// ---------------------------------------------------------------------------------------------
// The bridge to crate::samplers.

/// How [`EdmAsEpsilon`] turns a sampler's timestep t into the VE sigma the sampler used for it.
///
/// The Euler-family samplers pick sigmas two ways, and the bridge must invert the same one:
/// - with their default spacings, t comes first and sigma = [`NoiseSchedule::sigma_at`]`(t)`
///   (linear in sigma between integer timesteps): [`SigmaInterpolation::Linear`];
/// - with `use_karras_sigmas` / `use_exponential_sigmas`, sigma comes first and
///   t = [`NoiseSchedule::sigma_to_t`]`(sigma)` (linear in ln sigma), whose exact inverse is
///   exp(-log_snr(t) / 2): [`SigmaInterpolation::LogLinear`].
///
/// At integer t (DDPM, DDIM, DPM-Solver's default spacings, leading/trailing Euler spacings) the two
/// agree. Between integers they differ by up to ~2% relative at the low-noise end of a 1000-step
/// linear schedule, which the bridge would turn into a small error in the sampler's x_0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SigmaInterpolation {
    #[default]
    Linear,
    LogLinear,
}

impl SigmaInterpolation {
    /// The interpolation matching an Euler-family sampler configured with these options.
    pub fn for_sampler(use_karras_sigmas: bool, use_exponential_sigmas: bool) -> Self {
        if use_karras_sigmas || use_exponential_sigmas {
            SigmaInterpolation::LogLinear
        } else {
            SigmaInterpolation::Linear
        }
    }
}

/// An EDM denoiser as an epsilon-predicting [`Denoiser`] on a discrete noise schedule, so that an
/// EDM-trained network runs under every sampler of [`crate::samplers`].
///
/// The convention. Every sampler there hands the model the variance-preserving sample
/// x_vp = alpha x_0 + sigma_vp eps with alpha = 1 / sqrt(sigma^2 + 1), sigma_vp = sigma alpha, and
/// sigma the VE sigma of the timestep t: the VP samplers (DDPM, DDIM, DPM-Solver) carry x_vp
/// itself, the sigma-space ones (Euler, Euler ancestral, Heun) carry x_ve = x_0 + sigma eps and
/// divide it by sqrt(sigma^2 + 1) in `scale_model_input`. So the bridge
/// 1. recovers sigma from t through the schedule ([`SigmaInterpolation`]),
/// 2. undoes the scaling: x_ve = x_vp sqrt(sigma^2 + 1),
/// 3. denoises: x0 = D(x_ve; sigma), and returns eps = (x_ve - x0) / sigma.
///
/// The samplers then recover exactly D's estimate: sigma-space ones as x_ve - sigma eps, VP ones as
/// (x_vp - sigma_vp eps) / alpha = x_ve - sigma eps. The EDM network's own sigma range (where it
/// was trained) should cover the schedule's, sigma(t = 0) to sigma(t = T - 1).
pub struct EdmAsEpsilon<D> {
    pub denoiser: D,
    schedule: NoiseSchedule,
    interpolation: SigmaInterpolation,
}

impl<D: SigmaDenoiser> EdmAsEpsilon<D> {
    pub fn new(denoiser: D, schedule: NoiseSchedule, interpolation: SigmaInterpolation) -> Self {
        EdmAsEpsilon {
            denoiser,
            schedule,
            interpolation,
        }
    }

    /// The VE sigma the bridge assigns to timestep `t`.
    pub fn sigma_of(&self, t: f64) -> f64 {
        match self.interpolation {
            SigmaInterpolation::Linear => self.schedule.sigma_at(t),
            SigmaInterpolation::LogLinear => (-self.schedule.log_snr(t) / 2.0).exp(),
        }
    }
}

impl<D: SigmaDenoiser> Denoiser for EdmAsEpsilon<D> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        let ts = Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1]))
            .expect("timesteps as f64");
        // The sampling loops pass one timestep for the whole batch: convert each distinct run once.
        let mut last: Option<(f64, f64)> = None;
        let sigmas: Vec<f64> = ts
            .iter()
            .map(|&t| match last {
                Some((lt, ls)) if lt == t => ls,
                _ => {
                    let s = self.sigma_of(t);
                    last = Some((t, s));
                    s
                }
            })
            .collect();
        let sigma = Tensor::from_slice(&sigmas);
        let s = broadcast_sigma(&sigma, x_t);
        let x_ve = x_t * (s.square() + 1.0).sqrt();
        let x0 = self
            .denoiser
            .denoise(&x_ve, &sigma.to_kind(x_t.kind()).to_device(x_t.device()));
        (x_ve - x0) / s
    }

    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }
}
