//! The training loop on a toy problem: fit y = sin(3x) with a small MLP, with AdamW, cosine
//! warmup, EMA, gradient clipping, checkpoints every 100 steps and `--resume`.
//!
//! cargo run --release -p diffuse-tensor --example train_regression -- out/regression [--resume]

use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::lr::LrScheduleKind;
use diffuse_tensor::optim::AdamWConfig;
use diffuse_tensor::train::{TrainConfig, TrainTask, Trainer};
use tch::nn::{self, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

struct SineTask {
    net: nn::SequentialT,
    xs: Tensor,
    ys: Tensor,
    sampler: EpochSampler,
}

impl TrainTask for SineTask {
    fn loss(&mut self, step: u64, _micro_batch: u64) -> diffuse_tensor::Result<Tensor> {
        let idx: Vec<i64> = self
            .sampler
            .batch(step)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let idx = Tensor::from_slice(&idx);
        let pred = self.net.forward_t(&self.xs.index_select(0, &idx), true);
        Ok((pred - self.ys.index_select(0, &idx))
            .square()
            .mean(Kind::Float))
    }
}

fn main() -> anyhow::Result<()> {
    diffuse_tensor::runtime::tune_allocator();
    let mut args = std::env::args().skip(1);
    let run_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "out/regression".into()));
    let resume = args.any(|a| a == "--resume");

    let vs = VarStore::new(Device::cuda_if_available());
    let p = vs.root();
    let net = nn::seq_t()
        .add(nn::linear(&p / "fc1", 1, 64, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&p / "fc2", 64, 1, Default::default()));
    let xs = Tensor::linspace(-1.0, 1.0, 256, (Kind::Float, vs.device())).unsqueeze(1);
    let ys = (&xs * 3.0).sin();
    let mut task = SineTask {
        net,
        xs,
        ys,
        sampler: EpochSampler::new(256, 32, 0),
    };

    let config = TrainConfig {
        steps: 500,
        optimizer: AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        lr_schedule: LrScheduleKind::Cosine,
        warmup_steps: 20,
        ema: Some(EmaConfig {
            decay: 0.99,
            ..Default::default()
        }),
        checkpoint_every: 100,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&vs, config, &run_dir)?;
    if resume {
        trainer.resume(None)?;
    }
    let summary = trainer.run(&mut task)?;
    match summary.last_loss {
        Some(loss) => println!(
            "trained to step {}, last loss {loss:.5}",
            summary.steps_done
        ),
        None => println!(
            "nothing to do: the run is already at step {}",
            summary.steps_done
        ),
    }
    if let Some(dir) = summary.last_checkpoint {
        println!("latest checkpoint: {}", dir.display());
    }
    Ok(())
}
