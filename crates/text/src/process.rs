//! The process a text model is trained with, as saved in its `diffuse.json`, and what depends on
//! it: the vocabulary sizes of the network, the training loss, the likelihood bound and sampling.
//!
//! Four categorical diffusion processes from `diffuse-core` (MDLM, BD3-LM block diffusion, D3PM
//! absorbing, D3PM uniform) and the autoregressive baseline (a causal transformer trained on next-token cross-entropy,
//! whose NLL is exact rather than a bound), so the four can be compared on the same data.
//! Absorbing processes add a [MASK] id equal to the tokenizer's vocabulary size V, to the input
//! and to the output (diffuse-core's convention: the model outputs logits over all K = V + 1
//! states and the [MASK] column is forced to -inf).

use crate::transformer::{KvCache, TextTransformer};
use diffuse_core::categorical::bd3lm::{Bd3lm, Bd3lmConfig, BlockContext, BlockDenoiser};
use diffuse_core::categorical::d3pm::{D3pm, D3pmConfig};
use diffuse_core::categorical::masked::{BoundEstimator, TrainingLoss};
use diffuse_core::categorical::mdlm::{MaskSchedule, Mdlm, MdlmConfig};
use diffuse_core::categorical::{
    filtered_probs, sample_rows, NllEstimate, SampleOptions, TokenDenoiser,
};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which process a text model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    /// Masked diffusion in continuous time (Sahoo et al. 2024).
    Mdlm,
    /// Block diffusion (Arriola et al. 2025): masked diffusion within blocks, left to right over
    /// them.
    Bd3lm,
    /// D3PM with the absorbing ([MASK]) transition (Austin et al. 2021).
    D3pmAbsorbing,
    /// D3PM with the uniform transition.
    D3pmUniform,
    /// The causal-transformer baseline (not diffusion).
    Autoregressive,
}

/// The names `--process` accepts, in [`ProcessKind`] order.
pub const PROCESS_NAMES: &[&str] = &[
    "mdlm",
    "bd3lm",
    "d3pm-absorbing",
    "d3pm-uniform",
    "autoregressive",
];

impl ProcessKind {
    /// Parse a `--process` value.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "mdlm" => ProcessKind::Mdlm,
            "bd3lm" => ProcessKind::Bd3lm,
            "d3pm-absorbing" => ProcessKind::D3pmAbsorbing,
            "d3pm-uniform" => ProcessKind::D3pmUniform,
            "autoregressive" | "ar" => ProcessKind::Autoregressive,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--process: unknown process '{other}' (expected one of {})",
                    PROCESS_NAMES.join(", ")
                )))
            }
        })
    }

    /// The `--process` spelling.
    pub fn name(self) -> &'static str {
        match self {
            ProcessKind::Mdlm => "mdlm",
            ProcessKind::Bd3lm => "bd3lm",
            ProcessKind::D3pmAbsorbing => "d3pm-absorbing",
            ProcessKind::D3pmUniform => "d3pm-uniform",
            ProcessKind::Autoregressive => "autoregressive",
        }
    }

    /// Whether the process has a [MASK] state (input and output vocabularies are V + 1).
    pub fn has_mask(self) -> bool {
        matches!(
            self,
            ProcessKind::Mdlm | ProcessKind::Bd3lm | ProcessKind::D3pmAbsorbing
        )
    }

    /// Whether the process is masked diffusion in continuous time (MDLM or BD3-LM): it takes a
    /// masking schedule, a bound estimator, a training loss and a mask-rate range.
    pub fn is_masked_diffusion(self) -> bool {
        matches!(self, ProcessKind::Mdlm | ProcessKind::Bd3lm)
    }

    /// The network's input and output vocabulary sizes for a tokenizer of `v` tokens.
    pub fn vocab_sizes(self, v: i64) -> (i64, i64) {
        if self.has_mask() {
            (v + 1, v + 1)
        } else {
            (v, v)
        }
    }
}

/// BD3-LM's default block size: the best of the paper's (Arriola et al. 2025, Table 3) and of
/// the `text_quality` benchmark here.
pub const DEFAULT_BLOCK_SIZE: usize = 4;

/// `e` as an invalid argument of `flag` (its message after `FLAG: `).
pub(crate) fn prefix_error(flag: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("{flag}: {m}")),
        other => Error::InvalidArgument(format!("{flag}: {other}")),
    }
}

/// MDLM's masking schedules by name.
pub const MASK_SCHEDULE_NAMES: &[&str] = &["log-linear", "linear", "cosine"];

