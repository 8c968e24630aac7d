//! Sampling loops against diffusers 0.42.1 (`tests/golden/make_sampler_golden.py`): the same dummy
//! model, the same seeded noise, every intermediate sample within 1e-5 (f32; diffuse computes the
//! coefficients in f64, diffusers in f32).

use crate::floats;
use diffuse_core::denoiser::{Denoiser, FnDenoiser};
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddim::{DdimConfig, DdimSampler};
use diffuse_core::samplers::ddpm::{DdpmConfig, DdpmSampler, VarianceType};
use diffuse_core::samplers::{sample, Sampler};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/samplers.json")).unwrap()
}

/// The dummy model of make_sampler_golden.py.
fn dummy(x: &Tensor, t: &Tensor, learned: bool) -> Tensor {
    let tt = t.view([-1, 1, 1, 1]);
    let mean = (x * 1.7 + &tt / 250.0).sin() * 0.3 + x * 0.1;
    if !learned {
        return mean;
    }
    let extra = (x * 0.8 - &tt / 1000.0).tanh();
    Tensor::cat(&[mean, extra], 1)
}

fn run_case(case: &Value, shape: &[i64]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let config = case["config"].clone();
    let n = case["n"].as_u64().unwrap() as usize;
    let kwargs = &case["step_kwargs"];
    let (mut sampler, prediction, learned): (Box<dyn Sampler>, PredictionType, bool) =
        match case["scheduler"].as_str().unwrap() {
            "DDPMScheduler" => {
                let c: DdpmConfig = serde_json::from_value(config).unwrap();
                let (p, l) = (c.prediction_type, c.variance_type.is_learned());
                (Box::new(DdpmSampler::new(c).unwrap()), p, l)
            }
            _ => {
                let c: DdimConfig = serde_json::from_value(config).unwrap();
                let p = c.prediction_type;
                let mut s = DdimSampler::new(c).unwrap();
                s.eta = kwargs.get("eta").and_then(Value::as_f64).unwrap_or(0.0);
                s.use_clipped_model_output = kwargs
                    .get("use_clipped_model_output")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                (Box::new(s), p, false)
            }
        };
    sampler.set_timesteps(n).unwrap();
    let timesteps = sampler.timesteps().to_vec();
    diffuse_core::tensor::manual_seed(case["seed"].as_u64().unwrap());
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    assert_eq!(
        Vec::<f64>::try_from(x.flatten(0, -1).to_kind(Kind::Double)).unwrap(),
        floats(&case["x_init"])
    );
    let model = FnDenoiser {
        f: move |x: &Tensor, t: &Tensor| dummy(x, t, learned),
        prediction_type: prediction,
    };
    let mut samples = Vec::new();
    let _ = sample(sampler.as_mut(), &model, x, |info| {
        samples
            .push(Vec::<f64>::try_from(info.sample.flatten(0, -1).to_kind(Kind::Double)).unwrap());
    })
    .unwrap();
    (samples, timesteps)
}

#[test]
fn ddpm_and_ddim_loops_match_diffusers_step_by_step() {
    let _rng = crate::rng_lock();
    let g = golden();
    let shape: Vec<i64> = g["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for case in g["cases"].as_array().unwrap() {
        let what = format!(
            "{} {} n={} {}",
            case["scheduler"], case["config"], case["n"], case["step_kwargs"]
        );
        let (samples, timesteps) = run_case(case, &shape);
        assert_eq!(timesteps, floats(&case["timesteps"]), "{what}: timesteps");
        let want = case["samples"].as_array().unwrap();
        assert_eq!(samples.len(), want.len());
        for (step, (got, want)) in samples.iter().zip(want).enumerate() {
            let diff = got
                .iter()
                .zip(floats(want))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff <= 1e-5, "{what}: step {step} differs by {diff:e}");
        }
    }
}

#[test]
fn learned_variance_needs_twice_the_channels() {
    let config = DdpmConfig {
        variance_type: VarianceType::LearnedRange,
        ..Default::default()
    };
    let mut sampler = DdpmSampler::new(config).unwrap();
    sampler.set_timesteps(10).unwrap();
    let x = Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu));
    let t = sampler.timesteps()[0];
    let err = sampler.step(&x, t, &x).err().unwrap().to_string();
    assert!(
        err.contains("needs a model with 6 output channels"),
        "{err}"
    );
    let unknown = sampler.step(&x, 123.5, &x).err().unwrap().to_string();
    assert!(
        unknown.contains("not one of this sampler's timesteps"),
        "{unknown}"
    );
}

#[test]
fn an_exact_denoiser_recovers_a_point_mass() {
    let _rng = crate::rng_lock();
    // Data is the constant 0.5: the optimal epsilon-model is eps = (x_t - alpha 0.5) / sigma, and
    // deterministic DDIM from any noise must land on 0.5.
    let mut sampler = DdimSampler::new(DdimConfig {
        clip_sample: false,
        ..Default::default()
    })
    .unwrap();
    sampler.set_timesteps(20).unwrap();
    let schedule = diffuse_core::schedule::NoiseSchedule::new(&Default::default()).unwrap();
    let model = FnDenoiser {
        f: move |x: &Tensor, t: &Tensor| {
            let abar = schedule.alpha_bar(t.double_value(&[0]));
            (x - 0.5 * abar.sqrt()) / (1.0 - abar).sqrt()
        },
        prediction_type: PredictionType::Epsilon,
    };
    let _ = model.prediction_type();
    let x = Tensor::randn([4, 1, 3, 3], (Kind::Float, Device::Cpu));
    let out = sample(&mut sampler, &model, x, |_| {}).unwrap();
    let err = (out - 0.5).abs().max().double_value(&[]);
    assert!(err < 1e-4, "{err}");
}
