//! Ancestral Euler in sigma space (k-diffusion's `sample_euler_ancestral`; diffusers'
//! `EulerAncestralDiscreteScheduler`): an Euler step down to sigma_down, then fresh noise of
//! std sigma_up, with sigma_up^2 + sigma_down^2 = sigma_next^2.

use super::sigmas::{
    euler_sigmas, init_noise_sigma, x0_from_ve, FinalSigma, SigmaOptions, SigmaSteps,
    ZERO_SNR_TERMINAL_ALPHA_BAR,
};
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
    steps: SigmaSteps,
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
        let mut schedule = NoiseSchedule::new(&config.schedule)?;
        if config.schedule.rescale_betas_zero_snr {
            // As diffusers: sigma_max would be infinite at alpha_bar_T = 0.
            schedule = schedule.with_terminal_alpha_bar(ZERO_SNR_TERMINAL_ALPHA_BAR);
        }
        Ok(EulerAncestralSampler {
            config,
            schedule,
            steps: SigmaSteps::default(),
        })
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.steps.sigmas
    }

    /// Use exactly these timesteps and sigmas (`sigmas` one longer).
    pub fn set_schedule(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) -> Result<()> {
        self.steps.set(timesteps, sigmas)
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
        &self.steps.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        init_noise_sigma(&self.steps.sigmas, self.config.timestep_spacing)
    }

    fn scale_model_input(&self, sample: &Tensor, _t: f64) -> Tensor {
        self.steps.scale_input(sample)
    }

    fn level(&self, done: usize) -> Option<(f64, f64)> {
        self.steps.level(done)
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        self.steps.start_at(index)
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput> {
        let i = self.steps.expect(t)?;
        let (sigma_from, sigma_to) = (self.steps.sigmas[i], self.steps.sigmas[i + 1]);
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
        self.steps.index += 1;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
