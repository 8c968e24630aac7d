//! Choosing a sampler by name, the way the command line and the model pipelines of every
//! modality do: a name from [`SAMPLER_NAMES`] re-reads the model's saved scheduler config as the
//! named diffusers scheduler (diffusers' `Scheduler.from_config`), sets its options (solver order,
//! Karras sigmas, DDIM's eta) and its number of steps; [`MODEL_SCHEDULER`] (or no name) keeps the
//! saved scheduler as it is, as diffusers' pipelines sample. `diffwave-fast` is DiffWave's aligned
//! short chain on the model's DDPM training schedule ([`crate::samplers::diffwave`]), calibrated on
//! DiffWave's own short audio schedules, so only audio models offer it.

use crate::prediction::PredictionType;
use crate::samplers::ddim::DdimSampler;
use crate::samplers::ddpm::VarianceType;
use crate::samplers::diffwave::{DiffWaveFastSampler, DIFFWAVE_FAST_BETAS};
use crate::samplers::Sampler;
use crate::schedule::NoiseSchedule;
use crate::scheduler_config::SchedulerConfig;
use crate::{Error, Result};
use serde_json::Value;

/// The samplers that re-read any Gaussian model's schedule as a diffusers scheduler, so they
/// fit every modality's Gaussian models.
pub const SCHEDULER_SAMPLERS: &[&str] = &[
    "ddpm",
    "ddim",
    "euler",
    "euler-ancestral",
    "heun",
    "dpm++2m",
    "dpm++3m",
    "sde-dpm++2m",
];

/// DiffWave's fast sampler (audio models only).
pub const DIFFWAVE_FAST: &str = "diffwave-fast";

/// The name that asks for the model's own saved scheduler (`scheduler_config.json`) unchanged:
/// what diffusers' `DDPMPipeline`/`DDIMPipeline` sample with.
pub const MODEL_SCHEDULER: &str = "model";

/// The steps the DPM-Solver++ samplers take by default: second-order multistep solvers give
/// good samples in about 20 model calls (Lu et al. 2022b), where DDPM needs hundreds.
pub const DPM_SOLVER_DEFAULT_STEPS: usize = 20;

/// Every sampler name [`SamplerChoice`] builds besides [`MODEL_SCHEDULER`]:
/// [`SCHEDULER_SAMPLERS`] and [`DIFFWAVE_FAST`].
pub const SAMPLER_NAMES: &[&str] = &[
    "ddpm",
    "ddim",
    "euler",
    "euler-ancestral",
    "heun",
    "dpm++2m",
    "dpm++3m",
    "sde-dpm++2m",
    "diffwave-fast",
];

/// The parameterisation the scheduler expects the network to output.
pub fn scheduler_prediction_type(config: &SchedulerConfig) -> PredictionType {
    match config {
        SchedulerConfig::Ddpm(c) => c.prediction_type,
        SchedulerConfig::Ddim(c) => c.prediction_type,
        SchedulerConfig::Euler(c) => c.prediction_type,
        SchedulerConfig::EulerAncestral(c) => c.prediction_type,
        SchedulerConfig::Heun(c) => c.prediction_type,
        SchedulerConfig::DpmSolver(c) => c.prediction_type,
    }
}

/// Whether a scheduler config's training schedule is rescaled to zero terminal SNR.
pub fn scheduler_zero_terminal_snr(config: &SchedulerConfig) -> bool {
    match config {
        SchedulerConfig::Ddpm(c) => c.schedule.rescale_betas_zero_snr,
        SchedulerConfig::Ddim(c) => c.schedule.rescale_betas_zero_snr,
        SchedulerConfig::Euler(c) => c.schedule.rescale_betas_zero_snr,
        SchedulerConfig::EulerAncestral(c) => c.schedule.rescale_betas_zero_snr,
        SchedulerConfig::DpmSolver(c) => c.schedule.rescale_betas_zero_snr,
        SchedulerConfig::Heun(_) => false,
    }
}

