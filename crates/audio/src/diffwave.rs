//! DiffWave's unconditional denoiser (Kong et al. 2021, "DiffWave: A Versatile Diffusion Model for
//! Audio Synthesis", sec. 3 and fig. 2): a stack of dilated, gated residual convolutions at the
//! waveform's own rate, conditioned on the diffusion step. Fully convolutional: any length works.
//! Optionally also conditioned on a class and given the position channel (both from `network`,
//! both absent by default, when the network is exactly the reference's).
//!
//! Layout (variable names are those of the reference implementation, lmnt-com/diffwave's
//! `model.py`, so its unconditional checkpoints load by name; `tests/golden/make_network_golden.py`
//! is the same network in PyTorch and the parity test holds them to 1e-4):
//!
//! - `input_projection`: 1x1 conv `in_channels -> C` (`in_channels + 1` with the position
//!   channel, which comes after the audio's), then ReLU.
//! - `diffusion_embedding.projection{1,2}`: 128 sinusoidal features of the real timestep t
//!   (`[sin(10^(4i/63) t), cos(10^(4i/63) t)]`, i < 64), Linear `128 -> E`, SiLU, Linear
//!   `E -> E`, SiLU (E = `time_embed_dim`, 512 in the paper); with `num_class_embeds`, the row
//!   of `class_embedding` (`[num_class_embeds, E]`, the last row the null class) for the label
//!   is added before that last SiLU. The reference code reads integer
//!   steps from a table and interpolates between rows for fractional ones; here the features are
//!   evaluated at t directly, which agrees on integers and is exact in between.
//! - `residual_layers.N`: `y = x + diffusion_projection(emb)` (Linear `E -> C`, broadcast over
//!   time); `dilated_conv` (k 3, `C -> 2C`, dilation `2^(N mod dilation_cycle)`, same length);
//!   gate `sigmoid(first half) * tanh(second half)` (the reference code's order; the paper's
//!   tanh * sigmoid is the same family with the halves swapped); `output_projection` (1x1,
//!   `C -> 2C`) splits into residual and skip; `x = (x + residual) / sqrt 2`.
//! - The skips are summed and divided by sqrt(`residual_layers`); `skip_projection` (1x1,
//!   `C -> C`), ReLU, `output_projection` (1x1, `C -> out_channels`, zero at first so a fresh
//!   model predicts exactly 0).

use crate::network::{check_conditioning, class_rows, with_positions, ClassEmbedding};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

/// Sinusoidal features of the diffusion step (64 frequencies, sin and cos).
pub const STEP_FEATURES: i64 = 128;

/// The network's configuration (the `diffwave` variant of `AudioNetworkConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffWaveConfig {
    /// Audio channels in (1 for mono).
    pub in_channels: i64,
    /// Channels out (the input's for epsilon prediction; twice that with a learned variance).
    pub out_channels: i64,
    /// Width C of the residual stack (the paper's unconditional model: 256).
    pub residual_channels: i64,
    /// Number of residual layers (paper: 36).
    pub residual_layers: i64,
    /// Dilations cycle through 1, 2, ..., 2^(dilation_cycle - 1) (paper: 12).
    pub dilation_cycle: i64,
    /// Width of the diffusion-step embedding (paper: 512).
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
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for DiffWaveConfig {
    /// A CPU-sized model (C = 64, 20 layers, dilations up to 512: about 1.65 M parameters, most
    /// of them in the step embedding and its per-layer projections).
    fn default() -> Self {
        DiffWaveConfig {
            in_channels: 1,
            out_channels: 1,
            residual_channels: 64,
            residual_layers: 20,
            dilation_cycle: 10,
            time_embed_dim: 512,
            num_class_embeds: None,
            position_channel: false,
            position_frames: None,
        }
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(format!("diffwave config: {message}"))
}

impl DiffWaveConfig {
    /// Check every field, naming it and what was expected.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("residual_channels", self.residual_channels),
            ("residual_layers", self.residual_layers),
            ("dilation_cycle", self.dilation_cycle),
            ("time_embed_dim", self.time_embed_dim),
        ] {
            if v <= 0 {
                return Err(invalid(format!("{name} must be positive, got {v}")));
            }
        }
        // 2^20 = a dilation of a million samples: far past any useful receptive field, and the
        // bound keeps 2^(cycle - 1) from overflowing.
        if self.dilation_cycle > 20 {
            return Err(invalid(format!(
                "dilation_cycle must be at most 20 (dilation 2^19), got {}",
                self.dilation_cycle
            )));
        }
        check_conditioning(
            self.num_class_embeds,
            self.position_channel,
            self.position_frames,
        )
        .map_err(invalid)
    }

    /// Dilation of residual layer `i`.
    pub fn dilation(&self, i: i64) -> i64 {
        1 << (i % self.dilation_cycle)
    }

    /// Samples each side of an output that can influence it (the receptive field's half width).
    pub fn receptive_radius(&self) -> i64 {
        (0..self.residual_layers).map(|i| self.dilation(i)).sum()
    }
}

