//! The denoiser for count vectors: a residual MLP over the process's network input (the latent
//! counts rescaled to about the data's range) with a sinusoidal embedding of the timestep added
//! in every block. Count vectors have no spatial structure to convolve over, so an MLP is the
//! network JUMP itself uses for its tabular and synthetic count data (Chen & Zhou 2023, sec. 5).
//!
//! Variable names: `input`, `time.0`, `time.2`, `blocks.{i}.{norm,time,fc1,fc2}`, `out_norm`,
//! `output` (weights and biases), saved as `model.safetensors`.

use diffuse_core::poisson::CountDenoiser;
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The network's shape; written to a model directory's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CountNetworkConfig {
    /// Columns of the count vectors (filled in from the data).
    pub dim: i64,
    /// Width of the hidden layers.
    pub hidden: i64,
    /// Residual blocks.
    pub blocks: i64,
    /// Width of the sinusoidal timestep embedding (even).
    pub time_embed: i64,
    /// Dropout inside the blocks while training.
    pub dropout: f64,
}

impl Default for CountNetworkConfig {
    fn default() -> Self {
        CountNetworkConfig {
            dim: 0,
            hidden: 256,
            blocks: 3,
            time_embed: 64,
            dropout: 0.0,
        }
    }
}

impl CountNetworkConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.dim < 1 {
            return bad(format!(
                "the network needs at least 1 column, got {}",
                self.dim
            ));
        }
        if self.hidden < 1 {
            return bad(format!("--hidden: must be at least 1, got {}", self.hidden));
        }
        if self.blocks < 0 {
            return bad(format!("--blocks: must be at least 0, got {}", self.blocks));
        }
        if self.time_embed < 2 || self.time_embed % 2 != 0 {
            return bad(format!(
                "--time-embed: must be an even number >= 2, got {}",
                self.time_embed
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "--dropout: must lie in [0, 1), got {}",
                self.dropout
            ));
        }
        Ok(())
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a count network config: {e}")))?;
        config
            .validate()
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(config)
    }

    pub fn to_json_file(&self, path: &Path) -> Result<()> {
        diffuse_tensor::atomic::write_json_atomic(path, self)
    }
}

struct Block {
    norm: nn::LayerNorm,
    time: nn::Linear,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// The residual MLP.
pub struct CountNetwork {
    config: CountNetworkConfig,
    input: nn::Linear,
    time1: nn::Linear,
    time2: nn::Linear,
    blocks: Vec<Block>,
    out_norm: nn::LayerNorm,
    output: nn::Linear,
}

impl CountNetwork {
    pub fn new(vs: &nn::Path, config: &CountNetworkConfig) -> Result<Self> {
        config.validate()?;
        let h = config.hidden;
        let lin = |p: nn::Path, i: i64, o: i64| nn::linear(p, i, o, Default::default());
        let blocks = (0..config.blocks)
            .map(|i| {
                let b = vs / "blocks" / i;
                Block {
                    norm: nn::layer_norm(&b / "norm", vec![h], Default::default()),
                    time: lin(&b / "time", h, h),
                    fc1: lin(&b / "fc1", h, h),
                    fc2: lin(&b / "fc2", h, h),
                }
            })
            .collect();
        Ok(CountNetwork {
            config: config.clone(),
            input: lin(vs / "input", config.dim, h),
            time1: lin(vs / "time" / 0, config.time_embed, h),
            time2: lin(vs / "time" / 2, h, h),
            blocks,
            out_norm: nn::layer_norm(vs / "out_norm", vec![h], Default::default()),
            output: lin(vs / "output", h, config.dim),
        })
    }

    pub fn config(&self) -> &CountNetworkConfig {
        &self.config
    }

    /// Sinusoidal embedding of the timesteps `t` `[B]`: cosines then sines of t times
    /// frequencies from 1 down to 1/10000 (the Transformer's, as diffusers' UNets use).
    fn embed_time(&self, t: &Tensor) -> Tensor {
        let half = self.config.time_embed / 2;
        let freqs = (Tensor::arange(half, (Kind::Float, t.device()))
            * (-(10_000f64.ln()) / half as f64))
            .exp();
        let angles = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
        Tensor::cat(&[angles.cos(), angles.sin()], 1)
    }

    /// `input` `[B, dim]`, `t` `[B]` -> `[B, dim]`.
    pub fn forward_t(&self, input: &Tensor, t: &Tensor, train: bool) -> Tensor {
        let temb = self
            .time2
            .forward(&self.time1.forward(&self.embed_time(t)).silu());
        let mut h = self.input.forward(&input.to_kind(Kind::Float));
        for b in &self.blocks {
            let x = b.norm.forward(&h) + b.time.forward(&temb.silu());
            let x = b.fc1.forward(&x.silu()).silu();
            let x = x.dropout(self.config.dropout, train);
            // Out of place: the block's LayerNorm keeps `h` for its backward pass.
            h = b.fc2.forward(&x) + &h;
        }
        self.output.forward(&self.out_norm.forward(&h).silu())
    }
}

/// The network as the count process sees it (train or eval mode).
pub struct NetworkDenoiser<'a> {
    pub network: &'a CountNetwork,
    pub train: bool,
}

impl CountDenoiser for NetworkDenoiser<'_> {
    fn forward(&self, input: &Tensor, t: &Tensor) -> Tensor {
        self.network.forward_t(input, t, self.train)
    }
}

/// Number of trainable numbers in `vs`.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}
