//! The text commands: `train text`, `train-tokenizer`, `sample text` (unconditional, `--prompt`,
//! `--infill`) and `eval text` (bits per character on held-out text).

use crate::given::{flag_name, given, given_among};
use crate::model_kind::{check_model_kind, ModelKind};
use crate::run_dir::{device, prepare_output_file, step_bar, LoopArgs, LoopFlags, TrainingCommand};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use diffuse_tensor::data::recorded_data_path;
use diffuse_tensor::ema::EmaConfig;
use diffuse_text::corpus::{corpus_names, default_datasets_dir, Corpus};
use diffuse_text::pipeline::{TextPipeline, TextSampleOptions, UnmaskOrder};
use diffuse_text::process::{ProcessConfig, ProcessKind, MASK_SCHEDULE_NAMES};
use diffuse_text::tokenizer::BPE_BYTE_ALPHABET;
use diffuse_text::train::{
    read_run_config, train_text_model, InitModel, TextTrainConfig, RUN_CONFIG,
};
use diffuse_text::transformer::Positions;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `diffuse train text`.
#[derive(Args, Debug)]
pub struct TrainTextArgs {
    /// Corpus: shakespeare, a UTF-8 text file, or a folder of .txt files (recursive).
    #[arg(long)]
    pub data: Option<String>,
    /// Run directory (checkpoints, metrics, samples, validation, the final model in RUN_DIR/model).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its run.json settings apply; --steps may extend it).
    #[arg(long)]
    pub resume: bool,
    /// Start from this text model's weights (a model directory or a run's): fine-tune it on
    /// --data, or train it further. Its network, tokenizer, process and context are used.
    #[arg(long, value_name = "MODEL_DIR")]
    pub init: Option<PathBuf>,
    /// mdlm, bd3lm (block diffusion), d3pm-absorbing, d3pm-uniform or autoregressive (the causal
    /// baseline).
    #[arg(long, default_value = "mdlm")]
    pub process: String,
    /// bd3lm: tokens per block (divides --seq-len; 1 is autoregressive, --seq-len is MDLM).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// mdlm, bd3lm: masking schedule, log-linear, linear or cosine.
    #[arg(long, default_value = "log-linear")]
    pub mask_schedule: String,
    /// mdlm, bd3lm: how the bound is estimated in training and validation, time (a time per
    /// block) or count (a masked count per block: lower variance).
    #[arg(long)]
    pub estimator: Option<String>,
    /// mdlm, bd3lm: what training minimises, elbo (the bound) or masked-ce (the unweighted
    /// cross-entropy of the masked tokens; still scored with the bound).
    #[arg(long)]
    pub loss: Option<String>,
    /// mdlm, bd3lm: train on mask rates in LO,HI only (BD3-LM's clipped schedule, e.g. 0.3,0.8).
    #[arg(long, value_name = "LO,HI")]
    pub mask_rate_range: Option<String>,
    /// D3PM: number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub d3pm_timesteps: usize,
    /// D3PM: lambda of L_vlb + lambda * CE(x0).
    #[arg(long, default_value_t = 0.01)]
    pub hybrid_lambda: f64,
    /// Feed the noise level to the network (adaLN): default on for D3PM, off for MDLM.
    #[arg(long)]
    pub time_conditioning: Option<bool>,
    /// char, bpe, or the path of a tokenizer.json.
    #[arg(long, default_value = "char")]
    pub tokenizer: String,
    /// Vocabulary size of --tokenizer bpe.
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Tokens per training sequence (the model's context).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Fraction of each document held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Optimiser steps (default 1000; with --resume, extends the run when larger).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// EMA decay (0 = no EMA).
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Transformer width.
    #[arg(long, default_value_t = 256)]
    pub hidden_size: i64,
    #[arg(long, default_value_t = 6)]
    pub layers: i64,
    #[arg(long, default_value_t = 4)]
    pub heads: i64,
    #[arg(long, default_value_t = 4.0)]
    pub mlp_ratio: f64,
    /// rotary or learned.
    #[arg(long, default_value = "rotary")]
    pub positions: String,
    /// Dropout on attention and MLP outputs (0 suits runs of a few thousand steps; longer runs
    /// on small corpora may want 0.1).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Write samples and a validation estimate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    #[arg(long, default_value_t = 4)]
    pub sample_num: usize,
    #[command(flatten)]
    pub train_loop: LoopArgs,
}

/// `--data` as run.json records it: an existing path made absolute (so the run resumes and its
/// model evaluates from any directory), a corpus name kept as a name.
fn recorded_data(arg: &str) -> String {
    recorded_data_path(arg, &corpus_names())
}

/// Flags typed for another process or tokenizer would otherwise be accepted and ignored (or,
/// for --time-conditioning, recorded in diffuse.json though the network never sees it). Only
/// typed flags count: clap's defaults are there for every process.
fn refuse_flags_that_do_not_apply(args: &TrainTextArgs, kind: ProcessKind) -> Result<()> {
    let d3pm = matches!(kind, ProcessKind::D3pmAbsorbing | ProcessKind::D3pmUniform);
    let masked = kind.is_masked_diffusion();
    let rules: [(&str, bool, &str); 8] = [
        ("block_size", kind == ProcessKind::Bd3lm, "--process bd3lm"),
        ("estimator", masked, "the masked processes (mdlm, bd3lm)"),
        ("loss", masked, "the masked processes (mdlm, bd3lm)"),
        (
            "mask_rate_range",
            masked,
            "the masked processes (mdlm, bd3lm)",
        ),
        (
            "d3pm_timesteps",
            d3pm,
            "the D3PM processes (d3pm-absorbing, d3pm-uniform)",
        ),
        (
            "hybrid_lambda",
            d3pm,
            "the D3PM processes (d3pm-absorbing, d3pm-uniform)",
        ),
        (
            "mask_schedule",
            masked,
            "the masked processes (mdlm, bd3lm)",
        ),
        (
            "time_conditioning",
            !matches!(kind, ProcessKind::Autoregressive | ProcessKind::Bd3lm),
            "mdlm, d3pm-absorbing and d3pm-uniform (bd3lm has a noise level per block, and the \
             share of [MASK] tokens tells the network)",
        ),
    ];
    for (id, applies, to) in rules {
        if given(id) && !applies {
            bail!(
                "{}: applies only to {to}, not to --process {}",
                flag_name(id),
                kind.name()
            );
        }
    }
    if given("vocab_size") && args.tokenizer != "bpe" {
        bail!(
            "--vocab-size: applies only to --tokenizer bpe (a trained BPE vocabulary), not to \
             --tokenizer {}",
            args.tokenizer
        );
    }
    Ok(())
}

/// `--mask-rate-range LO,HI`: 0 <= LO < HI <= 1.
fn parse_range(text: &str) -> Result<[f64; 2]> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let parsed: Option<Vec<f64>> = parts.iter().map(|p| p.parse().ok()).collect();
    match parsed.as_deref() {
        Some(&[lo, hi])
            if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi && hi <= 1.0 =>
        {
            Ok([lo, hi])
        }
        _ => bail!("--mask-rate-range: expected LO,HI with 0 <= LO < HI <= 1, got '{text}'"),
    }
}

