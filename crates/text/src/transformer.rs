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
//! The causal variant has no `time_embed`, `modulation` or `final_modulation`, and neither has a
//! bidirectional network with `time_conditioning: false` (MDLM's and BD3-LM's default: the share
//! of [MASK] tokens tells the network the noise level). Its blocks are plain pre-norm blocks
//! (`x += branch(norm(x))`) and its final norm feeds the head directly, so no parameters are spent
//! on modulations that, fed no time, could only learn constants.
//!
//! Block diffusion (BD3-LM, Arriola et al. 2025) runs the same network in two more ways:
//! [`TextTransformer::forward_two_stream`] trains on `[x_t ; x_0]` (2L tokens, positions 0..L-1 on
//! each half) under BD3-LM's attention mask, and [`TextTransformer::block_cache`] /
//! [`TextTransformer::forward_block`] sample block by block, the clean prefix's keys and values
//! computed once ([`KvCache`]) and each noisy block attending to them and to itself.

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
    /// Width of the time conditioning (ignored when `causal` or without `time_conditioning`).
    pub cond_dim: i64,
    /// A bidirectional network takes a noise level through adaLN modulations; `false` leaves them
    /// out (ignored when `causal`). Files written before this field existed had them: `true`.
    #[serde(default = "modulated_by_default")]
    pub time_conditioning: bool,
}

