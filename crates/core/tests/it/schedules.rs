//! Schedules, timestep spacings and sigma spacings against diffusers 0.42.1. diffusers computes in
//! f32 and diffuse in f64, so values agree to f32 precision, not bit for bit. Tolerances are
//! |diffuse - diffusers| <= atol + rtol |diffusers|, sized from f32 rounding (2^-24 ~ 6e-8 per
//! operation): where diffusers subtracts nearly equal f32 numbers (1 - alpha_bar near t = 0,
//! 1 - ratio of cumulative alphas when rescaling to zero SNR) its own error is ~1e-7 absolute,
//! which the atol covers; timesteps are integers and match exactly.

use crate::floats;
use diffuse_core::schedule::{
    exponential_sigmas, karras_sigmas, linspace, spaced_timesteps, BetaScheduleConfig,
    NoiseSchedule, TimestepSpacing,
};
use serde_json::Value;
use std::sync::OnceLock;

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| serde_json::from_str(include_str!("../golden/schedules.json")).unwrap())
}

/// Largest |a - b| / (atol + rtol |b|): at most 1 when every value is within tolerance.
fn worst(a: &[f64], b: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (atol + rtol * y.abs()))
        .fold(0.0, f64::max)
}

#[test]
fn golden_file_names_its_reference() {
    assert_eq!(golden()["diffusers"], "0.42.1");
}

#[test]
fn betas_and_alphas_cumprod_match_every_schedule() {
    for case in golden()["betas"].as_array().unwrap() {
        let config: BetaScheduleConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let schedule = NoiseSchedule::new(&config).unwrap();
        let what = case["config"].to_string();
        // Rescaling to zero SNR cancels nearly equal f32 numbers in diffusers (up to ~1e-5 off);
        // the same rescaling run by diffusers in f64 must agree with ours to f64 precision.
        let rescaled = case.get("betas_f64").is_some();
        let atol = if rescaled { 2e-5 } else { 1e-6 };
        let beta_err = worst(schedule.betas(), &floats(&case["betas"]), atol, 2e-6);
        assert!(
            beta_err <= 1.0,
            "{what}: betas off by {beta_err} x tolerance"
        );
        if let Some(exact) = case.get("betas_f64") {
            let err = worst(schedule.betas(), &floats(exact), 1e-14, 1e-10);
            assert!(err <= 1.0, "{what}: f64 betas off by {err} x tolerance");
        }
        let abar_err = worst(
            schedule.alphas_cumprod(),
            &floats(&case["alphas_cumprod"]),
            1e-6,
            2e-5,
        );
        assert!(
            abar_err <= 1.0,
            "{what}: alphas_cumprod off by {abar_err} x tolerance"
        );
    }
}

#[test]
fn reference_facts_hold() {
    // ../shared/REFERENCE.md: linear abar[999] = 4.03582977e-05, scaled_linear = 4.66009851e-03,
    // squaredcos_cap_v2 = 2.42876691e-09.
    let last = |cfg: BetaScheduleConfig| {
        *NoiseSchedule::new(&cfg)
            .unwrap()
            .alphas_cumprod()
            .last()
            .unwrap()
    };
    let linear = last(BetaScheduleConfig::default());
    assert!((linear / 4.03582977e-05 - 1.0).abs() < 1e-4, "{linear}");
    let scaled = last(BetaScheduleConfig {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: diffuse_core::schedule::BetaSchedule::ScaledLinear,
        ..Default::default()
    });
    assert!((scaled / 4.66009851e-03 - 1.0).abs() < 1e-4, "{scaled}");
    let cosine = last(BetaScheduleConfig {
        beta_schedule: diffuse_core::schedule::BetaSchedule::SquaredcosCapV2,
        ..Default::default()
    });
    assert!((cosine / 2.42876691e-09 - 1.0).abs() < 1e-3, "{cosine}");
    let zero_snr = last(BetaScheduleConfig {
        rescale_betas_zero_snr: true,
        ..Default::default()
    });
    assert_eq!(zero_snr, 0.0);
}

/// Training noises every integer timestep of a zero-terminal-SNR schedule with finite
/// coefficients (the log-sigma table ends at infinity, which interpolation must not touch at
/// integer t), matching alpha_bar exactly, and the last one is pure noise.
#[test]
fn zero_terminal_snr_noises_every_timestep_finitely() {
    let config = BetaScheduleConfig {
        num_train_timesteps: 200,
        rescale_betas_zero_snr: true,
        ..Default::default()
    };
    let schedule = NoiseSchedule::new(&config).unwrap();
    let t: Vec<f64> = (0..200).map(f64::from).collect();
    let (alpha, sigma) = schedule.alpha_sigma(&t, tch::Device::Cpu, 1);
    let alpha = Vec::<f64>::try_from(alpha).unwrap();
    let sigma = Vec::<f64>::try_from(sigma).unwrap();
    for (i, (a, s)) in alpha.iter().zip(&sigma).enumerate() {
        assert!(
            a.is_finite() && s.is_finite(),
            "t = {i}: alpha {a}, sigma {s}"
        );
        let want = schedule.alphas_cumprod()[i];
        assert!((a * a - want).abs() < 1e-9, "t = {i}: {} vs {want}", a * a);
    }
    assert_eq!((alpha[199], sigma[199]), (0.0, 1.0));
}

