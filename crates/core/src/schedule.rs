//! Discrete-time Gaussian noise schedules, as diffusers defines them, with a continuous-time view.
//!
//! A schedule is the list of betas of T training timesteps; from it come
//! alpha_bar_t = prod_{s<=t} (1 - beta_s), the signal scale alpha_t = sqrt(alpha_bar_t), the noise
//! scale sigma_t = sqrt(1 - alpha_bar_t), the log-SNR lambda_t = ln(alpha_bar_t / (1 - alpha_bar_t)) and the
//! variance-exploding sigma sqrt((1 - alpha_bar_t) / alpha_bar_t) that sigma-space samplers (Euler, Heun,
//! DPM-Solver in sigma form) work in. All maths is f64 (diffusers computes in f32; the golden tests
//! bound the difference).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// How betas grow over the training timesteps (diffusers' `beta_schedule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Evenly spaced from beta_start to beta_end (Ho et al. 2020).
    #[default]
    Linear,
    /// Evenly spaced square roots, squared (Stable Diffusion's).
    ScaledLinear,
    /// The cosine alpha_bar of Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
    /// A sigmoid over [-6, 6] scaled into [beta_start, beta_end] (GeoDiff).
    Sigmoid,
}

/// The training noise schedule, with diffusers' key names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BetaScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; when given they override `beta_schedule` (and must number `num_train_timesteps`).
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale to zero terminal SNR (Lin et al. 2023, algorithm 1).
    pub rescale_betas_zero_snr: bool,
}

impl Default for BetaScheduleConfig {
    fn default() -> Self {
        BetaScheduleConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            rescale_betas_zero_snr: false,
        }
    }
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy/torch linspace).
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            // torch and numpy fill the second half from the end, so the last value is exactly b.
            (0..n)
                .map(|i| {
                    if i < n / 2 {
                        a + step * i as f64
                    } else {
                        b - step * (n - 1 - i) as f64
                    }
                })
                .collect()
        }
    }
}

/// Betas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), capped at `max_beta`.
pub fn cosine_betas(num_train_timesteps: usize, max_beta: f64) -> Vec<f64> {
    // Float division throughout: integer division here is a known bug of some ports.
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * PI / 2.0).cos().powi(2);
    let n = num_train_timesteps as f64;
    (0..num_train_timesteps)
        .map(|i| {
            let (t1, t2) = (i as f64 / n, (i + 1) as f64 / n);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

/// Rescale betas so the last timestep has zero SNR, keeping the first (Lin et al. 2023, algorithm 1).
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut abar_sqrt: Vec<f64> = cumulative_alphas(betas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (abar_sqrt[0], abar_sqrt[abar_sqrt.len() - 1]);
    for a in &mut abar_sqrt {
        *a = (*a - last) * first / (first - last);
    }
    let abar: Vec<f64> = abar_sqrt.iter().map(|a| a * a).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(1.0 - abar[0]);
    for i in 1..abar.len() {
        out.push(1.0 - abar[i] / abar[i - 1]);
    }
    out
}

fn cumulative_alphas(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// A discrete noise schedule of T training timesteps, 0..T-1.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// ln of the VE sigma at each integer timestep (increasing in t).
    log_sigmas: Vec<f64>,
}

impl NoiseSchedule {
    /// Build the schedule a config describes.
    pub fn new(config: &BetaScheduleConfig) -> Result<Self> {
        let t = config.num_train_timesteps;
        if t == 0 {
            return Err(Error::InvalidArgument(
                "num_train_timesteps must be at least 1".into(),
            ));
        }
        let betas = match &config.trained_betas {
            Some(b) if b.len() != t => {
                return Err(Error::InvalidArgument(format!(
                    "trained_betas has {} values but num_train_timesteps is {t}",
                    b.len()
                )))
            }
            Some(b) => b.clone(),
            None => match config.beta_schedule {
                BetaSchedule::Linear => linspace(config.beta_start, config.beta_end, t),
                BetaSchedule::ScaledLinear => {
                    linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), t)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
                BetaSchedule::SquaredcosCapV2 => cosine_betas(t, 0.999),
                BetaSchedule::Sigmoid => linspace(-6.0, 6.0, t)
                    .into_iter()
                    .map(|x| {
                        1.0 / (1.0 + (-x).exp()) * (config.beta_end - config.beta_start)
                            + config.beta_start
                    })
                    .collect(),
            },
        };
        let betas = if config.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        Self::from_betas(betas)
    }

    /// A schedule from explicit betas, each in (0, 1] (1 only as the last, for zero terminal SNR).
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            return Err(Error::InvalidArgument(
                "a noise schedule needs at least one beta".into(),
            ));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b <= 1.0))
        {
            return Err(Error::InvalidArgument(format!(
                "beta {i} is {b}; every beta must lie in (0, 1]"
            )));
        }
        let alphas_cumprod = cumulative_alphas(&betas);
        let log_sigmas = alphas_cumprod
            .iter()
            .map(|a| (((1.0 - a) / a).sqrt()).ln())
            .collect();
        Ok(NoiseSchedule {
            betas,
            alphas_cumprod,
            log_sigmas,
        })
    }

    /// diffusers' Euler-family clamp for zero terminal SNR: alpha_bar at the last timestep set to
    /// `alpha_bar` (2^-24 there), so that its VE sigma is finite (about 4096) instead of infinite.
    pub fn with_terminal_alpha_bar(mut self, alpha_bar: f64) -> Self {
        if let (Some(last), Some(log_sigma)) =
            (self.alphas_cumprod.last_mut(), self.log_sigmas.last_mut())
        {
            *last = alpha_bar;
            *log_sigma = ((1.0 - alpha_bar) / alpha_bar).sqrt().ln();
        }
        self
    }

    /// Number of training timesteps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// alpha_bar_t for t = 0..T-1.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The variance-exploding sigma sqrt((1 - alpha_bar_t) / alpha_bar_t) at each integer timestep.
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// Log-SNR lambda_t = ln(alpha_bar_t / (1 - alpha_bar_t)) = -2 ln sigma_t(VE), at any real t in [0, T-1]:
    /// linear in t between integer timesteps (the continuous-time view sigma-space samplers use).
    pub fn log_snr(&self, t: f64) -> f64 {
        -2.0 * interpolate(&self.log_sigmas, t)
    }

    /// alpha_bar at any real t in [0, T-1] (through the log-SNR).
    pub fn alpha_bar(&self, t: f64) -> f64 {
        let lambda = self.log_snr(t);
        1.0 / (1.0 + (-lambda).exp())
    }

    /// VE sigma at any real t, interpolated linearly in sigma between integer timesteps
    /// (diffusers' Euler-family `interpolation_type = "linear"`).
    pub fn sigma_at(&self, t: f64) -> f64 {
        let sigmas = self.sigmas();
        interpolate(&sigmas, t)
    }

    /// The real timestep whose VE sigma is `sigma`, interpolating log-sigma linearly (diffusers'
    /// `_sigma_to_t`, k-diffusion's `sigma_to_t`); clamped to [0, T-1].
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.max(1e-10).ln();
        let n = self.log_sigmas.len();
        if n == 1 {
            return 0.0;
        }
        // Last index whose log-sigma is <= log_sigma, kept within 0..=n-2.
        let low = self
            .log_sigmas
            .iter()
            .rposition(|&l| l <= log_sigma)
            .unwrap_or(0)
            .min(n - 2);
        let (lo, hi) = (self.log_sigmas[low], self.log_sigmas[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// Largest and smallest VE sigma of the schedule (at t = T-1 and t = 0).
    pub fn sigma_range(&self) -> (f64, f64) {
        let s = self.sigmas();
        (s[0], s[s.len() - 1])
    }

    /// Forward process q(x_t | x_0): alpha_t x0 + sigma_t noise, for a batch with one (integer or
    /// real) timestep per example. `x0` and `noise` are `[B, ...]`; `t` has B entries.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: &[f64]) -> Tensor {
        let (alpha, sigma) = self.alpha_sigma(t, x0.device(), x0.dim());
        alpha.to_kind(x0.kind()) * x0 + sigma.to_kind(x0.kind()) * noise
    }

    /// sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) as `[B, 1, 1, ...]` f64 tensors ready to broadcast
    /// against a tensor with `dims` dimensions.
    pub fn alpha_sigma(&self, t: &[f64], device: Device, dims: usize) -> (Tensor, Tensor) {
        let abar: Vec<f64> = t.iter().map(|&t| self.alpha_bar(t)).collect();
        let mut shape = vec![t.len() as i64];
        shape.extend(std::iter::repeat_n(1, dims.saturating_sub(1)));
        let abar = Tensor::from_slice(&abar)
            .to_kind(Kind::Double)
            .reshape(&shape)
            .to_device(device);
        let alpha = abar.sqrt();
        let sigma = (-&abar + 1.0).sqrt();
        (alpha, sigma)
    }
}

