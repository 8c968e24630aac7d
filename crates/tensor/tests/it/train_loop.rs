//! The training loop: it learns, its checkpoints resume bit for bit, and it stops on NaN.

use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::lr::LrScheduleKind;
use diffuse_tensor::metrics::read_metrics;
use diffuse_tensor::optim::AdamWConfig;
use diffuse_tensor::train::{TrainConfig, TrainTask, Trainer};
use diffuse_tensor::weights::load_tensors;
use diffuse_tensor::{Error, Result};
use std::path::Path;
use tch::nn::{self, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// Regress y = sin(3x) from noisy inputs with a small MLP using dropout: every source of
/// randomness the real tasks have (data order, noise, dropout) is exercised.
struct ToyRegression {
    net: nn::SequentialT,
    xs: Tensor,
    ys: Tensor,
    sampler: EpochSampler,
    nan_at_step: Option<u64>,
}

impl ToyRegression {
    fn new(vs: &VarStore, init_seed: i64) -> Self {
        tch::manual_seed(init_seed);
        let p = vs.root();
        let net = nn::seq_t()
            .add(nn::linear(&p / "fc1", 1, 32, Default::default()))
            .add_fn(|x| x.tanh())
            .add_fn_t(|x, train| x.dropout(0.1, train))
            .add(nn::linear(&p / "fc2", 32, 1, Default::default()));
        let xs = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, Device::Cpu)).unsqueeze(1);
        let ys = (&xs * 3.0).sin();
        ToyRegression {
            net,
            xs,
            ys,
            sampler: EpochSampler::new(64, 8, 11),
            nan_at_step: None,
        }
    }
}

impl TrainTask for ToyRegression {
    fn loss(&mut self, step: u64, micro_batch: u64) -> Result<Tensor> {
        if self.nan_at_step == Some(step + 1) {
            return Ok(Tensor::from(f32::NAN));
        }
        let idx = Tensor::from_slice(
            &self
                .sampler
                .batch(step * 2 + micro_batch)
                .iter()
                .map(|&i| i as i64)
                .collect::<Vec<_>>(),
        );
        let x = self.xs.index_select(0, &idx);
        let noisy = &x + Tensor::randn_like(&x) * 0.01;
        let pred = self.net.forward_t(&noisy, true);
        Ok((pred - self.ys.index_select(0, &idx))
            .square()
            .mean(Kind::Float))
    }
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        optimizer: AdamWConfig {
            lr: 2e-2,
            weight_decay: 1e-4,
            ..Default::default()
        },
        lr_schedule: LrScheduleKind::Cosine,
        warmup_steps: 3,
        ema: Some(EmaConfig {
            use_ema_warmup: true,
            power: 0.75,
            ..Default::default()
        }),
        seed: 5,
        checkpoint_every: 5,
        keep_last: 2,
        log_every: 1,
        precision: Default::default(),
    }
}

/// Every tensor (name, bit pattern) and metadata entry of a checkpoint, plus trainer.json.
fn checkpoint_contents(run: &Path, step: u64) -> Vec<(String, String)> {
    let dir = run.join(format!("checkpoints/step-{step:09}"));
    let mut out = Vec::new();
    for file in [
        "model.safetensors",
        "optimizer.safetensors",
        "ema.safetensors",
    ] {
        let loaded = load_tensors(&dir.join(file)).unwrap();
        for (name, t) in loaded.tensors {
            let bits: Vec<u32> = Vec::<f32>::try_from(t.flatten(0, -1))
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            out.push((format!("{file}:{name}"), format!("{bits:?}")));
        }
        let mut meta: Vec<_> = loaded.metadata.into_iter().collect();
        meta.sort();
        out.push((format!("{file}:metadata"), format!("{meta:?}")));
    }
    out.push((
        "trainer.json".into(),
        std::fs::read_to_string(dir.join("trainer.json")).unwrap(),
    ));
    out
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_killed_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit() {
    let _rng = crate::rng_lock();
    let root = tempfile::tempdir().unwrap();
    let straight = root.path().join("straight");
    let resumed = root.path().join("resumed");

    let vs = VarStore::new(Device::Cpu);
    let mut task = ToyRegression::new(&vs, 1);
    Trainer::new(&vs, config(20), &straight)
        .unwrap()
        .run(&mut task)
        .unwrap();

    {
        // First process: runs past the step-10 checkpoint, then dies at step 13.
        let vs = VarStore::new(Device::Cpu);
        let mut task = ToyRegression::new(&vs, 1);
        let mut trainer = Trainer::new(&vs, config(20), &resumed).unwrap();
        let summary = trainer.run_until(&mut task, 13).unwrap();
        assert_eq!(summary.steps_done, 13);
    }
    // Second process: a model initialised differently, restored from the latest checkpoint.
    let vs2 = VarStore::new(Device::Cpu);
    let mut task2 = ToyRegression::new(&vs2, 999);
    let mut trainer = Trainer::new(&vs2, config(20), &resumed).unwrap();
    assert_eq!(trainer.resume(None).unwrap(), 10);
    trainer.run(&mut task2).unwrap();

    // Metrics: every step logged once, with the same losses as the uninterrupted run.
    let logged = losses(&resumed);
    assert_eq!(
        logged.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(logged, losses(&straight));
    let (a, b) = (
        checkpoint_contents(&straight, 20),
        checkpoint_contents(&resumed, 20),
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the uninterrupted and the resumed run"
        );
    }
    let resumed_vars = vs2.variables();
    for (name, a) in vs.variables() {
        assert!(a.equal(&resumed_vars[&name]), "{name}");
    }
    // keep_last = 2 leaves the two newest checkpoints.
    let kept: Vec<u64> = Trainer::checkpoints(&resumed)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, vec![15, 20]);
}

