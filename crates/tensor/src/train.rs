//! The generic training loop every modality uses: gradient accumulation, clipping, AdamW with a
//! warmup schedule, EMA, a NaN/Inf guard, progress, JSONL metrics, and checkpoints every N steps
//! (keeping the last K) from which `resume` continues bit for bit on the CPU.
//!
//! Checkpoints live in `RUN_DIR/checkpoints/step-NNNNNNNNN/` and hold `model.safetensors`,
//! `optimizer.safetensors`, `ema.safetensors` (with EMA), whatever the task adds, and
//! `trainer.json`. Each is written under a `.partial` name and renamed when complete, so a run
//! killed mid-save leaves the previous checkpoints intact and the half-written one ignored.
//!
//! Randomness comes from libtorch's process-global generator, reseeded before every
//! micro-batch: run one trainer per process (or serialise them) for reproducible results.
//!
//! In a multi-process run (a [`crate::dist`] process group is set) the same loop is
//! data-parallel: at the start every rank takes rank 0's weights, optimiser state, EMA and step
//! (so `resume` reads files on rank 0 only, and works with any number of ranks); each micro-batch
//! draws its noise from a seed that also depends on the rank; after the backward passes the
//! gradients are averaged over the ranks by bucketed all-reduce, so every rank takes the same
//! step; and only rank 0 writes metrics, checkpoints and previews ([`TrainTask::after_step`]
//! runs on rank 0 only). A non-finite loss on any rank stops every rank at the same step.

use crate::atomic::{sync_parent, write_json_atomic};
use crate::dist::ProcessGroup;
use crate::ema::{Ema, EmaConfig};
use crate::lr::{LrSchedule, LrScheduleKind};
use crate::metrics::{truncate_after_step, MetricsWriter};
use crate::optim::{AdamW, AdamWConfig};
use crate::precision::Precision;
use crate::seed::{derive_seed, manual_seed};
use crate::weights::{load_var_store, save_var_store, Metadata};
use crate::{grad, progress, Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::VarStore;
use tch::Tensor;

/// Everything the loop needs to know; serialised into every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Total optimiser steps of the run (the LR schedule spans these).
    pub steps: u64,
    /// Micro-batches whose gradients are summed (averaged) into one optimiser step.
    pub grad_accum: u64,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
    pub optimizer: AdamWConfig,
    pub lr_schedule: LrScheduleKind,
    pub warmup_steps: u64,
    /// Keep an exponential moving average of the weights.
    pub ema: Option<EmaConfig>,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Keep this many most recent checkpoints (0: keep all).
    pub keep_last: usize,
    /// Log a metrics record every this many steps.
    pub log_every: u64,
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            optimizer: AdamWConfig::default(),
            lr_schedule: LrScheduleKind::ConstantWithWarmup,
            warmup_steps: 0,
            ema: None,
            seed: 0,
            checkpoint_every: 500,
            keep_last: 3,
            log_every: 10,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.steps == 0 {
            return bad("the number of training steps must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("gradient accumulation must be at least 1 micro-batch".into());
        }
        if let Some(n) = self.max_grad_norm {
            if !(n > 0.0 && n.is_finite()) {
                return bad(format!(
                    "the gradient clipping norm must be a positive number, got {n}"
                ));
            }
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1".into());
        }
        self.optimizer.validate()?;
        if let Some(ema) = &self.ema {
            ema.validate()?;
        }
        Ok(())
    }
}

/// The model-specific part of training: the loss of one micro-batch, plus optional hooks.
pub trait TrainTask {
    /// Loss of micro-batch `micro_batch` of optimiser step `step` (0-based). libtorch's
    /// generators are already seeded from (run seed, step, micro-batch); pick the data with
    /// [`crate::data::EpochSampler`] so it too depends on the step alone.
    fn loss(&mut self, step: u64, micro_batch: u64) -> Result<Tensor>;

    /// Called after each optimiser step (e.g. to write a sample grid every N steps).
    fn after_step(&mut self, _report: &StepReport, _trainer: &Trainer<'_>) -> Result<()> {
        Ok(())
    }

    /// Add task files (model config, tokenizer...) to a checkpoint being written in `dir`.
    fn write_checkpoint_extras(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// What one optimiser step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Steps completed, counting this one (1-based).
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping (when clipping).
    pub grad_norm: Option<f64>,
    pub ema_decay: Option<f64>,
}

/// How a call to [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// The step this call started from (0, or the resumed checkpoint's).
    pub steps_at_start: u64,
    pub steps_done: u64,
    pub last_loss: Option<f64>,
    pub last_checkpoint: Option<PathBuf>,
}

