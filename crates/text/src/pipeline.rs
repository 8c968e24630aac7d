//! A loaded text model and what users do with it: sample, continue a prompt, fill gaps, and
//! measure bits per character on held-out text. The model directory's `diffuse.json` names the
//! process ([`TextModelInfo`]); everything else is in [`crate::model_dir`].

use crate::corpus::TokenSequences;
use crate::model_dir::TextModel;
use crate::process::{
    prefix_error, sample_autoregressive_with, EstimateShare, ProcessConfig, ProcessKind,
    SamplingDenoiser, SamplingLogits, TextProcess, TransformerBlocks, TransformerDenoiser,
};
/// Which masked tokens a sampling step reveals (`TextSampleOptions::order`).
pub use diffuse_core::categorical::UnmaskOrder;
use diffuse_core::categorical::{NllEstimate, SampleOptions};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// What `diffuse.json` says about a text model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextModelInfo {
    pub process: ProcessConfig,
    /// The training sequence length (the model's context for diffusion sampling).
    pub seq_len: usize,
    /// What it was trained on (a dataset name or path).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Optimiser steps it was trained for.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Average characters per token on the validation text (bits/char = bits/token / this).
    #[serde(default)]
    pub chars_per_token: Option<f64>,
    /// The fraction of each document held out for validation in training (what `eval text`
    /// scores by default).
    #[serde(default)]
    pub val_fraction: Option<f64>,
}

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct TextSampleOptions {
    /// Number of sequences.
    pub num: usize,
    /// Tokens per sequence (prompt included); `None` = the training sequence length.
    pub length: Option<usize>,
    /// Reverse steps (diffusion; per block for BD3-LM); `None` = the sequence length (MDLM,
    /// capped at T for D3PM), four times the block size (BD3-LM).
    pub steps: Option<usize>,
    pub temperature: f64,
    pub top_p: f64,
    /// MDLM and BD3-LM: skip the model call when a step changed nothing.
    pub cache: bool,
    /// MDLM and BD3-LM: which masked positions a step reveals; `None` = the process's default
    /// (BD3-LM left to right, one token per model call; MDLM random, its ancestral sampler).
    pub order: Option<UnmaskOrder>,
    /// Seed of libtorch's generator; `None` leaves it as it is.
    pub seed: Option<u64>,
}

impl Default for TextSampleOptions {
    fn default() -> Self {
        TextSampleOptions {
            num: 4,
            length: None,
            steps: None,
            temperature: 1.0,
            top_p: 1.0,
            cache: true,
            order: None,
            seed: None,
        }
    }
}

/// Sampled text.
#[derive(Debug)]
pub struct TextSamples {
    pub texts: Vec<String>,
    /// `[N, length]` token ids.
    pub tokens: Tensor,
    /// Network evaluations (fewer than steps x batches when the cache saved some).
    pub model_calls: usize,
}

/// Bits per character (and per token) of a model on held-out text.
#[derive(Clone, Debug, Serialize)]
pub struct TextEval {
    pub bits_per_char: f64,
    pub bits_per_token: f64,
    /// One standard error of the bits per character (Monte Carlo over sequences and times).
    pub bits_per_char_std_error: f64,
    pub chars_per_token: f64,
    pub sequences: usize,
    pub tokens: usize,
    /// "upper bound" (diffusion ELBO) or "exact" (autoregressive).
    pub kind: String,
    pub protocol: String,
}

/// A quick estimate of [`TextEval`]'s bits per character from a share of the bound (see
/// [`TextPipeline::estimate`]): what training writes to `validation.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct TextEstimate {
    pub bits_per_char: f64,
    pub bits_per_token: f64,
    /// Held-out sequences scored, of `held_out_sequences`.
    pub sequences: usize,
    pub held_out_sequences: usize,
    /// D3PM: bound terms evaluated per sequence (the decoder term included; the prior term is in
    /// closed form), of the `timesteps` terms of the full bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<usize>,
    /// How it was computed, in words.
    pub estimate: String,
}

/// The placeholder of a gap in an `--infill` template: each `_` stands for one token.
pub const GAP: char = '_';

