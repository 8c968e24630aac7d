//! DPM-Solver multistep against diffusers 0.42.1 (`tests/golden/make_dpm_golden.py`): the dummy
//! model of make_sampler_golden.py, the same seeded noise, every intermediate sample compared.

use crate::floats;
use diffuse_core::denoiser::FnDenoiser;
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::dpm_solver::{DpmSolverConfig, DpmSolverSampler, FinalSigmasType};
use diffuse_core::samplers::{sample, Sampler};
use diffuse_core::schedule::NoiseSchedule;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/dpm_solver.json")).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap()
}

/// The dummy model of make_sampler_golden.py (t as a float).
fn dummy(x: &Tensor, t: &Tensor, learned: bool) -> Tensor {
    let tt = t.view([-1, 1, 1, 1]);
    let mean = (x * 1.7 + &tt / 250.0).sin() * 0.3 + x * 0.1;
    if !learned {
        return mean;
    }
    let extra = (x * 0.8 - &tt / 1000.0).tanh();
    Tensor::cat(&[mean, extra], 1)
}

/// Runs one golden case with the sample in `kind`; returns every intermediate sample and the sampler.
fn run_case(case: &Value, shape: &[i64], kind: Kind) -> (Vec<Vec<f64>>, DpmSolverSampler) {
    let config: DpmSolverConfig = serde_json::from_value(case["config"].clone()).unwrap();
    let learned = config.variance_type.is_some_and(|v| v.is_learned());
    let prediction = config.prediction_type;
    let mut sampler = DpmSolverSampler::new(config).unwrap();
    sampler
        .set_timesteps(case["n"].as_u64().unwrap() as usize)
        .unwrap();
    diffuse_core::tensor::manual_seed(case["seed"].as_u64().unwrap());
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu)) * sampler.init_noise_sigma();
    assert_eq!(to_vec(&x), floats(&case["x_init"]));
    let model = FnDenoiser {
        f: move |x: &Tensor, t: &Tensor| dummy(x, t, learned),
        prediction_type: prediction,
    };
    let mut samples = Vec::new();
    let _ = sample(&mut sampler, &model, x.to_kind(kind), |info| {
        samples.push(to_vec(info.sample))
    })
    .unwrap();
    (samples, sampler)
}

/// The largest |got - want| / max(1, |want|) over every step.
fn worst_gap(got: &[Vec<f64>], want: &Value) -> f64 {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            g.iter()
                .zip(floats(w))
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .collect::<Vec<_>>()
        })
        .fold(0.0, f64::max)
}

