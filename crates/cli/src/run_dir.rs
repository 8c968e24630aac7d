//! What every command shares: the `--device` flag, a progress bar fed by (done, total) step
//! callbacks, and the start-or-resume rules of a training run directory.

use anyhow::{anyhow, bail, Result};
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::progress::progress_bar;
use diffuse_tensor::train::TrainConfig;
use diffuse_tensor::{parse_device, Precision};
use std::path::Path;

/// Parse `--device` (auto, cpu, cuda, cuda:N).
pub fn device(flag_value: &str) -> Result<tch::Device> {
    parse_device(flag_value).map_err(|e| anyhow!("--device: {e}"))
}

/// A progress bar and the `(done, total)` callback that moves it (samplers learn their total
/// only once they start).
pub fn step_bar(label: &str) -> (indicatif::ProgressBar, impl FnMut(usize, usize)) {
    let bar = progress_bar(0, label, "step");
    let b = bar.clone();
    (bar, move |done: usize, total: usize| {
        if b.length() != Some(total as u64) {
            b.set_length(total as u64);
        }
        b.set_position(done as u64);
    })
}

/// The config of a run: read from `RUN_DIR/run_config` when resuming (which must exist), else
/// built from the flags into a new or empty directory (never over someone's files).
pub fn start_or_resume<C>(
    run_dir: &Path,
    resume: bool,
    run_config: &str,
    read: impl FnOnce() -> Result<C>,
    build: impl FnOnce() -> Result<C>,
) -> Result<C> {
    if resume {
        if !run_dir.join(run_config).is_file() {
            bail!(
                "--resume: {} holds no run ({run_config} is missing)",
                run_dir.display()
            );
        }
        tracing::info!(
            "resuming with the settings in {}",
            run_dir.join(run_config).display()
        );
        return read();
    }
    let non_empty = run_dir
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty {
        bail!(
            "--out: {} already exists and is not empty; pass --resume to continue that run, or choose a new directory",
            run_dir.display()
        );
    }
    build()
}

/// The last line of a training command.
pub fn print_training_outcome(
    steps_done: u64,
    total_steps: u64,
    model_dir: Option<&Path>,
    seconds: f64,
    modality: &str,
) {
    match model_dir {
        Some(dir) => println!(
            "trained {steps_done} steps in {seconds:.0} s; model in {} (sample it with `diffuse sample {modality} --model {}`)",
            dir.display(),
            dir.display()
        ),
        None => println!(
            "stopped at step {steps_done} of {total_steps} after {seconds:.0} s; continue with --resume"
        ),
    }
}

/// The training-loop flags every `train` command has (their defaults differ per modality, so
/// each command declares its own and hands the values over here).
pub struct LoopFlags<'a> {
    pub steps: u64,
    pub grad_accum: u64,
    /// 0 = no clipping.
    pub max_grad_norm: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub lr_schedule: &'a str,
    pub warmup_steps: u64,
    pub ema: Option<EmaConfig>,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub keep_last: usize,
    pub log_every: u64,
    pub precision: &'a str,
}

impl LoopFlags<'_> {
    /// Write the flags into `t`, with one clear error naming a bad --lr-schedule or --precision.
    pub fn apply(self, t: &mut TrainConfig) -> Result<()> {
        t.steps = self.steps;
        t.grad_accum = self.grad_accum;
        t.max_grad_norm = (self.max_grad_norm > 0.0).then_some(self.max_grad_norm);
        t.optimizer.lr = self.lr;
        t.optimizer.weight_decay = self.weight_decay;
        t.lr_schedule = self
            .lr_schedule
            .parse()
            .map_err(|e| anyhow!("--lr-schedule: {e}"))?;
        t.warmup_steps = self.warmup_steps;
        t.ema = self.ema;
        t.seed = self.seed;
        t.checkpoint_every = self.checkpoint_every;
        t.keep_last = self.keep_last;
        t.log_every = self.log_every;
        t.precision = self
            .precision
            .parse::<Precision>()
            .map_err(|e| anyhow!("--precision: {e}"))?;
        Ok(())
    }
}