/// How a modality's training call (train image, text, audio, counts) ended.
pub struct TrainOutcome {
    pub summary: TrainSummary,
    /// The exported model directory (when the run reached its last step).
    pub model_dir: Option<PathBuf>,
}

/// Runs a [`TrainTask`] over a var store.
pub struct Trainer<'a> {
    vs: &'a VarStore,
    config: TrainConfig,
    run_dir: PathBuf,
    optimizer: AdamW,
    ema: Option<Ema>,
    schedule: LrSchedule,
    step: u64,
    last_checkpoint: Option<PathBuf>,
    /// The process group of a multi-process run.
    dist: Option<&'static ProcessGroup>,
    /// Whether this rank already took rank 0's state.
    synced: bool,
}

/// Bucket size of the gradient all-reduce (PyTorch DDP's default).
const BUCKET_BYTES: usize = 25 << 20;

const CHECKPOINTS: &str = "checkpoints";
const TRAINER_JSON: &str = "trainer.json";
const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const EMA_FILE: &str = "ema.safetensors";
const METRICS_FILE: &str = "metrics.jsonl";

/// The contents of `trainer.json` in each checkpoint.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    config: TrainConfig,
    /// Processes that trained the run up to this checkpoint (the global batch is the per-process
    /// batch times this); absent in checkpoints written before it was recorded, which were
    /// single-process or are treated as such.
    #[serde(default = "one_process")]
    world_size: u64,
}

fn one_process() -> u64 {
    1
}

impl<'a> Trainer<'a> {
    /// A trainer at step 0 writing into `run_dir` (created if needed).
    pub fn new(vs: &'a VarStore, config: TrainConfig, run_dir: &Path) -> Result<Self> {
        config.validate()?;
        config.precision.check_device(vs.device())?;
        let dist = crate::dist::current().filter(|g| g.world_size() > 1);
        if dist.is_none_or(|g| g.is_main()) {
            fs::create_dir_all(run_dir.join(CHECKPOINTS)).map_err(|e| Error::io(run_dir, e))?;
        }
        let optimizer = AdamW::new(vs, config.optimizer.clone())?;
        let ema = config.ema.clone().map(|c| Ema::new(vs, c)).transpose()?;
        let schedule = LrSchedule {
            kind: config.lr_schedule,
            warmup_steps: config.warmup_steps,
            total_steps: config.steps,
        };
        Ok(Trainer {
            vs,
            config,
            run_dir: run_dir.to_path_buf(),
            optimizer,
            ema,
            schedule,
            step: 0,
            last_checkpoint: None,
            dist,
            synced: false,
        })
    }

    /// Whether this process writes the run's files (rank 0, or a single-process run).
    pub fn is_main(&self) -> bool {
        self.dist.is_none_or(|g| g.is_main())
    }