/// PyTorch's default initialisation of a `Linear` / conv bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn torch_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Linear(din, dout)` with PyTorch's initialisation.
pub(crate) fn linear(vs: nn::Path, din: i64, dout: i64) -> nn::Linear {
    let init = torch_uniform(din);
    nn::linear(
        vs,
        din,
        dout,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// The reference code's `Conv1d`: PyTorch's layer with a Kaiming-normal weight (fan in, ReLU
/// gain) and PyTorch's default bias.
fn conv(vs: nn::Path, cin: i64, cout: i64, k: i64, dilation: i64) -> nn::Conv1D {
    let fan_in = cin * k;
    nn::conv1d(
        vs,
        cin,
        cout,
        k,
        nn::ConvConfig {
            padding: dilation * (k - 1) / 2,
            dilation,
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: (2.0 / fan_in as f64).sqrt(),
            },
            bs_init: torch_uniform(fan_in),
            ..Default::default()
        },
    )
}

/// A 1x1 conv that starts at exactly zero.
fn zero_conv(vs: nn::Path, cin: i64, cout: i64) -> nn::Conv1D {
    nn::conv1d(
        vs,
        cin,
        cout,
        1,
        nn::ConvConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        },
    )
}

/// The diffusion-step embedding: sinusoidal features, two Linear + SiLU.
#[derive(Debug)]
struct StepEmbedding {
    /// `[64]` float32: 10^(4 i / 63).
    freqs: Tensor,
    projection1: nn::Linear,
    projection2: nn::Linear,
}

impl StepEmbedding {
    fn new(vs: nn::Path, dim: i64) -> Self {
        let half = STEP_FEATURES / 2;
        // The reference code's float32 op order (10 ** (i * 4 / 63)), so the features agree
        // bit for bit with the twin: at t ~ 200 the top frequency's argument is ~2e6, where one
        // float32 ulp is 0.125 rad.
        let exponent = Tensor::arange(half, (Kind::Float, vs.device())) * 4.0 / 63.0;
        StepEmbedding {
            freqs: Tensor::pow_scalar(10.0, &exponent),
            projection1: linear(&vs / "projection1", STEP_FEATURES, dim),
            projection2: linear(&vs / "projection2", dim, dim),
        }
    }

    /// `[B, E]` for real timesteps `t` `[B]`, in `kind`; `class` (`[B, E]` rows of the class
    /// embedding) is added before the last SiLU.
    fn forward(&self, t: &Tensor, class: Option<Tensor>, kind: Kind) -> Tensor {
        let args =
            t.to_kind(Kind::Float).unsqueeze(1) * self.freqs.to_device(t.device()).unsqueeze(0);
        let features = Tensor::cat(&[args.sin(), args.cos()], 1).to_kind(kind);
        let emb = features
            .apply(&self.projection1)
            .silu()
            .apply(&self.projection2);
        match class {
            Some(rows) => (emb + rows).silu(),
            None => emb.silu(),
        }
    }
}

#[derive(Debug)]
struct ResidualLayer {
    dilated_conv: nn::Conv1D,
    diffusion_projection: nn::Linear,
    output_projection: nn::Conv1D,
    channels: i64,
}

