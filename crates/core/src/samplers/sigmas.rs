//! Sigma schedules of the Euler-family samplers (diffusers' Euler, Euler ancestral and Heun
//! schedulers): the timesteps for a spacing, their variance-exploding sigmas interpolated from the
//! training schedule, optionally re-spaced (Karras et al. 2022 eq. 5, or evenly in log sigma), and
//! the final sigma.

use crate::schedule::{
    exponential_sigmas, karras_sigmas, linspace, spaced_timesteps, NoiseSchedule, TimestepSpacing,
};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// alpha_bar at the last training timestep of a zero-terminal-SNR schedule as diffusers' Euler and
/// DPM-Solver schedulers see it (2^-24), so that sigma_max is finite.
pub const ZERO_SNR_TERMINAL_ALPHA_BAR: f64 = 1.0 / 16_777_216.0;

/// The sigma the last step goes to (diffusers' `final_sigmas_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigma {
    /// Down to the data (sigma = 0).
    #[default]
    Zero,
    /// Stop at the schedule's smallest sigma (that of t = 0).
    SigmaMin,
}

/// How the inference sigmas are spread.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SigmaOptions {
    pub spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub final_sigma: FinalSigma,
}

/// Timesteps (`n`) and sigmas (`n + 1`, the final one appended) for `n` inference steps.
pub fn euler_sigmas(
    schedule: &NoiseSchedule,
    n: usize,
    opts: &SigmaOptions,
) -> Result<(Vec<f64>, Vec<f64>)> {
    if opts.use_karras_sigmas && opts.use_exponential_sigmas {
        return Err(Error::InvalidArgument(
            "use_karras_sigmas and use_exponential_sigmas cannot both be set".into(),
        ));
    }
    let train = schedule.len();
    let mut timesteps = match opts.spacing {
        // Euler-family linspace timesteps are not rounded (unlike DDPM/DDIM's).
        TimestepSpacing::Linspace => {
            spaced_timesteps(train, n, TimestepSpacing::Linspace, 0)?; // validates n
            linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .rev()
                .collect()
        }
        other => spaced_timesteps(train, n, other, opts.steps_offset)?,
    };
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| schedule.sigma_at(t)).collect();
    let respaced = if opts.use_karras_sigmas {
        Some(karras_sigmas(sigmas[n - 1], sigmas[0], n, 7.0))
    } else if opts.use_exponential_sigmas {
        Some(exponential_sigmas(sigmas[n - 1], sigmas[0], n))
    } else {
        None
    };
    if let Some(s) = respaced {
        timesteps = s.iter().map(|&sigma| schedule.sigma_to_t(sigma)).collect();
        sigmas = s;
    }
    sigmas.push(match opts.final_sigma {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => schedule.sigmas()[0],
    });
    Ok((timesteps, sigmas))
}

/// The standard deviation of the starting noise: sigma_max, or sqrt(sigma_max^2 + 1) under
/// leading spacing (as diffusers).
pub fn init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(0.0, f64::max);
    match spacing {
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        _ => max,
    }
}

/// x0 from a model output at VE sigma `sigma`, where the model saw x / sqrt(sigma^2 + 1)
/// (diffusers' Euler-family conversion; c_skip/c_out of the VP model in VE coordinates).
pub fn x0_from_ve(
    prediction: crate::prediction::PredictionType,
    output: &tch::Tensor,
    sample: &tch::Tensor,
    sigma: f64,
) -> tch::Tensor {
    use crate::prediction::PredictionType::*;
    match prediction {
        Epsilon => sample - output * sigma,
        Sample => output.shallow_clone(),
        VPrediction => {
            output * (-sigma / (sigma * sigma + 1.0).sqrt()) + sample / (sigma * sigma + 1.0)
        }
    }
}

/// Timesteps and sigmas must pair up: one sigma more than timesteps, all finite and non-negative.
pub(crate) fn check_schedule(timesteps: &[f64], sigmas: &[f64]) -> Result<()> {
    if timesteps.is_empty() || sigmas.len() != timesteps.len() + 1 {
        return Err(Error::InvalidArgument(format!(
            "a sigma schedule needs one more sigma than timesteps, got {} timesteps and {} sigmas",
            timesteps.len(),
            sigmas.len()
        )));
    }
    if sigmas.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(Error::InvalidArgument(
            "sigmas must be finite and non-negative".into(),
        ));
    }
    Ok(())
}

/// The step index for timestep `t`: steps must come in order.
pub(crate) fn expect_step(timesteps: &[f64], index: usize, t: f64) -> Result<()> {
    match timesteps.get(index) {
        Some(&expected) if expected == t => Ok(()),
        Some(&expected) => Err(Error::InvalidArgument(format!(
            "step called with timestep {t}, but step {index} of this schedule is timestep {expected}"
        ))),
        None => Err(Error::InvalidArgument(format!(
            "step called after the last of {} steps (call set_timesteps to start again)",
            timesteps.len()
        ))),
    }
}

/// What an Euler-family sampler carries between steps: its timesteps, their sigmas (one more, the
/// final one appended) and the index of the next step.
#[derive(Clone, Debug, Default)]
pub(crate) struct SigmaSteps {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub index: usize,
}

impl SigmaSteps {
    /// Use these timesteps and sigmas from the first step on.
    pub fn set(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) -> Result<()> {
        check_schedule(&timesteps, &sigmas)?;
        *self = SigmaSteps {
            timesteps,
            sigmas,
            index: 0,
        };
        Ok(())
    }

    /// The model sees x / sqrt(sigma^2 + 1) (the VP-scaled sample) at the current step.
    pub fn scale_input(&self, sample: &Tensor) -> Tensor {
        let sigma = self.sigmas[self.index.min(self.sigmas.len() - 1)];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    /// After `done` steps the sample is x0 + sigma_done eps.
    pub fn level(&self, done: usize) -> Option<(f64, f64)> {
        self.sigmas.get(done).map(|&sigma| (1.0, sigma))
    }

    pub fn start_at(&mut self, index: usize) -> Result<()> {
        if index > self.timesteps.len() {
            return Err(Error::InvalidArgument(format!(
                "start step {index} is past the {} steps",
                self.timesteps.len()
            )));
        }
        self.index = index;
        Ok(())
    }

    /// Check that `t` is the next timestep and return its index.
    pub fn expect(&self, t: f64) -> Result<usize> {
        expect_step(&self.timesteps, self.index, t)?;
        Ok(self.index)
    }
}