fn modulated_by_default() -> bool {
    true
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
            time_conditioning: true,
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

    /// Whether the network has adaLN modulations (and takes a noise level).
    pub fn modulated(&self) -> bool {
        !self.causal && self.time_conditioning
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
        if self.modulated() {
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

    /// Rotate `x` `[B, heads, n, head_dim]` whose tokens sit at `positions` `[n]` (i64).
    fn apply(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let pick = |table: &Tensor| {
            table
                .to_device(x.device())
                .index_select(0, positions)
                .to_kind(x.kind())
        };
        x * pick(&self.cos) + rotate_half(x) * pick(&self.sin)
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
            modulation: cfg
                .modulated()
                .then(|| zero_linear(&vs / "modulation", cfg.cond_dim, 6 * h)),
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
        let time_embed = cfg
            .modulated()
            .then(|| TimeEmbed::new(vs / "time_embed", cfg.cond_dim));
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
            final_modulation: cfg
                .modulated()
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
        match (cond, self.config.modulated()) {
            (Some(_), false) => Err(Error::InvalidArgument(if self.config.causal {
                "transformer: a causal model takes no time conditioning".into()
            } else {
                "transformer: this network has no time conditioning (time_conditioning: false)"
                    .into()
            })),
            (Some(c), true) if !(c.size() == [b] || c.size().is_empty()) => {
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
        let len = tokens.size()[1];
        let positions = Tensor::arange(len, (Kind::Int64, tokens.device()));
        let attention = if self.config.causal {
            Attention::Causal
        } else {
            Attention::Full
        };
        let (x, _) = self.trunk(tokens, &positions, cond, attention, None, false, train);
        self.head_of(&x, cond, tokens.size()[0])
    }

    /// BD3-LM's training pass: logits `[B, L, output_vocab_size]` at the positions of the noisy
    /// sequence `x_t` `[B, L]`, where the network sees `[x_t ; x0]` (2L tokens, positions 0..L-1
    /// on each half) and each noisy token attends to its own noisy block and to the clean blocks
    /// before it, each clean token to the clean blocks up to its own (Arriola et al. 2025, sec.
    /// 3.2). Blocks are `block_size` tokens; `block_size` must divide L. Only networks without
    /// time conditioning (one noise level per block has no single adaLN input).
    pub fn forward_two_stream(
        &self,
        x_t: &Tensor,
        x0: &Tensor,
        block_size: i64,
        train: bool,
    ) -> Result<Tensor> {
        self.check_blocks(x_t, block_size)?;
        if x0.size() != x_t.size() {
            return Err(Error::InvalidArgument(format!(
                "transformer: x_t {:?} and x0 {:?} must have the same shape",
                x_t.size(),
                x0.size()
            )));
        }
        let (b, len) = (x_t.size()[0], x_t.size()[1]);
        let device = x_t.device();
        let tokens = Tensor::cat(&[x_t.to_kind(Kind::Int64), x0.to_kind(Kind::Int64)], 1);
        let half = Tensor::arange(len, (Kind::Int64, device));
        let positions = Tensor::cat(&[&half, &half], 0);
        let mask = two_stream_mask(len, block_size, device);
        let (x, _) = self.trunk(
            &tokens,
            &positions,
            None,
            Attention::Mask(&mask),
            None,
            false,
            train,
        );
        Ok(self.head_of(&x.narrow(1, 0, len), None, b))
    }

    /// The keys and values of a clean `prefix` `[B, P]` (P a multiple of `block_size`, at most
    /// `max_seq_len`; P = 0 gives an empty cache) under BD3-LM's block-causal attention: what
    /// [`TextTransformer::forward_block`] attends to. Evaluation mode (no dropout).
    pub fn block_cache(&self, prefix: &Tensor, block_size: i64) -> Result<KvCache> {
        let (b, p) = prefix
            .size2()
            .map_err(|_| Error::InvalidArgument("transformer: the prefix must be [B, P]".into()))?;
        if p == 0 {
            return Ok(KvCache {
                layers: Vec::new(),
                batch: b,
                len: 0,
            });
        }
        self.check_blocks(prefix, block_size)?;
        let device = prefix.device();
        let positions = Tensor::arange(p, (Kind::Int64, device));
        let mask = block_causal_mask(p, block_size, device);
        let (_, layers) = tch::no_grad(|| {
            self.trunk(
                prefix,
                &positions,
                None,
                Attention::Mask(&mask),
                None,
                true,
                false,
            )
        });
        Ok(KvCache {
            layers,
            batch: b,
            len: p,
        })
    }

    /// Logits `[B, n, output_vocab_size]` of a block `tokens` `[B, n]` that follows `cache`'s
    /// tokens (positions `cache.len()..`): every token attends to the whole cache and to the whole
    /// block. Evaluation mode.
    pub fn forward_block(&self, tokens: &Tensor, cache: &KvCache) -> Result<Tensor> {
        let positions = self.check_after_cache(tokens, cache)?;
        Ok(tch::no_grad(|| {
            let (x, _) = self.trunk(
                tokens,
                &positions,
                None,
                Attention::Full,
                Some(cache),
                false,
                false,
            );
            self.head_of(&x, None, tokens.size()[0])
        }))
    }

    /// `cache` followed by the clean block `tokens` `[B, n]`: the next block's context.
    pub fn extend_cache(&self, cache: &KvCache, tokens: &Tensor) -> Result<KvCache> {
        let positions = self.check_after_cache(tokens, cache)?;
        let (_, layers) = tch::no_grad(|| {
            self.trunk(
                tokens,
                &positions,
                None,
                Attention::Full,
                Some(cache),
                true,
                false,
            )
        });
        Ok(KvCache {
            layers,
            batch: cache.batch,
            len: cache.len + tokens.size()[1],
        })
    }

    /// Shapes, and a network block diffusion can run: bidirectional, no time conditioning.
    fn check_block_network(&self, tokens: &Tensor) -> Result<()> {
        self.check_shapes(tokens, None)?;
        if self.config.causal || self.config.modulated() {
            return Err(Error::InvalidArgument(
                "transformer: block diffusion needs a bidirectional network without time \
                 conditioning"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_blocks(&self, tokens: &Tensor, block_size: i64) -> Result<()> {
        self.check_block_network(tokens)?;
        let len = tokens.size()[1];
        if block_size < 1 || len % block_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "transformer: block size {block_size} does not divide the length {len}"
            )));
        }
        Ok(())
    }

    /// The positions of `tokens` after `cache`, after checking they fit.
    fn check_after_cache(&self, tokens: &Tensor, cache: &KvCache) -> Result<Tensor> {
        self.check_block_network(tokens)?;
        let (b, n) = (tokens.size()[0], tokens.size()[1]);
        if b != cache.batch {
            return Err(Error::InvalidArgument(format!(
                "transformer: a block of {b} rows after a cache of {}",
                cache.batch
            )));
        }
        if cache.len + n > self.config.max_seq_len {
            return Err(Error::InvalidArgument(format!(
                "transformer: {} cached and {n} new tokens exceed max_seq_len {}",
                cache.len, self.config.max_seq_len
            )));
        }
        Ok(Tensor::arange_start(
            cache.len,
            cache.len + n,
            (Kind::Int64, tokens.device()),
        ))
    }

    /// Final norm (modulated when the network is) and head.
    fn head_of(&self, x: &Tensor, cond: Option<&Tensor>, b: i64) -> Tensor {
        let mut x = x.apply(&self.final_norm);
        if let (Some(m), Some(c)) = (
            &self.final_modulation,
            self.time_features(cond, b, x.kind(), x.device()),
        ) {
            let m = c.apply(m).chunk(2, -1);
            x = modulate(&x, &m[0], &m[1]);
        }
        x.apply(&self.head)
    }

    /// `c = silu(time_embed(cond))` `[B, cond_dim]`, or `None` without time conditioning.
    fn time_features(
        &self,
        cond: Option<&Tensor>,
        b: i64,
        kind: Kind,
        device: tch::Device,
    ) -> Option<Tensor> {
        self.time_embed.as_ref().map(|te| {
            let t = match cond {
                Some(t) if t.dim() == 0 => t.to_device(device).expand([b], false),
                Some(t) => t.to_device(device),
                None => Tensor::zeros([b], (Kind::Float, device)),
            };
            te.forward(&t, kind)
        })
    }

    /// The residual stream `[B, n, hidden]` after every block for `tokens` `[B, n]` at
    /// `positions` `[n]`, attending as `attention` says to `past`'s keys and values (if any) and
    /// to the tokens' own; with `keep`, also each layer's keys and values (past ones first).
    #[allow(clippy::too_many_arguments)]
    fn trunk(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        cond: Option<&Tensor>,
        attention: Attention<'_>,
        past: Option<&KvCache>,
        keep: bool,
        train: bool,
    ) -> (Tensor, Vec<(Tensor, Tensor)>) {
        let cfg = &self.config;
        let (b, len) = (tokens.size()[0], tokens.size()[1]);
        let device = tokens.device();
        let tokens = tokens.to_kind(Kind::Int64);
        let embedded = self.token_embed.forward(&tokens);
        let kind = embedded.kind();
        let mut x = match &self.pos_embed {
            Some(pos) => embedded + pos.forward(positions).unsqueeze(0),
            None => embedded,
        };
        let c = self.time_features(cond, b, kind, device);
        let heads = cfg.num_heads;
        let head_dim = cfg.head_dim();
        let h = cfg.hidden_size;
        let mut kept = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
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
            let (mut q, mut k, mut v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            if let Some(rotary) = &self.rotary {
                q = rotary.apply(&q, positions);
                k = rotary.apply(&k, positions);
            }
            if let Some(past) = past.filter(|p| p.len > 0) {
                let (pk, pv) = &past.layers[i];
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            if keep {
                kept.push((k.shallow_clone(), v.shallow_clone()));
            }
            let (mask, causal) = match attention {
                Attention::Full => (None, false),
                Attention::Causal => (None, true),
                Attention::Mask(m) => (Some(m), false),
            };
            let attn =
                Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None, false);
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
        (x, kept)
    }
}

/// How tokens attend: to everything, causally, or as a boolean mask `[queries, keys]` says
/// (true: attend).
#[derive(Clone, Copy)]
enum Attention<'a> {
    Full,
    Causal,
    Mask(&'a Tensor),
}

/// Keys and values of the tokens a block follows, one pair `[B, heads, P, head_dim]` per layer
/// (rotary already applied), from [`TextTransformer::block_cache`].
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    batch: i64,
    len: i64,
}

impl KvCache {
    /// Tokens cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Block-causal attention over `len` tokens in blocks of `block`: token i attends to token j
/// when j's block is not after i's. `[len, len]` bool.
pub fn block_causal_mask(len: i64, block: i64, device: tch::Device) -> Tensor {
    let blocks = Tensor::arange(len, (Kind::Int64, device)).divide_scalar_mode(block, "floor");
    blocks.unsqueeze(1).ge_tensor(&blocks.unsqueeze(0))
}

/// BD3-LM's mask over `[x_t ; x_0]` (2 `len` tokens): noisy to noisy within a block, noisy to
/// clean blocks strictly before its own, clean to clean block-causally, clean never to noisy.
/// `[2 len, 2 len]` bool.
pub fn two_stream_mask(len: i64, block: i64, device: tch::Device) -> Tensor {
    let blocks = Tensor::arange(len, (Kind::Int64, device)).divide_scalar_mode(block, "floor");
    let (qi, kj) = (blocks.unsqueeze(1), blocks.unsqueeze(0));
    let noisy_noisy = qi.eq_tensor(&kj);
    let noisy_clean = qi.gt_tensor(&kj);
    let clean_clean = qi.ge_tensor(&kj);
    let clean_noisy = clean_clean.zeros_like();
    Tensor::cat(
        &[
            Tensor::cat(&[noisy_noisy, noisy_clean], 1),
            Tensor::cat(&[clean_noisy, clean_clean], 1),
        ],
        0,
    )
}

/// Number of trainable parameters in a var store.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}
