//! `diffuse train|sample|eval counts`: count-vector models, thin over `diffuse-counts`.

use crate::model_kind::{check_model_kind, ModelKind};
use crate::poisson::JumpArgs;
use crate::run_dir::{device, prepare_output_file, step_bar, LoopArgs, LoopFlags, TrainingCommand};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_counts::data::{load_counts, save_counts, CountTable};
use diffuse_counts::eval::{emd_report, save_histograms};
use diffuse_counts::model::{CountModel, CountSampleOptions};
use diffuse_counts::train::{
    load_split, read_run_config, train_count_model, CountTrainConfig, RUN_CONFIG,
};
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::progress::progress_bar;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// `diffuse train counts`.
#[derive(Args, Debug)]
pub struct TrainCountsArgs {
    /// The count table: CSV/TSV (a header row of column names is optional) or a NumPy .npy array
    /// of non-negative integers, one example per row.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory (checkpoints, metrics, histogram previews, the final model in RUN_DIR/model).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (--steps may extend it).
    #[arg(long)]
    pub resume: bool,
    /// Fraction of rows held out from training (evaluation and previews use them).
    #[arg(long, default_value_t = 0.1)]
    pub held_out: f64,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Optimiser steps (default 2000; with --resume, extends the run).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// EMA decay (0 = no EMA).
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Width of the MLP's hidden layers.
    #[arg(long, default_value_t = 256)]
    pub hidden: i64,
    /// Residual blocks of the MLP.
    #[arg(long, default_value_t = 3)]
    pub blocks: i64,
    /// Width of the timestep embedding.
    #[arg(long, default_value_t = 64)]
    pub time_embed: i64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Training timesteps T.
    #[arg(long, default_value_t = 1000)]
    pub num_train_timesteps: usize,
    /// beta_1 of the beta-linear survival schedule.
    #[arg(long, default_value_t = 0.001)]
    pub beta_start: f64,
    #[command(flatten)]
    pub jump: JumpArgs,
    /// Write a histogram preview every N steps (0 = only at the end).
    #[arg(long, default_value_t = 1000)]
    pub sample_every: u64,
    /// Rows generated for each preview.
    #[arg(long, default_value_t = 1000)]
    pub sample_num: usize,
    /// Thickening steps for each preview.
    #[arg(long, default_value_t = 100)]
    pub sample_steps: usize,
    #[command(flatten)]
    pub train_loop: LoopArgs,
}

fn build_config(args: &TrainCountsArgs) -> Result<CountTrainConfig> {
    let data = args
        .data
        .as_ref()
        .ok_or_else(|| anyhow!("--data: required (a CSV or .npy table of counts)"))?;
    if !(args.held_out > 0.0 && args.held_out < 1.0) {
        bail!(
            "--held-out: must lie strictly between 0 and 1, got {}",
            args.held_out
        );
    }
    let mut config = CountTrainConfig {
        data: diffuse_tensor::data::recorded_data_path(&data.display().to_string(), &[]),
        held_out: args.held_out,
        batch_size: args.batch_size,
        sample_every: args.sample_every,
        sample_num: args.sample_num,
        sample_steps: args.sample_steps,
        ..CountTrainConfig::default()
    };
    config.network.hidden = args.hidden;
    config.network.blocks = args.blocks;
    config.network.time_embed = args.time_embed;
    config.network.dropout = args.dropout;
    args.jump.apply(
        &mut config.process,
        Some(args.num_train_timesteps),
        Some(args.beta_start),
    )?;
    LoopFlags {
        shared: &args.train_loop,
        steps: args.steps.unwrap_or(2000),
        lr: args.lr,
        weight_decay: args.weight_decay,
        ema: (args.ema_decay > 0.0).then(|| EmaConfig {
            decay: args.ema_decay,
            ..EmaConfig::default()
        }),
    }
    .apply(&mut config.train)?;
    Ok(config)
}

pub fn train(args: TrainCountsArgs) -> Result<()> {
    TrainingCommand {
        modality: "counts",
        out: &args.out,
        resume: args.resume,
        steps: args.steps,
        run_config: RUN_CONFIG,
        shared: &args.train_loop,
        train_config: |c: &mut CountTrainConfig| &mut c.train,
    }
    .run(
        |dir: &Path| -> Result<CountTrainConfig> {
            let mut config = read_run_config(dir)?;
            // Data that moved: --data with --resume names its new place.
            if let Some(data) = &args.data {
                config.data =
                    diffuse_tensor::data::recorded_data_path(&data.display().to_string(), &[]);
            }
            Ok(config)
        },
        || build_config(&args),
        |_| Ok(()),
        |config, device, resume, stop_after| {
            train_count_model(config, &args.out, device, resume, stop_after)
        },
    )
}

