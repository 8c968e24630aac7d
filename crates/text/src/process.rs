//! The process a text model is trained with, as saved in its `diffuse.json`, and what depends on
//! it: the vocabulary sizes of the network, the training loss, the likelihood bound and sampling.
//!
//! Three categorical diffusion processes from `diffuse-core` (MDLM, D3PM absorbing, D3PM uniform)
//! and the autoregressive baseline (a causal transformer trained on next-token cross-entropy,
//! whose NLL is exact rather than a bound), so the four can be compared on the same data.
//! Absorbing processes add a [MASK] id equal to the tokenizer's vocabulary size V, to the input
//! and to the output (diffuse-core's convention: the model outputs logits over all K = V + 1
//! states and the [MASK] column is forced to -inf).

use crate::transformer::TextTransformer;
use diffuse_core::categorical::d3pm::{D3pm, D3pmConfig};
use diffuse_core::categorical::mdlm::{MaskSchedule, Mdlm, MdlmConfig};
use diffuse_core::categorical::{
    filtered_probs, sample_rows, NllEstimate, SampleOptions, TokenDenoiser,
};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which process a text model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    /// Masked diffusion in continuous time (Sahoo et al. 2024).
    Mdlm,
    /// D3PM with the absorbing ([MASK]) transition (Austin et al. 2021).
    D3pmAbsorbing,
    /// D3PM with the uniform transition.
    D3pmUniform,
    /// The causal-transformer baseline (not diffusion).
    Autoregressive,
}

/// The names `--process` accepts, in [`ProcessKind`] order.
pub const PROCESS_NAMES: &[&str] = &["mdlm", "d3pm-absorbing", "d3pm-uniform", "autoregressive"];

impl ProcessKind {
    /// Parse a `--process` value.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "mdlm" => ProcessKind::Mdlm,
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
            ProcessKind::D3pmAbsorbing => "d3pm-absorbing",
            ProcessKind::D3pmUniform => "d3pm-uniform",
            ProcessKind::Autoregressive => "autoregressive",
        }
    }

    /// Whether the process has a [MASK] state (input and output vocabularies are V + 1).
    pub fn has_mask(self) -> bool {
        matches!(self, ProcessKind::Mdlm | ProcessKind::D3pmAbsorbing)
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
    /// sec. 3.5), which also makes the cached sampler exact; D3PM's networks use it.
    pub time_conditioning: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig::new(ProcessKind::Mdlm)
    }
}

impl ProcessConfig {
    /// The defaults of `kind`: time conditioning only for D3PM; T = 1000 for D3PM.
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
        }
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

/// A process ready to use on a tokenizer of `vocab_size` tokens.
pub enum TextProcess {
    Mdlm(Mdlm),
    D3pm(D3pm),
    Autoregressive { vocab_size: i64 },
}

impl TextProcess {
    pub fn new(config: &ProcessConfig, vocab_size: i64) -> Result<Self> {
        Ok(match config.kind {
            ProcessKind::Mdlm => TextProcess::Mdlm(Mdlm::new(MdlmConfig {
                schedule: config.mask_schedule()?,
                ..MdlmConfig::new(vocab_size)
            })?),
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
            TextProcess::D3pm(p) => Ok(p.loss(&model, x0)?.loss),
            TextProcess::Autoregressive { .. } => {
                Ok(autoregressive_nats(net, x0, true).mean(Kind::Float))
            }
        }
    }

    /// The NLL (an upper bound for the diffusion processes, exact for the autoregressive model)
    /// of `data` `[N, L]`, batched; `mc_samples` Monte Carlo times per sequence for MDLM.
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
            TextProcess::Mdlm(p) => p.nll(&model, data, batch_size, mc_samples, on_progress),
            TextProcess::D3pm(p) => p.nll_bound(&model, data, batch_size, on_progress),
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

/// Autoregressive sampling: extend `prompt` `[B, P]` (P >= 1) to `len` tokens one at a time,
/// with temperature and nucleus filtering in f64 as the diffusion samplers do. Past the model's
/// context the window slides, so any length works.
pub fn sample_autoregressive(
    net: &TextTransformer,
    prompt: &Tensor,
    len: i64,
    options: &SampleOptions,
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
            let last = logits.select(1, i - start - 1);
            let probs = filtered_probs(&last, None, options.temperature, options.top_p);
            let u = Tensor::rand([b], (Kind::Double, device));
            let next = sample_rows(&probs, &u).unsqueeze(1);
            x = Tensor::cat(&[x, next], 1);
            on_step((i - p + 1) as usize, total);
        }
        x
    });
    Ok(x)
}
