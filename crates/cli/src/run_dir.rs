//! What every command shares: the `--device` flag, a progress bar fed by (done, total) step
//! callbacks, and the start-or-resume rules of a training run directory.

use anyhow::{anyhow, bail, Result};
use diffuse_tensor::parse_device;
use diffuse_tensor::progress::progress_bar;
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
