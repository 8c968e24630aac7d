//! Training a text model: corpus -> tokenizer -> fixed-length sequences -> the shared training
//! loop of `diffuse-tensor` (AdamW, warmup and LR schedule, EMA, clipping, accumulation,
//! checkpoints, exact resume, `metrics.jsonl`), with a text sample and a validation bits/char
//! estimate every N steps, a loss curve, and the model directory at the end.
//!
//! The run directory holds `run.json` (this config, vocabulary sizes filled in), `tokenizer.json`
//! (fixed at the start, so a resumed run encodes the corpus identically), `metrics.jsonl`,
//! `validation.jsonl`, `samples/step-N.txt`, `loss.png`, `checkpoints/` and `model/`.

use crate::corpus::{default_datasets_dir, Corpus, TokenizedCorpus};
use crate::model_dir::{
    resolve_model_dir, TextModel, CONFIG_FILE, INFO_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use crate::pipeline::{TextModelInfo, TextPipeline, TextSampleOptions};
use crate::process::{EstimateShare, ProcessConfig, TextProcess};
use crate::tokenizer::TextTokenizer;
use crate::transformer::{TextTransformer, TransformerConfig};
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::metrics::truncate_after_step;
use diffuse_tensor::plot::write_loss_curve;
use diffuse_tensor::train::{StepReport, TrainConfig, TrainOutcome, TrainTask, Trainer};
use diffuse_tensor::weights::{load_named_into, load_tensors, load_var_store};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Everything a text run needs; saved as `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextTrainConfig {
    /// `shakespeare`, a UTF-8 text file, or a folder of them.
    pub data: String,
    /// `char` (character level), `bpe` (byte-level BPE trained on the corpus) or the path of a
    /// `tokenizer.json`.
    pub tokenizer: String,
    /// BPE vocabulary size.
    pub bpe_vocab_size: usize,
    /// Tokens per training sequence (the model's context).
    pub seq_len: usize,
    /// Fraction of each document held out for validation.
    pub val_fraction: f64,
    pub batch_size: usize,
    pub process: ProcessConfig,
    /// The network; vocabulary sizes, `max_seq_len` and `causal` are filled in from the
    /// tokenizer and the process.
    pub model: TransformerConfig,
    pub train: TrainConfig,
    /// Write a text sample and a validation estimate every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Sequences in each sample file.
    pub sample_num: usize,
    /// Held-out sequences in each preview's validation estimate (systematically sampled; the
    /// full evaluation is `diffuse eval text`).
    pub eval_sequences: usize,
    /// D3PM: bound terms each preview evaluates per sequence, of T (the decoder term and one
    /// step of each of `eval_terms - 1` strata of the others; at least 2).
    pub eval_terms: usize,
    /// Start from the weights of this model directory (fine-tuning, training a model further, or
    /// adapting it to another process) instead of the seed's: its network shape, tokenizer and
    /// context must be the run's ([`InitModel::apply`] makes them so). A resumed run reads its
    /// checkpoint instead.
    pub init: Option<String>,
}

/// What a model directory fixes for a run that starts from its weights
/// ([`TextTrainConfig::init`]): the network's shape, the tokenizer and the context; and the
/// process it was trained with, which the run keeps unless it adapts the weights to another.
#[derive(Clone, Debug)]
pub struct InitModel {
    pub dir: PathBuf,
    pub model: TransformerConfig,
    pub process: ProcessConfig,
    pub seq_len: usize,
}

impl InitModel {
    /// Read `dir` (a model directory, or a run directory's `model/`), weights not yet loaded.
    pub fn read(dir: &Path) -> Result<Self> {
        let dir = resolve_model_dir(dir)?;
        for name in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, INFO_FILE] {
            if !dir.join(name).is_file() {
                return Err(Error::format(
                    &dir,
                    format!("not a text model directory to start from: {name} is missing"),
                ));
            }
        }
        let model = TransformerConfig::from_json_file(&dir.join(CONFIG_FILE))?;
        let info_path = dir.join(INFO_FILE);
        let text = fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: TextModelInfo = serde_json::from_str(&text)
            .map_err(|e| Error::format(&info_path, format!("not a text model's settings: {e}")))?;
        Ok(InitModel {
            dir,
            model,
            process: info.process,
            seq_len: info.seq_len,
        })
    }

    /// Make `config` start from this model: its network (the run's dropout kept), tokenizer and
    /// sequence length, and, with `process` `None`, its process (the run's training-only
    /// settings kept: bound estimator, loss, mask-rate range, D3PM's hybrid lambda).
    ///
    /// With `Some(process)` the run trains that process from these weights instead: an
    /// autoregressive model adapted into a masked-diffusion or block-diffusion one (as DiffuLLaMA,
    /// Gong et al. 2025, adapt causal language models), or an MDLM model fine-tuned into BD3-LM
    /// blocks (BD3-LM's own recipe, Arriola et al. 2025). The network's vocabulary sizes,
    /// causality and time conditioning then follow the run's process; see [`InitModel`]'s loading.
    pub fn apply(&self, config: &mut TextTrainConfig, process: Option<ProcessConfig>) {
        let dropout = config.model.dropout;
        config.model = self.model.clone();
        config.model.dropout = dropout;
        config.process = match process {
            Some(process) => process,
            None => {
                let mut process = self.process.clone();
                process.estimator = config.process.estimator.clone();
                process.loss = config.process.loss.clone();
                process.mask_rate_range = config.process.mask_rate_range;
                process.hybrid_lambda = config.process.hybrid_lambda;
                process
            }
        };
        config.seq_len = self.seq_len;
        // Absolute, so the run resumes (and its run.json reads) from any directory.
        let dir = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        config.tokenizer = dir.join(TOKENIZER_FILE).display().to_string();
        config.init = Some(dir.display().to_string());
    }

    /// Load the weights into `vs`, after checking that the run's network has this one's shape
    /// (width, depth, heads, MLP, positions, context).
    ///
    /// Where the run's process differs from the model's, so may three things, and each is
    /// bridged: the vocabulary (a masked process adds `[MASK]` as the last id, so the token
    /// embedding and the output layer keep the shared ids' rows and the new row keeps the seed's
    /// initialisation, or drop the row going the other way); the attention's causality (no
    /// weights); and time conditioning (adaLN weights the model lacks start at the seed's zeros,
    /// which make every block start as the model's; ones the run lacks are left out).
    fn load(&self, vs: &VarStore, model: &TransformerConfig) -> Result<()> {
        let shape = |c: &TransformerConfig| {
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.mlp_ratio.to_bits(),
                c.positions,
                c.max_seq_len,
            )
        };
        if shape(model) != shape(&self.model) {
            return Err(Error::InvalidArgument(format!(
                "--init: the network of {} is not the run's ({:?} against {:?})",
                self.dir.display(),
                self.model,
                model
            )));
        }
        let path = self.dir.join(WEIGHTS_FILE);
        let same = |c: &TransformerConfig| TransformerConfig {
            dropout: 0.0,
            ..c.clone()
        };
        if same(model) == same(&self.model) {
            return load_var_store(vs, &path, true)
                .map(|_| ())
                .map_err(|e| Error::InvalidArgument(format!("--init: {e}")));
        }
        let report = load_adapted(vs, load_tensors(&path)?.tensors, &path)
            .map_err(|e| Error::InvalidArgument(format!("--init: {e}")))?;
        tracing::info!(
            model = %self.dir.display(),
            from = self.process.kind.name(),
            to_vocabulary = model.vocab_size,
            from_vocabulary = self.model.vocab_size,
            seed_initialised = report.missing.len(),
            left_out = report.unexpected.len(),
            "adapting the model's weights to the run's process"
        );
        Ok(())
    }
}

/// Load another process's network weights into `vs`, a network of the same shape (see
/// [`InitModel`]): the vocabulary rows (token embedding, output layer) keep the ids both share and
/// the seed's initialisation for a row only the run has (`[MASK]`), or drop a row only the source
/// has; weights the run lacks (adaLN) are left out and ones only the run has keep the seed's
/// (zero adaLN makes each block start as the source's). `source` names the weights in errors.
pub fn load_adapted(
    vs: &VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
) -> Result<diffuse_tensor::weights::LoadReport> {
    let variables = vs.variables();
    let tensors = tensors
        .into_iter()
        .map(|(name, tensor)| {
            let adapted = match variables.get(&name) {
                Some(var)
                    if VOCABULARY_ROWS.contains(&name.as_str())
                        && var.size() != tensor.size()
                        && var.size()[1..] == tensor.size()[1..] =>
                {
                    let rows = var.size()[0].min(tensor.size()[0]);
                    let value = var.detach().to_device(Device::Cpu).copy();
                    value.narrow(0, 0, rows).copy_(&tensor.narrow(0, 0, rows));
                    value
                }
                _ => tensor,
            };
            (name, adapted)
        })
        .collect();
    load_named_into(vs, tensors, source, false)
}

/// The network's variables indexed by token id in their first dimension.
const VOCABULARY_ROWS: [&str; 3] = ["token_embed.weight", "head.weight", "head.bias"];

/// The default network: 6 layers of width 256, 4 heads, rotary positions (about 4.8 M
/// parameters with a character vocabulary) — a CPU-sized version of MDLM's small DiT.
pub fn small_transformer() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 0,
        output_vocab_size: 0,
        hidden_size: 256,
        num_layers: 6,
        num_heads: 4,
        mlp_ratio: 4.0,
        max_seq_len: 128,
        positions: crate::transformer::Positions::Rotary,
        dropout: 0.0,
        causal: false,
        cond_dim: 128,
        time_conditioning: false,
    }
}

impl Default for TextTrainConfig {
    fn default() -> Self {
        TextTrainConfig {
            data: "shakespeare".into(),
            tokenizer: "char".into(),
            bpe_vocab_size: 2048,
            seq_len: 128,
            val_fraction: 0.05,
            batch_size: 32,
            process: ProcessConfig::default(),
            model: small_transformer(),
            train: TrainConfig::default(),
            sample_every: 500,
            sample_num: 4,
            eval_sequences: 16,
            eval_terms: 8,
            init: None,
        }
    }
}

pub const RUN_CONFIG: &str = "run.json";
pub const RUN_TOKENIZER: &str = "tokenizer.json";
pub const MODEL_DIR: &str = "model";
/// The periodic validation estimates, one JSON record per line with its `"step"`.
pub const VALIDATION_FILE: &str = "validation.jsonl";

/// The tokenizer a config asks for, built from (or read for) `corpus`.
pub fn make_tokenizer(config: &TextTrainConfig, corpus: &Corpus) -> Result<TextTokenizer> {
    match config.tokenizer.as_str() {
        "char" => corpus.char_tokenizer(),
        "bpe" => corpus.train_bpe(config.bpe_vocab_size),
        // Every error, a missing file included, names the flag (the file's own errors name it).
        path => TextTokenizer::load(Path::new(path))
            .map_err(|e| Error::InvalidArgument(format!("--tokenizer: {e}"))),
    }
}

/// D3PM-uniform's transition spreads noise uniformly over every id below the vocabulary size,
/// and diffuse-core's uniform process has no notion of unused ids: with a tokenizer whose ids
/// have gaps, most of the noise would go to ids that never occur. Refused rather than trained.
pub fn check_tokenizer_for_process(
    process: &ProcessConfig,
    tokenizer: &TextTokenizer,
) -> Result<()> {
    let unused = tokenizer.unused_ids().len();
    if process.kind == crate::process::ProcessKind::D3pmUniform && unused > 0 {
        return Err(Error::InvalidArgument(format!(
            "--tokenizer: {unused} of its ids 0..{} name no token (gaps in the ids), and the \
             d3pm-uniform process spreads its noise over every id: renumber the tokenizer's ids \
             without gaps, or use another --process",
            tokenizer.vocab_size()
        )));
    }
    Ok(())
}

/// Fill in the network's vocabulary sizes, context and causality from the tokenizer and process.
pub fn complete_model_config(
    config: &mut TextTrainConfig,
    tokenizer: &TextTokenizer,
) -> Result<()> {
    config.process.check_seq_len(config.seq_len)?;
    let (input, output) = config
        .process
        .kind
        .vocab_sizes(tokenizer.vocab_size() as i64);
    config.model.vocab_size = input;
    config.model.output_vocab_size = output;
    config.model.max_seq_len = config.seq_len as i64;
    config.model.causal = config.process.kind == crate::process::ProcessKind::Autoregressive;
    // No adaLN weights unless the process feeds the network a noise level.
    config.model.time_conditioning = config.process.time_conditioning && !config.model.causal;
    config.model.validate()
}

struct TextTask<'a> {
    config: &'a TextTrainConfig,
    net: &'a TextTransformer,
    process: TextProcess,
    data: &'a TokenizedCorpus,
    sampler: EpochSampler,
    device: Device,
    preview: TextPipeline,
    run_dir: PathBuf,
}

impl TextTask<'_> {
    fn write_previews(&mut self, trainer: &Trainer<'_>, step: u64) -> Result<()> {
        trainer.copy_averaged_weights_to(&self.preview.model.vs);
        let options = TextSampleOptions {
            num: self.config.sample_num.max(1),
            seed: Some(self.config.train.seed),
            ..Default::default()
        };
        let samples = self.preview.sample(&options, |_, _| {})?;
        let dir = self.run_dir.join("samples");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut text = String::new();
        for (i, s) in samples.texts.iter().enumerate() {
            text += &format!("=== sample {i} (step {step}) ===\n{s}\n\n");
        }
        diffuse_tensor::atomic::write_atomic(&dir.join(format!("step-{step:09}.txt")), |w| {
            w.write_all(text.as_bytes())
        })?;
        // A quick validation estimate: an unbiased one of the bound `eval text` computes in
        // full, from a few sequences and (D3PM) a stratified few of its T terms, because the
        // full D3PM bound is T model calls per batch (an hour per preview at T = 1000). The
        // same sequences, steps and noise at every preview, so the estimates compare across steps.
        if !self.data.validation.is_empty() {
            let share = EstimateShare {
                sequences: self.config.eval_sequences,
                terms: self.config.eval_terms,
                seed: self.config.train.seed,
            };
            diffuse_tensor::manual_seed(self.config.train.seed);
            let bar = diffuse_tensor::progress::progress_bar(0, "validation", "call");
            let estimate = self.preview.estimate(
                &self.data.validation,
                &share,
                self.config.batch_size,
                |done, total| {
                    // One model call (MDLM, autoregressive) is a moment: no bar for it.
                    if total > 1 {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64);
                    }
                },
            )?;
            bar.finish_and_clear();
            tracing::info!(
                step,
                bits_per_char = estimate.bits_per_char,
                "validation estimate"
            );
            let mut record = serde_json::to_value(&estimate)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            record["step"] = step.into();
            let path = self.run_dir.join(VALIDATION_FILE);
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            writeln!(f, "{record}").map_err(|e| Error::io(&path, e))?;
        }
        write_loss_curve(&self.run_dir)
    }
}

impl TrainTask for TextTask<'_> {
    fn loss(&mut self, step: u64, micro_batch: u64) -> Result<Tensor> {
        let index = step * self.config.train.grad_accum + micro_batch;
        let x0 = self
            .data
            .train
            .sampled_batch(&self.sampler, index, self.device);
        self.process
            .loss(self.net, &x0, self.config.process.time_conditioning)
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
pub fn train_text_model(
    config: &TextTrainConfig,
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
    if config.seq_len < 2 {
        return Err(Error::InvalidArgument(
            "--seq-len: must be at least 2".into(),
        ));
    }
    if config.eval_sequences == 0 || config.eval_terms < 2 {
        return Err(Error::InvalidArgument(format!(
            "{RUN_CONFIG}: eval_sequences must be at least 1 and eval_terms at least 2, got {} \
             and {}",
            config.eval_sequences, config.eval_terms
        )));
    }
    let corpus = Corpus::load(&config.data, &default_datasets_dir())?;
    let tokenizer_path = run_dir.join(RUN_TOKENIZER);
    let tokenizer = if resume && tokenizer_path.is_file() {
        TextTokenizer::load(&tokenizer_path)?
    } else {
        make_tokenizer(&config, &corpus)?
    };
    check_tokenizer_for_process(&config.process, &tokenizer)?;
    complete_model_config(&mut config, &tokenizer)?;
    let data = corpus.tokenize(&tokenizer, config.seq_len, config.val_fraction)?;
    if data.train.len() < config.batch_size {
        tracing::warn!(
            sequences = data.train.len(),
            batch = config.batch_size,
            "the corpus has fewer training sequences than one batch; batches repeat sequences"
        );
    }

    // Initial weights from the run's seed, so a run is reproducible from its run.json.
    diffuse_tensor::manual_seed(config.train.seed);
    let vs = VarStore::new(device);
    let net = TextTransformer::new(&vs.root(), &config.model)?;
    if let Some(init) = &config.init {
        // A resumed run's checkpoint holds its weights; the model it started from may be gone.
        if !resume || Trainer::checkpoints(run_dir)?.is_empty() {
            InitModel::read(Path::new(init))?.load(&vs, &config.model)?;
            tracing::info!(model = %init, "starting from the model's weights");
        }
    }
    let vocab = tokenizer.vocab_size() as i64;
    let process = TextProcess::new(&config.process, vocab)?;
    let sampler = data.train.sampler(config.batch_size, config.train.seed)?;
    let info = TextModelInfo {
        process: config.process.clone(),
        seq_len: config.seq_len,
        dataset: Some(config.data.clone()),
        steps: Some(config.train.steps),
        chars_per_token: Some(data.validation.stats().chars_per_token()),
        val_fraction: Some(config.val_fraction),
    };
    let preview = TextPipeline::new(
        TextModel::new(
            &config.model,
            tokenizer.clone(),
            Some(serde_json::to_value(&info).map_err(|e| Error::InvalidArgument(e.to_string()))?),
            device,
        )?,
        info,
    )?;
    let mut task = TextTask {
        config: &config,
        net: &net,
        process,
        data: &data,
        sampler,
        device,
        preview,
        run_dir: run_dir.to_path_buf(),
    };
    let mut trainer = Trainer::new(&vs, config.train.clone(), run_dir)?;
    let step = trainer.begin_run(RUN_CONFIG, &config, resume)?;
    if diffuse_tensor::dist::is_main() {
        if !tokenizer_path.is_file() {
            tokenizer.save(&tokenizer_path)?;
        }
        if resume {
            // The estimates logged after that step (by the interrupted run) are logged again as
            // the resumed run redoes those steps: drop them, as the trainer does for metrics.jsonl.
            truncate_after_step(&run_dir.join(VALIDATION_FILE), step)?;
        }
    }
    let until = stop_after.unwrap_or(config.train.steps);
    let (summary, model_dir) = trainer.run_and_finish(
        &mut task,
        until,
        config.sample_every,
        |task, trainer, step| task.write_previews(trainer, step),
        |task, trainer| {
            trainer.copy_averaged_weights_to(&task.preview.model.vs);
            let model_dir = run_dir.join(MODEL_DIR);
            task.preview.save(&model_dir)?;
            Ok(model_dir)
        },
    )?;
    Ok(TrainOutcome { summary, model_dir })
}

/// Read a run's `run.json` (for `--resume`).
pub fn read_run_config(run_dir: &Path) -> Result<TextTrainConfig> {
    diffuse_tensor::atomic::read_json(&run_dir.join(RUN_CONFIG), "a run config")
}