/// Everything about the process that a model directory must remember.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    pub kind: ProcessKind,
    /// MDLM: log-linear (default), linear or cosine.
    pub mask_schedule: String,
    /// D3PM: number of discrete steps T.
    pub d3pm_timesteps: usize,
    /// D3PM: weight of the auxiliary cross-entropy in L_vlb + lambda CE (0.01 in the paper).
    pub hybrid_lambda: f64,
    /// Feed the noise level to the network (adaLN). MDLM works without it (Sahoo et al. 2024,
    /// sec. 3.5), which also makes the cached sampler exact; D3PM's networks use it; BD3-LM never
    /// (one noise level per block has no single adaLN input).
    pub time_conditioning: bool,
    /// BD3-LM: tokens per block (must divide the sequence length).
    pub block_size: usize,
    /// MDLM and BD3-LM: how the bound is estimated in training and evaluation, `time` (a time
    /// per block, the papers' estimator) or `count` (a masked count per block).
    pub estimator: String,
    /// MDLM and BD3-LM: what training minimises, `elbo` (the bound) or `masked-ce` (the
    /// unweighted masked cross-entropy).
    pub loss: String,
    /// MDLM and BD3-LM, training only: draw mask rates from [lo, hi] (BD3-LM's clipped schedule).
    pub mask_rate_range: Option<[f64; 2]>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig::new(ProcessKind::Mdlm)
    }
}

impl ProcessConfig {
    /// The defaults of `kind`: time conditioning only for D3PM; T = 1000 for D3PM; blocks of 4
    /// for BD3-LM; the bound as the loss; the count estimator for BD3-LM (a third of the time
    /// estimator's standard error at equal cost, BENCHMARKS.md) and the time estimator for MDLM
    /// (its reference code's, which the PyTorch twin of the benchmarks reproduces).
    pub fn new(kind: ProcessKind) -> Self {
        ProcessConfig {
            kind,
            mask_schedule: "log-linear".into(),
            d3pm_timesteps: 1000,
            hybrid_lambda: 0.01,
            time_conditioning: matches!(
                kind,
                ProcessKind::D3pmAbsorbing | ProcessKind::D3pmUniform
            ),
            block_size: DEFAULT_BLOCK_SIZE,
            estimator: if kind == ProcessKind::Bd3lm {
                "count"
            } else {
                "time"
            }
            .into(),
            loss: "elbo".into(),
            mask_rate_range: None,
        }
    }

    /// The bound estimator by name.
    pub fn bound_estimator(&self) -> Result<BoundEstimator> {
        BoundEstimator::parse(&self.estimator).map_err(|e| prefix_error("--estimator", e))
    }

    /// The training loss by name.
    pub fn training_loss(&self) -> Result<TrainingLoss> {
        TrainingLoss::parse(&self.loss).map_err(|e| prefix_error("--loss", e))
    }

    /// Check what the process needs of sequences of `seq_len` tokens (BD3-LM: whole blocks).
    pub fn check_seq_len(&self, seq_len: usize) -> Result<()> {
        if self.kind == ProcessKind::Bd3lm {
            let b = self.block_size;
            if b == 0 || b > seq_len || seq_len % b != 0 {
                return Err(Error::InvalidArgument(format!(
                    "--block-size: {b} must lie in 1..={seq_len} and divide the sequence length                      {seq_len} (--seq-len)"
                )));
            }
        }
        Ok(())
    }

    fn mask_schedule(&self) -> Result<MaskSchedule> {
        Ok(match self.mask_schedule.as_str() {
            "log-linear" => MaskSchedule::LogLinear { eps: 1e-3 },
            "linear" => MaskSchedule::Linear {
                sigma_min: 0.0,
                sigma_max: 10.0,
            },
            "cosine" => MaskSchedule::Cosine { eps: 1e-3 },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--mask-schedule: unknown schedule '{other}' (expected one of {})",
                    MASK_SCHEDULE_NAMES.join(", ")
                )))
            }
        })
    }
}

/// A text transformer as diffuse-core's samplers and losses see it.
pub struct TransformerDenoiser<'a> {
    pub net: &'a TextTransformer,
    /// Pass the process's conditioning to the network (else the network gets none).
    pub time_conditioning: bool,
    /// Dropout on (training) or off.
    pub train: bool,
}

impl TokenDenoiser for TransformerDenoiser<'_> {
    fn logits(&self, x_t: &Tensor, cond: &Tensor) -> Tensor {
        let cond = self.time_conditioning.then_some(cond);
        self.net.forward_t(x_t, cond, self.train)
    }
}

