//! Flags of the Gaussian-diffusion commands that images and audio share: choosing a sampler
//! (`--sampler --steps --eta --karras`, with each modality's own list of samplers in its help
//! and checks) and the training objective and noise schedule
//! (`--prediction-type --objective --weighting ... --num-train-timesteps`). Each modality keeps
//! its own defaults for the schedule, so those flags are optional here and only override.

use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_core::losses::{LearnedVariance, ObjectiveConfig, TimestepSampling, Weighting};
use diffuse_core::poisson::JumpSampler;
use diffuse_core::prediction::PredictionType;
use diffuse_core::sampler_choice::{
    SamplerChoice, DIFFWAVE_FAST, MODEL_SCHEDULER, SAMPLER_NAMES, SCHEDULER_SAMPLERS,
};
use diffuse_core::samplers::ddpm::DdpmConfig;
use diffuse_core::schedule::{BetaSchedule, TimestepSpacing};

/// The samplers one modality's commands take, and the help that lists them, so each command's
/// `--help` names only what fits its models.
pub trait SamplerSet: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Whose models, for messages: "image", "audio".
    const MODELS: &'static str;
    /// `--sampler`'s help.
    const SAMPLER_HELP: &'static str;
    /// `--steps`' help.
    const STEPS_HELP: &'static str;
    /// The samplers in one phrase, for messages.
    const SUMMARY: &'static str;
    /// The names `--sampler` takes (which of them fits a given model is the model's to say).
    fn names() -> Vec<&'static str>;
}

/// The samplers of the image commands: the Gaussian ones and the count ones.
#[derive(Clone, Debug)]
pub struct ImageSamplers;

impl SamplerSet for ImageSamplers {
    const MODELS: &'static str = "image";
    const SAMPLER_HELP: &'static str =
        "Sampler. Gaussian models: dpm++2m (the default, DPM-Solver++ \
        2M), dpm++3m, sde-dpm++2m, ddim, ddpm, euler, euler-ancestral, heun, or model (the model's \
        own scheduler/scheduler_config.json as saved, e.g. DDPM in 1000 steps: what diffusers' \
        pipelines sample). Count models (trained with --process poisson): jump (the default) or \
        blackout";
    const STEPS_HELP: &'static str = "Inference steps (default: 20 for the dpm++ samplers, every \
        training step (at most 1000) for ddpm and for a model whose own scheduler is DDPM, 50 for \
        the other Gaussian samplers and for count models)";
    const SUMMARY: &'static str = "Gaussian models take dpm++2m (the default), dpm++3m, \
        sde-dpm++2m, ddim, ddpm, euler, euler-ancestral, heun or model; count models jump (the \
        default) or blackout";
    fn names() -> Vec<&'static str> {
        let mut names = SCHEDULER_SAMPLERS.to_vec();
        names.push(MODEL_SCHEDULER);
        names.extend(JumpSampler::NAMES);
        names
    }
}

/// The samplers of the audio commands: the Gaussian ones and DiffWave's short chain.
#[derive(Clone, Debug)]
pub struct AudioSamplers;

impl SamplerSet for AudioSamplers {
    const MODELS: &'static str = "audio";
    const SAMPLER_HELP: &'static str = "Sampler: ddpm, ddim, euler, euler-ancestral, heun, \
        dpm++2m, dpm++3m, sde-dpm++2m, diffwave-fast (DiffWave's 6-step schedule) or model (the \
        default: the model's own scheduler_config.json as saved)";
    const STEPS_HELP: &'static str = "Inference steps (default: every training step (at most \
        1000) for ddpm and for a model whose own scheduler is DDPM, 6 for diffwave-fast, 20 for \
        the dpm++ samplers, 50 otherwise)";
    const SUMMARY: &'static str = "they take ddpm, ddim, euler, euler-ancestral, heun, dpm++2m, \
        dpm++3m, sde-dpm++2m, diffwave-fast or model (the default)";
    fn names() -> Vec<&'static str> {
        let mut names = SAMPLER_NAMES.to_vec();
        names.push(MODEL_SCHEDULER);
        names
    }
}

/// Which sampler, how many steps, for the commands of one modality (`S`).
#[derive(Args, Clone, Debug)]
pub struct SamplerFlags<S: SamplerSet> {
    #[arg(long, help = S::SAMPLER_HELP)]
    pub sampler: Option<String>,
    #[arg(long, help = S::STEPS_HELP)]
    pub steps: Option<usize>,
    /// DDIM's eta: 0 deterministic, 1 ancestral.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Karras sigma spacing (euler, heun, dpm++ samplers).
    #[arg(long)]
    pub karras: bool,
    #[arg(skip)]
    pub samplers: std::marker::PhantomData<S>,
}

/// The sampler flags of the audio commands.
pub type SamplerChoiceArgs = SamplerFlags<AudioSamplers>;

