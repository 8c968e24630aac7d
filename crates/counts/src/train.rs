//! Training a count model: a table of counts (CSV or `.npy`) split into training and held-out
//! rows, the residual MLP of [`crate::network`] and a count-diffusion process from
//! `diffuse_core::poisson`, run by the shared [`Trainer`] (checkpoints, exact resume, EMA,
//! metrics). The run directory holds `run.json` (this config, written first), `metrics.jsonl`,
//! `checkpoints/`, `samples/step-N.png` (histograms of generated vs held-out columns with their
//! earth mover's distances), `loss.png` and, at the end, `model/`.
//!
//! The process's data-dependent settings are filled in from the training rows when the run
//! starts (and kept in `run.json`): the mean count m that anchors the log-SNR endpoints, the
//! scale (the counts' root mean square, at least 1) that maps counts to network units, and the
//! clip of the network input (twice the 99.9th percentile, in network units, at least 2).

use crate::data::{load_counts, CountTable};
use crate::eval::{emd_report, save_histograms};
use crate::model::{CountModel, CountModelInfo, CountSampleOptions};
use crate::network::{parameter_count, CountNetwork, CountNetworkConfig, NetworkDenoiser};
use diffuse_core::poisson::{JumpConfig, JumpProcess};
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::plot::write_loss_curve;
use diffuse_tensor::train::{StepReport, TrainConfig, TrainOutcome, TrainTask, Trainer};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub const RUN_CONFIG: &str = "run.json";
pub const MODEL_DIR: &str = "model";

/// Everything a count training run needs; written to `RUN_DIR/run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CountTrainConfig {
    /// The count table (CSV or `.npy`).
    pub data: String,
    /// Fraction of rows held out from training (for evaluation and the previews).
    pub held_out: f64,
    pub batch_size: usize,
    /// The network; `dim` is filled in from the data.
    pub network: CountNetworkConfig,
    /// The process; `signal_mean`, `scale` and `input_clip` of 0 are filled in from the data.
    pub process: JumpConfig,
    pub train: TrainConfig,
    /// Write a histogram preview every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Rows generated for each preview.
    pub sample_num: usize,
    /// Thickening steps for each preview.
    pub sample_steps: usize,
}

impl Default for CountTrainConfig {
    fn default() -> Self {
        CountTrainConfig {
            data: String::new(),
            held_out: 0.1,
            batch_size: 256,
            network: CountNetworkConfig::default(),
            process: JumpConfig {
                signal_mean: 0.0,
                scale: 0.0,
                input_clip: 0.0,
                ..JumpConfig::default()
            },
            train: TrainConfig::default(),
            sample_every: 1000,
            sample_num: 1000,
            sample_steps: 100,
        }
    }
}

/// The training and held-out rows of the config's table.
pub fn load_split(config: &CountTrainConfig) -> Result<(CountTable, CountTable)> {
    let table = load_counts(Path::new(&config.data))?;
    table
        .split(config.held_out)
        .map_err(|e| Error::InvalidArgument(format!("--held-out: {e}")))
}

/// Fill in what the data decides (see the module doc); leaves values already set.
pub fn complete_config(config: &mut CountTrainConfig, train: &CountTable) -> Result<()> {
    config.network.dim = train.dim() as i64;
    let x = train.values.to_kind(Kind::Double);
    let p = &mut config.process;
    if p.signal_mean <= 0.0 {
        // An all-zero table has nothing to learn, but should not divide by zero either.
        p.signal_mean = x.mean(Kind::Double).double_value(&[]).max(1e-3);
    }
    if p.scale <= 0.0 {
        p.scale = x
            .square()
            .mean(Kind::Double)
            .double_value(&[])
            .sqrt()
            .max(1.0);
    }
    if p.input_clip <= 0.0 {
        let flat = x.flatten(0, -1);
        let q = if flat.numel() > 1 << 24 {
            // quantile refuses huge inputs; a strided subsample is as good for a clip.
            let step = (flat.numel() as i64 >> 24) + 1;
            flat.slice(0, 0, flat.numel() as i64, step)
        } else {
            flat
        }
        .quantile_scalar(0.999, None, false, "linear")
        .double_value(&[]);
        p.input_clip = (2.0 * q / p.scale).max(2.0);
    }
    config.network.validate()?;
    JumpProcess::new(config.process.clone())?;
    Ok(())
}

fn model_info(config: &CountTrainConfig, table: &CountTable) -> CountModelInfo {
    CountModelInfo {
        process: config.process.clone(),
        columns: table.columns.clone(),
        item_shape: table.item_shape.clone(),
        data: Some(config.data.clone()),
        held_out: config.held_out,
        steps: Some(config.train.steps),
    }
}

