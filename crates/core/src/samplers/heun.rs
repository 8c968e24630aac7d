//! Heun's second-order method in sigma space (Karras et al. 2022, algorithm 1), as diffusers'
//! `HeunDiscreteScheduler`: every sigma after the first is visited twice, an Euler predictor and
//! then a corrector averaging the two slopes, so N steps cost 2N - 1 model evaluations.

use super::sigmas::{check_schedule, expect_step};
use super::sigmas::{euler_sigmas, init_noise_sigma, FinalSigma, SigmaOptions};
use super::{Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::{BetaSchedule, BetaScheduleConfig, NoiseSchedule, TimestepSpacing};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `HeunDiscreteScheduler`'s configuration: keys and defaults as diffusers'. Its default betas
/// differ from the other schedulers' (0.00085..0.012), so the schedule keys are its own fields
/// rather than a flattened [`BetaScheduleConfig`] (whose defaults would win for missing keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeunConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl HeunConfig {
    /// The training schedule these keys describe.
    pub fn beta_schedule_config(&self) -> BetaScheduleConfig {
        BetaScheduleConfig {
            num_train_timesteps: self.num_train_timesteps,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            trained_betas: self.trained_betas.clone(),
            rescale_betas_zero_snr: false,
        }
    }
}

impl Default for HeunConfig {
    fn default() -> Self {
        HeunConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

/// The predictor's state kept for the corrector.
struct Pending {
    derivative: Tensor,
    dt: f64,
    sample: Tensor,
}

/// Heun sampler.
pub struct HeunSampler {
    config: HeunConfig,
    schedule: NoiseSchedule,
    /// Interleaved: t0, t1, t1, t2, t2, ...
    timesteps: Vec<f64>,
    /// Interleaved: s0, s1, s1, s2, s2, ..., final.
    sigmas: Vec<f64>,
    step_index: usize,
    pending: Option<Pending>,
}

impl HeunSampler {
    pub fn new(config: HeunConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config.beta_schedule_config())?;
        Ok(HeunSampler {
            config,
            schedule,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: 0,
            pending: None,
        })
    }

    /// Use these (un-interleaved) timesteps and sigmas (`sigmas` one longer).
    pub fn set_schedule(&mut self, timesteps: Vec<f64>, sigmas: Vec<f64>) -> Result<()> {
        check_schedule(&timesteps, &sigmas)?;
        let n = timesteps.len();
        self.timesteps = std::iter::once(timesteps[0])
            .chain(timesteps[1..].iter().flat_map(|&t| [t, t]))
            .collect();
        self.sigmas = std::iter::once(sigmas[0])
            .chain(sigmas[1..n].iter().flat_map(|&s| [s, s]))
            .chain(std::iter::once(sigmas[n]))
            .collect();
        self.step_index = 0;
        self.pending = None;
        Ok(())
    }

    /// The sigma the model is evaluated at for the current step.
    fn current_sigma(&self) -> f64 {
        self.sigmas[self.step_index.min(self.sigmas.len() - 1)]
    }
}

impl Sampler for HeunSampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let opts = SigmaOptions {
            spacing: self.config.timestep_spacing,
            steps_offset: self.config.steps_offset,
            use_karras_sigmas: self.config.use_karras_sigmas,
            use_exponential_sigmas: self.config.use_exponential_sigmas,
            final_sigma: FinalSigma::Zero,
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
        let sigma = self.current_sigma();
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn level(&self, done: usize) -> Option<(f64, f64)> {
        self.sigmas.get(done).map(|&sigma| (1.0, sigma))
    }

    fn order(&self) -> usize {
        2
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        // Only at a predictor step: a corrector needs the predictor's state.
        if index > self.timesteps.len() || index % 2 == 1 {
            return Err(Error::InvalidArgument(format!(
                "Heun can start only at an even step (a predictor) within its {} steps, not {index}",
                self.timesteps.len()
            )));
        }
        self.step_index = index;
        self.pending = None;
        Ok(())
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput> {
        expect_step(&self.timesteps, self.step_index, t)?;
        let i = self.step_index;
        let first_order = self.pending.is_none();
        let (sigma, sigma_next) = if first_order {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        // The model was evaluated at sigma (predictor) or sigma_next (corrector).
        let sigma_input = if first_order { sigma } else { sigma_next };
        let mut x0 = match self.config.prediction_type {
            PredictionType::Epsilon => sample - model_output * sigma_input,
            PredictionType::VPrediction => {
                model_output * (-sigma_input / (sigma_input * sigma_input + 1.0).sqrt())
                    + sample / (sigma_input * sigma_input + 1.0)
            }
            PredictionType::Sample => model_output.shallow_clone(),
        };
        if self.config.clip_sample {
            x0 = x0.clamp(
                -self.config.clip_sample_range,
                self.config.clip_sample_range,
            );
        }
        let prev_sample = match self.pending.take() {
            None => {
                let derivative = (sample - &x0) / sigma;
                let dt = sigma_next - sigma;
                let prev = sample + &derivative * dt;
                self.pending = Some(Pending {
                    derivative,
                    dt,
                    sample: sample.shallow_clone(),
                });
                prev
            }
            Some(p) => {
                let derivative = ((sample - &x0) / sigma_next + p.derivative) / 2.0;
                p.sample + derivative * p.dt
            }
        };
        self.step_index += 1;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