impl<S: SamplerSet> SamplerFlags<S> {
    /// The choice, with a sampler name these commands do not take refused before any model is
    /// loaded.
    pub fn choice(&self) -> Result<SamplerChoice> {
        if let Some(name) = &self.sampler {
            let names = S::names();
            if !names.contains(&name.as_str()) {
                // A sampler of another kind of model is named as such, not as unknown.
                let what = if JumpSampler::NAMES.contains(&name.as_str()) {
                    format!("{name} is a count-diffusion sampler, which does not fit")
                } else if name == DIFFWAVE_FAST {
                    format!("{name} is DiffWave's short audio schedule, which does not fit")
                } else {
                    format!("unknown sampler '{name}' for")
                };
                bail!("--sampler: {what} {} models ({})", S::MODELS, S::SUMMARY);
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
    /// epsilon, sample or v_prediction (default: epsilon for images, v_prediction for audio).
    #[arg(long)]
    pub prediction_type: Option<String>,
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
    /// Rescale the schedule to end at pure noise (Lin et al. 2023) with trailing timesteps;
    /// needs --prediction-type v_prediction or sample (default: off for images, on for audio;
    /// `--zero-terminal-snr false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub zero_terminal_snr: Option<bool>,
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
        if let Some(name) = &self.prediction_type {
            objective.prediction_type = name
                .parse::<PredictionType>()
                .map_err(|e| anyhow!("--prediction-type: {e}"))?;
        }
        let epsilon = objective.prediction_type == PredictionType::Epsilon;
        match self.zero_terminal_snr {
            Some(true) if epsilon => {
                bail!("--zero-terminal-snr: needs --prediction-type v_prediction or sample (at zero SNR the noise says nothing about the data)");
            }
            Some(true) => {
                // Lin et al. 2023, sec. 3.1 and 3.3: the rescaled schedule, sampled from its
                // last step.
                schedule.rescale_betas_zero_snr = true;
                scheduler.timestep_spacing = TimestepSpacing::Trailing;
            }
            // Off as asked, or a modality's default schedule that an epsilon prediction typed
            // by the user cannot use: the plain schedule and its spacing.
            Some(false) | None
                if schedule.rescale_betas_zero_snr
                    && (epsilon || self.zero_terminal_snr.is_some()) =>
            {
                schedule.rescale_betas_zero_snr = false;
                scheduler.timestep_spacing = DdpmConfig::default().timestep_spacing;
            }
            _ => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each modality's help and messages name every sampler it takes, and none it does not.
    fn check<S: SamplerSet>(foreign: &[&str]) {
        for name in S::names() {
            assert!(
                S::SAMPLER_HELP.contains(name),
                "{} help lacks {name}",
                S::MODELS
            );
            assert!(
                S::SUMMARY.contains(name),
                "{} summary lacks {name}",
                S::MODELS
            );
        }
        for name in foreign {
            assert!(!S::names().contains(name), "{} takes {name}", S::MODELS);
            assert!(
                !S::SAMPLER_HELP.contains(name),
                "{} help names {name}",
                S::MODELS
            );
            let flags = SamplerFlags::<S> {
                sampler: Some((*name).to_owned()),
                steps: None,
                eta: None,
                karras: false,
                samplers: std::marker::PhantomData,
            };
            let err = flags.choice().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--sampler: {name} is ")) && err.contains(S::MODELS),
                "{err}"
            );
        }
    }

    fn objective(args: &[&str]) -> Result<(DdpmConfig, ObjectiveConfig)> {
        objective_over(args, DdpmConfig::default(), ObjectiveConfig::default())
    }

    /// The flags applied over a modality's defaults.
    fn objective_over(
        args: &[&str],
        mut scheduler: DdpmConfig,
        mut config: ObjectiveConfig,
    ) -> Result<(DdpmConfig, ObjectiveConfig)> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            objective: ObjectiveArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("x").chain(args.iter().copied()),
        )?;
        cli.objective.apply(&mut scheduler, &mut config)?;
        Ok((scheduler, config))
    }

    /// `--zero-terminal-snr` rescales the schedule and samples from its last step, and is
    /// refused for epsilon prediction, which says nothing about the data at zero SNR.
    #[test]
    fn zero_terminal_snr_needs_a_prediction_that_survives_it() {
        let (scheduler, _) = objective(&[]).unwrap();
        assert!(!scheduler.schedule.rescale_betas_zero_snr);
        let (scheduler, config) =
            objective(&["--zero-terminal-snr", "--prediction-type", "v_prediction"]).unwrap();
        assert!(scheduler.schedule.rescale_betas_zero_snr);
        assert_eq!(scheduler.timestep_spacing, TimestepSpacing::Trailing);
        assert_eq!(config.prediction_type, PredictionType::VPrediction);
        let err = objective(&["--zero-terminal-snr"]).unwrap_err().to_string();
        assert!(
            err.starts_with("--zero-terminal-snr: needs --prediction-type"),
            "{err}"
        );
        // A modality whose default is v-prediction at zero terminal SNR (audio): kept when no
        // flag is typed, turned off by `--zero-terminal-snr false`, and left out when the user
        // asks for epsilon prediction.
        let audio = |args: &[&str]| {
            let mut scheduler = DdpmConfig::default();
            scheduler.schedule.rescale_betas_zero_snr = true;
            scheduler.timestep_spacing = TimestepSpacing::Trailing;
            let config = ObjectiveConfig {
                prediction_type: PredictionType::VPrediction,
                ..ObjectiveConfig::default()
            };
            objective_over(args, scheduler, config)
        };
        let (scheduler, config) = audio(&[]).unwrap();
        assert!(scheduler.schedule.rescale_betas_zero_snr);
        assert_eq!(config.prediction_type, PredictionType::VPrediction);
        let (scheduler, config) = audio(&["--zero-terminal-snr", "false"]).unwrap();
        assert!(!scheduler.schedule.rescale_betas_zero_snr);
        assert_eq!(
            scheduler.timestep_spacing,
            DdpmConfig::default().timestep_spacing
        );
        assert_eq!(config.prediction_type, PredictionType::VPrediction);
        let (scheduler, config) = audio(&["--prediction-type", "epsilon"]).unwrap();
        assert!(!scheduler.schedule.rescale_betas_zero_snr);
        assert_eq!(config.prediction_type, PredictionType::Epsilon);
        assert!(audio(&["--prediction-type", "epsilon", "--zero-terminal-snr"]).is_err());
    }

    #[test]
    fn image_and_audio_commands_list_only_their_samplers() {
        check::<ImageSamplers>(&[DIFFWAVE_FAST]);
        check::<AudioSamplers>(&JumpSampler::NAMES);
    }
}