/// A model directory ready to sample.
pub struct TextPipeline {
    pub model: TextModel,
    pub info: TextModelInfo,
    process: TextProcess,
    /// Ids no sample may hold: those the tokenizer does not use (gaps in its ids) and [MASK].
    forbidden: Vec<i64>,
}

impl TextPipeline {
    /// Load a text model directory onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let model = TextModel::load(dir, device)?;
        let info_value = model.info.clone().ok_or_else(|| {
            Error::format(
                dir,
                "diffuse.json is missing: not a diffuse text model (it names the process)",
            )
        })?;
        let info: TextModelInfo = serde_json::from_value(info_value)
            .map_err(|e| Error::format(dir.join("diffuse.json"), e.to_string()))?;
        Self::new(model, info)
    }

    /// Wrap a model and its process description.
    pub fn new(model: TextModel, info: TextModelInfo) -> Result<Self> {
        let v = model.tokenizer.vocab_size() as i64;
        let (input, output) = info.process.kind.vocab_sizes(v);
        let cfg = model.config();
        if cfg.vocab_size != input || cfg.output_vocab_size != output {
            return Err(Error::InvalidArgument(format!(
                "the {} process with a {v}-token tokenizer needs a transformer with {input} input and {output} output ids, \
                 this one has {} and {}",
                info.process.kind.name(),
                cfg.vocab_size,
                cfg.output_vocab_size
            )));
        }
        if cfg.causal != (info.process.kind == ProcessKind::Autoregressive) {
            return Err(Error::InvalidArgument(format!(
                "the {} process needs a {} transformer",
                info.process.kind.name(),
                if cfg.causal {
                    "bidirectional"
                } else {
                    "causal"
                }
            )));
        }
        if info.process.kind == ProcessKind::Bd3lm {
            if cfg.modulated() {
                return Err(Error::InvalidArgument(
                    "a bd3lm model needs a transformer without time conditioning".into(),
                ));
            }
            info.process.check_seq_len(info.seq_len)?;
        }
        let process = TextProcess::new(&info.process, v)?;
        let mut forbidden = model.tokenizer.unused_ids().to_vec();
        if info.process.kind.has_mask() {
            forbidden.push(v);
        }
        Ok(TextPipeline {
            model,
            info,
            process,
            forbidden,
        })
    }

    /// Save as a model directory (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let info =
            serde_json::to_value(&self.info).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        crate::model_dir::save_text_model_dir(
            dir,
            self.model.config(),
            &self.model.vs,
            &self.model.tokenizer,
            Some(&info),
        )
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    pub fn kind(&self) -> ProcessKind {
        self.info.process.kind
    }

    /// Score with another bound estimator than the model's (`time` or `count`; MDLM and BD3-LM
    /// only): the same bound, estimated differently.
    pub fn set_estimator(&mut self, name: &str) -> Result<()> {
        if !self.kind().is_masked_diffusion() {
            return Err(Error::InvalidArgument(format!(
                "--estimator: applies to mdlm and bd3lm models, not to this {} model",
                self.kind().name()
            )));
        }
        let mut process = self.info.process.clone();
        process.estimator = name.to_owned();
        self.process = TextProcess::new(&process, self.model.tokenizer.vocab_size() as i64)?;
        self.info.process = process;
        Ok(())
    }

    fn denoiser(&self) -> TransformerDenoiser<'_> {
        TransformerDenoiser {
            net: &self.model.model,
            time_conditioning: self.info.process.time_conditioning,
            train: false,
        }
    }

    /// The sampling logits: forbidden ids out, `options.temperature` applied.
    fn sampling_logits(&self, options: &TextSampleOptions) -> Result<SamplingLogits> {
        SamplingLogits::new(
            &self.forbidden,
            self.model.config().output_vocab_size,
            options.temperature,
            self.device(),
        )
    }

    /// diffuse-core's options. Its temperature is 1: [`SamplingLogits`] applies the real one.
    fn core_options(&self, options: &TextSampleOptions, length: usize) -> Result<SampleOptions> {
        let order = match (&self.process, options.order) {
            (TextProcess::Bd3lm(_), None) => UnmaskOrder::LeftToRight,
            (_, None) => UnmaskOrder::Random,
            (_, Some(order))
                if order != UnmaskOrder::Random
                    && !self.info.process.kind.is_masked_diffusion() =>
            {
                return Err(Error::InvalidArgument(format!(
                    "--order: {} applies to the masked processes (mdlm, bd3lm); this model is {}",
                    order.name(),
                    self.info.process.kind.name()
                )))
            }
            (_, Some(order)) => order,
        };
        let steps = match (&self.process, options.steps) {
            (TextProcess::Autoregressive { .. }, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "--steps: an autoregressive model takes one model call per token (--length \
                     sets how many); --steps applies to diffusion models"
                        .into(),
                ))
            }
            (_, Some(0)) => {
                return Err(Error::InvalidArgument("--steps: must be at least 1".into()))
            }
            (TextProcess::D3pm(p), Some(s)) if s > p.num_timesteps() => {
                return Err(Error::InvalidArgument(format!(
                    "--steps: {s} is more than the model's {} diffusion steps",
                    p.num_timesteps()
                )))
            }
            (_, Some(s)) => s,
            (TextProcess::D3pm(p), None) => length.min(p.num_timesteps()),
            // Ordered: one token per model call (BENCHMARKS.md: left to right, words of the
            // training text 0.87 at one token per call, 0.47 at two). Random: four steps per
            // token, so fewer tokens are unmasked together from independent marginals (0.60 at 4
            // steps per block of 4, 0.71 at 16, 0.75 at 64).
            (TextProcess::Bd3lm(p), None) if order != UnmaskOrder::Random => {
                p.block_size() as usize
            }
            (TextProcess::Bd3lm(p), None) => 4 * p.block_size() as usize,
            (_, None) => length,
        };
        if !(options.temperature > 0.0 && options.temperature.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "--temperature: must be a finite number > 0, got {}",
                options.temperature
            )));
        }
        let o = SampleOptions {
            steps,
            temperature: 1.0,
            top_p: options.top_p,
            cache: options.cache,
            order,
        };
        o.validate().map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("sampling options: {m}")),
            other => other,
        })?;
        Ok(o)
    }

    fn length(&self, options: &TextSampleOptions) -> Result<usize> {
        let length = options.length.unwrap_or(self.info.seq_len);
        if length == 0 {
            return Err(Error::InvalidArgument(
                "--length: must be at least 1".into(),
            ));
        }
        let context = self.model.config().max_seq_len as usize;
        if length > context && matches!(self.process, TextProcess::D3pm(_)) {
            return Err(Error::InvalidArgument(format!(
                "--length: {length} tokens is beyond the model's context of {context} (D3PM models \
                 sample one window; MDLM and autoregressive models go past it)"
            )));
        }
        Ok(length)
    }

    fn finish(&self, tokens: Tensor, model_calls: usize) -> Result<TextSamples> {
        let tokens = tokens.to_device(Device::Cpu);
        let rows: Vec<Vec<i64>> = (0..tokens.size()[0])
            .map(|i| Vec::<i64>::try_from(tokens.get(i)).map_err(Error::Torch))
            .collect::<Result<_>>()?;
        let texts = rows
            .iter()
            .map(|r| self.model.tokenizer.decode(r))
            .collect();
        Ok(TextSamples {
            texts,
            tokens,
            model_calls,
        })
    }

    /// Unconditional samples.
    pub fn sample(
        &self,
        options: &TextSampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<TextSamples> {
        self.generate(&[], options, on_step)
    }

    /// Continue `prompt`: its tokens are kept and the rest of `--length` is generated.
    pub fn continue_prompt(
        &self,
        prompt: &str,
        options: &TextSampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<TextSamples> {
        let ids = self
            .model
            .tokenizer
            .encode(prompt)
            .map_err(|e| prefix_error("--prompt", e))?;
        if ids.is_empty() {
            return Err(Error::InvalidArgument(
                "--prompt: the prompt is empty".into(),
            ));
        }
        self.generate(&ids, options, on_step)
    }

    fn generate(
        &self,
        prefix: &[i64],
        options: &TextSampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<TextSamples> {
        let length = self.length(options)?;
        if prefix.len() > length {
            return Err(Error::InvalidArgument(format!(
                "--prompt: the prompt is {} tokens, longer than --length {length}",
                prefix.len()
            )));
        }
        let core = self.core_options(options, length)?;
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let n = options.num as i64;
        if n < 1 {
            return Err(Error::InvalidArgument("--num: must be at least 1".into()));
        }
        let device = self.device();
        let l = length as i64;
        let adjust = self.sampling_logits(options)?;
        let model = SamplingDenoiser {
            inner: self.denoiser(),
            adjust: &adjust,
        };
        let prompt = (!prefix.is_empty()).then(|| {
            Tensor::from_slice(prefix)
                .unsqueeze(0)
                .repeat([n, 1])
                .to_device(device)
        });
        let context = self
            .model
            .config()
            .max_seq_len
            .min(self.info.seq_len as i64);
        let (tokens, calls) = match &self.process {
            TextProcess::Bd3lm(p) => {
                let blocks = TransformerBlocks {
                    net: &self.model.model,
                    train: false,
                    adjust: Some(&adjust),
                };
                // The window is whole blocks of the training length (which they divide).
                let window = context / p.block_size() * p.block_size();
                let s = p.sample(
                    &blocks,
                    n,
                    l,
                    window,
                    prompt.as_ref(),
                    device,
                    &core,
                    on_step,
                )?;
                (s.tokens, s.model_calls)
            }
            TextProcess::Mdlm(p) if l > context => {
                let s = p.sample_semi_autoregressive(
                    &model,
                    n,
                    l,
                    context,
                    (context / 2).max(1),
                    prompt.as_ref(),
                    device,
                    &core,
                    on_step,
                )?;
                (s.tokens, s.model_calls)
            }
            TextProcess::Mdlm(_) | TextProcess::D3pm(_) => {
                let (tokens, fixed) = self.template(prefix, length, n)?;
                let s = match &self.process {
                    TextProcess::Mdlm(p) if prefix.is_empty() => {
                        p.sample(&model, n, l, device, &core, on_step)?
                    }
                    TextProcess::Mdlm(p) => p.infill(&model, &tokens, &fixed, &core, on_step)?,
                    TextProcess::D3pm(p) if prefix.is_empty() => {
                        p.sample(&model, n, l, device, &core, on_step)?
                    }
                    TextProcess::D3pm(p) => p.infill(&model, &tokens, &fixed, &core, on_step)?,
                    TextProcess::Autoregressive { .. } | TextProcess::Bd3lm(_) => {
                        unreachable!("matched above")
                    }
                };
                (s.tokens, s.model_calls)
            }
            TextProcess::Autoregressive { .. } => {
                let start = match prompt {
                    Some(p) => p,
                    None => self.start_token(n)?,
                };
                let calls = (l - start.size()[1]).max(0) as usize;
                let tokens = sample_autoregressive_with(
                    &self.model.model,
                    &start,
                    l,
                    &core,
                    &adjust,
                    on_step,
                )?;
                (tokens, calls)
            }
        };
        self.finish(tokens, calls)
    }

    /// `[N, L]` tokens with `prefix` in front (the rest placeholders) and the `[N, L]` bool mask
    /// of the given positions.
    fn template(&self, given: &[i64], length: usize, n: i64) -> Result<(Tensor, Tensor)> {
        let mut ids = vec![0i64; length];
        let mut fixed = vec![false; length];
        for (i, &t) in given.iter().enumerate() {
            ids[i] = t;
            fixed[i] = true;
        }
        self.template_from(&ids, &fixed, n)
    }

    fn template_from(&self, ids: &[i64], fixed: &[bool], n: i64) -> Result<(Tensor, Tensor)> {
        let device = self.device();
        let tokens = Tensor::from_slice(ids)
            .unsqueeze(0)
            .repeat([n, 1])
            .to_device(device);
        let fixed = Tensor::from_slice(fixed)
            .unsqueeze(0)
            .repeat([n, 1])
            .to_device(device);
        Ok((tokens, fixed))
    }

    /// The first token of an unprompted autoregressive sample: the start of the document
    /// separator (documents are joined by a blank line), as text begins after one.
    fn start_token(&self, n: i64) -> Result<Tensor> {
        let id = self
            .model
            .tokenizer
            .encode("\n")
            .ok()
            .and_then(|ids| ids.first().copied())
            .unwrap_or(0);
        Ok(Tensor::full([n, 1], id, (Kind::Int64, self.device())))
    }

    /// Fill the gaps of `template`, where each `_` stands for one token to generate and the
    /// rest is kept; with `--length` longer than the template, the tokens after it are
    /// generated too. Diffusion models only.
    pub fn infill(
        &self,
        template: &str,
        options: &TextSampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<TextSamples> {
        if self.kind() == ProcessKind::Autoregressive {
            return Err(Error::InvalidArgument(
                "--infill: an autoregressive model cannot fill gaps (use a diffusion model)".into(),
            ));
        }
        if self.kind() == ProcessKind::Bd3lm {
            return Err(Error::InvalidArgument(
                "--infill: a bd3lm model generates left to right, block by block, and cannot \
                 fill gaps before its last block (use an mdlm or d3pm model; --prompt continues \
                 text)"
                    .into(),
            ));
        }
        if !template.contains(GAP) {
            return Err(Error::InvalidArgument(format!(
                "--infill: the template has no gaps (write each token to fill as '{GAP}')"
            )));
        }
        let mut ids = Vec::new();
        let mut fixed = Vec::new();
        let mut literal = String::new();
        let flush =
            |literal: &mut String, ids: &mut Vec<i64>, fixed: &mut Vec<bool>| -> Result<()> {
                if !literal.is_empty() {
                    let t = self
                        .model
                        .tokenizer
                        .encode(literal)
                        .map_err(|e| prefix_error("--infill", e))?;
                    fixed.extend(std::iter::repeat_n(true, t.len()));
                    ids.extend(t);
                    literal.clear();
                }
                Ok(())
            };
        for c in template.chars() {
            if c == GAP {
                flush(&mut literal, &mut ids, &mut fixed)?;
                ids.push(0);
                fixed.push(false);
            } else {
                literal.push(c);
            }
        }
        flush(&mut literal, &mut ids, &mut fixed)?;
        let length = options.length.unwrap_or(ids.len());
        if ids.len() > length {
            return Err(Error::InvalidArgument(format!(
                "--infill: the template is {} tokens, longer than --length {length}",
                ids.len()
            )));
        }
        let context = self.model.config().max_seq_len as usize;
        if length > context.min(self.info.seq_len) {
            return Err(Error::InvalidArgument(format!(
                "--length: infilling works within one context of {} tokens, asked for {length}",
                context.min(self.info.seq_len)
            )));
        }
        ids.resize(length, 0);
        fixed.resize(length, false);
        let core = self.core_options(options, length)?;
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let n = options.num.max(1) as i64;
        let (tokens, fixed) = self.template_from(&ids, &fixed, n)?;
        let adjust = self.sampling_logits(options)?;
        let model = SamplingDenoiser {
            inner: self.denoiser(),
            adjust: &adjust,
        };
        let s = match &self.process {
            TextProcess::Mdlm(p) => p.infill(&model, &tokens, &fixed, &core, on_step)?,
            TextProcess::D3pm(p) => p.infill(&model, &tokens, &fixed, &core, on_step)?,
            TextProcess::Autoregressive { .. } | TextProcess::Bd3lm(_) => {
                unreachable!("refused above")
            }
        };
        self.finish(s.tokens, s.model_calls)
    }

    /// Bits per character on held-out sequences: the process's NLL (upper bound for diffusion,
    /// exact for autoregressive) per token, divided by the data's characters per token.
    pub fn evaluate(
        &self,
        data: &TokenSequences,
        batch_size: usize,
        mc_samples: usize,
        on_progress: impl FnMut(usize, usize),
    ) -> Result<TextEval> {
        if data.is_empty() {
            return Err(Error::InvalidArgument(
                "eval: no held-out sequences to score".into(),
            ));
        }
        let nll: NllEstimate = self.process.nll(
            &self.model.model,
            self.info.process.time_conditioning,
            data.tokens(),
            batch_size as i64,
            mc_samples,
            on_progress,
        )?;
        let chars_per_token = data.stats().chars_per_token();
        let bpc = nll.bits_per_char(chars_per_token)?;
        let exact = self.kind() == ProcessKind::Autoregressive;
        let draws = match self.info.process.estimator.as_str() {
            "count" => "masked count(s)",
            _ => "time(s)",
        };
        let protocol = match &self.process {
            TextProcess::Mdlm(_) => {
                format!("MDLM continuous-time ELBO, {mc_samples} stratified {draws} per sequence")
            }
            TextProcess::Bd3lm(p) => format!(
                "BD3-LM bound, blocks of {}, {mc_samples} stratified {draws} per block",
                p.block_size()
            ),
            TextProcess::D3pm(p) => {
                format!("D3PM bound, all {} terms plus the prior", p.num_timesteps())
            }
            TextProcess::Autoregressive { .. } => {
                "next-token cross-entropy (the first token of each sequence is context)".into()
            }
        };
        Ok(TextEval {
            bits_per_char: bpc,
            bits_per_token: nll.bits_per_token,
            bits_per_char_std_error: nll.std_error / std::f64::consts::LN_2 / chars_per_token,
            chars_per_token,
            sequences: data.len(),
            tokens: nll.tokens,
            kind: if exact { "exact" } else { "upper bound" }.into(),
            protocol: format!(
                "{protocol}; {} held-out sequences of {} tokens, {chars_per_token:.3} characters per token",
                data.len(),
                data.seq_len()
            ),
        })
    }

    /// An unbiased estimate of [`TextPipeline::evaluate`]'s bits per character from a share of
    /// the bound ([`TextProcess::nll_estimate`]): a few seconds where the full D3PM bound takes
    /// T model calls per batch. Bits per character use the characters per token of all of
    /// `data`, as `evaluate` does.
    pub fn estimate(
        &self,
        data: &TokenSequences,
        share: &EstimateShare,
        batch_size: usize,
        on_progress: impl FnMut(usize, usize),
    ) -> Result<TextEstimate> {
        if data.is_empty() {
            return Err(Error::InvalidArgument(
                "eval: no held-out sequences to score".into(),
            ));
        }
        let est = self.process.nll_estimate(
            &self.model.model,
            self.info.process.time_conditioning,
            data.tokens(),
            share,
            batch_size as i64,
            on_progress,
        )?;
        let (n, all) = (est.sequences, data.len());
        let estimate = match (est.terms, est.timesteps) {
            (Some(terms), Some(big_t)) if terms < big_t => format!(
                "stratified estimate of the D3PM bound: the prior and decoder terms, and one step \
                 of each of {} strata of the other {} terms (weighted by the stratum's size), on \
                 {n} of {all} held-out sequences; the full bound is `eval text`",
                terms - 1,
                big_t - 1
            ),
            (Some(_), Some(big_t)) => format!(
                "D3PM bound, all {big_t} terms plus the prior, on {n} of {all} held-out sequences"
            ),
            _ => match self.kind() {
                ProcessKind::Autoregressive => {
                    format!("next-token cross-entropy on {n} of {all} held-out sequences")
                }
                ProcessKind::Bd3lm => format!(
                    "BD3-LM bound, one draw per block, on {n} of {all} held-out sequences; the \
                     full estimate is `eval text`"
                ),
                _ => format!(
                    "MDLM continuous-time ELBO, one time per sequence, on {n} of {all} held-out \
                     sequences; the full estimate is `eval text`"
                ),
            },
        };
        let chars_per_token = data.stats().chars_per_token();
        Ok(TextEstimate {
            bits_per_char: est.nll.bits_per_char(chars_per_token)?,
            bits_per_token: est.nll.bits_per_token,
            sequences: n,
            held_out_sequences: all,
            terms: est.terms,
            timesteps: est.timesteps,
            estimate,
        })
    }
}
