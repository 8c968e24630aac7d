//! DDIM (Song et al. 2021, eq. 12) with diffusers' `DDIMScheduler` options: eta, clipping,
//! thresholding, every timestep spacing and custom timesteps. The previous timestep is read from
//! the timestep list; diffusers computes `t - T // N`, which mis-steps whenever N does not divide T
//! under linspace or trailing spacing (diffusers#9261).

use super::{dynamic_threshold, index_of, Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::{spaced_timesteps, BetaScheduleConfig, NoiseSchedule, TimestepSpacing};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `DDIMScheduler`'s configuration: keys and defaults as diffusers'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    #[serde(flatten)]
    pub schedule: BetaScheduleConfig,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// The last step goes to alpha_bar = 1 (else to alpha_bar_0).
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
}

impl Default for DdimConfig {
    fn default() -> Self {
        DdimConfig {
            schedule: BetaScheduleConfig::default(),
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
        }
    }
}

/// DDIM sampler; `eta` = 0 is deterministic, 1 matches DDPM's posterior variance.
pub struct DdimSampler {
    config: DdimConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    /// Noise scale: 0 deterministic, 1 ancestral.
    pub eta: f64,
    /// After clipping x0, recompute eps from it (diffusers' `use_clipped_model_output`).
    pub use_clipped_model_output: bool,
}

impl DdimSampler {
    pub fn new(config: DdimConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config.schedule)?;
        Ok(DdimSampler {
            config,
            schedule,
            timesteps: Vec::new(),
            eta: 0.0,
            use_clipped_model_output: false,
        })
    }

    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// Visit exactly these timesteps (strictly descending, within the training range).
    pub fn set_custom_timesteps(&mut self, timesteps: &[f64]) -> Result<()> {
        super::check_custom_timesteps(timesteps, self.schedule.len())?;
        self.timesteps = timesteps.to_vec();
        Ok(())
    }
}

impl Sampler for DdimSampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.timesteps = spaced_timesteps(
            self.schedule.len(),
            n,
            self.config.timestep_spacing,
            self.config.steps_offset,
        )?;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn level(&self, done: usize) -> Option<(f64, f64)> {
        let abar = match self.timesteps.get(done) {
            Some(&t) => self.schedule.alpha_bar(t),
            None if self.config.set_alpha_to_one => 1.0,
            None => self.schedule.alphas_cumprod()[0],
        };
        Some((abar.sqrt(), (1.0 - abar).sqrt()))
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        if index > self.timesteps.len() {
            return Err(Error::InvalidArgument(format!(
                "start step {index} is past the {} steps",
                self.timesteps.len()
            )));
        }
        Ok(())
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput> {
        let index = index_of(&self.timesteps, t)?;
        let abar_t = self.schedule.alpha_bar(t);
        let abar_prev = match self.timesteps.get(index + 1) {
            Some(&prev) => self.schedule.alpha_bar(prev),
            None if self.config.set_alpha_to_one => 1.0,
            None => self.schedule.alphas_cumprod()[0],
        };
        let (a, s) = (
            super::scalar(abar_t.sqrt(), sample),
            super::scalar((1.0 - abar_t).sqrt(), sample),
        );
        let p = self.config.prediction_type;
        let mut x0 = p.to_x0(model_output, sample, &a, &s);
        let mut eps = p.to_eps(model_output, sample, &a, &s);
        if self.config.thresholding || self.config.clip_sample {
            x0 = if self.config.thresholding {
                dynamic_threshold(
                    &x0,
                    self.config.dynamic_thresholding_ratio,
                    self.config.sample_max_value,
                )
            } else {
                x0.clamp(
                    -self.config.clip_sample_range,
                    self.config.clip_sample_range,
                )
            };
            if self.use_clipped_model_output {
                // Re-derive eps from the clipped x0 so the two stay consistent with x_t.
                eps = (sample - &x0 * abar_t.sqrt()) / (1.0 - abar_t).sqrt();
            }
        }
        // Song et al. 2021, eq. 16.
        let variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev);
        let std = self.eta * variance.max(0.0).sqrt();
        let direction = &eps * (1.0 - abar_prev - std * std).max(0.0).sqrt();
        let mut prev_sample = &x0 * abar_prev.sqrt() + direction;
        if self.eta > 0.0 {
            prev_sample += Tensor::randn_like(model_output) * std;
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