/// Check an output table's extension before any work is done.
fn check_table_path(path: &Path, flag: &str) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(ext.as_str(), "csv" | "tsv" | "npy") {
        bail!(
            "{flag}: {}: the format is chosen by the extension, expected .csv, .tsv or .npy",
            path.display()
        );
    }
    Ok(())
}

fn check_png_path(path: &Path, flag: &str) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "png" {
        bail!("{flag}: {}: expected a .png file name", path.display());
    }
    Ok(())
}

/// Load `--model` for `verb` (sample, eval); another modality's model is named as such.
fn load_model(model: &Path, device: tch::Device, verb: &str) -> Result<CountModel> {
    check_model_kind(model, ModelKind::Counts, verb)?;
    CountModel::load(model, device).map_err(|e| anyhow!("--model: {e}"))
}

/// The held-out rows a model is compared with: `--data FILE` (all its rows), else the held-out
/// split of the file it was trained on.
fn held_out_rows(
    model: &CountModel,
    data: Option<&Path>,
) -> Result<(CountTable, Option<CountTable>)> {
    let (held_out, train) = match data {
        Some(path) => (load_counts(path).map_err(|e| anyhow!("--data: {e}"))?, None),
        None => {
            let file = model.info.data.clone().ok_or_else(|| {
                anyhow!("--data: the model does not say what it was trained on; give a table")
            })?;
            let config = CountTrainConfig {
                data: file.clone(),
                held_out: model.info.held_out,
                ..CountTrainConfig::default()
            };
            let (train, held_out) = load_split(&config).map_err(|e| {
                anyhow!(
                    "--data: the model's training file {file} cannot be read ({e}); give --data"
                )
            })?;
            (held_out, Some(train))
        }
    };
    if held_out.dim() as i64 != model.dim() {
        bail!(
            "--data: the table has {} columns but the model makes {}",
            held_out.dim(),
            model.dim()
        );
    }
    Ok((held_out, train))
}

/// `diffuse sample counts`.
#[derive(Args, Debug)]
pub struct SampleCountsArgs {
    /// Model directory (or a training run directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Rows to generate.
    #[arg(long, default_value_t = 1000)]
    pub num: usize,
    /// Output table: .csv, .tsv or .npy.
    #[arg(long)]
    pub out: PathBuf,
    /// jump (Poisson thickening, JUMP) or blackout (binomial bridge; binomial thinning only).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Model calls per row (default: every training step).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Fix columns and generate the rest: NAME=COUNT,... (names or 0-based column numbers).
    #[arg(long)]
    pub given: Option<String>,
    /// Rows per model call (default: all at once; the noise is drawn per batch, so with a seed the
    /// rows depend on the batch size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Also draw histograms of the generated columns against the held-out data (PNG).
    #[arg(long)]
    pub histogram: Option<PathBuf>,
    /// --histogram: the table to compare with (default: the held-out rows of the model's
    /// training file).
    #[arg(long, requires = "histogram")]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn sample(args: SampleCountsArgs) -> Result<()> {
    check_table_path(&args.out, "--out")?;
    prepare_output_file(&args.out, "--out")?;
    if let Some(h) = &args.histogram {
        check_png_path(h, "--histogram")?;
        prepare_output_file(h, "--histogram")?;
    }
    let device = device(&args.device)?;
    let model = load_model(&args.model, device, "sample")?;
    // What the histogram compares with is found before the sampling, not after.
    let held_out = match &args.histogram {
        Some(_) => Some(held_out_rows(&model, args.data.as_deref())?.0),
        None => None,
    };
    let given = match &args.given {
        Some(spec) => model.parse_given(spec)?,
        None => Vec::new(),
    };
    let options = CountSampleOptions {
        num: args.num,
        sampler: args.sampler.clone(),
        steps: args.steps,
        seed: Some(args.seed),
        batch_size: args.batch_size,
        given,
    };
    model.sampler_and_steps(&options)?;
    let started = Instant::now();
    let (bar, on_step) = step_bar("sample");
    let rows = model.sample(&options, on_step)?;
    bar.finish();
    let table = CountTable {
        values: rows.shallow_clone(),
        columns: model.info.columns.clone(),
        item_shape: if model.info.item_shape.is_empty() {
            vec![model.dim()]
        } else {
            model.info.item_shape.clone()
        },
    };
    if let (Some(path), Some(held_out)) = (&args.histogram, &held_out) {
        let report = emd_report(&rows, &held_out.values, None, &model.info.columns);
        save_histograms(
            &rows,
            &held_out.values,
            &report,
            &histogram_title(&report, "generated"),
            path,
        )?;
        println!("wrote {} ({})", path.display(), report.summary());
    }
    save_counts(&args.out, &table)?;
    println!(
        "wrote {} ({})",
        args.out.display(),
        crate::count_of(args.num as u64, "row")
    );
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "sampled {} rows",
        args.num
    );
    Ok(())
}

