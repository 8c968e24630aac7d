//! The survival schedule of count thinning: alpha_0 = 1 > alpha_1 > ... > alpha_T > 0, where
//! alpha_t is the probability that one unit of count of x_0 is still there at step t.
//!
//! As in JUMP (Chen & Zhou 2023, sec. 3.3 and their `schedules.py`), the endpoints are given as
//! log signal-to-noise ratios of the latent counts: a Poisson count of mean mu has SNR mean^2 /
//! variance = mu, so log-SNR(t) = log(lambda alpha_t m), with m the data's mean per element and
//! lambda the scaling of Poisson thinning (1 for binomial thinning). `logsnr_start` (t = 0) then
//! fixes lambda = exp(logsnr_start) / m, and `logsnr_end` fixes alpha_T = exp(logsnr_end) /
//! (lambda m). The path between them is one of [`AlphaSchedule`].

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How alpha_t falls from 1 to alpha_T.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlphaSchedule {
    /// JUMP's default: alpha_t = sqrt(prod_{i<=t} (1 - beta_i)) with beta linear from
    /// `beta_start` to the beta_end that lands on alpha_T (solved here by bisection on the exact
    /// product; JUMP solves a continuous approximation), i.e. DDPM's linear schedule read as
    /// signal decay.
    BetaLinear,
    /// log alpha_t linear in t: Blackout's pure-death process (each unit dies at a constant rate)
    /// observed at evenly spaced times.
    LogLinear,
    /// alpha_t = cos(t / T * arccos(alpha_T)) (JUMP's `alpha_cosine`).
    Cosine,
}

impl AlphaSchedule {
    pub const NAMES: [&'static str; 3] = ["beta-linear", "log-linear", "cosine"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "beta-linear" => Ok(AlphaSchedule::BetaLinear),
            "log-linear" => Ok(AlphaSchedule::LogLinear),
            "cosine" => Ok(AlphaSchedule::Cosine),
            other => Err(Error::InvalidArgument(format!(
                "--alpha-schedule: unknown schedule {other:?}; expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AlphaSchedule::BetaLinear => "beta-linear",
            AlphaSchedule::LogLinear => "log-linear",
            AlphaSchedule::Cosine => "cosine",
        }
    }
}

/// lambda from the log-SNR at t = 0 and the data mean m: exp(logsnr_start) / m (JUMP's
/// `infer_lbd_from_logsnr`).
pub fn lambda_from_logsnr(logsnr_start: f64, signal_mean: f64) -> f64 {
    logsnr_start.exp() / signal_mean
}

/// alpha_T from the log-SNR at t = T: exp(logsnr_end) / (lambda m).
pub fn alpha_end_from_logsnr(logsnr_end: f64, lambda: f64, signal_mean: f64) -> f64 {
    logsnr_end.exp() / (lambda * signal_mean)
}

/// alpha_0..=alpha_T (T + 1 values, alpha_0 = 1) of `schedule` ending at `alpha_end`.
pub fn alphas(
    schedule: AlphaSchedule,
    timesteps: usize,
    alpha_end: f64,
    beta_start: f64,
) -> Result<Vec<f64>> {
    if timesteps == 0 {
        return Err(Error::InvalidArgument(
            "--num-train-timesteps: must be at least 1".into(),
        ));
    }
    if !(alpha_end > 0.0 && alpha_end < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "the log-SNR endpoints give a final survival probability alpha_T = {alpha_end:e}, \
             which must lie in (0, 1): lower --logsnr-end (or raise --logsnr-start, or --lambda \
             where it is given)"
        )));
    }
    let t_max = timesteps as f64;
    let mut out = Vec::with_capacity(timesteps + 1);
    out.push(1.0);
    match schedule {
        AlphaSchedule::LogLinear => {
            let log_end = alpha_end.ln();
            out.extend((1..=timesteps).map(|t| (log_end * t as f64 / t_max).exp()));
        }
        AlphaSchedule::Cosine => {
            let end = alpha_end.acos();
            out.extend((1..=timesteps).map(|t| (end * t as f64 / t_max).cos()));
        }
        AlphaSchedule::BetaLinear => {
            let beta_end = solve_beta_end(timesteps, beta_start, alpha_end)?;
            out.extend(beta_linear_alphas(timesteps, beta_start, beta_end));
        }
    }
    // The formulas reach alpha_T only up to rounding (cos near pi/2 loses digits); the endpoint is
    // the one value the log-SNR fixes exactly.
    out[timesteps] = alpha_end;
    Ok(out)
}

/// The betas of the linear schedule, beta_1 = start .. beta_T = end.
fn linear_betas(timesteps: usize, start: f64, end: f64) -> impl Iterator<Item = f64> {
    let span = (timesteps.max(2) - 1) as f64;
    (0..timesteps).map(move |i| {
        if timesteps == 1 {
            end
        } else {
            start + (end - start) * i as f64 / span
        }
    })
}

fn beta_linear_alphas(timesteps: usize, start: f64, end: f64) -> Vec<f64> {
    let mut log_prod = 0.0;
    linear_betas(timesteps, start, end)
        .map(|b| {
            log_prod += (-b).ln_1p();
            (0.5 * log_prod).exp()
        })
        .collect()
}

/// log alpha_T of the beta-linear schedule, for bisection.
fn beta_linear_log_alpha_end(timesteps: usize, start: f64, end: f64) -> f64 {
    0.5 * linear_betas(timesteps, start, end)
        .map(|b| (-b).ln_1p())
        .sum::<f64>()
}

/// The beta_end whose linear schedule from `beta_start` ends at `alpha_end` (log alpha_T falls
/// monotonically as beta_end grows, so bisection finds it to machine precision).
pub fn solve_beta_end(timesteps: usize, beta_start: f64, alpha_end: f64) -> Result<f64> {
    if !(0.0..1.0).contains(&beta_start) {
        return Err(Error::InvalidArgument(format!(
            "--beta-start: must lie in [0, 1), got {beta_start}"
        )));
    }
    let target = alpha_end.ln();
    let (mut lo, mut hi) = (0.0f64, 1.0 - 1e-15);
    if beta_linear_log_alpha_end(timesteps, beta_start, lo) < target {
        return Err(Error::InvalidArgument(format!(
            "--beta-start {beta_start}: even beta_end = 0 thins past alpha_T = {alpha_end:e} in \
             {timesteps} steps; lower --beta-start or raise --logsnr-end"
        )));
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if beta_linear_log_alpha_end(timesteps, beta_start, mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(0.5 * (lo + hi))
}

/// `steps` timesteps from T down to 1, evenly spaced (always T first; the sampler's last jump goes
/// from the final one to 0). `steps = T` visits every step.
pub fn sampling_timesteps(timesteps: usize, steps: usize) -> Result<Vec<usize>> {
    if steps == 0 || steps > timesteps {
        return Err(Error::InvalidArgument(format!(
            "--steps: must lie in 1..={timesteps} (the model's training timesteps), got {steps}"
        )));
    }
    let mut out: Vec<usize> = (0..steps)
        .map(|i| timesteps - ((i as f64) * timesteps as f64 / steps as f64).round() as usize)
        .collect();
    out.dedup();
    Ok(out)
}
