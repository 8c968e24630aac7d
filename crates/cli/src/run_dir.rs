//! What every command shares: the `--device` flag, a progress bar fed by (done, total) step
//! callbacks, and the start-or-resume rules of a training run directory.

use anyhow::{anyhow, bail, Result};
use diffuse_tensor::dist::{self, DistBackend, DistEnv};
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::progress::progress_bar;
use diffuse_tensor::train::{TrainConfig, TrainOutcome, TrainSummary};
use diffuse_tensor::{parse_device, DeviceSpec, Precision};
use std::path::Path;

/// The folder a file `path` goes in (`.` for a bare name).
pub fn parent_folder(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The nearest part of `dir` (itself or a folder above it) that exists, which must be a folder
/// for `dir` to be made.
fn check_folder_can_exist(dir: &Path, flag: &str, target: &Path) -> Result<()> {
    if let Some(existing) = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.exists())
    {
        if !existing.is_dir() {
            bail!(
                "{flag}: {}: {} is a file, not a folder",
                target.display(),
                existing.display()
            );
        }
    }
    Ok(())
}

/// `path` can become a file: it is not a folder, and its folder exists or can be made.
pub fn check_file_target(path: &Path, flag: &str) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{flag}: {} is a folder; expected the name of a file to write",
            path.display()
        );
    }
    check_folder_can_exist(parent_folder(path), flag, path)
}

/// `dir` can be the folder files are written in: not a file, and it exists or can be made.
pub fn check_dir_target(dir: &Path, flag: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{flag}: {} is a file; expected a folder to write into",
            dir.display()
        );
    }
    check_folder_can_exist(dir, flag, dir)
}

/// Check an output-file flag before any work is done: not an existing folder, and its folder
/// there (created when missing), so a long run never ends in a write that cannot happen.
pub fn prepare_output_file(path: &Path, flag: &str) -> Result<()> {
    check_file_target(path, flag)?;
    let parent = parent_folder(path);
    std::fs::create_dir_all(parent).map_err(|e| {
        anyhow!(
            "{flag}: cannot make the folder {} for {}: {e}",
            parent.display(),
            path.display()
        )
    })
}

/// Parse `--device` (auto, cpu, cuda, cuda:N).
pub fn device(flag_value: &str) -> Result<tch::Device> {
    parse_device(flag_value).map_err(|e| anyhow!("--device: {e}"))
}