fn histogram_title(report: &diffuse_counts::eval::EmdReport, what: &str) -> String {
    let n = report.columns.len();
    let shown = if n > 16 {
        format!(" (first 16 of {n} columns)")
    } else {
        String::new()
    };
    format!("{what}: mean EMD {:.3}{shown}", report.mean_emd)
}

/// `diffuse eval counts`.
#[derive(Args, Debug)]
pub struct EvalCountsArgs {
    /// Model directory (or a training run directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Table to compare with (default: the held-out rows of the model's training file).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// emd (earth mover's distance of every column's marginal) and/or bpd (bits/dim from the
    /// full bound, binomial thinning only); comma-separated.
    #[arg(long, default_value = "emd", value_delimiter = ',')]
    pub metric: Vec<String>,
    /// emd: rows to generate.
    #[arg(long, default_value_t = 2000)]
    pub num: usize,
    /// bpd: held-out rows to bound (each costs num_train_timesteps model calls); 0 = all.
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    #[arg(long)]
    pub sampler: Option<String>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Rows per model call.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// emd: also draw the histograms (PNG).
    #[arg(long)]
    pub histogram: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(args: EvalCountsArgs) -> Result<()> {
    for m in &args.metric {
        if m != "emd" && m != "bpd" {
            bail!("--metric: unknown metric '{m}' (expected emd or bpd)");
        }
    }
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    if let Some(h) = &args.histogram {
        check_png_path(h, "--histogram")?;
    }
    let device = device(&args.device)?;
    let model = load_model(&args.model, device, "eval")?;
    let (held_out, train) = held_out_rows(&model, args.data.as_deref())?;
    let mut report = serde_json::Map::new();
    report.insert("model".into(), args.model.display().to_string().into());
    report.insert("held_out_rows".into(), held_out.len().into());
    for metric in &args.metric {
        match metric.as_str() {
            "emd" => {
                let options = CountSampleOptions {
                    num: args.num,
                    sampler: args.sampler.clone(),
                    steps: args.steps,
                    seed: Some(args.seed),
                    batch_size: Some(args.batch_size),
                    given: Vec::new(),
                };
                let (sampler, steps) = model.sampler_and_steps(&options)?;
                let (bar, on_step) = step_bar("sample");
                let started = Instant::now();
                let rows = model.sample(&options, on_step)?;
                bar.finish_and_clear();
                let seconds = started.elapsed().as_secs_f64();
                diffuse_tensor::manual_seed(args.seed);
                let emd = emd_report(
                    &rows,
                    &held_out.values,
                    train.as_ref().map(|t| &t.values),
                    &model.info.columns,
                );
                if let Some(path) = &args.histogram {
                    save_histograms(
                        &rows,
                        &held_out.values,
                        &emd,
                        &histogram_title(&emd, "eval"),
                        path,
                    )?;
                }
                if !args.json {
                    println!(
                        "{} [sampler {}, {steps} steps, {seconds:.1} s]",
                        emd.summary(),
                        sampler.name()
                    );
                }
                let mut value = serde_json::to_value(&emd)?;
                value["sampler"] = sampler.name().into();
                value["steps"] = steps.into();
                value["sampling_seconds"] = seconds.into();
                report.insert("emd".into(), value);
            }
            "bpd" => {
                let n = if args.limit == 0 {
                    held_out.len()
                } else {
                    args.limit.min(held_out.len())
                };
                let rows: Tensor = held_out.values.narrow(0, 0, n as i64);
                let t = model.process().timesteps() as u64;
                let bar = progress_bar(n.div_ceil(args.batch_size) as u64 * t, "bits/dim", "term");
                diffuse_tensor::manual_seed(args.seed);
                let bpd = model.bits_per_dim(&rows, args.batch_size, |_| bar.inc(1))?;
                bar.finish_and_clear();
                let protocol = format!(
                    "full {t}-term bound of binomial thinning, first {n} held-out rows, seed {}",
                    args.seed
                );
                if !args.json {
                    println!("bits/dim {bpd:.4} ({protocol})");
                }
                report.insert(
                    "bpd".into(),
                    serde_json::json!({"value": bpd, "rows": n, "protocol": protocol}),
                );
            }
            _ => unreachable!("checked above"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
