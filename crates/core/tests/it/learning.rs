//! Learning tests: a small MLP trained with each objective on a 2-D mixture of 8 Gaussians (and on
//! a swiss roll), then sampled with every sampler in 50 steps or fewer. Every mode must hold its
//! true mass (1/8) within 25% (relative).

use diffuse_core::denoiser::Denoiser;
use diffuse_core::losses::{LearnedVariance, ObjectiveConfig, TimestepSampling, Weighting};
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddim::{DdimConfig, DdimSampler};
use diffuse_core::samplers::ddpm::{DdpmConfig, DdpmSampler, VarianceType};
use diffuse_core::samplers::dpm_solver::{DpmSolverConfig, DpmSolverSampler};
use diffuse_core::samplers::euler::{EulerConfig, EulerSampler};
use diffuse_core::samplers::euler_ancestral::{EulerAncestralConfig, EulerAncestralSampler};
use diffuse_core::samplers::heun::{HeunConfig, HeunSampler};
use diffuse_core::samplers::{sample, Sampler};
use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
use diffuse_core::toy::{train_toy, MlpDenoiser, ToyData, MODES};
use tch::{Device, Kind, Tensor};

fn schedule_config() -> BetaScheduleConfig {
    // The linear schedule: its sigma_max (157) suits the sigma-space samplers, where the cosine
    // schedule's (2e4) spends most Karras steps at noise levels where nothing happens.
    BetaScheduleConfig::default()
}

/// The mean channels of a learned-variance model, for samplers that do not use the variance.
struct MeanOnly<'a>(&'a MlpDenoiser);

impl Denoiser for MeanOnly<'_> {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self.0.forward(x, t).narrow(1, 0, 2)
    }
    fn prediction_type(&self) -> PredictionType {
        self.0.prediction_type()
    }
}

fn samplers(
    prediction: PredictionType,
    variance: VarianceType,
) -> Vec<(&'static str, Box<dyn Sampler>, usize)> {
    let schedule = schedule_config();
    vec![
        (
            "ddpm",
            Box::new(
                DdpmSampler::new(DdpmConfig {
                    schedule: schedule.clone(),
                    clip_sample: false,
                    prediction_type: prediction,
                    variance_type: variance,
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "ddim",
            Box::new(
                DdimSampler::new(DdimConfig {
                    schedule: schedule.clone(),
                    clip_sample: false,
                    prediction_type: prediction,
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "euler",
            Box::new(
                EulerSampler::new(EulerConfig {
                    schedule: schedule.clone(),
                    prediction_type: prediction,
                    use_karras_sigmas: true,
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "euler_ancestral",
            Box::new(
                EulerAncestralSampler::new(EulerAncestralConfig {
                    schedule: schedule.clone(),
                    prediction_type: if prediction == PredictionType::Sample {
                        PredictionType::Epsilon
                    } else {
                        prediction
                    },
                    ..Default::default()
                })
                .unwrap(),
            ),
            50,
        ),
        (
            "heun",
            Box::new(
                HeunSampler::new(HeunConfig {
                    beta_start: schedule.beta_start,
                    beta_end: schedule.beta_end,
                    use_karras_sigmas: true,
                    prediction_type: prediction,
                    ..Default::default()
                })
                .unwrap(),
            ),
            25,
        ),
        (
            "dpm++2m",
            Box::new(
                DpmSolverSampler::new(DpmSolverConfig {
                    schedule: schedule.clone(),
                    prediction_type: prediction,
                    ..Default::default()
                })
                .unwrap(),
            ),
            25,
        ),
    ]
}

fn check(name: &str, objective: &ObjectiveConfig, data: ToyData) {
    tch::manual_seed(1);
    let schedule = NoiseSchedule::new(&schedule_config()).unwrap();
    let (_vs, model) = train_toy(data, schedule, objective.clone(), 3000).unwrap();
    let learned = objective.learned_variance.is_some();
    let variance = objective
        .learned_variance
        .map_or(VarianceType::FixedSmall, |lv| lv.variance_type);
    for (sampler_name, mut sampler, n) in samplers(objective.prediction_type, variance) {
        // Euler ancestral cannot run an x0 model (as in diffusers).
        if sampler_name == "euler_ancestral" && objective.prediction_type == PredictionType::Sample
        {
            continue;
        }
        sampler.set_timesteps(n).unwrap();
        tch::manual_seed(2);
        let x = Tensor::randn([4000, 2], (Kind::Float, Device::Cpu)) * sampler.init_noise_sigma();
        let mean_only = MeanOnly(&model);
        // Only DDPM uses a learned variance; the others sample from the mean channels.
        let denoiser: &dyn Denoiser = if learned && sampler_name != "ddpm" {
            &mean_only
        } else {
            &model
        };
        let out = sample(sampler.as_mut(), denoiser, x, |_| {}).unwrap();
        let (masses, close) = data.mode_masses(&out);
        let what = format!("{name} / {sampler_name} ({n} steps)");
        eprintln!("{what}: masses {masses:.3?}, close to the data {close:.3}");
        for (m, mass) in masses.iter().enumerate() {
            assert!(
                (mass * MODES as f64 - 1.0).abs() <= 0.25,
                "{what}: mode {m} holds {mass:.3}, not 1/8: {masses:.3?}"
            );
        }
    }
}

#[test]
fn epsilon_l_simple_learns_the_mixture_for_every_sampler() {
    let _rng = crate::rng_lock();
    check(
        "epsilon/uniform",
        &ObjectiveConfig::default(),
        ToyData::EightGaussians,
    );
}

#[test]
fn v_prediction_with_min_snr_learns_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        prediction_type: PredictionType::VPrediction,
        weighting: Weighting::MinSnr { gamma: 5.0 },
        ..Default::default()
    };
    check("v/min-snr-5", &config, ToyData::EightGaussians);
}

#[test]
fn x0_prediction_with_soft_min_snr_learns_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        prediction_type: PredictionType::Sample,
        weighting: Weighting::SoftMinSnr { gamma: 5.0 },
        ..Default::default()
    };
    check("x0/soft-min-snr-5", &config, ToyData::EightGaussians);
}

#[test]
fn importance_sampled_timesteps_learn_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        timestep_sampling: TimestepSampling::LossSecondMoment,
        ..Default::default()
    };
    check("epsilon/importance", &config, ToyData::EightGaussians);
}

#[test]
fn hybrid_loss_with_learned_variance_learns_the_mixture() {
    let _rng = crate::rng_lock();
    let config = ObjectiveConfig {
        learned_variance: Some(LearnedVariance::default()),
        ..Default::default()
    };
    check(
        "epsilon/hybrid learned_range",
        &config,
        ToyData::EightGaussians,
    );
}

#[test]
fn epsilon_l_simple_learns_the_swiss_roll_for_every_sampler() {
    let _rng = crate::rng_lock();
    check(
        "swiss roll epsilon/uniform",
        &ObjectiveConfig::default(),
        ToyData::SwissRoll,
    );
}