/// Every intermediate sample within 1e-5 x max(1, |x|) of diffusers'. The relative part is needed:
/// the dummy model is no denoiser, so with epsilon prediction x0 = (x - sigma eps) / alpha reaches
/// ~150 at the first step (alpha ~ 0.006) and the samples end at |x| up to ~350, where one f32 ulp
/// is 3e-5; for |x| <= 1 this is the absolute 1e-5 of the DDPM/DDIM goldens.
///
/// The golden script also ran diffusers' code in f64 and recorded how far its f32 run is from that
/// (`f32_gap`). Where the gap exceeds 5e-6 it kept the f64 samples: diffuse in f64 must match them to
/// 1e-10 (measured: <= 4e-14, so the algorithm is diffusers'), and the f32 tolerance is widened to
/// 2 f32_gap where that exceeds 1e-5. The measured causes of the gaps:
/// - Karras, exponential and uniform-lambda spacings (gaps 4e-5 to 1.6e-4): they start from
///   sigma_min = sqrt((1 - abar_0) / abar_0), and diffusers' f32 abar_0 = f32(1 - 1e-4) leaves
///   1 - abar_0 1.7e-4 high, so its sigma_min and every spaced sigma are up to 8.3e-5 high;
/// - the SDE solvers (gaps 7e-6 to 9.6e-4 with Karras): f32 rounding of the state compounds over
///   the steps as the samples grow 40-fold (diffuse in f32 is itself 1.5e-5 from exact there);
/// - dpmsolver (noise prediction) at 10 steps, euler_at_final and Karras 3M at 25 (6e-6 to 1.3e-5).
#[test]
fn dpm_solver_loops_match_diffusers_step_by_step() {
    let _rng = crate::rng_lock();
    let g = golden();
    let shape: Vec<i64> = floats(&g["shape"]).iter().map(|&v| v as i64).collect();
    for case in g["cases"].as_array().unwrap() {
        let what = format!("{} n={}", case["config"], case["n"]);
        let (samples, sampler) = run_case(case, &shape, Kind::Float);
        // diffusers stores integer timesteps (int64) even where they come from a fractional
        // sigma_to_t (Karras, exponential): they must agree exactly.
        assert_eq!(
            sampler.timesteps(),
            floats(&case["timesteps"]),
            "{what}: timesteps"
        );
        // diffusers' sigmas are f32 from an f32 abar: within 4e-6 relative, except where they derive
        // from sigma_min, 8.3e-5 high in diffusers (see above).
        let c = sampler.config();
        let from_sigma_min = c.use_karras_sigmas
            || c.use_exponential_sigmas
            || c.use_lu_lambdas
            || c.final_sigmas_type == FinalSigmasType::SigmaMin;
        let sigma_tol = if from_sigma_min { 1e-4 } else { 4e-6 };
        let want_sigmas = floats(&case["sigmas"]);
        assert_eq!(sampler.sigmas().len(), want_sigmas.len(), "{what}");
        for (got, want) in sampler.sigmas().iter().zip(&want_sigmas) {
            let rel = (got - want).abs() / want.max(1e-3);
            assert!(rel <= sigma_tol, "{what}: sigma {got} vs {want}");
        }
        if let Some(want64) = case.get("samples_f64") {
            let (samples64, _) = run_case(case, &shape, Kind::Double);
            let exact = worst_gap(&samples64, want64);
            assert!(exact <= 1e-10, "{what}: f64 run differs by {exact:e}");
        }
        let tol = f64::max(1e-5, 2.0 * case["f32_gap"].as_f64().unwrap());
        let gap = worst_gap(&samples, &case["samples"]);
        assert!(gap <= tol, "{what}: differs by {gap:e} (tolerance {tol:e})");
        println!("{what}: worst |diff| / max(1, |x|) {gap:.2e} (tolerance {tol:.1e})");
    }
}

#[test]
fn config_reads_diffusers_json_and_ignores_unknown_keys() {
    let c: DpmSolverConfig = serde_json::from_value(json!({
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": "0.42.1",
        "algorithm_type": "sde-dpmsolver++",
        "solver_type": "heun",
        "beta_schedule": "scaled_linear",
        "lambda_min_clipped": null,
        "variance_type": null,
        "use_dynamic_shifting": false,
        "flow_shift": 1.0
    }))
    .unwrap();
    assert_eq!(c.solver_order, 2);
    assert!(c.lambda_min_clipped == f64::NEG_INFINITY);
    assert!(c.algorithm_type.is_sde() && c.algorithm_type.is_data_prediction());
    // Round trip: -inf is written as null and read back.
    let back: DpmSolverConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    // UniPC/DEIS names map as diffusers maps them.
    let deis: DpmSolverConfig =
        serde_json::from_value(json!({"algorithm_type": "deis", "solver_type": "logrho"})).unwrap();
    assert_eq!(deis, DpmSolverConfig::default());
    // Unknown enum values are rejected by serde.
    for bad in [
        json!({"algorithm_type": "unipc"}),
        json!({"solver_type": "rk4"}),
        json!({"final_sigmas_type": "one"}),
    ] {
        assert!(serde_json::from_value::<DpmSolverConfig>(bad).is_err());
    }
}

