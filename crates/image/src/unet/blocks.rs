//! The building blocks of `UNet2DModel`, ported from diffusers 0.42.1: `ResnetBlock2D`
//! (`models/resnet.py`), `Downsample2D` / `Upsample2D` (`models/downsampling.py`,
//! `models/upsampling.py`), the deprecated-attention-block flavour of `Attention` with
//! `AttnProcessor2_0` (`models/attention_processor.py`) and the down, mid and up blocks
//! (`models/unets/unet_2d_blocks.py`). Variable paths are diffusers' module paths.

use super::config::NormType;
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// PyTorch's default initialisation of `nn.Conv2d` / `nn.Linear` (kaiming-uniform with a = sqrt 5,
/// which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise), so fresh models train like
/// diffusers' do.
fn torch_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Conv2d(cin, cout, k, stride, padding)` with PyTorch's initialisation.
pub(crate) fn conv2d(
    vs: nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    let init = torch_uniform(cin * k * k);
    let config = nn::ConvConfig {
        stride,
        padding,
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv2d(vs, cin, cout, k, config)
}

/// `nn.Linear(din, dout)` with PyTorch's initialisation.
pub(crate) fn linear(vs: nn::Path, din: i64, dout: i64) -> nn::Linear {
    let init = torch_uniform(din);
    let config = nn::LinearConfig {
        ws_init: init,
        bs_init: Some(init),
        bias: true,
    };
    nn::linear(vs, din, dout, config)
}

/// diffusers' `get_activation` (`models/activations.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    Silu,
    Mish,
    Gelu,
    Relu,
}

impl Act {
    pub(crate) fn parse(name: &str) -> Act {
        match name {
            "mish" => Act::Mish,
            "gelu" => Act::Gelu,
            "relu" => Act::Relu,
            _ => Act::Silu, // "silu" | "swish"; validated before
        }
    }

    pub(crate) fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            Act::Silu => xs.silu(),
            Act::Mish => xs.mish(),
            Act::Gelu => xs.gelu("none"),
            Act::Relu => xs.relu(),
        }
    }
}

/// A GroupNorm, or the BatchNorm2d of the `norm_type = "batch"` variant.
#[derive(Debug)]
pub(crate) enum Norm {
    Group(nn::GroupNorm),
    Batch(nn::BatchNorm),
}

/// How to build norms: diffusers' GroupNorm (affine, given eps) or diffuse's BatchNorm2d.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormSpec {
    pub kind: NormType,
    pub eps: f64,
}

impl NormSpec {
    pub(crate) fn build(&self, vs: nn::Path, groups: i64, channels: i64) -> Norm {
        match self.kind {
            NormType::Group => Norm::Group(nn::group_norm(
                vs,
                groups,
                channels,
                nn::GroupNormConfig {
                    eps: self.eps,
                    ..Default::default()
                },
            )),
            // PyTorch's BatchNorm2d: weight 1, bias 0, momentum 0.1.
            NormType::Batch => Norm::Batch(nn::batch_norm2d(
                vs,
                channels,
                nn::BatchNormConfig {
                    eps: self.eps,
                    momentum: 0.1,
                    ws_init: nn::Init::Const(1.0),
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            )),
        }
    }
}

impl Norm {
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Norm::Group(n) => n.forward(xs),
            Norm::Batch(n) => n.forward_t(xs, train),
        }
    }
}

/// The settings every resnet of the model shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResnetSpec {
    pub temb_channels: i64,
    pub groups: i64,
    pub norm: NormSpec,
    pub act: Act,
    pub scale_shift: bool,
}

/// `ResnetBlock2D`'s optional resampling of both paths (`up=True` / `down=True`, no FIR kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resample {
    None,
    Up,
    Down,
}

/// Nearest-neighbour x2, as `F.interpolate(scale_factor=2.0, mode="nearest")`.
fn upsample_nearest2x(xs: &Tensor) -> Tensor {
    let (_, _, h, w) = xs.size4().expect("UNet2d: 4-d activations");
    xs.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0)
}

/// `nn.AvgPool2d(kernel_size=2, stride=2)`.
fn avg_pool2x(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)
}

/// diffusers' `ResnetBlock2D` (`models/resnet.py`) as `UNet2DModel` configures it.
#[derive(Debug)]
pub(crate) struct ResnetBlock2d {
    norm1: Norm,
    conv1: nn::Conv2D,
    time_emb_proj: nn::Linear,
    norm2: Norm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
    act: Act,
    scale_shift: bool,
    dropout: f64,
    output_scale_factor: f64,
    resample: Resample,
}

