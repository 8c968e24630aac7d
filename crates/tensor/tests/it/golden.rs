//! Numbers recorded from torch 2.11.0 and diffusers 0.42.1 by `tests/golden/make_golden.py`.

use diffuse_tensor::ema::{Ema, EmaConfig};
use diffuse_tensor::grad::clip_grad_norm;
use diffuse_tensor::lr::{LrSchedule, LrScheduleKind};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use serde_json::Value;
use std::sync::OnceLock;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let text = include_str!("../golden/golden.json");
        serde_json::from_str(text).expect("golden.json parses")
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn shape(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn f32_tensor(v: &Value, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&floats(v))
        .to_kind(Kind::Float)
        .reshape(shape)
}

#[test]
fn golden_file_names_the_reference_versions() {
    assert!(golden()["torch"].as_str().unwrap().starts_with("2.11.0"));
    assert_eq!(golden()["diffusers"], "0.42.1");
}

#[test]
fn seeded_draws_equal_pytorch_number_for_number() {
    let _rng = crate::rng_lock();
    let cases = golden()["seeds"].as_array().unwrap();
    // Seeds run in sequence as the recorder ran them (the second draw continues the stream).
    diffuse_tensor::manual_seed(0);
    let a = Tensor::randn([8], (Kind::Float, Device::Cpu));
    diffuse_tensor::manual_seed(42);
    let b = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
    let c = Tensor::rand([4], (Kind::Float, Device::Cpu));
    diffuse_tensor::manual_seed((1u64 << 40) + 7);
    let d = Tensor::randn([5], (Kind::Double, Device::Cpu));
    for (case, got) in cases.iter().zip([a, b, c, d]) {
        assert_eq!(got.size(), shape(&case["shape"]));
        // Exact equality: same generator, same algorithm.
        assert_eq!(values(&got), floats(&case["values"]), "{}", case["op"]);
    }
}

#[test]
fn adamw_matches_torch_optim_adamw_bit_for_bit() {
    let g = &golden()["adamw"];
    let shape = shape(&g["shape"]);
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root().var_copy("p", &f32_tensor(&g["p0"], &shape));
    let config = AdamWConfig {
        lr: 1e-2,
        beta1: g["beta1"].as_f64().unwrap(),
        beta2: g["beta2"].as_f64().unwrap(),
        eps: g["eps"].as_f64().unwrap(),
        weight_decay: g["weight_decay"].as_f64().unwrap(),
    };
    let mut opt = AdamW::new(&vs, config).unwrap();
    let grads = g["grads"].as_array().unwrap();
    let lrs = floats(&g["lrs"]);
    let trajectory = g["trajectory"].as_array().unwrap();
    for ((grad, lr), expected) in grads.iter().zip(lrs).zip(trajectory) {
        opt.zero_grad();
        // d/dp sum(p * g) = g exactly.
        (&p * f32_tensor(grad, &shape)).sum(Kind::Float).backward();
        opt.step(lr);
        assert_eq!(values(&p), floats(expected));
    }
    assert_eq!(opt.step_count(), 6);
}

#[test]
fn ema_matches_diffusers_ema_model() {
    let g = &golden()["ema"];
    for case in g["cases"].as_array().unwrap() {
        let kw = &case["kwargs"];
        let mut config = EmaConfig::default();
        if let Some(v) = kw.get("decay") {
            config.decay = v.as_f64().unwrap();
        }
        if let Some(v) = kw.get("min_decay") {
            config.min_decay = v.as_f64().unwrap();
        }
        if let Some(v) = kw.get("update_after_step") {
            config.update_after_step = v.as_u64().unwrap();
        }
        if let Some(v) = kw.get("use_ema_warmup") {
            config.use_ema_warmup = v.as_bool().unwrap();
        }
        if let Some(v) = kw.get("inv_gamma") {
            config.inv_gamma = v.as_f64().unwrap();
        }
        if let Some(v) = kw.get("power") {
            config.power = v.as_f64().unwrap();
        }
        let vs = VarStore::new(Device::Cpu);
        let p0 = f32_tensor(&g["p0"], &[3, 4]);
        let mut w = vs.root().var_copy("w", &p0);
        let mut ema = Ema::new(&vs, config).unwrap();
        let decays = floats(&case["decays"]);
        for (k, (decay, shadow)) in decays
            .iter()
            .zip(case["shadow"].as_array().unwrap())
            .enumerate()
        {
            tch::no_grad(|| w.copy_(&(&p0 * (k as f64).cos() + 0.25 * k as f64)));
            let used = ema.update(&vs);
            assert!(
                (used - decay).abs() < 1e-15,
                "{} step {k}: decay {used} vs {decay}",
                case["name"]
            );
            let got = values(&ema.tensors()[0].1);
            let want = floats(shadow);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= 2e-7,
                "{} step {k}: shadow differs by {worst}",
                case["name"]
            );
        }
    }
}

#[test]
fn lr_schedules_match_diffusers_get_scheduler() {
    for case in golden()["lr"].as_array().unwrap() {
        let kind: LrScheduleKind = case["name"].as_str().unwrap().parse().unwrap();
        let schedule = LrSchedule {
            kind,
            warmup_steps: case["warmup"].as_u64().unwrap(),
            total_steps: case["total"].as_u64().unwrap(),
        };
        for (step, want) in floats(&case["factors"]).into_iter().enumerate() {
            let got = schedule.factor(step as u64);
            assert!(
                (got - want).abs() < 1e-12,
                "{:?} step {step}: {got} vs {want}",
                kind
            );
        }
    }
}

#[test]
fn gradient_clipping_matches_clip_grad_norm() {
    let g = &golden()["clip"];
    let vs = VarStore::new(Device::Cpu);
    let shapes: Vec<Vec<i64>> = g["shapes"].as_array().unwrap().iter().map(shape).collect();
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| vs.root().zeros(&format!("p{i}"), s))
        .collect();
    let loss = params
        .iter()
        .zip(g["grads"].as_array().unwrap())
        .zip(&shapes)
        .map(|((p, grad), s)| (p * f32_tensor(grad, s)).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .unwrap();
    loss.backward();
    let total = clip_grad_norm(params.iter(), g["max_norm"].as_f64().unwrap());
    assert!((total - g["total_norm"].as_f64().unwrap()).abs() < 1e-5);
    for (p, want) in params.iter().zip(g["clipped"].as_array().unwrap()) {
        let got = values(&p.grad());
        for (a, b) in got.iter().zip(floats(want)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