/// `--device` for a training command, and, when the environment describes a multi-process run
/// (torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), joining its process
/// group: `auto` and `cuda` then mean this process's own GPU, `cuda:LOCAL_RANK`, and the
/// collectives run on NCCL for CUDA and Gloo for the CPU (`DIFFUSE_DIST_BACKEND` overrides;
/// `DIFFUSE_DIST_TIMEOUT` sets the timeout in seconds, default 300).
pub fn train_device(flag_value: &str) -> Result<tch::Device> {
    let Some(env) = DistEnv::from_env()? else {
        return device(flag_value);
    };
    let spec: DeviceSpec = flag_value.parse().map_err(|e| anyhow!("--device: {e}"))?;
    let device = match spec {
        DeviceSpec::Auto if tch::Cuda::is_available() => DeviceSpec::Cuda(env.local_rank).resolve(),
        DeviceSpec::Cuda(0) if flag_value.trim() == "cuda" => {
            DeviceSpec::Cuda(env.local_rank).resolve()
        }
        other => other.resolve(),
    }
    .map_err(|e| anyhow!("--device: {e} (LOCAL_RANK={})", env.local_rank))?;
    let backend = DistBackend::for_device(device)?;
    dist::init(backend, dist::timeout_from_env()?)?;
    Ok(device)
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
///
/// In a multi-process run rank 0 alone does this, and every other rank receives its config, so
/// the ranks agree and only rank 0 needs the run directory.
pub fn start_or_resume<C: serde::Serialize + serde::de::DeserializeOwned>(
    run_dir: &Path,
    resume: bool,
    run_config: &str,
    read: impl FnOnce() -> Result<C>,
    build: impl FnOnce() -> Result<C>,
) -> Result<C> {
    let Some(group) = dist::current() else {
        return start_or_resume_here(run_dir, resume, run_config, read, build);
    };
    if group.is_main() {
        let config = start_or_resume_here(run_dir, resume, run_config, read, build)?;
        group.broadcast_bytes(Some(serde_json::to_vec(&config)?))?;
        Ok(config)
    } else {
        let bytes = group.broadcast_bytes(None)?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn start_or_resume_here<C>(
    run_dir: &Path,
    resume: bool,
    run_config: &str,
    read: impl FnOnce() -> Result<C>,
    build: impl FnOnce() -> Result<C>,
) -> Result<C> {
    if resume {
        if !run_dir.join(run_config).is_file() {
            bail!(
                "--resume: {} holds no run ({run_config} is missing); to start a new run there, drop --resume",
                run_dir.display()
            );
        }
        tracing::info!(
            "resuming with the settings in {}",
            run_dir.join(run_config).display()
        );
        return read();
    }
    if holds_files(run_dir) {
        bail!(
            "--out: {} already exists and is not empty; pass --resume to continue that run, or choose a new directory",
            run_dir.display()
        );
    }
    build()
}

/// One `diffuse train <modality>` command: the run directory, how to start or resume it, and
/// the shared loop flags.
pub struct TrainingCommand<'a, C> {
    /// image, text, audio or counts (for the closing line's `diffuse sample` hint).
    pub modality: &'a str,
    pub out: &'a Path,
    pub resume: bool,
    /// --steps: on --resume it replaces the run's total (extending it).
    pub steps: Option<u64>,
    /// The run's settings file in `out` (run.json).
    pub run_config: &'a str,
    pub shared: &'a LoopArgs,
    /// Where a run config keeps its training-loop settings.
    pub train_config: fn(&mut C) -> &mut TrainConfig,
}

impl<C: serde::Serialize + serde::de::DeserializeOwned> TrainingCommand<'_, C> {
    /// Join the process group the environment describes, start (`build`) or resume (`read`) the
    /// run, let `prepare` adjust a fresh run's config (e.g. --epochs to steps), train with
    /// `train(config, device, resume, stop_after)`, and print the closing line.
    pub fn run<ReadError: Into<anyhow::Error>, TrainError: Into<anyhow::Error>>(
        self,
        read: impl FnOnce(&Path) -> Result<C, ReadError>,
        build: impl FnOnce() -> Result<C>,
        prepare: impl FnOnce(&mut C) -> Result<()>,
        train: impl FnOnce(&C, tch::Device, bool, Option<u64>) -> Result<TrainOutcome, TrainError>,
    ) -> Result<()> {
        let device = train_device(&self.shared.device)?;
        // Rank 0 alone writes the run directory, so it alone locks it.
        let _lock = if dist::is_main() {
            Some(RunDirLock::acquire(self.out)?)
        } else {
            None
        };
        let train_config = self.train_config;
        let mut config = start_or_resume(
            self.out,
            self.resume,
            self.run_config,
            || {
                let mut config = read(self.out).map_err(Into::into)?;
                if let Some(steps) = self.steps {
                    train_config(&mut config).steps = steps;
                }
                Ok(config)
            },
            build,
        )?;
        // Warned only once the run is known to exist: with no run there, the error says to
        // drop --resume, and the flags are not ignored but wanted.
        if self.resume && dist::is_main() {
            // A run carries on with its run.json settings; only these flags change it.
            let ignored = crate::given::given_except(&[
                "out",
                "resume",
                "steps",
                "data",
                "device",
                "stop_after",
                "verbose",
            ]);
            if !ignored.is_empty() {
                tracing::warn!(
                    "--resume continues with the settings in {}; ignoring {} (start a new --out \
                     to change them)",
                    self.out.join(self.run_config).display(),
                    ignored.join(", ")
                );
            }
        }
        if !self.resume {
            prepare(&mut config)?;
        }
        train_config(&mut config)
            .precision
            .check_device(device)
            .map_err(|e| anyhow!("--precision: {e}"))?;
        let started = std::time::Instant::now();
        let outcome =
            train(&config, device, self.resume, self.shared.stop_after).map_err(Into::into)?;
        print_training_outcome(
            &outcome.summary,
            train_config(&mut config).steps,
            outcome.model_dir.as_deref(),
            started.elapsed().as_secs_f64(),
            self.modality,
        );
        Ok(())
    }
}

/// The lock file of a run directory, held while a command trains in it.
const LOCK_FILE: &str = ".diffuse.lock";

/// Whether `dir` holds anything besides what an interrupted start leaves behind: the lock
/// file, the hidden temporary files of atomic writes (`.NAME.tmp-*`), and a `checkpoints`
/// folder holding no checkpoint (at most half-written `.step-*.partial` ones).
fn holds_files(dir: &Path) -> bool {
    let Ok(entries) = dir.read_dir() else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = name == LOCK_FILE
            || (name.starts_with('.') && name.contains(".tmp-"))
            || (name == "checkpoints"
                && entry.path().read_dir().is_ok_and(|mut inner| {
                    inner.all(|e| {
                        e.is_ok_and(|e| {
                            let n = e.file_name().to_string_lossy().into_owned();
                            n.starts_with(".step-") && n.ends_with(".partial")
                        })
                    })
                }));
        !leftover
    })
}