#[test]
fn training_learns_the_toy_function() {
    let _rng = crate::rng_lock();
    let run = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let mut task = ToyRegression::new(&vs, 3);
    let mut cfg = config(300);
    cfg.checkpoint_every = 0;
    cfg.log_every = 10;
    Trainer::new(&vs, cfg, run.path())
        .unwrap()
        .run(&mut task)
        .unwrap();
    let xs = Tensor::linspace(-1.0, 1.0, 101, (Kind::Float, Device::Cpu)).unsqueeze(1);
    let err = (task.net.forward_t(&xs, false) - (&xs * 3.0).sin())
        .square()
        .mean(Kind::Float)
        .double_value(&[]);
    // sin(3x) has variance ~0.5 on [-1, 1]; a trained net is far below that.
    assert!(err < 0.02, "mean squared error after training {err}");
    let logged = losses(run.path());
    assert!(logged.last().unwrap().1 < logged[0].1 / 5.0, "{logged:?}");
    // Only the final checkpoint when checkpoint_every = 0.
    assert_eq!(Trainer::checkpoints(run.path()).unwrap().len(), 1);
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step() {
    let _rng = crate::rng_lock();
    let run = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let mut task = ToyRegression::new(&vs, 1);
    task.nan_at_step = Some(7);
    let err = Trainer::new(&vs, config(20), run.path())
        .unwrap()
        .run(&mut task)
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 7, .. }), "{err}");
    assert!(
        err.to_string().contains("loss is not finite at step 7"),
        "{err}"
    );
    // The checkpoint before the NaN is intact and nothing after it was written.
    let kept: Vec<u64> = Trainer::checkpoints(run.path())
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, vec![5]);
}

#[test]
fn resume_ignores_half_written_checkpoints_and_explains_an_empty_run() {
    let _rng = crate::rng_lock();
    let run = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let mut task = ToyRegression::new(&vs, 1);
    let mut trainer = Trainer::new(&vs, config(20), run.path()).unwrap();
    let err = trainer.resume(None).unwrap_err().to_string();
    assert!(err.contains("no checkpoint in"), "{err}");

    trainer.run_until(&mut task, 5).unwrap();
    // A save killed half-way leaves a .partial folder (and maybe a bare step folder without trainer.json).
    std::fs::create_dir_all(run.path().join("checkpoints/.step-000000010.partial")).unwrap();
    std::fs::create_dir_all(run.path().join("checkpoints/step-000000010")).unwrap();
    let vs2 = VarStore::new(Device::Cpu);
    let _task2 = ToyRegression::new(&vs2, 2);
    let mut trainer2 = Trainer::new(&vs2, config(20), run.path()).unwrap();
    assert_eq!(trainer2.resume(None).unwrap(), 5);
}

#[test]
fn bad_settings_are_refused_before_training() {
    let _rng = crate::rng_lock();
    let run = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _ = ToyRegression::new(&vs, 1);
    let mut cfg = config(0);
    assert!(Trainer::new(&vs, cfg.clone(), run.path()).is_err());
    cfg.steps = 10;
    cfg.precision = diffuse_tensor::Precision::Bf16;
    let err = Trainer::new(&vs, cfg, run.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("needs a CUDA device"), "{err}");
}

#[test]
fn bf16_autocast_computes_in_bf16_and_trains_on_cuda_when_present() {
    let Some(device) =
        crate::cuda_or_skip("bf16_autocast_computes_in_bf16_and_trains_on_cuda_when_present")
    else {
        return;
    };
    let _rng = crate::rng_lock();
    let a = Tensor::randn([8, 8], (Kind::Float, device));
    let product = diffuse_tensor::Precision::Bf16.autocast(device, || a.matmul(&a));
    assert_eq!(product.kind(), Kind::BFloat16);
    let outside = a.matmul(&a);
    assert_eq!(outside.kind(), Kind::Float);

    // A short bf16 run on the GPU: weights stay f32, the loss goes down and stays finite.
    let run = tempfile::tempdir().unwrap();
    let vs = VarStore::new(device);
    tch::manual_seed(3);
    let net = nn::seq_t()
        .add(nn::linear(vs.root() / "fc1", 1, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(vs.root() / "fc2", 32, 1, Default::default()));
    struct Cuda {
        net: nn::SequentialT,
        device: Device,
    }
    impl TrainTask for Cuda {
        fn loss(&mut self, _step: u64, _micro: u64) -> Result<Tensor> {
            let x = Tensor::rand([64, 1], (Kind::Float, self.device)) * 2.0 - 1.0;
            let pred = self.net.forward_t(&x, true);
            Ok((pred.to_kind(Kind::Float) - (&x * 3.0).sin())
                .square()
                .mean(Kind::Float))
        }
    }
    let mut cfg = config(200);
    cfg.precision = diffuse_tensor::Precision::Bf16;
    cfg.checkpoint_every = 0;
    cfg.log_every = 10;
    let mut task = Cuda { net, device };
    Trainer::new(&vs, cfg, run.path())
        .unwrap()
        .run(&mut task)
        .unwrap();
    assert!(vs
        .variables()
        .values()
        .all(|t| t.kind() == Kind::Float && t.device() == device));
    let logged = losses(run.path());
    assert!(logged.last().unwrap().1 < logged[0].1 / 3.0, "{logged:?}");
}
