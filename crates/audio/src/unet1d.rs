//! A 1-D UNet for waveforms: diffusers' `UNet2DModel` layout carried over to one dimension, with
//! strided-conv downsampling by per-level factors (audio wants x4 steps, not x2), optional
//! self-attention over time at the lowest resolution and at chosen levels, and the optional class
//! embedding and position channel of `network` (both absent by default, so older configs and
//! weights load and compute as before).
//!
//! Layout (variable names follow diffusers' `UNet2DModel`; `tests/golden/make_network_golden.py`
//! is the same network in PyTorch and the parity test holds them to 1e-4):
//!
//! - `time_embedding.linear_{1,2}`: sinusoidal features of the real timestep (diffusers'
//!   `Timesteps` with `flip_sin_to_cos = true`, shift 0, width `block_out_channels[0]`), Linear,
//!   SiLU, Linear to `time_embed_dim`. Every resnet reads `silu` of it.
//! - `class_embedding` (with `num_class_embeds`): a `[num_class_embeds, time_embed_dim]` table
//!   whose row for the label is added to the time embedding before that `silu`, exactly where
//!   `UNet2DModel` (and `diffuse-image`'s UNet2d) add theirs; the last row is the null class.
//! - `conv_in`: k 7 (a wider first window at the sample rate costs little with few channels in);
//!   with `position_channel` it reads one channel more, the position, after the audio's.
//! - `down_blocks.N.resnets.M`: GroupNorm, SiLU, conv k 3, `+ time_emb_proj(silu(temb))`,
//!   GroupNorm, SiLU, dropout, conv k 3, plus the input (through a 1x1 `conv_shortcut` when the
//!   width changes). `down_blocks.N.downsamplers.0.conv`: kernel 2f, stride f, padding ceil(f/2)
//!   for factor f, which maps a length L divisible by f to exactly L / f. On a level whose
//!   `attention_levels` entry is set, `down_blocks.N.attentions.M` follows resnet M (diffusers'
//!   `AttnDownBlock2D`: the skip is taken after the attention).
//! - `mid_block.resnets.{0,1}` around `mid_block.attentions.0` (GroupNorm, multi-head
//!   self-attention over time, `to_q`/`to_k`/`to_v`/`to_out.0` with biases, residual; no
//!   position encoding) when `attention` is set. Every attention has the same layout.
//! - `up_blocks.N`: `layers_per_block + 1` resnets, each on the running activations concatenated
//!   with the next skip (diffusers' skips: `conv_in`'s output, every down resnet's and every
//!   downsampler's), then `upsamplers.0.conv`: nearest-neighbour x f, conv k 3. Up block N is
//!   level `levels - 1 - N`; if that level has attention, `up_blocks.N.attentions.M` follows
//!   resnet M (`AttnUpBlock2D`).
//! - `conv_norm_out`, SiLU, `conv_out` (k 3, zero at first so a fresh model predicts 0).
//!
//! The input length must be a multiple of [`UNet1dConfig::length_multiple`];
//! `network::AudioNetwork` pads and crops other lengths.

use crate::diffwave::{linear, torch_uniform};
use crate::network::{check_conditioning, class_rows, with_positions, ClassEmbedding};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

const NORM_EPS: f64 = 1e-5;
const CONV_IN_KERNEL: i64 = 7;