#[test]
fn bad_configurations_and_timesteps_are_rejected() {
    let err = |c: DpmSolverConfig| DpmSolverSampler::new(c).err().unwrap().to_string();
    for order in [0, 4] {
        let e = err(DpmSolverConfig {
            solver_order: order,
            ..Default::default()
        });
        assert!(e.contains("solver_order must be 1, 2 or 3"), "{e}");
    }
    let e = err(serde_json::from_value(json!({
        "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3
    }))
    .unwrap());
    assert!(e.contains("no third-order update"), "{e}");
    let e = err(serde_json::from_value(json!({"algorithm_type": "dpmsolver"})).unwrap());
    assert!(e.contains("final_sigmas_type zero"), "{e}");
    let e = err(DpmSolverConfig {
        use_karras_sigmas: true,
        use_exponential_sigmas: true,
        ..Default::default()
    });
    assert!(e.contains("only one of"), "{e}");
    let e = err(DpmSolverConfig {
        use_beta_sigmas: true,
        ..Default::default()
    });
    assert!(e.contains("not supported"), "{e}");

    let mut sampler = DpmSolverSampler::new(Default::default()).unwrap();
    let x = Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu));
    let e = sampler.step(&x, 999.0, &x).err().unwrap().to_string();
    assert!(e.contains("set_timesteps"), "{e}");
    for n in [0, 1001] {
        assert!(sampler.set_timesteps(n).is_err(), "{n} steps");
    }
    sampler.set_timesteps(10).unwrap();
    let e = sampler.step(&x, 123.5, &x).err().unwrap().to_string();
    assert!(e.contains("not one of this sampler's timesteps"), "{e}");

    let mut learned = DpmSolverSampler::new(
        serde_json::from_value(json!({"variance_type": "learned_range"})).unwrap(),
    )
    .unwrap();
    learned.set_timesteps(10).unwrap();
    let e = learned.step(&x, 999.0, &x).err().unwrap().to_string();
    assert!(e.contains("needs a model with 6 output channels"), "{e}");
}

#[test]
fn set_timesteps_resets_the_history() {
    let _rng = crate::rng_lock();
    let mut sampler = DpmSolverSampler::new(Default::default()).unwrap();
    let model = FnDenoiser {
        f: |x: &Tensor, t: &Tensor| dummy(x, t, false),
        prediction_type: PredictionType::Epsilon,
    };
    let x = Tensor::randn([1, 2, 3, 3], (Kind::Float, Device::Cpu));
    sampler.set_timesteps(12).unwrap();
    let first = sample(&mut sampler, &model, x.copy(), |_| {}).unwrap();
    // Half a run, then a fresh set_timesteps: the second full run must not see the old outputs.
    sampler.set_timesteps(12).unwrap();
    let ts = sampler.timesteps().to_vec();
    let mut y = x.copy();
    for &t in &ts[..5] {
        let out = dummy(&y, &Tensor::from_slice(&[t as f32]), false);
        y = sampler.step(&out, t, &y).unwrap().prev_sample;
    }
    sampler.set_timesteps(12).unwrap();
    let second = sample(&mut sampler, &model, x, |_| {}).unwrap();
    assert_eq!(to_vec(&first), to_vec(&second));
}

