//! Choosing a sampler by name: the saved scheduler by [`MODEL_SCHEDULER`] (the same as no name),
//! and the default number of steps of each sampler (DPM-Solver++ in 20, capped at a short
//! training schedule; DDPM every training step; 50 for the others).

use diffuse_core::sampler_choice::{SamplerChoice, DPM_SOLVER_DEFAULT_STEPS, MODEL_SCHEDULER};
use diffuse_core::samplers::ddpm::DdpmConfig;
use diffuse_core::schedule::BetaScheduleConfig;
use diffuse_core::scheduler_config::SchedulerConfig;

fn ddpm_model(t: usize) -> SchedulerConfig {
    SchedulerConfig::Ddpm(DdpmConfig {
        schedule: BetaScheduleConfig {
            num_train_timesteps: t,
            ..BetaScheduleConfig::default()
        },
        ..DdpmConfig::default()
    })
}

fn timesteps(base: &SchedulerConfig, name: Option<&str>, steps: Option<usize>) -> Vec<f64> {
    SamplerChoice {
        name: name.map(str::to_owned),
        steps,
        ..SamplerChoice::default()
    }
    .build(base)
    .unwrap()
    .timesteps()
    .to_vec()
}

#[test]
fn model_names_the_saved_scheduler_as_it_is() {
    let base = ddpm_model(1000);
    let saved = timesteps(&base, None, None);
    assert_eq!(saved.len(), 1000);
    assert_eq!(timesteps(&base, Some(MODEL_SCHEDULER), None), saved);
    assert_eq!(
        timesteps(&base, Some(MODEL_SCHEDULER), Some(25)),
        timesteps(&base, None, Some(25))
    );
    let choice = SamplerChoice {
        name: Some(MODEL_SCHEDULER.into()),
        ..SamplerChoice::default()
    };
    assert_eq!(choice.named(), None);
    assert_eq!(choice.scheduler_config(&base).unwrap(), base);
}

#[test]
fn each_sampler_has_its_own_default_steps() {
    let base = ddpm_model(1000);
    for name in ["dpm++2m", "dpm++3m", "sde-dpm++2m"] {
        assert_eq!(
            timesteps(&base, Some(name), None).len(),
            DPM_SOLVER_DEFAULT_STEPS,
            "{name}"
        );
    }
    assert_eq!(DPM_SOLVER_DEFAULT_STEPS, 20);
    assert_eq!(timesteps(&base, Some("ddpm"), None).len(), 1000);
    assert_eq!(timesteps(&base, Some("ddim"), None).len(), 50);
    assert_eq!(timesteps(&base, Some("dpm++2m"), Some(7)).len(), 7);
    // A training schedule shorter than the default is sampled at every step.
    assert_eq!(timesteps(&ddpm_model(12), Some("dpm++2m"), None).len(), 12);
}

/// A zero-terminal-SNR model samples with every sampler that knows the rescale (the Euler family
/// with diffusers' finite sigma_max of sqrt(2^24 - 1), DPM-Solver, DDIM, DDPM), and Heun, whose
/// diffusers scheduler has no such key, is refused rather than silently given another schedule.
#[test]
fn zero_terminal_snr_models_keep_their_schedule_or_are_refused() {
    let base = SchedulerConfig::Ddpm(DdpmConfig {
        schedule: BetaScheduleConfig {
            rescale_betas_zero_snr: true,
            ..BetaScheduleConfig::default()
        },
        prediction_type: diffuse_core::prediction::PredictionType::VPrediction,
        timestep_spacing: diffuse_core::schedule::TimestepSpacing::Trailing,
        ..DdpmConfig::default()
    });
    for name in ["ddpm", "ddim", "euler", "euler-ancestral", "dpm++2m"] {
        let sampler = SamplerChoice {
            name: Some(name.into()),
            steps: Some(10),
            ..SamplerChoice::default()
        }
        .build(&base)
        .unwrap();
        let sigma = sampler.init_noise_sigma();
        assert!(sigma.is_finite(), "{name}: init noise sigma {sigma}");
        if name.starts_with("euler") {
            assert!(
                (sigma - (16_777_215f64).sqrt()).abs() < 1e-6,
                "{name}: {sigma}"
            );
        }
    }
    let err = SamplerChoice {
        name: Some("heun".into()),
        ..SamplerChoice::default()
    }
    .build(&base)
    .err()
    .expect("heun on a zero-SNR model is refused")
    .to_string();
    assert!(err.contains("zero-terminal-SNR"), "{err}");
}