/// The network's configuration (the `unet1d` variant of `AudioNetworkConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNet1dConfig {
    /// Audio channels in (1 for mono).
    pub in_channels: i64,
    /// Channels out (the input's for epsilon prediction; twice that with a learned variance).
    pub out_channels: i64,
    /// Width of each resolution level, finest first.
    pub block_out_channels: Vec<i64>,
    /// Downsampling factor between level i and i + 1 (one fewer than the levels; each >= 2).
    pub down_factors: Vec<i64>,
    /// Resnets per level on the way down (the way up has one more).
    pub layers_per_block: i64,
    /// Self-attention over time in the middle block (the lowest resolution).
    pub attention: bool,
    /// Width of one attention head (must divide the last level's width).
    pub attention_head_dim: i64,
    /// Groups of every GroupNorm (must divide every level's width).
    pub norm_num_groups: i64,
    /// Dropout inside every resnet during training.
    pub dropout: f64,
    /// Width of the time embedding.
    pub time_embed_dim: i64,
    /// Class-conditional: rows of `class_embedding`, the classes plus one (the last row is the
    /// null class). None: unconditional, and no `class_embedding` variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_class_embeds: Option<i64>,
    /// Append the position channel (frame / `position_frames`) to the input.
    #[serde(skip_serializing_if = "is_false")]
    pub position_channel: bool,
    /// The training clip length in frames that positions are scaled by (with `position_channel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_frames: Option<i64>,
    /// Self-attention after every resnet of level i, down and up, where entry i is true (one
    /// entry per level, or none at all); the middle block's is `attention`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attention_levels: Vec<bool>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for UNet1dConfig {
    /// A CPU-sized model: 4 levels of 32, 64, 96 and 128 channels, x4 downsampling (the middle
    /// runs at 1/64 of the sample rate), 2 resnets per level, attention in the middle; about
    /// 2.1 M parameters.
    fn default() -> Self {
        UNet1dConfig {
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![32, 64, 96, 128],
            down_factors: vec![4, 4, 4],
            layers_per_block: 2,
            attention: true,
            attention_head_dim: 32,
            norm_num_groups: 8,
            dropout: 0.0,
            time_embed_dim: 128,
            num_class_embeds: None,
            position_channel: false,
            position_frames: None,
            attention_levels: Vec::new(),
        }
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(format!("unet1d config: {message}"))
}

impl UNet1dConfig {
    /// Check every field, naming it and what was expected.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
            ("time_embed_dim", self.time_embed_dim),
        ] {
            if v <= 0 {
                return Err(invalid(format!("{name} must be positive, got {v}")));
            }
        }
        if self.block_out_channels.is_empty() {
            return Err(invalid("block_out_channels must not be empty".into()));
        }
        if self.down_factors.len() + 1 != self.block_out_channels.len() {
            return Err(invalid(format!(
                "down_factors needs one factor per downsampling, {} for {} levels, got {:?}",
                self.block_out_channels.len() - 1,
                self.block_out_channels.len(),
                self.down_factors
            )));
        }
        for &c in &self.block_out_channels {
            if c <= 0 || c % self.norm_num_groups != 0 {
                return Err(invalid(format!(
                    "every block_out_channels entry must be a positive multiple of \
                     norm_num_groups {}, got {:?}",
                    self.norm_num_groups, self.block_out_channels
                )));
            }
        }
        if self.block_out_channels[0] % 2 != 0 {
            return Err(invalid(format!(
                "block_out_channels[0] sets the sinusoidal time features and must be even, got {}",
                self.block_out_channels[0]
            )));
        }
        if let Some(&f) = self.down_factors.iter().find(|&&f| !(2..=64).contains(&f)) {
            return Err(invalid(format!(
                "every down factor must be in 2..=64, got {f}"
            )));
        }
        // Past 2^40 samples the multiple means nothing (and the product would soon overflow).
        if self
            .down_factors
            .iter()
            .map(|&f| (f as f64).log2())
            .sum::<f64>()
            > 40.0
        {
            return Err(invalid(format!(
                "down_factors {:?} downsample by more than 2^40",
                self.down_factors
            )));
        }
        if self.attention {
            let c = *self.block_out_channels.last().expect("non-empty");
            if self.attention_head_dim <= 0 || c % self.attention_head_dim != 0 {
                return Err(invalid(format!(
                    "attention_head_dim must be positive and divide the last level's {c} \
                     channels, got {}",
                    self.attention_head_dim
                )));
            }
        }
        let levels = self.block_out_channels.len();
        if !self.attention_levels.is_empty() && self.attention_levels.len() != levels {
            return Err(invalid(format!(
                "attention_levels needs one entry per level ({levels}) or none, got {:?}",
                self.attention_levels
            )));
        }
        for (i, _) in self
            .attention_levels
            .iter()
            .enumerate()
            .filter(|(_, &on)| on)
        {
            let c = self.block_out_channels[i];
            if self.attention_head_dim <= 0 || c % self.attention_head_dim != 0 {
                return Err(invalid(format!(
                    "attention_head_dim must be positive and divide the {c} channels of level \
                     {i} (attention_levels), got {}",
                    self.attention_head_dim
                )));
            }
        }
        check_conditioning(
            self.num_class_embeds,
            self.position_channel,
            self.position_frames,
        )
        .map_err(invalid)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Input lengths must be multiples of this (the product of the down factors).
    pub fn length_multiple(&self) -> i64 {
        self.down_factors.iter().product()
    }

    /// Whether level `i` has self-attention after its resnets.
    fn level_attention(&self, i: usize) -> bool {
        self.attention_levels.get(i).copied().unwrap_or(false)
    }
}