impl ResidualLayer {
    fn new(vs: nn::Path, cfg: &DiffWaveConfig, dilation: i64) -> Self {
        let c = cfg.residual_channels;
        ResidualLayer {
            dilated_conv: conv(&vs / "dilated_conv", c, 2 * c, 3, dilation),
            diffusion_projection: linear(&vs / "diffusion_projection", cfg.time_embed_dim, c),
            output_projection: conv(&vs / "output_projection", c, 2 * c, 1, 1),
            channels: c,
        }
    }

    /// (next x, skip) for x `[B, C, L]` and the step embedding `[B, E]`.
    fn forward(&self, xs: &Tensor, emb: &Tensor) -> (Tensor, Tensor) {
        let y = xs + emb.apply(&self.diffusion_projection).unsqueeze(-1);
        let y = y.apply(&self.dilated_conv);
        let c = self.channels;
        let y = y.narrow(1, 0, c).sigmoid() * y.narrow(1, c, c).tanh();
        let y = y.apply(&self.output_projection);
        let residual = y.narrow(1, 0, c);
        let skip = y.narrow(1, c, c);
        ((xs + residual) / std::f64::consts::SQRT_2, skip)
    }
}

/// The DiffWave network; see the module docs.
#[derive(Debug)]
pub struct DiffWave {
    config: DiffWaveConfig,
    input_projection: nn::Conv1D,
    diffusion_embedding: StepEmbedding,
    class_embedding: Option<ClassEmbedding>,
    residual_layers: Vec<ResidualLayer>,
    skip_projection: nn::Conv1D,
    output_projection: nn::Conv1D,
}

impl DiffWave {
    /// Build under `vs` after validating `cfg` (weights initialised as the reference code does;
    /// the output projection at zero).
    pub fn new(vs: &nn::Path, cfg: &DiffWaveConfig) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.residual_channels;
        let layers = (0..cfg.residual_layers)
            .map(|i| ResidualLayer::new(vs / "residual_layers" / i, cfg, cfg.dilation(i)))
            .collect();
        Ok(DiffWave {
            config: cfg.clone(),
            input_projection: conv(
                vs / "input_projection",
                cfg.in_channels + i64::from(cfg.position_channel),
                c,
                1,
                1,
            ),
            diffusion_embedding: StepEmbedding::new(vs / "diffusion_embedding", cfg.time_embed_dim),
            class_embedding: cfg
                .num_class_embeds
                .map(|rows| ClassEmbedding::new(vs / "class_embedding", rows, cfg.time_embed_dim)),
            residual_layers: layers,
            skip_projection: conv(vs / "skip_projection", c, c, 1, 1),
            output_projection: zero_conv(vs / "output_projection", c, cfg.out_channels),
        })
    }

    pub fn config(&self) -> &DiffWaveConfig {
        &self.config
    }

    /// `[B, out_channels, L]` for audio `[B, in_channels, L]` (any L), real timesteps `t` `[B]`
    /// and class labels `[B]` (None: the null class when class-conditional; see
    /// `network::AudioNetwork::forward_t`). The position channel, if any, is made here for this
    /// L. There is no dropout, so `train` changes nothing; it is taken for symmetry.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        _train: bool,
    ) -> Tensor {
        let class = class_rows(
            self.class_embedding.as_ref(),
            class_labels,
            xs.size()[0],
            xs.device(),
            xs.kind(),
        );
        let emb = self.diffusion_embedding.forward(t, class, xs.kind());
        let position_frames = self
            .config
            .position_channel
            .then_some(self.config.position_frames)
            .flatten();
        let mut x = with_positions(xs, position_frames)
            .apply(&self.input_projection)
            .relu();
        let mut skip: Option<Tensor> = None;
        for layer in &self.residual_layers {
            let (next, s) = layer.forward(&x, &emb);
            x = next;
            skip = Some(match skip {
                None => s,
                Some(total) => total + s,
            });
        }
        let skip = skip.expect("validated: at least one residual layer");
        (skip / (self.residual_layers.len() as f64).sqrt())
            .apply(&self.skip_projection)
            .relu()
            .apply(&self.output_projection)
    }
}