/// Linear interpolation of `values` (at 0, 1, ..., n-1) at real `t`, clamped at the ends (numpy `interp`).
fn interpolate(values: &[f64], t: f64) -> f64 {
    let n = values.len();
    if t <= 0.0 || n == 1 {
        return values[0];
    }
    if t >= (n - 1) as f64 {
        return values[n - 1];
    }
    let i = t.floor() as usize;
    let w = t - i as f64;
    if w == 0.0 {
        // Exact at integer t even next to an infinite value (the log-sigma of a zero-terminal-SNR
        // schedule's last step), where w * (inf - v) would be NaN.
        return values[i];
    }
    values[i] + w * (values[i + 1] - values[i])
}

/// How inference timesteps are spread over the training timesteps (diffusers' `timestep_spacing`;
/// Lin et al. 2023, table 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// round(linspace(0, T-1, N)), descending: includes both T-1 and 0.
    Linspace,
    /// k * (T // N) + steps_offset, descending: starts below T-1.
    #[default]
    Leading,
    /// round(T - k * T/N) - 1, descending: starts at T-1, never reaches 0.
    Trailing,
}

/// Descending integer inference timesteps (as f64) for `n` steps over `num_train` training
/// timesteps, by diffusers' DDPM/DDIM rules (numpy rounding: half to even).
pub fn spaced_timesteps(
    num_train: usize,
    n: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "the number of inference steps must be at least 1".into(),
        ));
    }
    if n > num_train {
        return Err(Error::InvalidArgument(format!(
            "{n} inference steps is more than the {num_train} timesteps the model was trained with"
        )));
    }
    let t = num_train as f64;
    let steps = match spacing {
        TimestepSpacing::Linspace => linspace(0.0, t - 1.0, n)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train / n) as f64;
            (0..n)
                .rev()
                .map(|k| (k as f64 * ratio).round_ties_even() + steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t / n as f64;
            // numpy arange(T, 0, -ratio): ceil(-T / -ratio) values start + k * step.
            let count = ((0.0 - t) / -ratio).ceil() as usize;
            (0..count)
                .map(|k| (t + k as f64 * -ratio).round_ties_even() - 1.0)
                .collect()
        }
    };
    Ok(steps)
}

/// Karras et al. 2022 sigma spacing (eq. 5): n sigmas from `sigma_max` down to `sigma_min`, evenly
/// spaced in sigma^(1/rho) (rho = 7 in the paper).
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f64> {
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// n sigmas from `sigma_max` down to `sigma_min`, evenly spaced in log sigma.
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}