/// An exclusive lock on a run directory (an OS file lock on `RUN_DIR/.diffuse.lock`), so two
/// commands never train into one directory at once. Dropping it removes the lock file, and the
/// directory too when this command made it and left nothing else in it (a refused run).
pub struct RunDirLock {
    dir: std::path::PathBuf,
    made_dir: bool,
    _file: std::fs::File,
}

impl RunDirLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("--out: cannot make {}: {e}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow!("--out: {}: {e}", path.display()))?;
        // flock(2): released by the OS when the process ends, however it ends.
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let e = std::io::Error::last_os_error();
            if made_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "--out: another diffuse command is training in {} (it holds {}); wait for it \
                     or choose another directory",
                    dir.display(),
                    path.display()
                );
            }
            bail!("--out: locking {}: {e}", path.display());
        }
        Ok(RunDirLock {
            dir: dir.to_path_buf(),
            made_dir,
            _file: file,
        })
    }
}

impl Drop for RunDirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
        if self.made_dir && !holds_files(&self.dir) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last line of a training command.
pub fn print_training_outcome(
    summary: &TrainSummary,
    total_steps: u64,
    model_dir: Option<&Path>,
    seconds: f64,
    modality: &str,
) {
    if !dist::is_main() {
        return;
    }
    println!(
        "{}",
        training_outcome_line(summary, total_steps, model_dir, seconds, modality)
    );
}

/// The closing line of a `train` command: what this command trained (a resumed run counts only
/// its new steps), where the model is and how to sample it.
fn training_outcome_line(
    summary: &TrainSummary,
    total_steps: u64,
    model_dir: Option<&Path>,
    seconds: f64,
    modality: &str,
) -> String {
    let (start, done) = (summary.steps_at_start, summary.steps_done);
    let trained = done.saturating_sub(start);
    let plural = if trained == 1 { "" } else { "s" };
    match model_dir {
        Some(dir) if trained == 0 => format!(
            "nothing to train: the run already has its {done} steps (pass a larger --steps with --resume \
             to train longer); model in {} (sample it with `{}`)",
            dir.display(),
            sample_hint(modality, dir)
        ),
        Some(dir) => {
            let span = if start > 0 {
                format!(" (steps {} to {done})", start + 1)
            } else {
                String::new()
            };
            format!(
                "trained {trained} step{plural}{span} in {seconds:.0} s; model in {} (sample it with `{}`)",
                dir.display(),
                sample_hint(modality, dir)
            )
        }
        None => format!(
            "stopped at step {done} of {total_steps} after {seconds:.0} s ({trained} step{plural} this time); \
             continue with --resume"
        ),
    }
}