impl ResnetBlock2d {
    pub(crate) fn new(
        vs: nn::Path,
        cin: i64,
        cout: i64,
        spec: &ResnetSpec,
        dropout: f64,
        output_scale_factor: f64,
        resample: Resample,
    ) -> Self {
        let temb_out = if spec.scale_shift { 2 * cout } else { cout };
        ResnetBlock2d {
            norm1: spec.norm.build(&vs / "norm1", spec.groups, cin),
            conv1: conv2d(&vs / "conv1", cin, cout, 3, 1, 1),
            time_emb_proj: linear(&vs / "time_emb_proj", spec.temb_channels, temb_out),
            norm2: spec.norm.build(&vs / "norm2", spec.groups, cout),
            conv2: conv2d(&vs / "conv2", cout, cout, 3, 1, 1),
            conv_shortcut: (cin != cout).then(|| conv2d(&vs / "conv_shortcut", cin, cout, 1, 1, 0)),
            act: spec.act,
            scale_shift: spec.scale_shift,
            dropout,
            output_scale_factor,
            resample,
        }
    }

    /// `temb_act` is the activated time embedding `act(temb)` `[B, T]`: every resnet of
    /// `UNet2DModel` applies the same activation to the same embedding (`skip_time_act` is
    /// never set), so the model computes it once per forward.
    pub(crate) fn forward_t(&self, xs: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let h = self.act.apply(&self.norm1.forward_t(xs, train));
        let (input, h) = match self.resample {
            Resample::None => (xs.shallow_clone(), h),
            Resample::Up => (upsample_nearest2x(xs), upsample_nearest2x(&h)),
            Resample::Down => (avg_pool2x(xs), avg_pool2x(&h)),
        };
        // The in-place adds below only touch tensors this block just made, whose producers
        // (conv, mul, reshape) do not need their outputs for backward: autograd-safe, one
        // allocation and one memory pass fewer each, and bit-identical (addition commutes).
        let mut h = h.apply(&self.conv1);
        let temb = temb_act
            .apply(&self.time_emb_proj)
            .unsqueeze(-1)
            .unsqueeze(-1);
        let h = if self.scale_shift {
            let st = temb.chunk(2, 1);
            let mut y = self.norm2.forward_t(&h, train) * (&st[0] + 1.0);
            let _ = y.g_add_(&st[1]);
            y
        } else {
            let _ = h.g_add_(&temb);
            self.norm2.forward_t(&h, train)
        };
        let mut h = self.act.apply(&h);
        if train && self.dropout > 0.0 {
            h = h.dropout(self.dropout, true);
        }
        let mut out = h.apply(&self.conv2);
        let _ = match &self.conv_shortcut {
            Some(conv) => out.g_add_(&input.apply(conv)),
            None => out.g_add_(&input),
        };
        if self.output_scale_factor != 1.0 {
            let _ = out.g_div_scalar_(self.output_scale_factor);
        }
        out
    }
}

/// diffusers' `Attention` built with `_from_deprecated_attn_block=True` (self-attention over the
/// pixels, residual connection, biases) and run by `AttnProcessor2_0`.
#[derive(Debug)]
pub(crate) struct Attention {
    group_norm: Option<Norm>,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    head_dim: i64,
    rescale_output_factor: f64,
}

