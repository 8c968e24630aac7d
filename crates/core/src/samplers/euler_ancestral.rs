//! Ancestral Euler in sigma space (k-diffusion's `sample_euler_ancestral`; diffusers'
//! `EulerAncestralDiscreteScheduler`): an Euler step down to sigma_down, then fresh noise of
//! std sigma_up, with sigma_up^2 + sigma_down^2 = sigma_next^2.

use super::euler::{check_schedule, expect_step};
use super::sigmas::{euler_sigmas, init_noise_sigma, x0_from_ve, FinalSigma, SigmaOptions};
use super::{Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::{BetaScheduleConfig, NoiseSchedule, TimestepSpacing};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `EulerAncestralDiscreteScheduler`'s configuration: keys and defaults as diffusers'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerAncestralConfig {
    #[serde(flatten)]
    pub schedule: BetaScheduleConfig,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for EulerAncestralConfig {
    fn default() -> Self {
        EulerAncestralConfig {
            schedule: BetaScheduleConfig::default(),
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

/// Euler ancestral sampler.
pub struct EulerAncestralSampler {
    config: EulerAncestralConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    step_index: usize,
}

impl EulerAncestralSampler {
    pub fn new(config: EulerAncestralConfig) -> Result<Self> {
        if config.prediction_type == PredictionType::Sample {
            // diffusers raises here too: its x0 conversion is only defined for epsilon and v.
            return Err(Error::InvalidArgument(
                "Euler ancestral supports prediction types epsilon and v_prediction, not sample"
                    .into(),
            ));
        }
        let schedule = NoiseSchedule::new(&config.schedule)?;
        Ok(EulerAncestralSampler {
            config,
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: 0,
        })
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Use exactly these timesteps and sigmas (`sigmas` one longer).
    pub fn set_schedule(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) -> Result<()> {
        check_schedule(&timesteps, &sigmas)?;
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.step_index = 0;
        Ok(())
    }
}

impl Sampler for EulerAncestralSampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let opts = SigmaOptions {
            spacing: self.config.timestep_spacing,
            steps_offset: self.config.steps_offset,
            final_sigma: FinalSigma::Zero,
            ..Default::default()
        };
        let (timesteps, sigmas) = euler_sigmas(&self.schedule, n, &opts)?;
        self.set_schedule(timesteps, sigmas)
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        init_noise_sigma(&self.sigmas, self.config.timestep_spacing)
    }

    fn scale_model_input(&self, sample: &Tensor, _t: f64) -> Tensor {
        let sigma = self.sigmas[self.step_index.min(self.sigmas.len() - 1)];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn level(&self, done: usize) -> Option<(f64, f64)> {
        self.sigmas.get(done).map(|&sigma| (1.0, sigma))
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        if index > self.timesteps.len() {
            return Err(Error::InvalidArgument(format!(
                "start step {index} is past the {} steps",
                self.timesteps.len()
            )));
        }
        self.step_index = index;
        Ok(())
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput> {
        expect_step(&self.timesteps, self.step_index, t)?;
        let i = self.step_index;
        let (sigma_from, sigma_to) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = x0_from_ve(
            self.config.prediction_type,
            model_output,
            sample,
            sigma_from,
        );
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .max(0.0)
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).max(0.0).sqrt();
        let derivative = (sample - &x0) / sigma_from;
        let mut prev_sample = sample + derivative * (sigma_down - sigma_from);
        prev_sample += Tensor::randn_like(model_output) * sigma_up;
        self.step_index += 1;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
