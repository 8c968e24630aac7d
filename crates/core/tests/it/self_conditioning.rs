//! Self-conditioning: samplers feed each step the previous step's x0 estimate, and the objective
//! trains half its batches on the model's own (gradient-free) estimate.

use diffuse_core::denoiser::{Denoiser, FnDenoiser};
use diffuse_core::losses::{Objective, ObjectiveConfig};
use diffuse_core::prediction::PredictionType;
use diffuse_core::samplers::ddim::{DdimConfig, DdimSampler};
use diffuse_core::samplers::{sample, Sampler};
use diffuse_core::schedule::NoiseSchedule;
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// Records the x0 estimate it is given on every call.
struct Recorder {
    seen: RefCell<Vec<Tensor>>,
}

impl Denoiser for Recorder {
    fn forward(&self, _x: &Tensor, _t: &Tensor) -> Tensor {
        panic!("a self-conditioned model must be called through forward_self_cond")
    }
    fn prediction_type(&self) -> PredictionType {
        PredictionType::Epsilon
    }
    fn self_conditioning(&self) -> bool {
        true
    }
    fn forward_self_cond(&self, x: &Tensor, _t: &Tensor, x0_prev: &Tensor) -> Tensor {
        self.seen.borrow_mut().push(x0_prev.copy());
        x * 0.1 + x0_prev * 0.01
    }
}

#[test]
fn samplers_feed_back_the_previous_x0_estimate() {
    let _rng = crate::rng_lock();
    tch::manual_seed(41);
    let model = Recorder {
        seen: RefCell::new(Vec::new()),
    };
    let mut sampler = DdimSampler::new(DdimConfig {
        clip_sample: false,
        ..Default::default()
    })
    .unwrap();
    sampler.set_timesteps(10).unwrap();
    let mut preds = Vec::new();
    let x = Tensor::randn([2, 1, 3, 3], (Kind::Float, Device::Cpu));
    let _ = sample(&mut sampler, &model, x, |info| {
        preds.push(info.pred_original_sample.copy())
    })
    .unwrap();
    let seen = model.seen.borrow();
    assert_eq!(seen.len(), 10);
    assert_eq!(
        seen[0].abs().max().double_value(&[]),
        0.0,
        "the first step has no estimate yet"
    );
    for i in 1..10 {
        assert!(
            seen[i].equal(&preds[i - 1]),
            "step {i} did not get step {}'s x0 estimate",
            i - 1
        );
    }
}

#[test]
fn the_objective_trains_half_the_batches_on_the_models_own_estimate() {
    let _rng = crate::rng_lock();
    tch::manual_seed(42);
    let model = Recorder {
        seen: RefCell::new(Vec::new()),
    };
    let config = ObjectiveConfig {
        self_conditioning: true,
        ..Default::default()
    };
    let mut objective =
        Objective::new(NoiseSchedule::new(&Default::default()).unwrap(), config).unwrap();
    let x0 = Tensor::randn([4, 1, 2, 2], (Kind::Float, Device::Cpu));
    let mut two_pass = 0;
    let trials = 400;
    for _ in 0..trials {
        model.seen.borrow_mut().clear();
        let _ = objective.loss(&model, &x0).unwrap();
        let seen = model.seen.borrow();
        assert!(
            seen[0].abs().max().double_value(&[]) == 0.0,
            "the first pass sees zeros"
        );
        match seen.len() {
            1 => {}
            2 => {
                two_pass += 1;
                assert!(
                    seen[1].abs().max().double_value(&[]) > 0.0,
                    "the second pass sees the estimate"
                );
            }
            n => panic!("{n} model calls for one loss"),
        }
    }
    // Binomial(400, 1/2): standard deviation 10.
    assert!(
        (two_pass as i64 - trials / 2).abs() < 50,
        "{two_pass} of {trials} batches used the estimate"
    );

    let plain = FnDenoiser {
        f: |x: &Tensor, _t: &Tensor| x.zeros_like(),
        prediction_type: PredictionType::Epsilon,
    };
    let err = objective.loss(&plain, &x0).err().unwrap().to_string();
    assert!(err.contains("takes no previous x0 estimate"), "{err}");
}
