//! DDPM ancestral sampling (Ho et al. 2020, algorithm 2), with diffusers' `DDPMScheduler` options:
//! every variance type, sample clipping, dynamic thresholding, and strided timesteps (the previous
//! timestep is the next entry of the timestep list).

use super::{dynamic_threshold, index_of, Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::{spaced_timesteps, BetaScheduleConfig, NoiseSchedule, TimestepSpacing};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The variance of each reverse step (diffusers' `variance_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// beta-tilde, the true posterior variance (lower bound on the reverse variance).
    #[default]
    FixedSmall,
    /// beta-tilde, noise scaled by its square root computed through the log (diffusers' rl variant).
    FixedSmallLog,
    /// beta (upper bound).
    FixedLarge,
    /// beta through its log (GLIDE's max_log); diffusers takes the square root of the log itself here,
    /// which is NaN, so diffuse samples with std sqrt(beta) as the name intends.
    FixedLargeLog,
    /// The model's extra channels are the variance itself.
    Learned,
    /// The model's extra channels v in [-1, 1] interpolate log beta-tilde and log beta
    /// (Nichol & Dhariwal 2021, eq. 15).
    LearnedRange,
}

impl VarianceType {
    /// Whether the model outputs 2C channels.
    pub fn is_learned(self) -> bool {
        matches!(self, VarianceType::Learned | VarianceType::LearnedRange)
    }

    /// A model output as (mean part, variance part): with a learned variance the output must have
    /// 2C channels for C-channel samples and is split along dim 1; otherwise it is all mean.
    pub fn split_output(self, output: &Tensor, channels: i64) -> Result<(Tensor, Option<Tensor>)> {
        if !self.is_learned() {
            return Ok((output.shallow_clone(), None));
        }
        if output.size()[1] != 2 * channels {
            return Err(Error::InvalidArgument(format!(
                "variance type {self:?} needs a model with {} output channels (mean and variance), got {}",
                2 * channels,
                output.size()[1]
            )));
        }
        let parts = output.split(channels, 1);
        Ok((parts[0].shallow_clone(), Some(parts[1].shallow_clone())))
    }
}

/// `DDPMScheduler`'s configuration: keys and defaults as diffusers'.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdpmConfig {
    #[serde(flatten)]
    pub schedule: BetaScheduleConfig,
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Default for DdpmConfig {
    fn default() -> Self {
        DdpmConfig {
            schedule: BetaScheduleConfig::default(),
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
        }
    }
}

/// DDPM ancestral sampler.
pub struct DdpmSampler {
    config: DdpmConfig,
    schedule: NoiseSchedule,
    timesteps: Vec<f64>,
}

impl DdpmSampler {
    pub fn new(config: DdpmConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config.schedule)?;
        let timesteps = (0..schedule.len()).rev().map(|t| t as f64).collect();
        Ok(DdpmSampler {
            config,
            schedule,
            timesteps,
        })
    }

    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Visit exactly these timesteps (descending, within the training range).
    pub fn set_custom_timesteps(&mut self, timesteps: &[f64]) -> Result<()> {
        super::check_custom_timesteps(timesteps, self.schedule.len())?;
        self.timesteps = timesteps.to_vec();
        Ok(())
    }

    /// The variance of the step from `t` to `prev` (None: to the data) as (log variance, std) of the
    /// noise added, given the model's variance channels where learned.
    fn step_std(&self, t: f64, prev: Option<f64>, predicted: Option<&Tensor>) -> Result<Tensor> {
        let post = self.schedule.posterior(t, prev);
        let like = predicted;
        let constant = |v: f64| Tensor::from(v);
        Ok(match self.config.variance_type {
            VarianceType::FixedSmall => constant(post.variance.sqrt()),
            VarianceType::FixedSmallLog => constant((0.5 * post.variance.ln()).exp()),
            VarianceType::FixedLarge | VarianceType::FixedLargeLog => constant(post.beta.sqrt()),
            VarianceType::Learned => like.expect("checked by step").sqrt(),
            VarianceType::LearnedRange => {
                let v = like.expect("checked by step");
                let (min_log, max_log) = (post.variance.ln(), post.beta.ln());
                let frac = (v + 1.0) / 2.0;
                let log_var = &frac * max_log + (-&frac + 1.0) * min_log;
                (log_var * 0.5).exp()
            }
        })
    }
}

impl Sampler for DdpmSampler {
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
        Some(match self.timesteps.get(done) {
            Some(&t) => {
                let abar = self.schedule.alpha_bar(t);
                (abar.sqrt(), (1.0 - abar).sqrt())
            }
            None => (1.0, 0.0),
        })
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        // Stateless between steps: the previous timestep is read from the list.
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
        let prev = self.timesteps.get(index + 1).copied();
        let (output, predicted_variance) = self
            .config
            .variance_type
            .split_output(model_output, sample.size()[1])?;
        let abar_t = self.schedule.alpha_bar(t);
        let (alpha, sigma) = (abar_t.sqrt(), (1.0 - abar_t).sqrt());
        let (a, s) = (super::scalar(alpha, sample), super::scalar(sigma, sample));
        let mut x0 = self.config.prediction_type.to_x0(&output, sample, &a, &s);
        if self.config.thresholding {
            x0 = dynamic_threshold(
                &x0,
                self.config.dynamic_thresholding_ratio,
                self.config.sample_max_value,
            );
        } else if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r);
        }
        let post = self.schedule.posterior(t, prev);
        let mut prev_sample = &x0 * post.coef_x0 + sample * post.coef_xt;
        if t > 0.0 {
            let noise = Tensor::randn_like(&output);
            let std = self.step_std(t, prev, predicted_variance.as_ref())?;
            prev_sample += std.to_kind(noise.kind()).to_device(noise.device()) * noise;
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