    /// Make every rank's weights, optimiser state, EMA and step rank 0's.
    fn sync_from_main(&mut self, group: &ProcessGroup) -> Result<()> {
        let steps = group.all_reduce_values(&[
            if group.is_main() {
                self.step as f64
            } else {
                0.0
            },
            if group.is_main() {
                self.ema
                    .as_ref()
                    .map_or(0.0, |e| e.optimization_step() as f64)
            } else {
                0.0
            },
        ])?;
        let mut names: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Vec<Tensor> = names.into_iter().map(|(_, t)| t).collect();
        tensors.extend(self.optimizer.state_tensors());
        if let Some(ema) = &self.ema {
            tensors.extend(ema.tensors().into_iter().map(|(_, t)| t));
        }
        group.broadcast_tensors(&mut tensors, BUCKET_BYTES)?;
        self.step = steps[0] as u64;
        self.optimizer.set_step_count(self.step);
        if let Some(ema) = &mut self.ema {
            ema.set_optimization_step(steps[1] as u64);
        }
        tracing::info!(rank = group.rank(), step = self.step, "took rank 0's state");
        Ok(())
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// Optimiser steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn var_store(&self) -> &VarStore {
        self.vs
    }
    pub fn ema(&self) -> Option<&Ema> {
        self.ema.as_ref()
    }
    /// Copy the weights into `target` (a second network of the same shape, for previews and the
    /// exported model), then the EMA average over them when there is one; buffers the EMA does
    /// not average (batch-norm statistics) come from the weights.
    pub fn copy_averaged_weights_to(&self, target: &VarStore) {
        let mut dst = target.variables();
        for (name, value) in self.vs.variables() {
            if let Some(t) = dst.get_mut(&name) {
                tch::no_grad(|| t.copy_(&value));
            }
        }
        if let Some(ema) = &self.ema {
            ema.copy_to(target);
        }
    }
    pub fn optimizer(&self) -> &AdamW {
        self.optimizer_ref()
    }
    fn optimizer_ref(&self) -> &AdamW {
        &self.optimizer
    }
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Complete checkpoints of a run directory, oldest first: (step, directory).
    pub fn checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
        let dir = run_dir.join(CHECKPOINTS);
        let mut found = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix("step-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                if entry.path().join(TRAINER_JSON).is_file() {
                    found.push((step, entry.path()));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Processes training together (1 without a process group).
    fn world_size(&self) -> u64 {
        self.dist.map_or(1, |g| g.world_size() as u64)
    }

    /// Continue from a checkpoint: `from` is a checkpoint directory, or `None` for the latest
    /// one of this run. Restores weights, optimiser, EMA and step, and drops metrics logged
    /// after that checkpoint. Returns the step resumed at.
    pub fn resume(&mut self, from: Option<&Path>) -> Result<u64> {
        if !self.is_main() {
            // Rank 0 reads the checkpoint; this rank takes its state when the loop starts.
            return Ok(self.step);
        }
        let dir = match from {
            Some(dir) => dir.to_path_buf(),
            None => Self::checkpoints(&self.run_dir)?
                .pop()
                .map(|(_, dir)| dir)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--resume: no checkpoint in {} to resume from",
                        self.run_dir.join(CHECKPOINTS).display()
                    ))
                })?,
        };
        let state_path = dir.join(TRAINER_JSON);
        let text = fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::format(&state_path, format!("not a trainer state: {e}")))?;
        load_var_store(self.vs, &dir.join(MODEL_FILE), true)?;
        self.optimizer.load(&dir.join(OPTIMIZER_FILE))?;
        if self.optimizer.step_count() != state.step {
            return Err(Error::format(
                dir.join(OPTIMIZER_FILE),
                format!(
                    "optimizer is at step {} but the checkpoint is step {}",
                    self.optimizer.step_count(),
                    state.step
                ),
            ));
        }
        if let Some(ema) = &mut self.ema {
            let path = dir.join(EMA_FILE);
            if path.exists() {
                ema.load(&path)?;
            } else {
                tracing::warn!(
                    "{} has no EMA; starting the average from the resumed weights",
                    dir.display()
                );
                *ema = Ema::new(self.vs, ema.config().clone())?;
            }
        }
        let world = self.world_size();
        if state.world_size != world {
            // Each process reads its own --batch-size share, so the optimiser's batch changes
            // with the number of processes; say so rather than let the dynamics shift silently.
            tracing::warn!(
                "{} was trained on {} process{} and resumes on {world}: the global batch is the \
                 per-process batch times {world} from here on (it was times {}); start the same \
                 number of processes to keep it",
                self.run_dir.display(),
                state.world_size,
                if state.world_size == 1 { "" } else { "es" },
                state.world_size
            );
        }
        if state.config != self.config {
            tracing::info!("resuming with settings that differ from the checkpoint's; the new ones apply from here on");
        }
        self.step = state.step;
        self.last_checkpoint = Some(dir.clone());
        truncate_after_step(&self.run_dir.join(METRICS_FILE), state.step)?;
        tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
        Ok(state.step)
    }

    /// Start a modality's run once its network, data and trainer are built and checked: rank 0
    /// records the run's settings as `run_dir/file` (so a refused run leaves the directory as it
    /// was), and with `resume` the run carries on from its latest checkpoint (see
    /// [`Trainer::resume_latest_or_start`]). Returns the step the run starts from.
    pub fn begin_run(
        &mut self,
        file: &str,
        config: &impl serde::Serialize,
        resume: bool,
    ) -> Result<u64> {
        // Resumed first: a checkpoint that does not fit the settings (other --data, say) must
        // not leave those settings recorded.
        let step = if resume {
            self.resume_latest_or_start()?
        } else {
            0
        };
        if step > self.config.steps {
            return Err(Error::InvalidArgument(format!(
                "--steps: {} is fewer than the {step} steps this run has already done (give more \
                 to extend it)",
                self.config.steps
            )));
        }
        if self.is_main() {
            write_json_atomic(&self.run_dir.join(file), config)?;
        }
        Ok(step)
    }

    /// `--resume` of a run directory: from its latest checkpoint, or from step 0 when the run
    /// stopped before writing its first one (its run.json settings still apply), so a run that
    /// failed early can always be carried on.
    pub fn resume_latest_or_start(&mut self) -> Result<u64> {
        if self.is_main() && Self::checkpoints(&self.run_dir)?.is_empty() {
            tracing::warn!(
                "no checkpoint yet in {}: the run starts again from step 0",
                self.run_dir.join(CHECKPOINTS).display()
            );
            truncate_after_step(&self.run_dir.join(METRICS_FILE), 0)?;
            return Ok(0);
        }
        self.resume(None)
    }

    /// Train to the configured number of steps.
    pub fn run(&mut self, task: &mut dyn TrainTask) -> Result<TrainSummary> {
        let steps = self.config.steps;
        self.run_until(task, steps)
    }

    /// [`Trainer::run_until`], then, when that completes the run, what every modality does at the
    /// end: the loss curve, the final previews (unless the last step's periodic ones, every
    /// `sample_every` steps, already covered it) and the export of the model. Returns the summary
    /// and the exported directory (`None` when the call stopped before the last step). The loss
    /// curve is written either way.
    pub fn run_and_finish<T: TrainTask>(
        &mut self,
        task: &mut T,
        until: u64,
        sample_every: u64,
        previews: impl FnOnce(&mut T, &Trainer<'_>, u64) -> Result<()>,
        export: impl FnOnce(&mut T, &Trainer<'_>) -> Result<PathBuf>,
    ) -> Result<(TrainSummary, Option<PathBuf>)> {
        let summary = self.run_until(task, until)?;
        if !self.is_main() {
            // Rank 0 writes the loss curve, the previews and the model.
            return Ok((summary, None));
        }
        crate::plot::write_loss_curve(&self.run_dir)?;
        let steps = self.config.steps;
        if summary.steps_done < steps {
            return Ok((summary, None));
        }
        if sample_every == 0 || steps % sample_every != 0 {
            previews(task, self, summary.steps_done)?;
        }
        let dir = export(task, self)?;
        tracing::info!(model = %dir.display(), "saved the model");
        Ok((summary, Some(dir)))
    }

    /// Train until `until` steps are done (capped at the configured total), then return without
    /// a final checkpoint unless one falls due. The LR schedule still spans the configured total.
    pub fn run_until(&mut self, task: &mut dyn TrainTask, until: u64) -> Result<TrainSummary> {
        if let (Some(group), false) = (self.dist, self.synced) {
            self.sync_from_main(group)?;
            self.synced = true;
        }
        let until = until.min(self.config.steps);
        let main = self.is_main();
        let (rank, world) = self
            .dist
            .map_or((0, 1), |g| (g.rank() as u64, g.world_size() as u64));
        let mut metrics = if main {
            write_json_atomic(&self.run_dir.join("train_config.json"), &self.config)?;
            Some(MetricsWriter::open(&self.run_dir.join(METRICS_FILE))?)
        } else {
            None
        };
        let bar = if main {
            progress::progress_bar(self.config.steps, "train", "step")
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_position(self.step);
        bar.reset_eta();
        let device = self.vs.device();
        let started = Instant::now();
        let first_step = self.step;
        let (mut window_loss, mut window_len) = (0.0, 0u64);
        let mut last_loss = None;
        while self.step < until {
            let index = self.step;
            let number = index + 1;
            self.optimizer.zero_grad();
            let mut loss_sum = 0.0;
            let mut bad_loss = None;
            for micro in 0..self.config.grad_accum {
                // With one process this is the single-process seed; each rank draws its own.
                manual_seed(derive_seed(
                    self.config.seed,
                    (index * self.config.grad_accum + micro) * world + rank,
                ));
                let loss = self
                    .config
                    .precision
                    .autocast(device, || task.loss(index, micro))?;
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    if self.dist.is_none() {
                        bar.abandon();
                        return Err(Error::NonFinite {
                            what: "loss".into(),
                            step: number,
                            value,
                        });
                    }
                    // Every rank must reach the same decision: report it after the all-reduce.
                    bad_loss = Some(value);
                    continue;
                }
                (loss / self.config.grad_accum as f64).backward();
                loss_sum += value;
            }
            if let Some(group) = self.dist {
                let totals =
                    group.all_reduce_values(&[loss_sum, bad_loss.is_some() as u8 as f64])?;
                if totals[1] > 0.0 {
                    bar.abandon();
                    return Err(Error::NonFinite {
                        what: format!("loss (on {} of {} ranks)", totals[1], world),
                        step: number,
                        value: bad_loss.unwrap_or(f64::NAN),
                    });
                }
                loss_sum = totals[0] / world as f64;
                self.average_gradients(group)?;
            }
            let grad_norm = match self.config.max_grad_norm {
                Some(max) => {
                    let norm = grad::clip_grad_norm(self.optimizer.parameters(), max);
                    if !norm.is_finite() {
                        bar.abandon();
                        return Err(Error::NonFinite {
                            what: "gradient norm".into(),
                            step: number,
                            value: norm,
                        });
                    }
                    Some(norm)
                }
                None => None,
            };
            let lr = self.schedule.lr(self.config.optimizer.lr, index);
            self.optimizer.step(lr);
            let ema_decay = self.ema.as_mut().map(|ema| ema.update(self.vs));
            self.step = number;
            let loss = loss_sum / self.config.grad_accum as f64;
            last_loss = Some(loss);
            window_loss += loss;
            window_len += 1;
            let report = StepReport {
                step: number,
                loss,
                lr,
                grad_norm,
                ema_decay,
            };
            if let (Some(metrics), true) = (
                metrics.as_mut(),
                number % self.config.log_every == 0 || number == until,
            ) {
                let elapsed = started.elapsed().as_secs_f64();
                let rate = (number - first_step) as f64 / elapsed.max(1e-9);
                let mean = window_loss / window_len as f64;
                metrics.write(&serde_json::json!({
                    "step": number,
                    "loss": mean,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "ema_decay": ema_decay,
                    "steps_per_sec": rate,
                    "elapsed_s": elapsed,
                }))?;
                tracing::info!(step = number, loss = mean, lr, grad_norm, "train");
                bar.set_message(format!("loss {mean:.4}"));
                (window_loss, window_len) = (0.0, 0);
            }
            bar.set_position(number);
            if main {
                task.after_step(&report, self)?;
            }
            let due =
                self.config.checkpoint_every > 0 && number % self.config.checkpoint_every == 0;
            if main && (due || number == self.config.steps) {
                self.save_checkpoint(task)?;
            }
        }
        if self.step >= self.config.steps {
            bar.finish();
        } else {
            bar.abandon();
        }
        Ok(TrainSummary {
            steps_at_start: first_step,
            steps_done: self.step,
            last_loss,
            last_checkpoint: self.last_checkpoint.clone(),
        })
    }

    /// Replace every gradient by its mean over the ranks (bucketed all-reduce).
    fn average_gradients(&mut self, group: &ProcessGroup) -> Result<()> {
        let mut grads: Vec<Tensor> = self
            .optimizer
            .parameters()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect();
        let counts = group.all_reduce_values(&[grads.len() as f64])?;
        if counts[0] != (grads.len() * group.world_size()) as f64 {
            return Err(Error::Device(format!(
                "rank {} has gradients for {} parameters but the ranks together have {}: the \
                 ranks are not training the same model",
                group.rank(),
                grads.len(),
                counts[0]
            )));
        }
        group.average_tensors(&mut grads, BUCKET_BYTES)
    }

    /// Write a checkpoint of the current step now, and prune old ones.
    pub fn save_checkpoint(&mut self, task: &mut dyn TrainTask) -> Result<PathBuf> {
        let root = self.run_dir.join(CHECKPOINTS);
        let name = format!("step-{:09}", self.step);
        let partial = root.join(format!(".{name}.partial"));
        let dir = root.join(&name);
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut metadata = Metadata::new();
        metadata.insert("step".into(), self.step.to_string());
        save_var_store(self.vs, &partial.join(MODEL_FILE), Some(metadata))?;
        self.optimizer.save(&partial.join(OPTIMIZER_FILE))?;
        if let Some(ema) = &self.ema {
            ema.save(&partial.join(EMA_FILE))?;
        }
        task.write_checkpoint_extras(&partial)?;
        write_json_atomic(
            &partial.join(TRAINER_JSON),
            &TrainerState {
                step: self.step,
                config: self.config.clone(),
                world_size: self.world_size(),
            },
        )?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))?;
        sync_parent(&dir);
        tracing::info!(step = self.step, checkpoint = %dir.display(), "checkpoint");
        self.last_checkpoint = Some(dir.clone());
        self.prune()?;
        Ok(dir)
    }

    fn prune(&self) -> Result<()> {
        if self.config.keep_last == 0 {
            return Ok(());
        }
        let all = Self::checkpoints(&self.run_dir)?;
        let excess = all.len().saturating_sub(self.config.keep_last);
        for (_, dir) in all.into_iter().take(excess) {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }
}