fn build_config(args: &TrainTextArgs) -> Result<TextTrainConfig> {
    let data = args
        .data
        .as_deref()
        .map(recorded_data)
        .ok_or_else(|| anyhow!("--data: required (shakespeare, a text file or a folder)"))?;
    let init = match &args.init {
        Some(dir) => {
            // What the model fixes cannot be chosen again; the process can (adaptation).
            let fixed = given_among([
                "tokenizer",
                "vocab_size",
                "seq_len",
                "hidden_size",
                "layers",
                "heads",
                "mlp_ratio",
                "positions",
            ]);
            if let Some(flag) = fixed.first() {
                bail!(
                    "{flag}: --init takes the network, tokenizer and context from {} (drop {})",
                    dir.display(),
                    fixed.join(" ")
                );
            }
            Some(InitModel::read(dir).map_err(|e| anyhow!("--init: {e}"))?)
        }
        None => None,
    };
    // With --init the process is the model's unless one is typed: then the model is adapted.
    let kind = match &init {
        Some(init) if !given("process") => init.process.kind,
        _ => ProcessKind::parse(&args.process)?,
    };
    refuse_flags_that_do_not_apply(args, kind)?;
    if !MASK_SCHEDULE_NAMES.contains(&args.mask_schedule.as_str()) {
        bail!(
            "--mask-schedule: unknown schedule '{}' (expected one of {})",
            args.mask_schedule,
            MASK_SCHEDULE_NAMES.join(", ")
        );
    }
    // The network's and the process's own checks would refuse these too, but later and without
    // the flag's name.
    if args.d3pm_timesteps == 0 {
        bail!("--d3pm-timesteps: must be at least 1, got 0");
    }
    if !(args.hybrid_lambda.is_finite() && args.hybrid_lambda >= 0.0) {
        bail!(
            "--hybrid-lambda: must be a finite number >= 0, got {}",
            args.hybrid_lambda
        );
    }
    if args.tokenizer == "bpe" && args.vocab_size < BPE_BYTE_ALPHABET {
        bail!(
            "--vocab-size: a BPE vocabulary needs at least {BPE_BYTE_ALPHABET} tokens (the byte \
             alphabet), got {}",
            args.vocab_size
        );
    }
    for (flag, value) in [
        ("--hidden-size", args.hidden_size),
        ("--layers", args.layers),
        ("--heads", args.heads),
    ] {
        if value < 1 {
            bail!("{flag}: must be at least 1, got {value}");
        }
    }
    if args.hidden_size % args.heads != 0 {
        bail!(
            "--hidden-size: {} is not divisible by --heads {}",
            args.hidden_size,
            args.heads
        );
    }
    if args.positions == "rotary" && (args.hidden_size / args.heads) % 2 != 0 {
        bail!(
            "--hidden-size: rotary positions need an even width per head, and {} / --heads {} \
             = {} (or use --positions learned)",
            args.hidden_size,
            args.heads,
            args.hidden_size / args.heads
        );
    }
    // At least one MLP unit: the network rounds hidden_size * mlp_ratio.
    if !(args.mlp_ratio.is_finite() && (args.mlp_ratio * args.hidden_size as f64).round() >= 1.0) {
        bail!(
            "--mlp-ratio: must be a positive number giving at least one MLP unit at \
             --hidden-size {}, got {}",
            args.hidden_size,
            args.mlp_ratio
        );
    }
    // From a model of the same process, its settings stand unless typed.
    let (mut process, seq_len) = match &init {
        Some(init) if init.process.kind == kind => (init.process.clone(), init.seq_len),
        Some(init) => (ProcessConfig::new(kind), init.seq_len),
        None => (ProcessConfig::new(kind), args.seq_len),
    };
    if init.is_none() || given("mask_schedule") {
        process.mask_schedule = args.mask_schedule.clone();
    }
    if init.is_none() || given("d3pm_timesteps") {
        process.d3pm_timesteps = args.d3pm_timesteps;
    }
    process.hybrid_lambda = args.hybrid_lambda;
    if let Some(tc) = args.time_conditioning {
        process.time_conditioning = tc;
    }
    if let Some(b) = args.block_size {
        process.block_size = b;
    }
    if let Some(e) = &args.estimator {
        process.estimator = e.clone();
        process.bound_estimator()?;
    }
    if let Some(l) = &args.loss {
        process.loss = l.clone();
        process.training_loss()?;
    }
    if let Some(r) = &args.mask_rate_range {
        process.mask_rate_range = Some(parse_range(r)?);
    }
    process.check_seq_len(seq_len)?;
    if !(0.0..1.0).contains(&args.val_fraction) || args.val_fraction == 0.0 {
        bail!(
            "--val-fraction: must lie in (0, 1), got {}",
            args.val_fraction
        );
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout: must lie in [0, 1), got {}", args.dropout);
    }
    let mut config = TextTrainConfig {
        data,
        tokenizer: args.tokenizer.clone(),
        bpe_vocab_size: args.vocab_size,
        seq_len: args.seq_len,
        val_fraction: args.val_fraction,
        batch_size: args.batch_size,
        process,
        sample_every: args.sample_every,
        sample_num: args.sample_num,
        ..TextTrainConfig::default()
    };
    let m = &mut config.model;
    m.hidden_size = args.hidden_size;
    m.num_layers = args.layers;
    m.num_heads = args.heads;
    m.mlp_ratio = args.mlp_ratio;
    m.dropout = args.dropout;
    m.positions = match args.positions.as_str() {
        "rotary" => Positions::Rotary,
        "learned" => Positions::Learned,
        other => bail!("--positions: expected rotary or learned, got '{other}'"),
    };
    LoopFlags {
        shared: &args.train_loop,
        steps: args.steps.unwrap_or(1000),
        lr: args.lr,
        weight_decay: args.weight_decay,
        ema: (args.ema_decay > 0.0).then(|| EmaConfig {
            decay: args.ema_decay,
            ..EmaConfig::default()
        }),
    }
    .apply(&mut config.train)?;
    if let Some(init) = &init {
        let process = config.process.clone();
        init.apply(&mut config, Some(process));
    }
    Ok(config)
}