/// The variance type of a DDPM scheduler config (fixed_small for the others).
pub fn scheduler_variance_type(config: &SchedulerConfig) -> VarianceType {
    match config {
        SchedulerConfig::Ddpm(c) => c.variance_type,
        SchedulerConfig::DpmSolver(c) => c.variance_type.unwrap_or_default(),
        _ => VarianceType::FixedSmall,
    }
}

/// Re-read `config` as scheduler `class`, the way diffusers' `Scheduler.from_config(other.config)`
/// does: the keys both share (schedule, prediction type, clipping, spacing) carry over, the others
/// take the new class's defaults.
pub fn convert_scheduler(config: &SchedulerConfig, class: &str) -> Result<SchedulerConfig> {
    let mut value = config.to_json();
    let map = value.as_object_mut().expect("configs are objects");
    map.insert("_class_name".into(), Value::from(class));
    // DDPM's variance types mean nothing to DDIM/Euler/Heun; DPM-Solver reads learned ones only.
    if class != "DDPMScheduler" {
        let learned = matches!(
            map.get("variance_type").and_then(Value::as_str),
            Some("learned" | "learned_range")
        );
        if !(class == "DPMSolverMultistepScheduler" && learned) {
            map.remove("variance_type");
        }
    }
    SchedulerConfig::from_json(&value.to_string(), class)
}

/// The scheduler config for sampler `name` (one of [`SAMPLER_NAMES`]) built from `base`.
pub fn scheduler_for(base: &SchedulerConfig, name: &str, karras: bool) -> Result<SchedulerConfig> {
    let class = match name {
        "ddpm" => "DDPMScheduler",
        "ddim" => "DDIMScheduler",
        "euler" => "EulerDiscreteScheduler",
        "euler-ancestral" => "EulerAncestralDiscreteScheduler",
        "heun" => "HeunDiscreteScheduler",
        "dpm++2m" | "dpm++3m" | "sde-dpm++2m" => "DPMSolverMultistepScheduler",
        // DiffWave's fast sampler runs on the DDPM training schedule.
        DIFFWAVE_FAST => "DDPMScheduler",
        other => {
            return Err(Error::InvalidArgument(format!(
                "--sampler: unknown sampler '{other}' (expected one of {})",
                SAMPLER_NAMES.join(", ")
            )))
        }
    };
    if class == "HeunDiscreteScheduler" && scheduler_zero_terminal_snr(base) {
        // diffusers' Heun scheduler has no rescale_betas_zero_snr: converting would silently
        // sample a schedule the model was not trained on.
        return Err(Error::InvalidArgument(
            "--sampler: heun cannot sample a zero-terminal-SNR model (its schedule has no such rescale); use euler, dpm++2m, ddim or ddpm".into(),
        ));
    }
    let mut config = if base.class_name() == class {
        base.clone()
    } else {
        convert_scheduler(base, class)?
    };
    match &mut config {
        SchedulerConfig::DpmSolver(c) => {
            use crate::samplers::dpm_solver::AlgorithmType;
            c.solver_order = if name == "dpm++3m" { 3 } else { 2 };
            c.algorithm_type = if name == "sde-dpm++2m" {
                AlgorithmType::SdeDpmSolverPlusPlus
            } else {
                AlgorithmType::DpmSolverPlusPlus
            };
            c.use_karras_sigmas = karras;
        }
        SchedulerConfig::Euler(c) => c.use_karras_sigmas = karras,
        SchedulerConfig::Heun(c) => c.use_karras_sigmas = karras,
        _ if karras => {
            return Err(Error::InvalidArgument(format!(
                "--karras: the {name} sampler has no Karras sigma spacing (euler, heun and the dpm++ samplers do)"
            )))
        }
        _ => {}
    }
    Ok(config)
}