struct CountTask<'a> {
    config: &'a CountTrainConfig,
    network: &'a CountNetwork,
    process: JumpProcess,
    train: Tensor,
    held_out: &'a CountTable,
    sampler: EpochSampler,
    device: Device,
    preview: CountModel,
    run_dir: PathBuf,
}

impl CountTask<'_> {
    fn write_previews(&mut self, trainer: &Trainer<'_>, step: u64) -> Result<()> {
        trainer.copy_averaged_weights_to(&self.preview.vs);
        let options = CountSampleOptions {
            num: self.config.sample_num.max(1),
            steps: Some(
                self.config
                    .sample_steps
                    .clamp(1, self.preview.process().timesteps()),
            ),
            seed: Some(self.config.train.seed),
            ..CountSampleOptions::default()
        };
        let generated = self.preview.sample(&options, |_, _| {})?;
        let report = emd_report(
            &generated,
            &self.held_out.values,
            None,
            &self.held_out.columns,
        );
        tracing::info!(step, mean_emd = report.mean_emd, "preview");
        let dir = self.run_dir.join("samples");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        save_histograms(
            &generated,
            &self.held_out.values,
            &report,
            &format!("step {step}: mean EMD {:.3}", report.mean_emd),
            &dir.join(format!("step-{step:09}.png")),
        )?;
        write_loss_curve(&self.run_dir)
    }
}

impl TrainTask for CountTask<'_> {
    fn loss(&mut self, step: u64, micro_batch: u64) -> Result<Tensor> {
        let index = step * self.config.train.grad_accum + micro_batch;
        let rows: Vec<i64> = self
            .sampler
            .batch(index)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let x0 = self
            .train
            .index_select(0, &Tensor::from_slice(&rows))
            .to(self.device);
        let model = NetworkDenoiser {
            network: self.network,
            train: true,
        };
        Ok(self.process.loss(&model, &x0))
    }

    fn after_step(&mut self, report: &StepReport, trainer: &Trainer<'_>) -> Result<()> {
        let every = self.config.sample_every;
        if every > 0 && report.step % every == 0 {
            self.write_previews(trainer, report.step)?;
        }
        Ok(())
    }
}

/// Train (or, with `resume`, continue) the run in `run_dir`; `stop_after` ends this call after
/// that many total steps, as an interruption would.
pub fn train_count_model(
    config: &CountTrainConfig,
    run_dir: &Path,
    device: Device,
    resume: bool,
    stop_after: Option<u64>,
) -> Result<TrainOutcome> {
    let mut config = config.clone();
    if config.batch_size == 0 {
        return Err(Error::InvalidArgument(
            "--batch-size: must be at least 1".into(),
        ));
    }
    let (train, held_out) = load_split(&config)?;
    complete_config(&mut config, &train)?;
    if train.len() < config.batch_size {
        tracing::warn!(
            rows = train.len(),
            batch = config.batch_size,
            "the training rows are fewer than one batch; batches repeat rows"
        );
    }

    diffuse_tensor::manual_seed(config.train.seed);
    let vs = VarStore::new(device);
    let network = CountNetwork::new(&vs.root(), &config.network)?;
    let process = JumpProcess::new(config.process.clone())?;
    let preview = CountModel::new(&config.network, model_info(&config, &train), device)?;
    tracing::info!(
        rows = train.len(),
        held_out = held_out.len(),
        columns = train.dim(),
        parameters = parameter_count(&vs),
        signal_mean = config.process.signal_mean,
        scale = config.process.scale,
        "training a count model"
    );
    let mut task = CountTask {
        config: &config,
        network: &network,
        process,
        train: train.values.to_kind(Kind::Float),
        held_out: &held_out,
        sampler: EpochSampler::new(train.len(), config.batch_size, config.train.seed),
        device,
        preview,
        run_dir: run_dir.to_path_buf(),
    };
    let mut trainer = Trainer::new(&vs, config.train.clone(), run_dir)?;
    trainer.begin_run(RUN_CONFIG, &config, resume)?;
    let until = stop_after.unwrap_or(config.train.steps);
    let (summary, model_dir) = trainer.run_and_finish(
        &mut task,
        until,
        config.sample_every,
        |task, trainer, step| task.write_previews(trainer, step),
        |task, trainer| {
            trainer.copy_averaged_weights_to(&task.preview.vs);
            let model_dir = run_dir.join(MODEL_DIR);
            task.preview.save(&model_dir)?;
            Ok(model_dir)
        },
    )?;
    Ok(TrainOutcome { summary, model_dir })
}

/// Read a run's `run.json` (for `--resume`).
pub fn read_run_config(run_dir: &Path) -> Result<CountTrainConfig> {
    diffuse_tensor::atomic::read_json(&run_dir.join(RUN_CONFIG), "a run config")
}