#[test]
fn an_exact_denoiser_recovers_a_point_mass() {
    let _rng = crate::rng_lock();
    // Data is the constant 0.5: the optimal epsilon-model is eps = (x_t - alpha 0.5) / sigma with the
    // alpha, sigma of the timestep the model is given, and 2M from any noise must land on 0.5.
    let mut sampler = DpmSolverSampler::new(Default::default()).unwrap();
    sampler.set_timesteps(10).unwrap();
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let model = FnDenoiser {
        f: move |x: &Tensor, t: &Tensor| {
            let abar = schedule.alpha_bar(t.double_value(&[0]));
            (x - 0.5 * abar.sqrt()) / (1.0 - abar).sqrt()
        },
        prediction_type: PredictionType::Epsilon,
    };
    let x = Tensor::randn([4, 1, 3, 3], (Kind::Float, Device::Cpu));
    // With x0 exact the solver is exact: every step keeps x = alpha 0.5 + sigma eps with the
    // starting eps (the final step alone would land on 0.5 from any x, its sigma being 0).
    let levels: Vec<(f64, f64)> = (0..=10).map(|k| sampler.level(k).unwrap()).collect();
    let (a, s) = levels[0];
    let eps = (&x - 0.5 * a) / s;
    let mut drift = 0.0f64;
    let out = sample(&mut sampler, &model, x, |info| {
        let (a, s) = levels[info.index + 1];
        let expected = &eps * s + 0.5 * a;
        drift = drift.max((info.sample - expected).abs().max().double_value(&[]));
    })
    .unwrap();
    assert!(drift < 1e-4, "{drift}");
    let err = (out - 0.5).abs().max().double_value(&[]);
    assert!(err < 1e-3, "{err}");
}

#[test]
fn level_and_start_at_follow_the_sigmas() {
    let _rng = crate::rng_lock();
    let mut sampler = DpmSolverSampler::new(Default::default()).unwrap();
    assert_eq!(sampler.level(0), None);
    sampler.set_timesteps(10).unwrap();
    let (a, s) = sampler.level(0).unwrap();
    let sigma = sampler.sigmas()[0];
    assert!((s / a - sigma).abs() < 1e-9 * sigma && (a * a + s * s - 1.0).abs() < 1e-12);
    assert_eq!(sampler.level(10), Some((1.0, 0.0)));
    assert!(sampler.start_at(11).is_err());
    // SDEdit with the exact point-mass denoiser: data noised to the level after 4 steps, then the
    // last 6 steps (first order first, the history being empty) still land on 0.5.
    let schedule = NoiseSchedule::new(&Default::default()).unwrap();
    let model = FnDenoiser {
        f: move |x: &Tensor, t: &Tensor| {
            let abar = schedule.alpha_bar(t.double_value(&[0]));
            (x - 0.5 * abar.sqrt()) / (1.0 - abar).sqrt()
        },
        prediction_type: PredictionType::Epsilon,
    };
    let (a, s) = sampler.level(4).unwrap();
    let x = Tensor::randn([2, 1, 3, 3], (Kind::Float, Device::Cpu)) * s + 0.5 * a;
    let out = diffuse_core::samplers::sample_from(&mut sampler, &model, x, 4, |_| {}).unwrap();
    let err = (out - 0.5).abs().max().double_value(&[]);
    assert!(err < 1e-3, "{err}");
}

#[test]
fn repeated_timesteps_are_stepped_in_order() {
    let _rng = crate::rng_lock();
    // Karras sigmas on the cosine schedule truncate to timestep 998 three times (diffusers: four, its
    // sigma_max landing an ulp below t = 999; its first step then starts at the second copy and it
    // runs off the end of its sigmas). Repeats are stepped through in order.
    let config: DpmSolverConfig = serde_json::from_value(json!({
        "beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": true
    }))
    .unwrap();
    let mut sampler = DpmSolverSampler::new(config).unwrap();
    sampler.set_timesteps(10).unwrap();
    assert_eq!(sampler.timesteps()[..4], [999.0, 998.0, 998.0, 998.0]);
    assert!(sampler.sigmas().windows(2).all(|w| w[1] < w[0]));
    let model = FnDenoiser {
        f: |x: &Tensor, t: &Tensor| dummy(x, t, false),
        prediction_type: PredictionType::Epsilon,
    };
    let x = Tensor::randn([1, 2, 3, 3], (Kind::Float, Device::Cpu));
    let mut seen = Vec::new();
    let out = sample(&mut sampler, &model, x, |info| seen.push(info.t)).unwrap();
    assert_eq!(seen, sampler.timesteps());
    assert!(bool::try_from(out.isfinite().all()).unwrap());
}