/// How to build a sampler from a model's scheduler config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplerChoice {
    /// A name from [`SAMPLER_NAMES`]; `None` or [`MODEL_SCHEDULER`] = the model's own scheduler.
    pub name: Option<String>,
    /// Inference steps; `None` = 1000 for DDPM (diffusers' DDPMPipeline; capped at the training
    /// schedule's length), the inference schedule's length for diffwave-fast,
    /// [`DPM_SOLVER_DEFAULT_STEPS`] for DPM-Solver (capped likewise), 50 otherwise.
    pub steps: Option<usize>,
    /// DDIM's eta (0 deterministic, 1 ancestral).
    pub eta: Option<f64>,
    /// Karras sigma spacing for the samplers that offer it (Euler, Heun, DPM-Solver++).
    pub karras: bool,
}

impl SamplerChoice {
    /// The sampler this choice names; `None` for the model's own scheduler.
    pub fn named(&self) -> Option<&str> {
        self.name.as_deref().filter(|n| *n != MODEL_SCHEDULER)
    }

    /// The scheduler config this choice resolves to (diffwave-fast: the DDPM training schedule).
    pub fn scheduler_config(&self, base: &SchedulerConfig) -> Result<SchedulerConfig> {
        Ok(match self.named() {
            Some(name) => scheduler_for(base, name, self.karras)?,
            None if self.karras => {
                let name = match base.class_name() {
                    "EulerDiscreteScheduler" => "euler",
                    "HeunDiscreteScheduler" => "heun",
                    "DPMSolverMultistepScheduler" => "dpm++2m",
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "--karras: the model's {other} has no Karras sigma spacing"
                        )))
                    }
                };
                scheduler_for(base, name, true)?
            }
            None => base.clone(),
        })
    }

    /// Whether the sampler reads a learned variance (only DDPM and DPM-Solver do).
    pub fn uses_learned_variance(&self, base: &SchedulerConfig) -> Result<bool> {
        if self.named() == Some(DIFFWAVE_FAST) {
            return Ok(false);
        }
        let config = self.scheduler_config(base)?;
        Ok(matches!(
            config,
            SchedulerConfig::Ddpm(_) | SchedulerConfig::DpmSolver(_)
        ) && scheduler_variance_type(&config).is_learned())
    }

    /// The sampler with its timesteps set. Flag names in errors are the command line's.
    pub fn build(&self, base: &SchedulerConfig) -> Result<Box<dyn Sampler>> {
        let config = self.scheduler_config(base)?;
        if self.eta.is_some() && !matches!(config, SchedulerConfig::Ddim(_)) {
            return Err(Error::InvalidArgument(format!(
                "--eta: only the ddim sampler takes eta (this is {})",
                self.named().unwrap_or(config.class_name())
            )));
        }
        let mut sampler: Box<dyn Sampler> = match &config {
            SchedulerConfig::Ddpm(c) if self.named() == Some(DIFFWAVE_FAST) => {
                let schedule = NoiseSchedule::new(&c.schedule)?;
                let fast =
                    DiffWaveFastSampler::new(&schedule, &DIFFWAVE_FAST_BETAS, c.prediction_type)?;
                let fast = if c.clip_sample {
                    fast
                } else {
                    fast.without_clipping()
                };
                Box::new(fast)
            }
            SchedulerConfig::Ddim(c) => {
                let mut ddim = DdimSampler::new(c.clone())?;
                let eta = self.eta.unwrap_or(0.0);
                if !(eta >= 0.0 && eta.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "--eta: must be a number >= 0, got {eta}"
                    )));
                }
                ddim.eta = eta;
                Box::new(ddim)
            }
            config => config.build()?,
        };
        let steps = match self.steps {
            Some(steps) => steps,
            None if self.named() == Some(DIFFWAVE_FAST) => DIFFWAVE_FAST_BETAS.len(),
            None => match &config {
                SchedulerConfig::Ddpm(c) => c.schedule.num_train_timesteps.min(1000),
                SchedulerConfig::DpmSolver(c) => {
                    DPM_SOLVER_DEFAULT_STEPS.min(c.schedule.num_train_timesteps)
                }
                _ => 50,
            },
        };
        sampler.set_timesteps(steps).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("--steps: {m}")),
            other => other,
        })?;
        Ok(sampler)
    }
}