/// `nn.Conv1d(cin, cout, k, stride, padding)` with PyTorch's initialisation.
fn conv(vs: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv1D {
    let init = torch_uniform(cin * k);
    nn::conv1d(
        vs,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            ws_init: init,
            bs_init: init,
            ..Default::default()
        },
    )
}

fn group_norm(vs: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(
        vs,
        groups,
        channels,
        nn::GroupNormConfig {
            eps: NORM_EPS,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv1D,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv1D,
    conv_shortcut: Option<nn::Conv1D>,
    dropout: f64,
}

impl ResnetBlock {
    fn new(vs: nn::Path, cin: i64, cout: i64, cfg: &UNet1dConfig) -> Self {
        let g = cfg.norm_num_groups;
        ResnetBlock {
            norm1: group_norm(&vs / "norm1", g, cin),
            conv1: conv(&vs / "conv1", cin, cout, 3, 1, 1),
            time_emb_proj: linear(&vs / "time_emb_proj", cfg.time_embed_dim, cout),
            norm2: group_norm(&vs / "norm2", g, cout),
            conv2: conv(&vs / "conv2", cout, cout, 3, 1, 1),
            conv_shortcut: (cin != cout).then(|| conv(&vs / "conv_shortcut", cin, cout, 1, 1, 0)),
            dropout: cfg.dropout,
        }
    }

    /// `temb_act` is `silu(temb)` `[B, E]`, computed once per forward.
    fn forward_t(&self, xs: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let h = xs.apply(&self.norm1).silu().apply(&self.conv1)
            + temb_act.apply(&self.time_emb_proj).unsqueeze(-1);
        let h = h
            .apply(&self.norm2)
            .silu()
            .dropout(self.dropout, train)
            .apply(&self.conv2);
        match &self.conv_shortcut {
            Some(c) => xs.apply(c) + h,
            None => xs + h,
        }
    }
}

/// GroupNorm, multi-head self-attention over time, residual.
#[derive(Debug)]
struct Attention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(vs: nn::Path, channels: i64, cfg: &UNet1dConfig) -> Self {
        Attention {
            group_norm: group_norm(&vs / "group_norm", cfg.norm_num_groups, channels),
            to_q: linear(&vs / "to_q", channels, channels),
            to_k: linear(&vs / "to_k", channels, channels),
            to_v: linear(&vs / "to_v", channels, channels),
            to_out: linear(&vs / "to_out" / 0, channels, channels),
            heads: channels / cfg.attention_head_dim,
        }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let (b, c, len) = xs.size3().expect("UNet1d: activations are [B, C, L]");
        let h = xs.apply(&self.group_norm).transpose(1, 2);
        let split = |t: Tensor| t.view([b, len, self.heads, -1]).transpose(1, 2);
        let q = split(h.apply(&self.to_q));
        let k = split(h.apply(&self.to_k));
        let v = split(h.apply(&self.to_v));
        let o = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let o = o.transpose(1, 2).reshape([b, len, c]).apply(&self.to_out);
        o.transpose(1, 2) + xs
    }
}

/// Nearest-neighbour upsampling by an integer factor along time: each sample repeated `f` times
/// (exactly `F.interpolate(mode="nearest")` for integer factors, without its float index maths).
fn repeat_nearest(xs: &Tensor, f: i64) -> Tensor {
    let (b, c, len) = xs.size3().expect("UNet1d: activations are [B, C, L]");
    xs.unsqueeze(-1)
        .expand([b, c, len, f], false)
        .reshape([b, c, len * f])
}

#[derive(Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    /// One after each resnet on a level with attention, else none.
    attentions: Vec<Attention>,
    /// The strided conv to the next level (none on the last level).
    downsampler: Option<nn::Conv1D>,
}

