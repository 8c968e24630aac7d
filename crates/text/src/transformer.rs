//! The transformer denoiser for token sequences: a bidirectional (DiT / MDLM style) network that
//! maps noisy tokens `[B, L]` and a noise level `[B]` to logits `[B, L, V_out]`, and with
//! `causal: true` the autoregressive baseline (causal mask, no noise level).
//!
//! Layout (variable names; `tests/golden/make_transformer_golden.py` is the same network in
//! PyTorch and the parity test holds them to 1e-4):
//!
//! - `token_embed` (`[vocab_size, hidden]`; `vocab_size` may count a `[MASK]` id), plus
//!   `pos_embed` (`[max_seq_len, hidden]`) with learned positions; rotary positions (the default)
//!   rotate queries and keys instead (GPT-NeoX half-split layout, base 10000).
//! - `time_embed.mlp.{0,2}`: DiT's timestep embedder. The noise level goes through 256
//!   sinusoidal features (frequencies 1 down to 1/10000, `[cos, sin]`), Linear, SiLU, Linear to
//!   `cond_dim`; `c = silu(embedding)` feeds every modulation. The features resolve values of
//!   roughly 0.01 to 1000: pass `1000 t` for a time `t` in [0, 1], as DiT does, or a noise
//!   level such as MDLM's sigma.
//! - `blocks.N`: pre-norm (`norm1`, `norm2`: LayerNorm with weight and bias, eps 1e-5);
//!   `attn.qkv` and `attn.out` (no biases) around PyTorch's scaled-dot-product attention;
//!   `mlp.fc1`, tanh-GELU, `mlp.fc2`. With time conditioning, `modulation` (Linear
//!   `cond_dim -> 6 hidden`) gives shift, scale and gate of the attention and of the MLP:
//!   `x += gate * branch(norm(x) * (1 + scale) + shift)`. It starts at zero (adaLN-Zero), so each
//!   block starts as the identity. Dropout acts on each branch's output.
//! - `final_norm`, `final_modulation` (Linear `cond_dim -> 2 hidden`: shift, scale; zero at
//!   first) and `head` (Linear `hidden -> output_vocab_size`, zero at first, so a fresh model
//!   predicts the uniform distribution).
//!
//! The causal variant has no `time_embed`, `modulation` or `final_modulation`.

use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Sinusoidal features of the noise level before the time MLP (DiT's `frequency_embedding_size`).
pub const TIME_FREQ_DIM: i64 = 256;
/// Rotary position base (RoFormer).
const ROTARY_BASE: f64 = 10000.0;
const NORM_EPS: f64 = 1e-5;

/// How the network knows token positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Rotary embeddings of queries and keys (no parameters; any length up to `max_seq_len`).
    #[default]
    Rotary,
    /// A learned table `pos_embed` added to the token embeddings.
    Learned,
}

/// The network's `config.json`. Every field is required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Input ids are in `[0, vocab_size)`: the tokenizer's vocabulary plus a `[MASK]` id if the
    /// process uses one.
    pub vocab_size: i64,
    /// Logits per position (often the tokenizer's vocabulary, without `[MASK]`).
    pub output_vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Transformer blocks.
    pub num_layers: i64,
    /// Attention heads; must divide `hidden_size` (and leave an even head width for rotary).
    pub num_heads: i64,
    /// MLP width over `hidden_size` (the MLP has `round(mlp_ratio * hidden_size)` units).
    pub mlp_ratio: f64,
    /// Longest sequence the model takes (the size of the learned position table).
    pub max_seq_len: i64,
    pub positions: Positions,
    /// Dropout on every attention and MLP output during training.
    pub dropout: f64,
    /// Causal attention and no time conditioning: the autoregressive baseline.
    pub causal: bool,
    /// Width of the time conditioning (ignored when `causal`).
    pub cond_dim: i64,
}