fn spacing(v: &Value) -> TimestepSpacing {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn timesteps_match_for_every_spacing_and_step_count() {
    for case in golden()["timesteps"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let offset = case["steps_offset"].as_u64().unwrap() as usize;
        let got = spaced_timesteps(1000, n, spacing(&case["spacing"]), offset).unwrap();
        assert_eq!(
            got,
            floats(&case["timesteps"]),
            "{} {} n={n}",
            case["scheduler"],
            case["spacing"]
        );
    }
}

#[test]
fn more_inference_steps_than_training_steps_is_refused() {
    let err = spaced_timesteps(1000, 1001, TimestepSpacing::Leading, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1001 inference steps is more than the 1000 timesteps"),
        "{err}"
    );
    assert!(spaced_timesteps(1000, 0, TimestepSpacing::Leading, 0).is_err());
}

/// Euler's timesteps: like DDPM's, except linspace is not rounded.
fn euler_timesteps(n: usize, spacing: TimestepSpacing, offset: usize) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => linspace(0.0, 999.0, n).into_iter().rev().collect(),
        other => spaced_timesteps(1000, n, other, offset).unwrap(),
    }
}

#[test]
fn sigma_spacings_match_euler_discrete_scheduler() {
    let schedule = NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap();
    for case in golden()["sigmas"].as_array().unwrap() {
        let n = case["n"].as_u64().unwrap() as usize;
        let sp = spacing(&case["spacing"]);
        let offset = case["steps_offset"].as_u64().unwrap() as usize;
        let timesteps = euler_timesteps(n, sp, offset);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| schedule.sigma_at(t)).collect();
        let mut ts = timesteps.clone();
        let (max, min) = (sigmas[0], sigmas[n - 1]);
        match case["kind"].as_str().unwrap() {
            "karras" => sigmas = karras_sigmas(min, max, n, 7.0),
            "exponential" => sigmas = exponential_sigmas(min, max, n),
            _ => {}
        }
        if case["kind"] != "default" {
            ts = sigmas.iter().map(|&s| schedule.sigma_to_t(s)).collect();
        }
        sigmas.push(0.0);
        let what = format!("{} {:?} n={n}", case["kind"], sp);
        // diffusers' smallest sigma, sqrt(1 - alpha_bar_0) / ..., comes from 1 - 0.9999 in f32 (~3e-4
        // relative error); Karras and exponential spacing carry that endpoint into every sigma.
        let rtol = if case["kind"] == "default" {
            2e-5
        } else {
            4e-4
        };
        let err = worst(&sigmas, &floats(&case["sigmas"]), 1e-5, rtol);
        assert!(err <= 1.0, "{what}: sigmas off by {err} x tolerance");
        let t_err = ts
            .iter()
            .zip(floats(&case["timesteps"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // t is steep in log sigma mid-schedule (about 100 timesteps per unit of log sigma), so the
        // f32 rounding of diffusers' sigmas (~5e-5 relative) moves its timesteps by up to ~0.005.
        assert!(
            t_err < 1e-2,
            "{what}: timesteps differ by {t_err}: {ts:?} vs {:?}",
            floats(&case["timesteps"])
        );
    }
}

#[test]
fn continuous_view_agrees_with_the_discrete_schedule() {
    let schedule = NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap();
    for t in [0usize, 1, 10, 500, 999] {
        let abar = schedule.alphas_cumprod()[t];
        assert!((schedule.alpha_bar(t as f64) / abar - 1.0).abs() < 1e-12);
        assert!((schedule.log_snr(t as f64) - (abar / (1.0 - abar)).ln()).abs() < 1e-9);
        // sigma_to_t inverts the VE sigma exactly at the grid points.
        assert!((schedule.sigma_to_t(schedule.sigmas()[t]) - t as f64).abs() < 1e-9);
    }
    // Between grid points the log-SNR is monotone (noise grows with t).
    let mut previous = f64::INFINITY;
    for k in 0..2000 {
        let lambda = schedule.log_snr(k as f64 * 0.4995);
        assert!(lambda < previous);
        previous = lambda;
    }
}

#[test]
fn forward_process_has_the_scheduled_moments() {
    let _rng = crate::rng_lock();
    let schedule = NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap();
    let x0 = tch::Tensor::full([4096], 2.0, (tch::Kind::Float, tch::Device::Cpu));
    tch::manual_seed(0);
    let noise = tch::Tensor::randn([4096], (tch::Kind::Float, tch::Device::Cpu));
    let t = 300.0;
    let xt = schedule.add_noise(
        &x0.reshape([4096, 1]),
        &noise.reshape([4096, 1]),
        &vec![t; 4096],
    );
    let abar = schedule.alphas_cumprod()[300];
    let mean = xt.mean(tch::Kind::Double).double_value(&[]);
    let std = xt.std(true).double_value(&[]);
    // 4096 samples: standard error of the mean ~ sigma/64.
    assert!(
        (mean - 2.0 * abar.sqrt()).abs() < 4.0 * (1.0 - abar).sqrt() / 64.0,
        "{mean}"
    );
    assert!((std / (1.0 - abar).sqrt() - 1.0).abs() < 0.05, "{std}");
}

#[test]
fn bad_schedules_are_refused() {
    let bad = BetaScheduleConfig {
        trained_betas: Some(vec![0.1, 0.2]),
        num_train_timesteps: 3,
        ..Default::default()
    };
    assert!(NoiseSchedule::new(&bad)
        .unwrap_err()
        .to_string()
        .contains("trained_betas has 2 values"));
    assert!(NoiseSchedule::from_betas(vec![0.1, 0.0]).is_err());
    assert!(NoiseSchedule::from_betas(vec![0.1, 1.5]).is_err());
}