/// A text transformer as diffuse-core's block diffusion sees it: the two-stream training pass,
/// and key/value-cached contexts for sampling, whose logits go through `adjust` when set.
pub struct TransformerBlocks<'a> {
    pub net: &'a TextTransformer,
    /// Dropout on (training) or off.
    pub train: bool,
    /// Sampling's logit adjustment (forbidden ids, temperature).
    pub adjust: Option<&'a SamplingLogits>,
}

impl BlockDenoiser for TransformerBlocks<'_> {
    fn two_stream_logits(&self, x_t: &Tensor, x0: &Tensor, block_size: i64) -> Result<Tensor> {
        let logits = self
            .net
            .forward_two_stream(x_t, x0, block_size, self.train)?;
        Ok(match self.adjust {
            Some(a) => a.apply(&logits),
            None => logits,
        })
    }

    fn context(&self, prefix: &Tensor, block_size: i64) -> Result<Box<dyn BlockContext + '_>> {
        Ok(Box::new(TransformerContext {
            net: self.net,
            cache: self.net.block_cache(prefix, block_size)?,
            adjust: self.adjust,
        }))
    }
}

struct TransformerContext<'a> {
    net: &'a TextTransformer,
    cache: KvCache,
    adjust: Option<&'a SamplingLogits>,
}

impl BlockContext for TransformerContext<'_> {
    fn len(&self) -> i64 {
        self.cache.len()
    }

    fn logits(&self, block: &Tensor) -> Result<Tensor> {
        let logits = self.net.forward_block(block, &self.cache)?;
        Ok(match self.adjust {
            Some(a) => a.apply(&logits),
            None => logits,
        })
    }

    fn push(&mut self, block: &Tensor) -> Result<()> {
        self.cache = self.net.extend_cache(&self.cache, block)?;
        Ok(())
    }
}

/// A process ready to use on a tokenizer of `vocab_size` tokens.
pub enum TextProcess {
    Mdlm(Mdlm),
    Bd3lm(Bd3lm),
    D3pm(D3pm),
    Autoregressive { vocab_size: i64 },
}

impl TextProcess {
    pub fn new(config: &ProcessConfig, vocab_size: i64) -> Result<Self> {
        Ok(match config.kind {
            ProcessKind::Mdlm => TextProcess::Mdlm(
                Mdlm::new(MdlmConfig {
                    schedule: config.mask_schedule()?,
                    estimator: config.bound_estimator()?,
                    loss: config.training_loss()?,
                    mask_rate_range: config.mask_rate_range.map(|[lo, hi]| (lo, hi)),
                    ..MdlmConfig::new(vocab_size)
                })
                .map_err(|e| prefix_error("--mask-rate-range", e))?,
            ),
            ProcessKind::Bd3lm => {
                if config.time_conditioning {
                    return Err(Error::InvalidArgument(
                        "--time-conditioning: bd3lm takes no time conditioning (each block has \
                         its own noise level; the share of [MASK] tokens tells the network)"
                            .into(),
                    ));
                }
                if config.block_size == 0 {
                    return Err(Error::InvalidArgument(
                        "--block-size: must be at least 1, got 0".into(),
                    ));
                }
                TextProcess::Bd3lm(
                    Bd3lm::new(Bd3lmConfig {
                        schedule: config.mask_schedule()?,
                        estimator: config.bound_estimator()?,
                        loss: config.training_loss()?,
                        mask_rate_range: config.mask_rate_range.map(|[lo, hi]| (lo, hi)),
                        ..Bd3lmConfig::new(vocab_size, config.block_size as i64)
                    })
                    .map_err(|e| prefix_error("--mask-rate-range", e))?,
                )
            }
            ProcessKind::D3pmAbsorbing | ProcessKind::D3pmUniform => {
                let base = if config.kind == ProcessKind::D3pmAbsorbing {
                    D3pmConfig::absorbing(vocab_size, config.d3pm_timesteps)
                } else {
                    D3pmConfig::uniform(vocab_size, config.d3pm_timesteps)
                };
                TextProcess::D3pm(D3pm::new(D3pmConfig {
                    hybrid_lambda: config.hybrid_lambda,
                    ..base
                })?)
            }
            ProcessKind::Autoregressive => TextProcess::Autoregressive { vocab_size },
        })
    }

