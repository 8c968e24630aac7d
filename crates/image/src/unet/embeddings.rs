//! Time and class embeddings of `UNet2DModel`, from diffusers 0.42.1 `models/embeddings.py`
//! (`Timesteps` / `get_timestep_embedding`, `GaussianFourierProjection`, `TimestepEmbedding`).

use super::blocks::linear;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// The parameter-free (or table) map from timesteps `[B]` to features `[B, D]`, float32.
#[derive(Debug)]
pub(crate) enum TimeProj {
    /// Sinusoidal features (`Timesteps`); `freqs` are exp(-ln(10000) i / (half - shift)), float32
    /// as diffusers computes them.
    Positional {
        freqs: Tensor,
        dim: i64,
        flip_sin_to_cos: bool,
    },
    /// `GaussianFourierProjection(embedding_size, scale=16)`: sin/cos of 2 pi log(t) w, with a
    /// frozen random `w` (`time_proj.weight`).
    Fourier { weight: Tensor },
    /// `nn.Embedding(num_train_timesteps, dim)`: integer timesteps index a table.
    Learned(nn::Embedding),
}

impl TimeProj {
    /// `device`: where the frequencies live (diffusers computes them on the timesteps' device).
    pub(crate) fn positional(
        dim: i64,
        flip_sin_to_cos: bool,
        freq_shift: f64,
        device: tch::Device,
    ) -> Self {
        let half = dim / 2;
        // Same op order as get_timestep_embedding, so the float32 values agree bit for bit.
        let exponent = Tensor::arange(half, (Kind::Float, device)) * (-(10000f64.ln()));
        let freqs = (exponent / (half as f64 - freq_shift)).exp();
        TimeProj::Positional {
            freqs,
            dim,
            flip_sin_to_cos,
        }
    }

    pub(crate) fn fourier(vs: nn::Path, dim: i64) -> Self {
        // A parameter that diffusers never trains (requires_grad=False): not a trainable var.
        let init = Tensor::randn([dim], (vs.kind(), vs.device())) * 16.0;
        TimeProj::Fourier {
            weight: vs.add("weight", init, false),
        }
    }

    pub(crate) fn learned(vs: nn::Path, num_train_timesteps: i64, dim: i64) -> Self {
        TimeProj::Learned(nn::embedding(
            vs,
            num_train_timesteps,
            dim,
            Default::default(),
        ))
    }

    /// Features of timesteps `t` `[B]` (any numeric kind).
    pub(crate) fn forward(&self, t: &Tensor) -> Tensor {
        match self {
            TimeProj::Positional {
                freqs,
                dim,
                flip_sin_to_cos,
            } => {
                let args =
                    t.to_kind(Kind::Float).unsqueeze(1) * freqs.to_device(t.device()).unsqueeze(0);
                let (sin, cos) = (args.sin(), args.cos());
                let emb = if *flip_sin_to_cos {
                    Tensor::cat(&[cos, sin], -1)
                } else {
                    Tensor::cat(&[sin, cos], -1)
                };
                if dim % 2 == 1 {
                    emb.constant_pad_nd([0, 1, 0, 0])
                } else {
                    emb
                }
            }
            TimeProj::Fourier { weight } => {
                // torch.log of an integer tensor gives float32; a float tensor keeps its kind.
                let log_t = if t.is_floating_point() {
                    t.log()
                } else {
                    t.to_kind(Kind::Float).log()
                };
                let proj = log_t.unsqueeze(1) * weight.unsqueeze(0) * 2.0 * std::f64::consts::PI;
                Tensor::cat(&[proj.sin(), proj.cos()], -1)
            }
            TimeProj::Learned(table) => table.forward(&t.to_kind(Kind::Int64)),
        }
    }
}

/// `TimestepEmbedding`: linear_1, SiLU (always SiLU: `UNet2DModel` never passes its `act_fn`
/// here), linear_2.
#[derive(Debug)]
pub(crate) struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimestepEmbedding {
    pub(crate) fn new(vs: nn::Path, din: i64, dout: i64) -> Self {
        TimestepEmbedding {
            linear_1: linear(&vs / "linear_1", din, dout),
            linear_2: linear(&vs / "linear_2", dout, dout),
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Tensor {
        xs.apply(&self.linear_1).silu().apply(&self.linear_2)
    }
}

/// `UNet2DModel.class_embedding`, chosen by `class_embed_type` and `num_class_embeds`.
#[derive(Debug)]
pub(crate) enum ClassEmbedding {
    /// `nn.Embedding(num_class_embeds, time_embed_dim)`: integer labels `[B]`.
    Table(nn::Embedding),
    /// `"timestep"`: labels `[B]` go through the time projection, then their own MLP.
    Timestep(TimestepEmbedding),
    /// `"identity"`: labels are already embeddings `[B, time_embed_dim]`.
    Identity,
}