impl Attention {
    /// `norm_groups` `None`: no norm (the scale-shift mid block of diffusers).
    pub(crate) fn new(
        vs: nn::Path,
        channels: i64,
        head_dim: i64,
        norm_groups: Option<i64>,
        norm: &NormSpec,
        rescale_output_factor: f64,
    ) -> Self {
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        Attention {
            group_norm: norm_groups.map(|g| norm.build(&vs / "group_norm", g, channels)),
            to_q: linear(&vs / "to_q", channels, inner),
            to_k: linear(&vs / "to_k", channels, inner),
            to_v: linear(&vs / "to_v", channels, inner),
            to_out: linear(&vs / "to_out" / 0, inner, channels),
            heads,
            head_dim,
            rescale_output_factor,
        }
    }

    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (b, c, h, w) = xs.size4().expect("UNet2d: 4-d activations");
        // GroupNorm over [B, C, H*W] (diffusers) and over [B, C, H, W] compute the same thing.
        let hs = match &self.group_norm {
            Some(norm) => norm.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        let hs = hs.reshape([b, c, h * w]).transpose(1, 2);
        let split = |t: Tensor| t.view([b, -1, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(hs.apply(&self.to_q));
        let k = split(hs.apply(&self.to_k));
        let v = split(hs.apply(&self.to_v));
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
        let o = o
            .transpose(1, 2)
            .reshape([b, -1, self.heads * self.head_dim])
            .apply(&self.to_out);
        // reshape copies the transposed projection: a fresh tensor, safe to add into in place.
        let mut out = o.transpose(-1, -2).reshape([b, c, h, w]);
        let _ = out.g_add_(xs);
        if self.rescale_output_factor != 1.0 {
            let _ = out.g_div_scalar_(self.rescale_output_factor);
        }
        out
    }
}

/// `Downsample2D(use_conv=True)` or a `ResnetBlock2D(down=True)`.
#[derive(Debug)]
pub(crate) enum Downsampler {
    /// A stride-2 3x3 conv; padding 0 pads right and bottom by one first (diffusers does this).
    Conv {
        conv: nn::Conv2D,
        pad_right_bottom: bool,
    },
    Resnet(Box<ResnetBlock2d>),
}

impl Downsampler {
    fn forward_t(&self, xs: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        match self {
            Downsampler::Conv {
                conv,
                pad_right_bottom,
            } => {
                if *pad_right_bottom {
                    xs.constant_pad_nd([0, 1, 0, 1]).apply(conv)
                } else {
                    xs.apply(conv)
                }
            }
            Downsampler::Resnet(r) => r.forward_t(xs, temb_act, train),
        }
    }
}

/// `Upsample2D(use_conv=True)` (nearest x2, 3x3 conv) or a `ResnetBlock2D(up=True)`.
#[derive(Debug)]
pub(crate) enum Upsampler {
    Conv(nn::Conv2D),
    Resnet(Box<ResnetBlock2d>),
}

impl Upsampler {
    fn forward_t(&self, xs: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        match self {
            Upsampler::Conv(conv) => upsample_nearest2x(xs).apply(conv),
            Upsampler::Resnet(r) => r.forward_t(xs, temb_act, train),
        }
    }
}

/// `DownBlock2D`, `AttnDownBlock2D` or `ResnetDownsampleBlock2D`: resnets (each followed by an
/// attention in the Attn flavour), then an optional downsampler.
#[derive(Debug)]
pub(crate) struct DownBlock {
    pub resnets: Vec<ResnetBlock2d>,
    pub attentions: Vec<Attention>,
    pub downsampler: Option<Downsampler>,
}

impl DownBlock {
    /// Runs the block, pushing every output diffusers keeps for the skip connections.
    pub(crate) fn forward_t(
        &self,
        xs: &Tensor,
        temb_act: &Tensor,
        train: bool,
        skips: &mut Vec<Tensor>,
    ) -> Tensor {
        let mut h = xs.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward_t(&h, temb_act, train);
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward_t(&h, train);
            }
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward_t(&h, temb_act, train);
            skips.push(h.shallow_clone());
        }
        h
    }
}

/// `UNetMidBlock2D` with `num_layers=1`: resnet, optional attention, resnet.
#[derive(Debug)]
pub(crate) struct MidBlock {
    pub resnets: Vec<ResnetBlock2d>,
    pub attention: Option<Attention>,
}

impl MidBlock {
    pub(crate) fn forward_t(&self, xs: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let mut h = self.resnets[0].forward_t(xs, temb_act, train);
        if let Some(attn) = &self.attention {
            h = attn.forward_t(&h, train);
        }
        self.resnets[1].forward_t(&h, temb_act, train)
    }
}

/// `UpBlock2D`, `AttnUpBlock2D` or `ResnetUpsampleBlock2D`: each resnet takes the running
/// activations concatenated with the last skip, then an optional upsampler.
#[derive(Debug)]
pub(crate) struct UpBlock {
    pub resnets: Vec<ResnetBlock2d>,
    pub attentions: Vec<Attention>,
    pub upsampler: Option<Upsampler>,
}

impl UpBlock {
    pub(crate) fn forward_t(
        &self,
        xs: &Tensor,
        temb_act: &Tensor,
        train: bool,
        skips: &mut Vec<Tensor>,
    ) -> Tensor {
        let mut h = xs.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("UNet2d: skip connections run out");
            h = resnet.forward_t(&Tensor::cat(&[&h, &skip], 1), temb_act, train);
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward_t(&h, train);
            }
        }
        if let Some(up) = &self.upsampler {
            h = up.forward_t(&h, temb_act, train);
        }
        h
    }
}