impl Default for TransformerConfig {
    /// A small model (about 6 M parameters with a character vocabulary); set `vocab_size` and
    /// `output_vocab_size`.
    fn default() -> Self {
        TransformerConfig {
            vocab_size: 0,
            output_vocab_size: 0,
            hidden_size: 256,
            num_layers: 6,
            num_heads: 8,
            mlp_ratio: 4.0,
            max_seq_len: 256,
            positions: Positions::Rotary,
            dropout: 0.1,
            causal: false,
            cond_dim: 128,
        }
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(format!("transformer config: {message}"))
}

impl TransformerConfig {
    /// Units of each MLP.
    pub fn mlp_width(&self) -> i64 {
        (self.mlp_ratio * self.hidden_size as f64).round() as i64
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Check every field, naming it and what was expected.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err(invalid(format!("{name} must be positive, got {v}")))
            }
        };
        positive("vocab_size", self.vocab_size)?;
        positive("output_vocab_size", self.output_vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("num_layers", self.num_layers)?;
        positive("num_heads", self.num_heads)?;
        positive("max_seq_len", self.max_seq_len)?;
        if !self.causal {
            positive("cond_dim", self.cond_dim)?;
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(invalid(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            )));
        }
        if self.positions == Positions::Rotary && self.head_dim() % 2 != 0 {
            return Err(invalid(format!(
                "rotary positions need an even head width; hidden_size {} / num_heads {} = {}",
                self.hidden_size,
                self.num_heads,
                self.head_dim()
            )));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_width() >= 1) {
            return Err(invalid(format!(
                "mlp_ratio must be positive and give at least one MLP unit, got {}",
                self.mlp_ratio
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Read and validate `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: TransformerConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a transformer config.json: {e}")))?;
        config.validate().map_err(|e| match e {
            Error::InvalidArgument(m) => Error::format(path, m),
            other => other,
        })?;
        Ok(config)
    }

    /// Write `config.json` atomically.
    pub fn to_json_file(&self, path: &Path) -> Result<()> {
        diffuse_tensor::atomic::write_json_atomic(path, self)
    }
}

/// PyTorch's default `nn.Linear` initialisation (U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
fn linear(vs: nn::Path, din: i64, dout: i64, bias: bool) -> nn::Linear {
    let bound = 1.0 / (din as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let config = nn::LinearConfig {
        ws_init: init,
        bs_init: bias.then_some(init),
        bias,
    };
    nn::linear(vs, din, dout, config)
}

/// A linear layer that starts at exactly zero (adaLN-Zero modulations, the output head).
fn zero_linear(vs: nn::Path, din: i64, dout: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(vs, din, dout, config)
}

fn layer_norm(vs: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(
        vs,
        vec![dim],
        nn::LayerNormConfig {
            eps: NORM_EPS,
            ..Default::default()
        },
    )
}

/// `x * (1 + scale) + shift`, with `shift` and `scale` `[B, H]` broadcast over positions.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

/// `[x1, x2] -> [-x2, x1]` over the last dimension (GPT-NeoX rotary layout).
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

#[derive(Debug)]
struct Rotary {
    /// `[max_seq_len, head_dim]`, float32; not variables (never saved).
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(head_dim: i64, max_len: i64, device: tch::Device) -> Self {
        let inv_freq = (Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device))
            * (-(ROTARY_BASE.ln()) / head_dim as f64))
            .exp();
        let t = Tensor::arange(max_len, (Kind::Float, device));
        let freqs = t.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Rotary {
            cos: emb.cos(),
            sin: emb.sin(),
        }
    }

    /// Rotate `x` `[B, heads, L, head_dim]`.
    fn apply(&self, x: &Tensor) -> Tensor {
        let len = x.size()[2];
        let cos = self
            .cos
            .narrow(0, 0, len)
            .to_device(x.device())
            .to_kind(x.kind());
        let sin = self
            .sin
            .narrow(0, 0, len)
            .to_device(x.device())
            .to_kind(x.kind());
        x * cos + rotate_half(x) * sin
    }
}

#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    out: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    modulation: Option<nn::Linear>,
}

impl Block {
    fn new(vs: nn::Path, cfg: &TransformerConfig) -> Self {
        let h = cfg.hidden_size;
        Block {
            norm1: layer_norm(&vs / "norm1", h),
            qkv: linear(&vs / "attn" / "qkv", h, 3 * h, false),
            out: linear(&vs / "attn" / "out", h, h, false),
            norm2: layer_norm(&vs / "norm2", h),
            fc1: linear(&vs / "mlp" / "fc1", h, cfg.mlp_width(), true),
            fc2: linear(&vs / "mlp" / "fc2", cfg.mlp_width(), h, true),
            modulation: (!cfg.causal).then(|| zero_linear(&vs / "modulation", cfg.cond_dim, 6 * h)),
        }
    }
}

/// Time conditioning: sinusoidal features, Linear, SiLU, Linear (`time_embed.mlp.{0,2}`).
#[derive(Debug)]
struct TimeEmbed {
    fc1: nn::Linear,
    fc2: nn::Linear,
    /// `[TIME_FREQ_DIM / 2]` float32.
    freqs: Tensor,
}

impl TimeEmbed {
    fn new(vs: nn::Path, cond_dim: i64) -> Self {
        let half = TIME_FREQ_DIM / 2;
        let freqs = (Tensor::arange(half, (Kind::Float, vs.device()))
            * (-(10000f64.ln()) / half as f64))
            .exp();
        TimeEmbed {
            fc1: linear(&vs / "mlp" / "0", TIME_FREQ_DIM, cond_dim, true),
            fc2: linear(&vs / "mlp" / "2", cond_dim, cond_dim, true),
            freqs,
        }
    }

    /// `c = silu(mlp(features(t)))` `[B, cond_dim]` for `t` `[B]`.
    fn forward(&self, t: &Tensor, kind: Kind) -> Tensor {
        let args =
            t.to_kind(Kind::Float).unsqueeze(1) * self.freqs.to_device(t.device()).unsqueeze(0);
        let features = Tensor::cat(&[args.cos(), args.sin()], -1).to_kind(kind);
        features.apply(&self.fc1).silu().apply(&self.fc2).silu()
    }
}

/// The denoiser (or, with `causal`, the autoregressive model); see the module docs.
#[derive(Debug)]
pub struct TextTransformer {
    config: TransformerConfig,
    token_embed: nn::Embedding,
    pos_embed: Option<nn::Embedding>,
    rotary: Option<Rotary>,
    time_embed: Option<TimeEmbed>,
    blocks: Vec<Block>,
    final_norm: nn::LayerNorm,
    final_modulation: Option<nn::Linear>,
    head: nn::Linear,
}

impl TextTransformer {
    /// Build under `vs` after validating `cfg`. Embeddings start N(0, 0.02), linear layers as
    /// PyTorch's, modulations and the head at zero.
    pub fn new(vs: &nn::Path, cfg: &TransformerConfig) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let embed_init = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let token_embed = nn::embedding(vs / "token_embed", cfg.vocab_size, h, embed_init);
        let (pos_embed, rotary) = match cfg.positions {
            Positions::Learned => (
                Some(nn::embedding(
                    vs / "pos_embed",
                    cfg.max_seq_len,
                    h,
                    embed_init,
                )),
                None,
            ),
            Positions::Rotary => (
                None,
                Some(Rotary::new(cfg.head_dim(), cfg.max_seq_len, vs.device())),
            ),
        };
        let time_embed = (!cfg.causal).then(|| TimeEmbed::new(vs / "time_embed", cfg.cond_dim));
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(vs / "blocks" / i, cfg))
            .collect();
        Ok(TextTransformer {
            config: cfg.clone(),
            token_embed,
            pos_embed,
            rotary,
            time_embed,
            blocks,
            final_norm: layer_norm(vs / "final_norm", h),
            final_modulation: (!cfg.causal)
                .then(|| zero_linear(vs / "final_modulation", cfg.cond_dim, 2 * h)),
            head: zero_linear(vs / "head", h, cfg.output_vocab_size),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.token_embed.ws.device()
    }

    /// Shape checks shared by [`TextTransformer::forward_t`] (which panics on them) and
    /// [`TextTransformer::f_forward_t`] (which returns them).
    fn check_shapes(&self, tokens: &Tensor, cond: Option<&Tensor>) -> Result<()> {
        let size = tokens.size();
        if size.len() != 2 {
            return Err(Error::InvalidArgument(format!(
                "transformer: tokens must be [batch, length], got shape {size:?}"
            )));
        }
        if tokens.is_floating_point() || tokens.kind() == Kind::Bool {
            return Err(Error::InvalidArgument(format!(
                "transformer: tokens must be integer ids, got {:?}",
                tokens.kind()
            )));
        }
        let (b, len) = (size[0], size[1]);
        if len == 0 || len > self.config.max_seq_len {
            return Err(Error::InvalidArgument(format!(
                "transformer: sequence length {len} is outside 1..={} (the model's max_seq_len)",
                self.config.max_seq_len
            )));
        }
        match (cond, self.config.causal) {
            (Some(_), true) => Err(Error::InvalidArgument(
                "transformer: a causal model takes no time conditioning".into(),
            )),
            (Some(c), false) if !(c.size() == [b] || c.size().is_empty()) => {
                Err(Error::InvalidArgument(format!(
                    "transformer: the conditioning must be [batch] = [{b}] or a scalar, got {:?}",
                    c.size()
                )))
            }
            _ => Ok(()),
        }
    }

    /// [`TextTransformer::forward_t`] that returns an error, instead of panicking, for a
    /// sequence longer than `max_seq_len`, wrong shapes, or ids outside `[0, vocab_size)`.
    pub fn f_forward_t(
        &self,
        tokens: &Tensor,
        cond: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        self.check_shapes(tokens, cond)?;
        if tokens.numel() == 0 {
            return Ok(self.forward_unchecked(tokens, cond, train));
        }
        let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.vocab_size {
            return Err(Error::InvalidArgument(format!(
                "transformer: token ids must be in [0, {}), got ids from {lo} to {hi}",
                self.config.vocab_size
            )));
        }
        Ok(self.forward_unchecked(tokens, cond, train))
    }

    /// Logits `[B, L, output_vocab_size]` for tokens `[B, L]` (integer ids) and, unless the
    /// model is causal, the noise level `cond` `[B]` (or a scalar; `None` means 0). `train`
    /// enables dropout. Panics on shapes the model cannot take (see
    /// [`TextTransformer::f_forward_t`] for errors instead).
    pub fn forward_t(&self, tokens: &Tensor, cond: Option<&Tensor>, train: bool) -> Tensor {
        if let Err(e) = self.check_shapes(tokens, cond) {
            panic!("{e}");
        }
        self.forward_unchecked(tokens, cond, train)
    }

    fn forward_unchecked(&self, tokens: &Tensor, cond: Option<&Tensor>, train: bool) -> Tensor {
        let cfg = &self.config;
        let (b, len) = (tokens.size()[0], tokens.size()[1]);
        let device = tokens.device();
        let tokens = tokens.to_kind(Kind::Int64);
        let embedded = self.token_embed.forward(&tokens);
        let kind = embedded.kind();
        let mut x = match &self.pos_embed {
            Some(pos) => {
                let positions = Tensor::arange(len, (Kind::Int64, device));
                embedded + pos.forward(&positions).unsqueeze(0)
            }
            None => embedded,
        };
        let c = self.time_embed.as_ref().map(|te| {
            let t = match cond {
                Some(t) if t.dim() == 0 => t.to_device(device).expand([b], false),
                Some(t) => t.to_device(device),
                None => Tensor::zeros([b], (Kind::Float, device)),
            };
            te.forward(&t, kind)
        });
        let heads = cfg.num_heads;
        let head_dim = cfg.head_dim();
        let h = cfg.hidden_size;
        for block in &self.blocks {
            let mods = match (&block.modulation, &c) {
                (Some(m), Some(c)) => Some(c.apply(m).chunk(6, -1)),
                _ => None,
            };
            // Attention branch.
            let mut y = x.apply(&block.norm1);
            if let Some(m) = &mods {
                y = modulate(&y, &m[0], &m[1]);
            }
            let qkv = y
                .apply(&block.qkv)
                .view([b, len, 3, heads, head_dim])
                .permute([2, 0, 3, 1, 4]);
            let (mut q, mut k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            if let Some(rotary) = &self.rotary {
                q = rotary.apply(&q);
                k = rotary.apply(&k);
            }
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                cfg.causal,
                None,
                false,
            );
            let attn = attn
                .transpose(1, 2)
                .reshape([b, len, h])
                .apply(&block.out)
                .dropout(cfg.dropout, train);
            x = match &mods {
                Some(m) => x + m[2].unsqueeze(1) * attn,
                None => x + attn,
            };
            // MLP branch.
            let mut y = x.apply(&block.norm2);
            if let Some(m) = &mods {
                y = modulate(&y, &m[3], &m[4]);
            }
            let mlp = y
                .apply(&block.fc1)
                .gelu("tanh")
                .apply(&block.fc2)
                .dropout(cfg.dropout, train);
            x = match &mods {
                Some(m) => x + m[5].unsqueeze(1) * mlp,
                None => x + mlp,
            };
        }
        let mut x = x.apply(&self.final_norm);
        if let (Some(m), Some(c)) = (&self.final_modulation, &c) {
            let m = c.apply(m).chunk(2, -1);
            x = modulate(&x, &m[0], &m[1]);
        }
        x.apply(&self.head)
    }
}

/// Number of trainable parameters in a var store.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}