#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    /// One after each resnet on a level with attention, else none.
    attentions: Vec<Attention>,
    /// The conv after nearest upsampling by `factor` (none on the finest level).
    upsampler: Option<(nn::Conv1D, i64)>,
}

/// `count` attentions of `channels` under `path/attentions/M` when `on`, else none.
fn attentions(
    path: &nn::Path,
    on: bool,
    count: i64,
    channels: i64,
    cfg: &UNet1dConfig,
) -> Vec<Attention> {
    if !on {
        return Vec::new();
    }
    (0..count)
        .map(|m| Attention::new(path / "attentions" / m, channels, cfg))
        .collect()
}

/// The time embedding: sinusoidal features and `linear_1`, SiLU, `linear_2`.
#[derive(Debug)]
struct TimeEmbedding {
    /// `[dim / 2]` float32: exp(-ln(10000) i / (dim / 2)).
    freqs: Tensor,
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimeEmbedding {
    fn new(vs: nn::Path, features: i64, dim: i64) -> Self {
        let half = features / 2;
        // diffusers' get_timestep_embedding op order, so the float32 values agree bit for bit.
        let exponent = Tensor::arange(half, (Kind::Float, vs.device())) * (-(10000f64.ln()));
        TimeEmbedding {
            freqs: (exponent / half as f64).exp(),
            linear_1: linear(&vs / "linear_1", features, dim),
            linear_2: linear(&vs / "linear_2", dim, dim),
        }
    }

    fn forward(&self, t: &Tensor, kind: Kind) -> Tensor {
        let args =
            t.to_kind(Kind::Float).unsqueeze(1) * self.freqs.to_device(t.device()).unsqueeze(0);
        // flip_sin_to_cos: [cos, sin].
        let features = Tensor::cat(&[args.cos(), args.sin()], -1).to_kind(kind);
        features.apply(&self.linear_1).silu().apply(&self.linear_2)
    }
}

/// The 1-D UNet; see the module docs.
#[derive(Debug)]
pub struct UNet1d {
    config: UNet1dConfig,
    time_embedding: TimeEmbedding,
    class_embedding: Option<ClassEmbedding>,
    conv_in: nn::Conv1D,
    down_blocks: Vec<DownBlock>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: Option<Attention>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv1D,
}

impl UNet1d {
    /// Build under `vs` after validating `cfg` (PyTorch's default initialisation; `conv_out` at
    /// zero).
    pub fn new(vs: &nn::Path, cfg: &UNet1dConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let c0 = ch[0];
        let lpb = cfg.layers_per_block;

        let mut down_blocks = Vec::with_capacity(n);
        let mut cin = c0;
        for (i, &cout) in ch.iter().enumerate() {
            let p = vs / "down_blocks" / i;
            let resnets = (0..lpb)
                .map(|j| {
                    let input = if j == 0 { cin } else { cout };
                    ResnetBlock::new(&p / "resnets" / j, input, cout, cfg)
                })
                .collect();
            let downsampler = cfg.down_factors.get(i).map(|&f| {
                conv(
                    &p / "downsamplers" / 0 / "conv",
                    cout,
                    cout,
                    2 * f,
                    f,
                    (f + 1) / 2,
                )
            });
            down_blocks.push(DownBlock {
                resnets,
                attentions: attentions(&p, cfg.level_attention(i), lpb, cout, cfg),
                downsampler,
            });
            cin = cout;
        }

        let c_last = ch[n - 1];
        let mid = vs / "mid_block";
        let mid_resnets = [
            ResnetBlock::new(&mid / "resnets" / 0, c_last, c_last, cfg),
            ResnetBlock::new(&mid / "resnets" / 1, c_last, c_last, cfg),
        ];
        let mid_attention = cfg
            .attention
            .then(|| Attention::new(&mid / "attentions" / 0, c_last, cfg));

        // diffusers' UNet2DModel channel bookkeeping for the way up.
        let reversed: Vec<i64> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev_out = reversed[0];
        for (i, &cout) in reversed.iter().enumerate() {
            let p = vs / "up_blocks" / i;
            let input = reversed[(i + 1).min(n - 1)];
            let resnets = (0..=lpb)
                .map(|j| {
                    let skip = if j == lpb { input } else { cout };
                    let res_in = if j == 0 { prev_out } else { cout };
                    ResnetBlock::new(&p / "resnets" / j, res_in + skip, cout, cfg)
                })
                .collect();
            let upsampler = (i + 1 < n).then(|| {
                let f = cfg.down_factors[n - 2 - i];
                (conv(&p / "upsamplers" / 0 / "conv", cout, cout, 3, 1, 1), f)
            });
            up_blocks.push(UpBlock {
                resnets,
                attentions: attentions(&p, cfg.level_attention(n - 1 - i), lpb + 1, cout, cfg),
                upsampler,
            });
            prev_out = cout;
        }

        let zero = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        Ok(UNet1d {
            config: cfg.clone(),
            time_embedding: TimeEmbedding::new(vs / "time_embedding", c0, cfg.time_embed_dim),
            class_embedding: cfg
                .num_class_embeds
                .map(|rows| ClassEmbedding::new(vs / "class_embedding", rows, cfg.time_embed_dim)),
            conv_in: conv(
                vs / "conv_in",
                cfg.in_channels + i64::from(cfg.position_channel),
                c0,
                CONV_IN_KERNEL,
                1,
                CONV_IN_KERNEL / 2,
            ),
            down_blocks,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out: group_norm(vs / "conv_norm_out", cfg.norm_num_groups, c0),
            conv_out: nn::conv1d(vs / "conv_out", c0, cfg.out_channels, 3, zero),
        })
    }

