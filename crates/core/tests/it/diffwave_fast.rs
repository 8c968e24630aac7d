//! DiffWave's fast sampler: the aligned timesteps against the paper's algorithm (values from an
//! independent numpy transcription of Kong et al. 2021, appendix B, run on the vocoder schedule
//! T = 50, betas 1e-4..0.05, and the unconditional one T = 200, betas 1e-4..0.02), one step against
//! its closed form, the noise levels it reports, and the errors and the choice by name.

use crate::rng_lock;
use diffuse_core::prediction::PredictionType;
use diffuse_core::sampler_choice::SamplerChoice;
use diffuse_core::samplers::ddpm::DdpmConfig;
use diffuse_core::samplers::diffwave::{DiffWaveFastSampler, DIFFWAVE_FAST_BETAS};
use diffuse_core::samplers::Sampler;
use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
use diffuse_core::scheduler_config::SchedulerConfig;
use tch::{Device, Kind, Tensor};

fn schedule(t: usize, beta_end: f64) -> NoiseSchedule {
    NoiseSchedule::new(&BetaScheduleConfig {
        num_train_timesteps: t,
        beta_start: 1e-4,
        beta_end,
        ..BetaScheduleConfig::default()
    })
    .unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
    }
}

#[test]
fn aligned_timesteps_match_the_papers_algorithm() {
    // Least noisy first in the paper; the sampler lists them noisiest first.
    let vocoder = [
        0.0,
        0.8941341034416549,
        4.086654023014474,
        10.451816523911088,
        22.992493307367457,
        42.9186430599322,
    ];
    let unconditional = [
        0.0,
        3.2006804743082524,
        13.430277370282612,
        33.82028843293526,
        73.98246096947005,
        138.0838648287921,
    ];
    for (s, want) in [
        (schedule(50, 0.05), vocoder),
        (schedule(200, 0.02), unconditional),
    ] {
        let sampler =
            DiffWaveFastSampler::new(&s, &DIFFWAVE_FAST_BETAS, PredictionType::Epsilon).unwrap();
        let mut got = sampler.timesteps().to_vec();
        got.reverse();
        assert_close(&got, &want, 1e-9);
    }
}

#[test]
fn one_step_is_the_papers_update_and_levels_follow_the_inference_schedule() {
    let _guard = rng_lock();
    let s = schedule(200, 0.02);
    let mut sampler =
        DiffWaveFastSampler::new(&s, &DIFFWAVE_FAST_BETAS, PredictionType::Epsilon).unwrap();
    let abar: Vec<f64> = DIFFWAVE_FAST_BETAS
        .iter()
        .scan(1.0, |p, b| {
            *p *= 1.0 - b;
            Some(*p)
        })
        .collect();
    // Level after `done` steps: the inference schedule read from its noisy end; clean at the end.
    for done in 0..6 {
        let (a, sg) = sampler.level(done).unwrap();
        let want = abar[5 - done];
        assert!((a * a - want).abs() < 1e-12 && (sg * sg - (1.0 - want)).abs() < 1e-12);
    }
    assert_eq!(sampler.level(6), Some((1.0, 0.0)));

    // The last step (s = 0) adds no noise: x_{-1} = (x - beta_0 / sqrt(1 - abar_0) eps) / sqrt(alpha_0).
    let x = Tensor::randn([2, 1, 8], (Kind::Double, Device::Cpu));
    let eps = Tensor::randn([2, 1, 8], (Kind::Double, Device::Cpu));
    let t_last = *sampler.timesteps().last().unwrap();
    let out = sampler.step(&eps, t_last, &x).unwrap();
    let b = DIFFWAVE_FAST_BETAS[0];
    let want = (&x - &eps * (b / (1.0 - abar[0]).sqrt())) / (1.0 - b).sqrt();
    let diff = (&out.prev_sample - want).abs().max().double_value(&[]);
    assert!(diff < 1e-12, "{diff}");

    // A noisy step adds noise of variance (1 - abar_{s-1}) / (1 - abar_s) beta_s.
    let t_first = sampler.timesteps()[0];
    let zeros = Tensor::zeros([4000, 1, 64], (Kind::Double, Device::Cpu));
    tch::manual_seed(0);
    let out = sampler.step(&zeros, t_first, &zeros).unwrap();
    let var = out.prev_sample.var(true).double_value(&[]);
    let want = (1.0 - abar[4]) / (1.0 - abar[5]) * DIFFWAVE_FAST_BETAS[5];
    assert!((var / want - 1.0).abs() < 0.01, "{var} vs {want}");
}

#[test]
fn schedules_that_cannot_align_and_other_step_counts_are_refused() {
    // 20 steps of betas up to 0.02 never get as noisy as the fast schedule's last step.
    let err = DiffWaveFastSampler::new(
        &schedule(20, 0.02),
        &DIFFWAVE_FAST_BETAS,
        PredictionType::Epsilon,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("outside the training schedule's range"),
        "{err}"
    );
    let err = DiffWaveFastSampler::new(&schedule(200, 0.02), &[0.1, 1.0], PredictionType::Epsilon)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("betas in (0, 1)"), "{err}");
    let mut sampler = DiffWaveFastSampler::new(
        &schedule(200, 0.02),
        &DIFFWAVE_FAST_BETAS,
        PredictionType::Epsilon,
    )
    .unwrap();
    assert!(sampler.set_timesteps(6).is_ok());
    let err = sampler.set_timesteps(7).unwrap_err().to_string();
    assert!(err.contains("takes its 6 steps"), "{err}");
}

#[test]
fn chosen_by_name_on_a_ddpm_schedule() {
    let base = SchedulerConfig::Ddpm(DdpmConfig {
        schedule: BetaScheduleConfig {
            num_train_timesteps: 200,
            ..BetaScheduleConfig::default()
        },
        ..DdpmConfig::default()
    });
    let choice = SamplerChoice {
        name: Some("diffwave-fast".into()),
        ..SamplerChoice::default()
    };
    let sampler = choice.build(&base).unwrap();
    assert_eq!(sampler.timesteps().len(), 6);
    assert!((sampler.timesteps()[0] - 138.0838648287921).abs() < 1e-9);
    let err = SamplerChoice {
        steps: Some(50),
        ..choice.clone()
    }
    .build(&base)
    .err()
    .unwrap()
    .to_string();
    assert!(err.starts_with("--steps:"), "{err}");
    let err = SamplerChoice {
        eta: Some(0.5),
        ..choice
    }
    .build(&base)
    .err()
    .unwrap()
    .to_string();
    assert!(err.starts_with("--eta:"), "{err}");
    // DDPM's default is every training step of a short schedule.
    let ddpm = SamplerChoice::default().build(&base).unwrap();
    assert_eq!(ddpm.timesteps().len(), 200);
}
