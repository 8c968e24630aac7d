//! Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, algorithm 1 with
//! optional churn), as diffusers' `EulerDiscreteScheduler`: x_{i+1} = x_i + (x_i - x0_i) / sigma_i *
//! (sigma_{i+1} - sigma_i). The churn follows diffusers (noise added inside the step, after the
//! model saw the un-churned sample).

use super::sigmas::{
    euler_sigmas, init_noise_sigma, x0_from_ve, FinalSigma, SigmaOptions, SigmaSteps,
    ZERO_SNR_TERMINAL_ALPHA_BAR,
};
use super::{Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::{BetaScheduleConfig, NoiseSchedule, TimestepSpacing};
use crate::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `EulerDiscreteScheduler`'s configuration: keys and defaults as diffusers'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerConfig {
    #[serde(flatten)]
    pub schedule: BetaScheduleConfig,
    pub prediction_type: PredictionType,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub final_sigmas_type: FinalSigma,
}

impl Default for EulerConfig {
    fn default() -> Self {
        EulerConfig {
            schedule: BetaScheduleConfig::default(),
            prediction_type: PredictionType::Epsilon,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            final_sigmas_type: FinalSigma::Zero,
        }
    }
}

impl EulerConfig {
    pub(crate) fn sigma_options(&self) -> SigmaOptions {
        SigmaOptions {
            spacing: self.timestep_spacing,
            steps_offset: self.steps_offset,
            use_karras_sigmas: self.use_karras_sigmas,
            use_exponential_sigmas: self.use_exponential_sigmas,
            final_sigma: self.final_sigmas_type,
        }
    }
}

/// Euler sampler (deterministic unless `s_churn` > 0).
pub struct EulerSampler {
    config: EulerConfig,
    schedule: NoiseSchedule,
    steps: SigmaSteps,
    /// Karras et al.'s stochasticity: churn per step, applied for sigma in [s_tmin, s_tmax], noise scale.
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl EulerSampler {
    pub fn new(config: EulerConfig) -> Result<Self> {
        let mut schedule = NoiseSchedule::new(&config.schedule)?;
        if config.schedule.rescale_betas_zero_snr {
            // As diffusers: sigma_max would be infinite at alpha_bar_T = 0.
            schedule = schedule.with_terminal_alpha_bar(ZERO_SNR_TERMINAL_ALPHA_BAR);
        }
        Ok(EulerSampler {
            config,
            schedule,
            steps: SigmaSteps::default(),
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        })
    }

    /// The sigmas visited, the final one included.
    pub fn sigmas(&self) -> &[f64] {
        &self.steps.sigmas
    }

    /// Use exactly these timesteps and sigmas (`sigmas` one longer), e.g. to reproduce another
    /// implementation's schedule.
    pub fn set_schedule(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) -> Result<()> {
        self.steps.set(timesteps, sigmas)
    }
}

impl Sampler for EulerSampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let (timesteps, sigmas) = euler_sigmas(&self.schedule, n, &self.config.sigma_options())?;
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
        let sigma = self.steps.sigmas[i];
        let n = (self.steps.sigmas.len() - 1) as f64;
        let gamma = if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / n).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0);
        let mut x = sample.shallow_clone();
        if gamma > 0.0 {
            let noise = Tensor::randn_like(model_output) * self.s_noise;
            x += noise * (sigma_hat * sigma_hat - sigma * sigma).sqrt();
        }
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => &x - model_output * sigma_hat,
            other => x0_from_ve(other, model_output, &x, sigma),
        };
        let derivative = (&x - &x0) / sigma_hat;
        let prev_sample = x + derivative * (self.steps.sigmas[i + 1] - sigma_hat);
        self.steps.index += 1;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