/// The command that samples a freshly trained model: images and audio with their fast default
/// samplers, so the first thing a user runs takes seconds.
fn sample_hint(modality: &str, dir: &Path) -> String {
    // The commands that write files need to be told where, or the hint would not run as shown.
    let out = match modality {
        "image" => " --out grid.png",
        "audio" => " --out clip.wav",
        "counts" => " --out samples.csv",
        _ => "",
    };
    format!("diffuse sample {modality} --model {}{out}", dir.display())
}

/// The training-loop flags every `train` command shares, with the same defaults everywhere
/// (batch size, learning rate, weight decay and EMA defaults differ per modality and stay with
/// each command).
#[derive(clap::Args, Debug)]
pub struct LoopArgs {
    /// constant, constant_with_warmup, linear or cosine.
    #[arg(long, default_value = "cosine")]
    pub lr_schedule: String,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: u64,
    /// Clip the gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Micro-batches accumulated into one optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: u64,
    /// f32, or bf16 (autocast; CUDA only).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Seed of the initial weights, the data order and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N (in a multi-process run auto and cuda mean cuda:LOCAL_RANK).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Write a resumable checkpoint every N steps.
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are removed; 0 keeps all).
    #[arg(long, default_value_t = 3)]
    pub keep_last: usize,
    /// Log the loss every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Stop after this many total steps as if interrupted (resume later with --resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
}

/// The values of one run's training loop: the shared flags and the modality's own.
pub struct LoopFlags<'a> {
    pub shared: &'a LoopArgs,
    pub steps: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub ema: Option<EmaConfig>,
}

impl LoopFlags<'_> {
    /// Write the flags into `t`, with one clear error naming a bad --lr-schedule or --precision.
    pub fn apply(self, t: &mut TrainConfig) -> Result<()> {
        let shared = self.shared;
        // Checked here, with the flag's name, before anything is written to the run directory.
        if self.steps == 0 {
            bail!("--steps: must be at least 1");
        }
        if shared.grad_accum == 0 {
            bail!("--grad-accum: must be at least 1");
        }
        if shared.log_every == 0 {
            bail!("--log-every: must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr: expected a positive number, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "--weight-decay: expected 0 or a positive number, got {}",
                self.weight_decay
            );
        }
        if !(shared.max_grad_norm.is_finite() && shared.max_grad_norm >= 0.0) {
            bail!(
                "--max-grad-norm: expected 0 (off) or a positive number, got {}",
                shared.max_grad_norm
            );
        }
        if let Some(ema) = &self.ema {
            if !(ema.decay.is_finite() && (0.0..1.0).contains(&ema.decay)) {
                bail!(
                    "--ema-decay: expected 0 (no EMA) or a number below 1, got {}",
                    ema.decay
                );
            }
        }
        t.steps = self.steps;
        t.grad_accum = shared.grad_accum;
        t.max_grad_norm = (shared.max_grad_norm > 0.0).then_some(shared.max_grad_norm);
        t.optimizer.lr = self.lr;
        t.optimizer.weight_decay = self.weight_decay;
        t.lr_schedule = shared
            .lr_schedule
            .parse()
            .map_err(|e| anyhow!("--lr-schedule: {e}"))?;
        t.warmup_steps = shared.warmup_steps;
        t.ema = self.ema;
        t.seed = shared.seed;
        t.checkpoint_every = shared.checkpoint_every;
        t.keep_last = shared.keep_last;
        t.log_every = shared.log_every;
        t.precision = shared
            .precision
            .parse::<Precision>()
            .map_err(|e| anyhow!("--precision: {e}"))?;
        Ok(())
    }
}