    pub fn config(&self) -> &UNet1dConfig {
        &self.config
    }

    /// `[B, out_channels, L]` for audio `[B, in_channels, L]`, real timesteps `t` `[B]` and class
    /// labels `[B]` (None: the null class when class-conditional; see
    /// `network::AudioNetwork::forward_t`); L must be a multiple of
    /// [`UNet1dConfig::length_multiple`] (panics otherwise). The position channel, if any, is
    /// made here for this L. `train` enables dropout.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let len = xs.size().last().copied().unwrap_or(0);
        let multiple = self.config.length_multiple();
        assert!(
            len % multiple == 0,
            "UNet1d: the input length {len} is not a multiple of {multiple} (pad it, or use \
             AudioNetwork, which does)"
        );
        let temb = self.time_embedding.forward(t, xs.kind());
        let batch = xs.size()[0];
        // The class row joins the time embedding before its activation (UNet2DModel's order).
        let temb = match class_rows(
            self.class_embedding.as_ref(),
            class_labels,
            batch,
            xs.device(),
            xs.kind(),
        ) {
            Some(rows) => temb + rows,
            None => temb,
        };
        let temb_act = temb.silu();
        let position_frames = self
            .config
            .position_channel
            .then_some(self.config.position_frames)
            .flatten();
        let mut h = with_positions(xs, position_frames).apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            for (m, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward_t(&h, &temb_act, train);
                if let Some(attn) = block.attentions.get(m) {
                    h = attn.forward(&h);
                }
                skips.push(h.shallow_clone());
            }
            if let Some(down) = &block.downsampler {
                h = h.apply(down);
                skips.push(h.shallow_clone());
            }
        }
        h = self.mid_resnets[0].forward_t(&h, &temb_act, train);
        if let Some(attn) = &self.mid_attention {
            h = attn.forward(&h);
        }
        h = self.mid_resnets[1].forward_t(&h, &temb_act, train);
        for block in &self.up_blocks {
            for (m, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("UNet1d: one skip per up resnet");
                h = resnet.forward_t(&Tensor::cat(&[&h, &skip], 1), &temb_act, train);
                if let Some(attn) = block.attentions.get(m) {
                    h = attn.forward(&h);
                }
            }
            if let Some((conv, f)) = &block.upsampler {
                h = repeat_nearest(&h, *f).apply(conv);
            }
        }
        h.apply(&self.conv_norm_out).silu().apply(&self.conv_out)
    }
}
