//! Flags of the Gaussian-diffusion commands that images and audio share: choosing a sampler
//! (`--sampler --steps --eta --karras`) and the training objective and noise schedule
//! (`--prediction-type --objective --weighting ... --num-train-timesteps`). Each modality keeps
//! its own defaults for the schedule, so those flags are optional here and only override.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_core::losses::{LearnedVariance, ObjectiveConfig, TimestepSampling, Weighting};
use diffuse_core::poisson::JumpSampler;
use diffuse_core::prediction::PredictionType;
use diffuse_core::sampler_choice::{SamplerChoice, SAMPLER_NAMES};
use diffuse_core::samplers::ddpm::DdpmConfig;
use diffuse_core::schedule::BetaSchedule;

/// Which sampler, how many steps.
#[derive(Args, Clone, Debug)]
pub struct SamplerChoiceArgs {
    /// Sampler: ddpm, ddim, euler, euler-ancestral, heun, dpm++2m, dpm++3m, sde-dpm++2m or diffwave-fast (default: the model's scheduler); count models (--process poisson): jump (default) or blackout.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Inference steps (default: every training step for ddpm (at most 1000), 6 for diffwave-fast, 50 otherwise).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM's eta: 0 deterministic, 1 ancestral.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Karras sigma spacing (euler, heun, dpm++ samplers).
    #[arg(long)]
    pub karras: bool,
}

impl SamplerChoiceArgs {
    /// The choice, with an unknown sampler name refused before any model is loaded.
    pub fn choice(&self) -> Result<SamplerChoice> {
        if let Some(name) = &self.sampler {
            if !SAMPLER_NAMES.contains(&name.as_str())
                && !JumpSampler::NAMES.contains(&name.as_str())
            {
                bail!(
                    "--sampler: unknown sampler '{name}' (expected one of {}; for count models {})",
                    SAMPLER_NAMES.join(", "),
                    JumpSampler::NAMES.join(" or ")
                );
            }
        }
        Ok(SamplerChoice {
            name: self.sampler.clone(),
            steps: self.steps,
            eta: self.eta,
            karras: self.karras,
        })
    }
}

/// The training objective and the noise schedule.
#[derive(Args, Clone, Debug)]
pub struct ObjectiveArgs {
    /// epsilon, sample or v_prediction.
    #[arg(long, default_value = "epsilon")]
    pub prediction_type: String,
    /// simple (L_simple) or hybrid (learned variance, L_simple + 0.001 L_vlb).
    #[arg(long, default_value = "simple")]
    pub objective: String,
    /// uniform, min-snr or soft-min-snr.
    #[arg(long, default_value = "uniform")]
    pub weighting: String,
    /// gamma of the SNR weightings.
    #[arg(long, default_value_t = 5.0)]
    pub snr_gamma: f64,
    /// uniform or loss-second-moment (importance sampling).
    #[arg(long, default_value = "uniform")]
    pub timestep_sampling: String,
    /// Offset noise strength (0 = off, 0.1 usual).
    #[arg(long, default_value_t = 0.0)]
    pub offset_noise: f64,
    /// linear, scaled_linear, squaredcos_cap_v2 or sigmoid (default linear).
    #[arg(long)]
    pub beta_schedule: Option<String>,
    /// Training timesteps T (default 1000 for images, 200 for audio as in DiffWave).
    #[arg(long)]
    pub num_train_timesteps: Option<usize>,
    /// First beta of the schedule (default 1e-4).
    #[arg(long)]
    pub beta_start: Option<f64>,
    /// Last beta of the schedule (default 0.02).
    #[arg(long)]
    pub beta_end: Option<f64>,
}

/// Parse a snake_case serde enum from a flag value (dashes accepted for underscores).
pub fn parse_enum<T: serde::de::DeserializeOwned>(
    flag: &str,
    value: &str,
    allowed: &str,
) -> Result<T> {
    serde_json::from_value(serde_json::Value::from(value.replace('-', "_")))
        .map_err(|_| anyhow!("{flag}: unknown value '{value}' (expected {allowed})"))
}

impl ObjectiveArgs {
    /// Write the flags into a scheduler and an objective that hold the modality's defaults.
    pub fn apply(&self, scheduler: &mut DdpmConfig, objective: &mut ObjectiveConfig) -> Result<()> {
        let schedule = &mut scheduler.schedule;
        if let Some(name) = &self.beta_schedule {
            schedule.beta_schedule = parse_enum::<BetaSchedule>(
                "--beta-schedule",
                name,
                "linear, scaled_linear, squaredcos_cap_v2 or sigmoid",
            )?;
        }
        if let Some(t) = self.num_train_timesteps {
            if t < 2 {
                bail!("--num-train-timesteps: must be at least 2, got {t}");
            }
            schedule.num_train_timesteps = t;
        }
        for (flag, value, slot) in [
            ("--beta-start", self.beta_start, &mut schedule.beta_start),
            ("--beta-end", self.beta_end, &mut schedule.beta_end),
        ] {
            if let Some(v) = value {
                if !(v > 0.0 && v < 1.0) {
                    bail!("{flag}: must lie in (0, 1), got {v}");
                }
                *slot = v;
            }
        }
        objective.prediction_type = self
            .prediction_type
            .parse::<PredictionType>()
            .map_err(|e| anyhow!("--prediction-type: {e}"))?;
        objective.weighting = match self.weighting.as_str() {
            "uniform" => Weighting::Uniform,
            "min-snr" | "min_snr" => Weighting::MinSnr {
                gamma: self.snr_gamma,
            },
            "soft-min-snr" | "soft_min_snr" => Weighting::SoftMinSnr {
                gamma: self.snr_gamma,
            },
            other => bail!(
                "--weighting: unknown weighting '{other}' (expected uniform, min-snr or soft-min-snr)"
            ),
        };
        objective.timestep_sampling = parse_enum::<TimestepSampling>(
            "--timestep-sampling",
            &self.timestep_sampling,
            "uniform or loss-second-moment",
        )?;
        objective.offset_noise = self.offset_noise;
        match self.objective.as_str() {
            "simple" => {}
            // The hybrid objective (Nichol & Dhariwal 2021): learned variance, L_simple + 0.001 L_vlb.
            "hybrid" => objective.learned_variance = Some(LearnedVariance::default()),
            other => bail!("--objective: unknown objective '{other}' (expected simple or hybrid)"),
        }
        Ok(())
    }
}