    /// The training loss of a batch of clean sequences `x0` `[B, L]` (nats per token).
    pub fn loss(
        &self,
        net: &TextTransformer,
        x0: &Tensor,
        time_conditioning: bool,
    ) -> Result<Tensor> {
        let model = TransformerDenoiser {
            net,
            time_conditioning,
            train: true,
        };
        match self {
            TextProcess::Mdlm(p) => p.loss(&model, x0),
            TextProcess::Bd3lm(p) => p.loss(
                &TransformerBlocks {
                    net,
                    train: true,
                    adjust: None,
                },
                x0,
            ),
            TextProcess::D3pm(p) => Ok(p.loss(&model, x0)?.loss),
            TextProcess::Autoregressive { .. } => {
                Ok(autoregressive_nats(net, x0, true).mean(Kind::Float))
            }
        }
    }

    /// The NLL (an upper bound for the diffusion processes, exact for the autoregressive model)
    /// of `data` `[N, L]`, batched; `mc_samples` Monte Carlo draws per sequence (and block) for
    /// MDLM and BD3-LM.
    pub fn nll(
        &self,
        net: &TextTransformer,
        time_conditioning: bool,
        data: &Tensor,
        batch_size: i64,
        mc_samples: usize,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<NllEstimate> {
        let model = TransformerDenoiser {
            net,
            time_conditioning,
            train: false,
        };
        tch::no_grad(|| match self {
            TextProcess::Mdlm(p) => p.nll(
                &model,
                &data.to_device(net.device()),
                batch_size,
                mc_samples,
                on_progress,
            ),
            TextProcess::Bd3lm(p) => p.nll(
                &TransformerBlocks {
                    net,
                    train: false,
                    adjust: None,
                },
                &data.to_device(net.device()),
                batch_size,
                mc_samples,
                on_progress,
            ),
            TextProcess::D3pm(p) => {
                d3pm_nll_bound(p, &model, data, batch_size, net.device(), on_progress)
            }
            TextProcess::Autoregressive { .. } => {
                if batch_size < 1 {
                    return Err(Error::InvalidArgument(
                        "--batch-size: must be at least 1".into(),
                    ));
                }
                let n = data.size()[0];
                let len = data.size()[1];
                let total = (n + batch_size - 1) / batch_size;
                let mut per_seq = Vec::with_capacity(n as usize);
                for (i, start) in (0..n).step_by(batch_size as usize).enumerate() {
                    let x0 = data
                        .narrow(0, start, batch_size.min(n - start))
                        .to_device(net.device());
                    let nats = autoregressive_nats(net, &x0, false).mean_dim(
                        [1i64].as_slice(),
                        false,
                        Kind::Double,
                    );
                    per_seq.extend(Vec::<f64>::try_from(nats).map_err(Error::Torch)?);
                    on_progress(i + 1, total as usize);
                }
                Ok(NllEstimate::from_per_sequence(
                    &per_seq,
                    (n * (len - 1).max(0)) as usize,
                ))
            }
        })
    }

    /// An unbiased estimate of [`TextProcess::nll`]'s bound on `data` `[N, L]` from a share of
    /// it, for previews during training (the full bound is `eval text`): `share.sequences`
    /// sequences by systematic sampling, and for D3PM, per sequence, the prior term, the decoder
    /// term t = 1 and one step from each of `share.terms - 1` strata of 2..=T, weighted by its
    /// stratum's size (`share.terms` model calls per batch instead of T). MDLM scores one
    /// time per sequence, the autoregressive model its exact NLL. Which sequences and steps
    /// depends on `share.seed` alone, the noise on libtorch's generator as in `nll`; neither
    /// depends on `batch_size`.
    pub fn nll_estimate(
        &self,
        net: &TextTransformer,
        time_conditioning: bool,
        data: &Tensor,
        share: &EstimateShare,
        batch_size: i64,
        on_progress: impl FnMut(usize, usize),
    ) -> Result<NllShareEstimate> {
        if share.sequences == 0 {
            return Err(Error::InvalidArgument(
                "an estimate needs at least 1 sequence".into(),
            ));
        }
        let n = data.size().first().copied().unwrap_or(0).max(0) as usize;
        let picks = systematic_sample(n, share.sequences, share.seed);
        let sequences = picks.len();
        match self {
            TextProcess::D3pm(p) => {
                if share.terms < 2 && p.num_timesteps() > 1 {
                    return Err(Error::InvalidArgument(format!(
                        "an estimate of D3PM's bound needs at least 2 terms per sequence (the \
                         decoder and one of the other {}), got {}",
                        p.num_timesteps() - 1,
                        share.terms
                    )));
                }
                if batch_size < 1 {
                    return Err(Error::InvalidArgument(
                        "--batch-size: must be at least 1".into(),
                    ));
                }
                let (_, len) = check_data(data, p.config().vocab_size)?;
                let model = TransformerDenoiser {
                    net,
                    time_conditioning,
                    train: false,
                };
                let (per_seq, terms) = tch::no_grad(|| {
                    d3pm_share_bound(
                        p,
                        &model,
                        data,
                        &picks,
                        share.terms.max(1),
                        share.seed,
                        batch_size,
                        net.device(),
                        on_progress,
                    )
                })?;
                Ok(NllShareEstimate {
                    nll: NllEstimate::from_per_sequence(&per_seq, sequences * len as usize),
                    sequences,
                    terms: Some(terms),
                    timesteps: Some(p.num_timesteps()),
                })
            }
            _ => {
                let subset = rows_of(data, &picks);
                let nll = self.nll(net, time_conditioning, &subset, batch_size, 1, on_progress)?;
                Ok(NllShareEstimate {
                    nll,
                    sequences,
                    terms: None,
                    timesteps: None,
                })
            }
        }
    }
}

/// splitmix64: a counter-based mix, so any draw can be computed from its key alone.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform in [0, 1) from a key.
fn unit_uniform(key: u64) -> f64 {
    (splitmix64(key) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform in [0, 1) for (sequence key, step, position, stream).
fn keyed_uniform(row_key: u64, t: usize, j: i64, stream: u64) -> f64 {
    let h = splitmix64(row_key ^ ((t as u64) << 32 | (j as u64) << 1 | stream));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The key of sequence `index`'s noise under `base`: a function of the two alone, so a sequence
/// gets the same x_t whatever batch (or subset) it is scored in.
fn row_key(base: u64, index: usize) -> u64 {
    splitmix64(base ^ splitmix64(index as u64))
}

/// x_t ~ q(x_t | x_0) for `x0` `[B, L]`, row b at step `t[b]`, each row's draws keyed by its
/// sequence (`row_keys`): keep a token with probability abar_t, else [MASK] (absorbing) or a
/// uniform state (uniform), as diffuse-core's noise does.
fn keyed_noise(p: &D3pm, x0: &Tensor, row_keys: &[u64], t: &[usize]) -> Tensor {
    let len = x0.size()[1];
    let k = p.num_states();
    let mut keep = Vec::with_capacity(row_keys.len() * len as usize);
    let mut other = Vec::with_capacity(keep.capacity());
    for (&key, &t) in row_keys.iter().zip(t) {
        let abar = p.alpha_bars()[t];
        for j in 0..len {
            keep.push(keyed_uniform(key, t, j, 0) < abar);
            let replacement = match p.mask_id() {
                Some(m) => m,
                None => ((keyed_uniform(key, t, j, 1) * k as f64) as i64).min(k - 1),
            };
            other.push(replacement);
        }
    }
    let shape = [row_keys.len() as i64, len];
    let device = x0.device();
    let keep = Tensor::from_slice(&keep).reshape(shape).to_device(device);
    let other = Tensor::from_slice(&other).reshape(shape).to_device(device);
    x0.where_self(&keep, &other)
}

/// How much of a bound [`TextProcess::nll_estimate`] computes, and the seed of its choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimateShare {
    /// Held-out sequences scored (all when there are fewer).
    pub sequences: usize,
    /// D3PM: bound terms evaluated per sequence, the decoder term t = 1 included (at least 2;
    /// all T when T is smaller). The other processes ignore it.
    pub terms: usize,
    /// Seed of which sequences and which terms (the noise comes from libtorch's generator, as
    /// in [`TextProcess::nll`]).
    pub seed: u64,
}

/// What [`TextProcess::nll_estimate`] computed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NllShareEstimate {
    /// The estimate (its `std_error` treats the scored sequences as independent draws).
    pub nll: NllEstimate,
    /// Sequences scored.
    pub sequences: usize,
    /// D3PM: terms evaluated per sequence, and T.
    pub terms: Option<usize>,
    pub timesteps: Option<usize>,
}

/// `n` of the indices `0..total` by systematic sampling: a seeded offset u in [0, s), then
/// floor(u + i s) for i < n with s = total / n. Every index is drawn with probability n / total
/// and at most once (the points are s >= 1 apart), so the plain mean over the draws is an
/// unbiased estimate of the mean over all `total`, and the draws spread over the whole range.
pub fn systematic_sample(total: usize, n: usize, seed: u64) -> Vec<usize> {
    if n >= total {
        return (0..total).collect();
    }
    let s = total as f64 / n as f64;
    let u = unit_uniform(seed ^ 0x5E0_5E0) * s;
    (0..n)
        .map(|i| ((u + i as f64 * s).floor() as usize).min(total - 1))
        .collect()
}

/// One step from each of `strata` near-equal contiguous strata of `lo..=hi` (all of them when
/// there are fewer steps), drawn with `key`, each weighted by its stratum's size: sum weight L_t
/// is an unbiased estimate of sum_{t = lo..=hi} L_t (stratified sampling).
pub fn stratified_steps(lo: usize, hi: usize, strata: usize, key: u64) -> Vec<(usize, f64)> {
    if hi < lo || strata == 0 {
        return Vec::new();
    }
    let n = hi - lo + 1;
    let k = strata.min(n);
    (0..k)
        .map(|i| {
            let (a, b) = (i * n / k, (i + 1) * n / k);
            let size = b - a;
            let pick =
                ((unit_uniform(key ^ splitmix64(i as u64)) * size as f64) as usize).min(size - 1);
            (lo + a + pick, size as f64)
        })
        .collect()
}

/// D3PM's bound on `data` `[N, L]`: the prior term (closed form) plus, for each sequence, the
/// weighted terms `terms_of(row)` gives (`slots` of them for every row; all T with weight 1 for
/// the full bound), one Monte Carlo draw of x_t per term, keyed by `keys[row]`. Per-sequence
/// nats per token.
#[allow(clippy::too_many_arguments)]
fn d3pm_bound(
    p: &D3pm,
    model: &dyn TokenDenoiser,
    data: &Tensor,
    keys: &[u64],
    slots: usize,
    terms_of: &dyn Fn(usize) -> Vec<(usize, f64)>,
    batch_size: i64,
    device: Device,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let (n, len) = (data.size()[0], data.size()[1]);
    // The network's [rows, L, K] logits are the largest tensor outside the bound's own (sliced)
    // work: at most 2^25 of them (128 MiB in f32) per call. Each sequence's draws are keyed, so
    // scoring fewer rows per call changes nothing but the memory.
    let rows = batch_size.min(((1i64 << 25) / (len * p.num_states()).max(1)).max(1));
    let batches = (n + rows - 1) / rows;
    let total = batches as usize * slots;
    let mut done = 0;
    let mut per_seq = Vec::with_capacity(n as usize);
    for start in (0..n).step_by(rows as usize) {
        let b = rows.min(n - start);
        let x0 = data
            .narrow(0, start, b)
            .to_kind(Kind::Int64)
            .to_device(device);
        let row_keys = &keys[start as usize..(start + b) as usize];
        let plans: Vec<Vec<(usize, f64)>> =
            (start..start + b).map(|i| terms_of(i as usize)).collect();
        let mut sum = Tensor::full([b], p.prior_nats(len), (Kind::Double, device));
        for slot in 0..slots {
            let ts: Vec<usize> = plans.iter().map(|plan| plan[slot].0).collect();
            let weights: Vec<f64> = plans.iter().map(|plan| plan[slot].1).collect();
            let x_t = keyed_noise(p, &x0, row_keys, &ts);
            let cond: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
            let cond = Tensor::from_slice(&cond).to_device(device);
            let logits = tch::no_grad(|| model.logits(&x_t, &cond));
            let term = p.bound_terms(&logits, &x0, &x_t, &ts)?;
            sum += term * Tensor::from_slice(&weights).to_device(device);
            done += 1;
            on_progress(done, total);
        }
        per_seq.extend(Vec::<f64>::try_from(sum / len as f64).map_err(Error::Torch)?);
    }
    Ok(per_seq)
}

/// The base of the keyed noise: one draw from libtorch's generator, so `--seed` still sets it.
fn noise_base() -> u64 {
    let base = Tensor::randint(1i64 << 62, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    splitmix64(base as u64)
}

/// Rows `picks` of `data`.
fn rows_of(data: &Tensor, picks: &[usize]) -> Tensor {
    let index: Vec<i64> = picks.iter().map(|&i| i as i64).collect();
    data.index_select(0, &Tensor::from_slice(&index).to_device(data.device()))
}

/// The data must be `[N, L]` ids of the tokenizer's vocabulary.
fn check_data(data: &Tensor, v: i64) -> Result<(i64, i64)> {
    let (n, len) = data
        .size2()
        .map_err(|_| Error::InvalidArgument("the data must be [N, L] token ids".into()))?;
    if n > 0 {
        let (lo, hi) = (data.min().int64_value(&[]), data.max().int64_value(&[]));
        if lo < 0 || hi >= v {
            return Err(Error::InvalidArgument(format!(
                "the data must lie in 0..{v} (the vocabulary), found values in {lo}..={hi}"
            )));
        }
    }
    Ok((n, len))
}

/// D3PM's full bound on `data` `[N, L]` (the prior term plus all T terms, one Monte Carlo draw
/// of x_t per term), as diffuse-core's `D3pm::nll_bound` computes it, except for where the noise
/// comes from. Core draws a whole batch's noise from libtorch's global stream at every step, so
/// which draws a sequence gets depends on the batch size (5.97 / 6.30 / 6.13 bits/char at batch
/// 1 / 3 / 32 for the same seed). Here each sequence's draws are keyed by one draw from
/// libtorch's generator (so `--seed` still sets them) and the sequence's index, so every
/// sequence sees the same x_t at any batch size, as MDLM's estimate does.
fn d3pm_nll_bound(
    p: &D3pm,
    model: &dyn TokenDenoiser,
    data: &Tensor,
    batch_size: i64,
    device: Device,
    on_progress: impl FnMut(usize, usize),
) -> Result<NllEstimate> {
    if batch_size < 1 {
        return Err(Error::InvalidArgument(
            "--batch-size: must be at least 1".into(),
        ));
    }
    let (n, len) = check_data(data, p.config().vocab_size)?;
    let base = noise_base();
    let keys: Vec<u64> = (0..n as usize).map(|i| row_key(base, i)).collect();
    let big_t = p.num_timesteps();
    let all: Vec<(usize, f64)> = (1..=big_t).map(|t| (t, 1.0)).collect();
    let per_seq = d3pm_bound(
        p,
        model,
        data,
        &keys,
        big_t,
        &|_| all.clone(),
        batch_size,
        device,
        on_progress,
    )?;
    Ok(NllEstimate::from_per_sequence(&per_seq, (n * len) as usize))
}

/// [`d3pm_nll_bound`] from a share of it: the sequences `picks` (indices into `data`), each with
/// the decoder term t = 1 and one step from each of `terms - 1` strata of 2..=T, weighted by its
/// stratum's size. With the same generator state each sequence sees the same x_t at each step as
/// in the full bound, so over `seed` the mean is exactly what [`d3pm_nll_bound`] computes.
#[allow(clippy::too_many_arguments)]
fn d3pm_share_bound(
    p: &D3pm,
    model: &dyn TokenDenoiser,
    data: &Tensor,
    picks: &[usize],
    terms: usize,
    seed: u64,
    batch_size: i64,
    device: Device,
    on_progress: impl FnMut(usize, usize),
) -> Result<(Vec<f64>, usize)> {
    let base = noise_base();
    let keys: Vec<u64> = picks.iter().map(|&i| row_key(base, i)).collect();
    let subset = rows_of(data, picks);
    let big_t = p.num_timesteps();
    let strata = (terms - 1).min(big_t - 1);
    let term_seed = splitmix64(seed ^ 0x7E_5EED);
    let plan = |row: usize| {
        let mut plan = vec![(1, 1.0)];
        plan.extend(stratified_steps(
            2,
            big_t,
            strata,
            splitmix64(term_seed ^ splitmix64(picks[row] as u64)),
        ));
        plan
    };
    let per_seq = d3pm_bound(
        p,
        model,
        &subset,
        &keys,
        1 + strata,
        &plan,
        batch_size,
        device,
        on_progress,
    )?;
    Ok((per_seq, 1 + strata))
}

/// Per-token next-token cross-entropy `[B, L - 1]` in nats of a causal model on `x0` `[B, L]`
/// (the first token of each sequence is context only).
pub fn autoregressive_nats(net: &TextTransformer, x0: &Tensor, train: bool) -> Tensor {
    let len = x0.size()[1];
    let logits = net.forward_t(&x0.narrow(1, 0, len - 1), None, train);
    let v = logits.size()[2];
    let targets = x0.narrow(1, 1, len - 1);
    logits
        .reshape([-1, v])
        .to_kind(Kind::Float)
        .cross_entropy_loss::<Tensor>(
            &targets.reshape([-1]),
            None,
            tch::Reduction::None,
            -100,
            0.0,
        )
        .reshape([x0.size()[0], len - 1])
}

/// What sampling does to the network's logits before diffuse-core's nucleus filtering: forbid
/// some ids (ids a tokenizer with gaps does not use, and the [MASK] id, which x_0 never is) and
/// apply the temperature, in f64.
///
/// The temperature is applied here rather than by diffuse-core (which gets 1): core divides the
/// raw logits, which overflows to infinity for a tiny temperature (1e-320 gives inf - inf = NaN
/// and an all-id-0 sample). Subtracting each row's maximum first makes every tempered logit
/// <= 0, so the division can only reach -inf, and the limit T -> 0 comes out as the argmax.
#[derive(Debug)]
pub struct SamplingLogits {
    /// `[K]` f64: 0 for allowed ids, -inf for forbidden ones.
    forbid: Option<Tensor>,
    temperature: f64,
}

impl SamplingLogits {
    /// Forbid `forbidden` among `k` states and divide by `temperature` (finite, > 0).
    pub fn new(forbidden: &[i64], k: i64, temperature: f64, device: Device) -> Result<Self> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "--temperature: must be a finite number > 0, got {temperature}"
            )));
        }
        if let Some(&bad) = forbidden.iter().find(|&&id| !(0..k).contains(&id)) {
            return Err(Error::InvalidArgument(format!(
                "forbidden id {bad} is outside the {k} states"
            )));
        }
        if forbidden.len() as i64 >= k {
            return Err(Error::InvalidArgument(format!(
                "all {k} ids are forbidden: nothing left to sample"
            )));
        }
        let forbid = (!forbidden.is_empty()).then(|| {
            Tensor::zeros([k], (Kind::Double, device)).index_fill(
                0,
                &Tensor::from_slice(forbidden).to_device(device),
                f64::NEG_INFINITY,
            )
        });
        Ok(SamplingLogits {
            forbid,
            temperature,
        })
    }

    /// `logits` `[..., K]` adjusted, in f64.
    pub fn apply(&self, logits: &Tensor) -> Tensor {
        // Never in place: `to_kind` may return the caller's tensor (a sampler's cached output).
        let l = logits.to_kind(Kind::Double);
        let l = match &self.forbid {
            Some(f) => &l + f.to_device(l.device()),
            None => l,
        };
        if self.temperature == 1.0 {
            return l;
        }
        // At least one id is allowed, so the row maximum is finite (for finite logits).
        let max = l.amax([-1i64].as_slice(), true);
        (l - max) / self.temperature
    }
}

