//! The Gaussian pieces of the variational bound (Ho et al. 2020, sec. 3.3; Nichol & Dhariwal 2021,
//! improved-diffusion): the posterior q(x_s | x_t, x_0) between any two timesteps of a schedule, the KL
//! between diagonal Gaussians, and the discretised-Gaussian decoder likelihood of 8-bit data. All
//! log-likelihoods are in nats; divide by ln 2 for bits.

use crate::schedule::NoiseSchedule;
use tch::Tensor;

/// q(x_s | x_t, x_0) for s < t: mean = coef_x0 x_0 + coef_xt x_t, variance `variance`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Posterior {
    /// sqrt(abar_s) beta / (1 - abar_t), with beta = 1 - abar_t / abar_s (Ho et al. 2020, eq. 7).
    pub coef_x0: f64,
    /// sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t).
    pub coef_xt: f64,
    /// beta-tilde = (1 - abar_s) / (1 - abar_t) beta, clamped at 1e-20 (as diffusers) so its log is finite.
    pub variance: f64,
    /// The step's beta = 1 - abar_t / abar_s (the "fixed_large" variance).
    pub beta: f64,
}

impl NoiseSchedule {
    /// The posterior from timestep `t` to timestep `s` (`None`: to the data, abar = 1), both real
    /// timesteps of this schedule; for strided sampling `s` is the previous entry of the timestep list.
    pub fn posterior(&self, t: f64, s: Option<f64>) -> Posterior {
        let abar_t = self.alpha_bar(t);
        let abar_s = s.map_or(1.0, |s| self.alpha_bar(s));
        let beta = 1.0 - abar_t / abar_s;
        Posterior {
            coef_x0: abar_s.sqrt() * beta / (1.0 - abar_t),
            coef_xt: (abar_t / abar_s).sqrt() * (1.0 - abar_s) / (1.0 - abar_t),
            variance: ((1.0 - abar_s) / (1.0 - abar_t) * beta).max(1e-20),
            beta,
        }
    }
}

/// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Tensor {
    ((logvar2 - logvar1) + (logvar1 - logvar2).exp() + (mean1 - mean2).square() * (-logvar2).exp()
        - 1.0)
        * 0.5
}

/// The standard normal CDF through the tanh approximation used by improved-diffusion (error < 1e-3),
/// kept so bits/dim figures are comparable with the papers'.
pub fn approx_standard_normal_cdf(x: &Tensor) -> Tensor {
    let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    (inner.tanh() + 1.0) * 0.5
}

/// log p(x) of data `x` scaled to [-1, 1] from 8-bit values under a Gaussian with `mean` and
/// `log_scale` (log standard deviation) discretised into 256 bins of width 2/255, the outermost
/// bins extended to infinity (Ho et al. 2020, eq. 13). Elementwise, in nats.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    mean: &Tensor,
    log_scale: &Tensor,
) -> Tensor {
    let centered = x - mean;
    let inv_stdv = (-log_scale).exp();
    let cdf_plus = approx_standard_normal_cdf(&((&centered + 1.0 / 255.0) * &inv_stdv));
    let cdf_min = approx_standard_normal_cdf(&((&centered - 1.0 / 255.0) * &inv_stdv));
    let log_cdf_plus = cdf_plus.clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(1e-12).log();
    let cdf_delta = cdf_plus - cdf_min;
    let middle = cdf_delta.clamp_min(1e-12).log();
    // tch's where_self is `value_if_true.where_self(condition, value_if_false)`.
    let upper = log_one_minus_cdf_min.where_self(&x.gt(0.999), &middle);
    log_cdf_plus.where_self(&x.lt(-0.999), &upper)
}