pub fn train(args: TrainTextArgs) -> Result<()> {
    TrainingCommand {
        modality: "text",
        out: &args.out,
        resume: args.resume,
        steps: args.steps,
        run_config: RUN_CONFIG,
        shared: &args.train_loop,
        train_config: |c: &mut TextTrainConfig| &mut c.train,
    }
    .run(
        |run_dir: &Path| -> Result<TextTrainConfig> {
            let mut config = read_run_config(run_dir)?;
            // --data on --resume points the run at data that moved; the other settings stay.
            if let Some(data) = &args.data {
                config.data = recorded_data(data);
            }
            Ok(config)
        },
        || build_config(&args),
        |_| Ok(()),
        |config, device, resume, stop_after| {
            train_text_model(config, &args.out, device, resume, stop_after)
        },
    )
}

/// `diffuse train-tokenizer`.
#[derive(Args, Debug)]
pub struct TrainTokenizerArgs {
    /// Corpus: shakespeare, a UTF-8 text file, or a folder of .txt files.
    #[arg(long)]
    pub data: String,
    /// char (one token per character of the corpus) or bpe (byte-level BPE).
    #[arg(long, default_value = "bpe")]
    pub kind: String,
    /// BPE vocabulary size (at least 256, the byte alphabet).
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Where to write tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn train_tokenizer(args: TrainTokenizerArgs) -> Result<()> {
    if !matches!(args.kind.as_str(), "char" | "bpe") {
        bail!("--kind: expected char or bpe, got '{}'", args.kind);
    }
    let corpus =
        Corpus::load(&args.data, &default_datasets_dir()).map_err(|e| anyhow!("--data: {e}"))?;
    // Before the training, so a bad --out costs nothing.
    prepare_output_file(&args.out, "--out")?;
    let tokenizer = match args.kind.as_str() {
        "char" => corpus.char_tokenizer()?,
        "bpe" => corpus
            .train_bpe(args.vocab_size)
            .map_err(|e| anyhow!("--vocab-size: {e}"))?,
        other => bail!("--kind: expected char or bpe, got '{other}'"),
    };
    tokenizer
        .save(&args.out)
        .with_context(|| format!("--out: writing {}", args.out.display()))?;
    let sample: String = corpus
        .documents()
        .iter()
        .map(|d| d.text.as_str())
        .collect::<String>();
    let cpt = tokenizer.chars_per_token(&sample)?;
    println!(
        "wrote {} ({} tokens, {cpt:.2} characters per token on the corpus)",
        args.out.display(),
        tokenizer.vocab_size()
    );
    Ok(())
}

/// `diffuse sample text`.
#[derive(Args, Debug)]
pub struct SampleTextArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub num: usize,
    /// Tokens per sample, prompt included (default: the model's training length; MDLM and
    /// autoregressive models go past it, semi-autoregressively or with a sliding window).
    #[arg(long)]
    pub length: Option<usize>,
    /// Reverse diffusion steps (default: the length; for bd3lm, steps per block, default four
    /// times the block size).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Text the samples start with.
    #[arg(long, conflicts_with = "infill")]
    pub prompt: Option<String>,
    /// A template whose `_` characters are generated (one token each) and the rest kept.
    #[arg(long)]
    pub infill: Option<String>,
    /// Divides the logits (below 1: more conservative).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// mdlm, bd3lm: call the model at every step even when nothing changed.
    #[arg(long)]
    pub no_cache: bool,
    /// mdlm, bd3lm: which masked tokens each step reveals: random (the ancestral sampler; mdlm's
    /// default), left-to-right (one token per call by default; bd3lm's default) or confidence
    /// (the most probable draws first: more common words, more repetition).
    #[arg(long)]
    pub order: Option<String>,
    /// Also write the samples to this text file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON (samples, model calls, seconds).
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn sample(args: SampleTextArgs) -> Result<()> {
    let device = device(&args.device)?;
    check_model_kind(&args.model, ModelKind::Text, "sample")?;
    let pipeline = TextPipeline::load(&args.model, device).map_err(|e| anyhow!("--model: {e}"))?;
    let options = TextSampleOptions {
        num: args.num,
        length: args.length,
        steps: args.steps,
        temperature: args.temperature,
        top_p: args.top_p,
        cache: !args.no_cache,
        order: args
            .order
            .as_deref()
            .map(UnmaskOrder::parse)
            .transpose()
            .map_err(|e| anyhow!("--order: {e}"))?,
        seed: Some(args.seed),
    };
    if args.num == 0 {
        bail!("--num: must be at least 1");
    }
    // The sampler refuses these too, but without the flag's name.
    if args.steps == Some(0) {
        bail!("--steps: must be at least 1, got 0");
    }
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        bail!(
            "--temperature: must be a finite number > 0, got {}",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p: must lie in (0, 1], got {}", args.top_p);
    }
    if let Some(out) = &args.out {
        // Before sampling, so a bad --out costs nothing.
        prepare_output_file(out, "--out")?;
    }
    let started = Instant::now();
    let (bar, on_step) = step_bar("sample");
    let samples = match (&args.prompt, &args.infill) {
        (Some(p), _) => pipeline.continue_prompt(p, &options, on_step),
        (None, Some(t)) => pipeline.infill(t, &options, on_step),
        (None, None) => pipeline.sample(&options, on_step),
    }
    .map_err(|e| {
        bar.finish_and_clear();
        anyhow!(e)
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let chars: usize = samples.texts.iter().map(|t| t.chars().count()).sum();
    if let Some(out) = &args.out {
        let mut text = String::new();
        for (i, s) in samples.texts.iter().enumerate() {
            text += &format!("=== sample {i} ===\n{s}\n\n");
        }
        diffuse_tensor::atomic::write_atomic(out, |w| {
            std::io::Write::write_all(w, text.as_bytes())
        })
        .with_context(|| format!("--out: writing {}", out.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "samples": samples.texts,
                "model_calls": samples.model_calls,
                "seconds": secs,
                "characters_per_second": chars as f64 / secs.max(1e-9),
            }))?
        );
    } else {
        for (i, s) in samples.texts.iter().enumerate() {
            println!("=== sample {i} ===\n{s}\n");
        }
        eprintln!(
            "{} samples, {chars} characters in {secs:.2} s ({:.0} characters/s, {} model calls)",
            samples.texts.len(),
            chars as f64 / secs.max(1e-9),
            samples.model_calls
        );
    }
    Ok(())
}

/// `diffuse eval text`.
#[derive(Args, Debug)]
pub struct EvalTextArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Corpus whose held-out part to score (default: the one the model was trained on).
    #[arg(long)]
    pub data: Option<String>,
    /// Fraction of each document held out (default: the model's training split).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Score at most this many held-out sequences (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// mdlm, bd3lm: Monte Carlo draws per sequence (bd3lm: per block; with the count estimator
    /// and as many draws as the block size, every count is scored once).
    #[arg(long, default_value_t = 4)]
    pub mc_samples: usize,
    /// mdlm, bd3lm: estimate the bound with time or count draws (default: the model's own).
    #[arg(long)]
    pub estimator: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn eval(args: EvalTextArgs) -> Result<()> {
    let device = device(&args.device)?;
    check_model_kind(&args.model, ModelKind::Text, "eval")?;
    let mut pipeline =
        TextPipeline::load(&args.model, device).map_err(|e| anyhow!("--model: {e}"))?;
    if let Some(e) = &args.estimator {
        pipeline.set_estimator(e)?;
    }
    let data = args
        .data
        .clone()
        .or_else(|| pipeline.info.dataset.clone())
        .ok_or_else(|| {
            anyhow!("--data: the model does not say what it was trained on; name the corpus")
        })?;
    let val_fraction = args
        .val_fraction
        .or(pipeline.info.val_fraction)
        .unwrap_or(0.05);
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        bail!("--val-fraction: must lie in (0, 1), got {val_fraction}");
    }
    if args.batch_size == 0 || args.mc_samples == 0 {
        bail!("--batch-size and --mc-samples: must be at least 1");
    }
    let corpus =
        Corpus::load(&data, &default_datasets_dir()).map_err(|e| anyhow!("--data: {e}"))?;
    // Only the held-out split is scored, so only it has to hold a whole sequence.
    let held_out = corpus
        .held_out(
            &pipeline.model.tokenizer,
            pipeline.info.seq_len,
            val_fraction,
        )
        .map_err(|e| anyhow!("--data: {e} (--val-fraction {val_fraction})"))?;
    let held_out = if args.limit > 0 {
        held_out.take(args.limit)
    } else {
        held_out
    };
    diffuse_tensor::manual_seed(args.seed);
    let (bar, on_step) = step_bar("eval");
    let report = pipeline.evaluate(&held_out, args.batch_size, args.mc_samples, on_step)?;
    bar.finish_and_clear();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["model"] = args.model.display().to_string().into();
        v["data"] = data.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "bits/char {:.4} ± {:.4} ({}; {})",
            report.bits_per_char, report.bits_per_char_std_error, report.kind, report.protocol
        );
    }
    Ok(())
}