/// A denoiser whose logits go through [`SamplingLogits`] (what the samplers call).
pub struct SamplingDenoiser<'a> {
    pub inner: TransformerDenoiser<'a>,
    pub adjust: &'a SamplingLogits,
}

impl TokenDenoiser for SamplingDenoiser<'_> {
    fn logits(&self, x_t: &Tensor, cond: &Tensor) -> Tensor {
        self.adjust.apply(&self.inner.logits(x_t, cond))
    }
}

/// Autoregressive sampling: extend `prompt` `[B, P]` (P >= 1) to `len` tokens one at a time,
/// with temperature and nucleus filtering in f64 as the diffusion samplers do. Past the model's
/// context the window slides, so any length works.
pub fn sample_autoregressive(
    net: &TextTransformer,
    prompt: &Tensor,
    len: i64,
    options: &SampleOptions,
    on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let adjust = SamplingLogits::new(
        &[],
        net.config().output_vocab_size,
        options.temperature,
        net.device(),
    )?;
    sample_autoregressive_with(net, prompt, len, options, &adjust, on_step)
}

/// [`sample_autoregressive`] with the logits adjusted by `adjust` (which applies the
/// temperature: `options.temperature` is not used).
pub fn sample_autoregressive_with(
    net: &TextTransformer,
    prompt: &Tensor,
    len: i64,
    options: &SampleOptions,
    adjust: &SamplingLogits,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    options.validate()?;
    let (b, p) = prompt
        .size2()
        .map_err(|_| Error::InvalidArgument("the prompt must be [B, P] token ids".into()))?;
    if p < 1 {
        return Err(Error::InvalidArgument(
            "autoregressive sampling needs at least one prompt token".into(),
        ));
    }
    let context = net.config().max_seq_len;
    let device = net.device();
    let total = (len - p).max(0) as usize;
    let x = tch::no_grad(|| {
        let mut x = prompt.to_device(device);
        for i in p..len {
            let start = (i - context).max(0);
            let window = x.narrow(1, start, i - start);
            let logits = net.forward_t(&window, None, false);
            let last = adjust.apply(&logits.select(1, i - start - 1));
            let probs = filtered_probs(&last, None, 1.0, options.top_p);
            let u = Tensor::rand([b], (Kind::Double, device));
            let next = sample_rows(&probs, &u).unsqueeze(1);
            x = Tensor::cat(&[x, next], 1);
            on_step((i - p + 1) as usize, total);
        }
        x
    });
    Ok(x)
}
