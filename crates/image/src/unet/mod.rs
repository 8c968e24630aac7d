//! UNet2d: a faithful port of diffusers 0.42.1 `UNet2DModel` (`models/unets/unet_2d.py`).
//!
//! Variable paths equal diffusers' tensor names (`down_blocks.0.resnets.0.conv1.weight`, ...), so a
//! diffusers `diffusion_pytorch_model.safetensors` loads with a plain strict load
//! ([`load_unet_weights`], which also renames the old attention spelling) and what
//! [`save_unet_weights`] writes loads back into diffusers. `config` is the `config.json`,
//! `embeddings` the time and class embeddings, `blocks` the resnets, attention and the down,
//! mid and up blocks. Outputs agree with diffusers to float32 rounding (the golden tests in
//! `tests/it/unet.rs` allow 1e-4).
//!
//! Supported: the down blocks `DownBlock2D`, `AttnDownBlock2D`, `ResnetDownsampleBlock2D`, the
//! up blocks `UpBlock2D`, `AttnUpBlock2D`, `ResnetUpsampleBlock2D`, `positional` / `fourier` /
//! `learned` time embeddings and every class embedding `UNet2DModel` has. Not supported: the
//! skip blocks of score-SDE models (`SkipDownBlock2D`, FIR resampling) and
//! `resnet_time_scale_shift = "spatial"`; their configs are refused by
//! [`UNet2dConfig::validate`]. The `norm_type = "batch"` variant is diffuse's own.

mod blocks;
pub mod config;
mod embeddings;

pub use config::{NormType, SampleSize, UNet2dConfig};

use blocks::{
    conv2d, Act, Attention, DownBlock, Downsampler, MidBlock, NormSpec, Resample, ResnetBlock2d,
    ResnetSpec, UpBlock, Upsampler,
};
use config::block_kind;
use diffuse_tensor::weights::{load_named_into, load_tensors, save_var_store, Metadata};
use diffuse_tensor::Result;
use embeddings::{ClassEmbedding, TimeProj, TimestepEmbedding};
use std::path::Path;
use tch::nn::{self, Module, VarStore};
use tch::{Kind, Tensor};

/// diffusers' `UNet2DModel`: `forward_t(x_t, t, labels)` predicts noise (or whatever it was
/// trained for) with the shape of `x_t`.
#[derive(Debug)]
pub struct UNet2d {
    config: UNet2dConfig,
    conv_in: nn::Conv2D,
    time_proj: TimeProj,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<ClassEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: blocks::Norm,
    conv_out: nn::Conv2D,
    act: Act,
    /// Total downsampling factor: inputs must have heights and widths divisible by it.
    size_multiple: i64,
}

impl UNet2d {
    /// Build the model under `vs` (validating `cfg`); variable names are diffusers' tensor names.
    pub fn new(vs: &nn::Path, cfg: &UNet2dConfig) -> Result<Self> {
        cfg.validate()?;
        let c = &cfg.block_out_channels;
        let n = c.len();
        let c0 = c[0];
        let temb = cfg.time_embed_dim();
        let norm = NormSpec {
            kind: cfg.norm_type,
            eps: cfg.norm_eps,
        };
        let act = Act::parse(&cfg.act_fn);
        let spec = ResnetSpec {
            temb_channels: temb,
            groups: cfg.norm_num_groups,
            norm,
            act,
            scale_shift: cfg.resnet_time_scale_shift == "scale_shift",
        };
        let head_dim = |channels: i64| cfg.attention_head_dim.unwrap_or(channels);

        let conv_in = conv2d(vs / "conv_in", cfg.in_channels, c0, 3, 1, 1);
        let (time_proj, time_input_dim) = match cfg.time_embedding_type.as_str() {
            "fourier" => (TimeProj::fourier(vs / "time_proj", c0), 2 * c0),
            "learned" => {
                let steps = cfg.num_train_timesteps.unwrap_or_default();
                (TimeProj::learned(vs / "time_proj", steps, c0), c0)
            }
            _ => (
                TimeProj::positional(c0, cfg.flip_sin_to_cos, cfg.freq_shift, vs.device()),
                c0,
            ),
        };
        let time_embedding = TimestepEmbedding::new(vs / "time_embedding", time_input_dim, temb);
        let class_embedding = match (cfg.class_embed_type.as_deref(), cfg.num_class_embeds) {
            (None, Some(k)) => Some(ClassEmbedding::Table(nn::embedding(
                vs / "class_embedding",
                k,
                temb,
                Default::default(),
            ))),
            (Some("timestep"), _) => Some(ClassEmbedding::Timestep(TimestepEmbedding::new(
                vs / "class_embedding",
                time_input_dim,
                temb,
            ))),
            (Some("identity"), _) => Some(ClassEmbedding::Identity),
            _ => None,
        };

        // Down path (unet_2d.py: output_channel runs along block_out_channels).
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = c0;
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = c[i];
            let last = i == n - 1;
            let p = vs / "down_blocks" / i;
            let kind = block_kind(kind);
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let cin = if j == 0 { in_ch } else { out_ch };
                    ResnetBlock2d::new(
                        &p / "resnets" / j,
                        cin,
                        out_ch,
                        &spec,
                        cfg.dropout,
                        1.0,
                        Resample::None,
                    )
                })
                .collect();
            let attentions = if kind == "AttnDownBlock2D" {
                (0..cfg.layers_per_block)
                    .map(|j| {
                        Attention::new(
                            &p / "attentions" / j,
                            out_ch,
                            head_dim(out_ch),
                            Some(cfg.norm_num_groups),
                            &norm,
                            1.0,
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // DownBlock2D always downsamples with a conv; ResnetDownsampleBlock2D always with a
            // resnet; only AttnDownBlock2D reads downsample_type (unet_2d_blocks.py).
            let resnet_down = match kind {
                "ResnetDownsampleBlock2D" => true,
                "AttnDownBlock2D" => cfg.downsample_type == "resnet",
                _ => false,
            };
            let dp = &p / "downsamplers" / 0;
            let downsampler = (!last).then(|| {
                if resnet_down {
                    Downsampler::Resnet(Box::new(ResnetBlock2d::new(
                        dp,
                        out_ch,
                        out_ch,
                        &spec,
                        cfg.dropout,
                        1.0,
                        Resample::Down,
                    )))
                } else {
                    Downsampler::Conv {
                        conv: conv2d(&dp / "conv", out_ch, out_ch, 3, 2, cfg.downsample_padding),
                        pad_right_bottom: cfg.downsample_padding == 0,
                    }
                }
            });
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let mid_block = cfg.mid_block_type.as_ref().map(|_| {
            let p = vs / "mid_block";
            let ch = c[n - 1];
            let osf = cfg.mid_block_scale_factor;
            let resnet = |j: usize| {
                ResnetBlock2d::new(
                    &p / "resnets" / j,
                    ch,
                    ch,
                    &spec,
                    cfg.dropout,
                    osf,
                    Resample::None,
                )
            };
            // UNetMidBlock2D: without attn_norm_num_groups, the attention gets a norm only with
            // the default time conditioning.
            let groups = cfg
                .attn_norm_num_groups
                .or((!spec.scale_shift).then_some(cfg.norm_num_groups));
            let first = resnet(0);
            let attention = cfg.add_attention.then(|| {
                Attention::new(&p / "attentions" / 0, ch, head_dim(ch), groups, &norm, osf)
            });
            MidBlock {
                resnets: vec![first, resnet(1)],
                attention,
            }
        });

        // Up path: each block has layers_per_block + 1 resnets, the last one taking the skip
        // from the previous level's width.
        let mut up_blocks = Vec::with_capacity(n);
        let rev: Vec<i64> = c.iter().rev().copied().collect();
        let mut out_ch = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let prev_ch = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let last = i == n - 1;
            let p = vs / "up_blocks" / i;
            let kind = block_kind(kind);
            let layers = cfg.layers_per_block + 1;
            // get_up_block does not pass `dropout` to AttnUpBlock2D, so its resnets never drop.
            let dropout = if kind == "AttnUpBlock2D" {
                0.0
            } else {
                cfg.dropout
            };
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { in_ch } else { out_ch };
                    let cin = if j == 0 { prev_ch } else { out_ch };
                    ResnetBlock2d::new(
                        &p / "resnets" / j,
                        cin + skip,
                        out_ch,
                        &spec,
                        dropout,
                        1.0,
                        Resample::None,
                    )
                })
                .collect();
            let attentions = if kind == "AttnUpBlock2D" {
                (0..layers)
                    .map(|j| {
                        Attention::new(
                            &p / "attentions" / j,
                            out_ch,
                            head_dim(out_ch),
                            Some(cfg.norm_num_groups),
                            &norm,
                            1.0,
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let resnet_up = match kind {
                "ResnetUpsampleBlock2D" => true,
                "AttnUpBlock2D" => cfg.upsample_type == "resnet",
                _ => false,
            };
            let up = &p / "upsamplers" / 0;
            let upsampler = (!last).then(|| {
                if resnet_up {
                    Upsampler::Resnet(Box::new(ResnetBlock2d::new(
                        up,
                        out_ch,
                        out_ch,
                        &spec,
                        dropout,
                        1.0,
                        Resample::Up,
                    )))
                } else {
                    Upsampler::Conv(conv2d(&up / "conv", out_ch, out_ch, 3, 1, 1))
                }
            });
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        let conv_norm_out = norm.build(vs / "conv_norm_out", cfg.norm_num_groups, c0);
        let conv_out = conv2d(vs / "conv_out", c0, cfg.out_channels, 3, 1, 1);
        Ok(UNet2d {
            config: cfg.clone(),
            conv_in,
            time_proj,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            act,
            size_multiple: 1i64 << (n - 1),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNet2dConfig {
        &self.config
    }

    /// Whether `forward_t` needs class labels.
    pub fn is_class_conditional(&self) -> bool {
        self.class_embedding.is_some()
    }

    /// xs `[B, in_channels, H, W]`; timesteps `[B]` or `[]` (f32/f64/i64, may be fractional);
    /// class_labels `[B]` i64 when class-conditioned (`[B, time_embed_dim]` floats for the
    /// `identity` class embedding). `train` enables dropout and batch-norm statistics updates.
    /// Panics on shapes that do not fit the model, as tch does.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (b, ch, h, w) = xs
            .size4()
            .unwrap_or_else(|_| panic!("UNet2d: input must be [B, C, H, W], got {:?}", xs.size()));
        assert_eq!(
            ch, self.config.in_channels,
            "UNet2d: input has {ch} channels, the model takes {}",
            self.config.in_channels
        );
        assert!(
            h % self.size_multiple == 0 && w % self.size_multiple == 0,
            "UNet2d: height and width must be multiples of {} (the model halves them {} times), \
             got {h}x{w}",
            self.size_multiple,
            self.size_multiple.trailing_zeros()
        );
        let kind = self.conv_in.ws.kind();
        let device = xs.device();

        // 0. center input (unet_2d.py: `2 * sample - 1.0`)
        let sample = if self.config.center_input_sample {
            xs * 2.0 - 1.0
        } else {
            xs.shallow_clone()
        };

        // 1. time: broadcast to the batch, project (float32), cast to the model's kind, embed.
        let t = timesteps.to_device(device);
        let t = if t.dim() == 0 { t.unsqueeze(0) } else { t };
        assert!(
            t.dim() == 1 && (t.size()[0] == b || t.size()[0] == 1),
            "UNet2d: timesteps must be [] or [B] with B = {b}, got {:?}",
            timesteps.size()
        );
        let t = if t.size()[0] == b {
            t
        } else {
            t.expand([b], false)
        };
        let mut emb = self
            .time_embedding
            .forward(&self.time_proj.forward(&t).to_kind(kind));
        match (&self.class_embedding, class_labels) {
            (Some(embedding), Some(labels)) => {
                let labels = labels.to_device(device);
                let class_emb = match embedding {
                    ClassEmbedding::Table(table) => table.forward(&labels.to_kind(Kind::Int64)),
                    ClassEmbedding::Timestep(mlp) => {
                        mlp.forward(&self.time_proj.forward(&labels).to_kind(kind))
                    }
                    ClassEmbedding::Identity => labels.shallow_clone(),
                };
                emb += class_emb.to_kind(kind);
            }
            (Some(_), None) => panic!(
                "UNet2d: class_labels are required: the model is class-conditioned \
                 (class_embed_type {:?}, num_class_embeds {:?})",
                self.config.class_embed_type, self.config.num_class_embeds
            ),
            (None, Some(_)) => panic!(
                "UNet2d: class_labels given, but the model has no class embedding \
                 (set num_class_embeds or class_embed_type)"
            ),
            (None, None) => {}
        }
        let temb_act = self.act.apply(&emb);

        // 2.-5. conv_in, down (keeping skips), mid, up (consuming them)
        let mut h = sample.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            h = block.forward_t(&h, &temb_act, train, &mut skips);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward_t(&h, &temb_act, train);
        }
        for block in &self.up_blocks {
            h = block.forward_t(&h, &temb_act, train, &mut skips);
        }

        // 6. out (conv_act is always SiLU in UNet2DModel, whatever act_fn says)
        let out = self
            .conv_norm_out
            .forward_t(&h, train)
            .silu()
            .apply(&self.conv_out);
        if self.config.time_embedding_type == "fourier" {
            // Score-SDE convention: the network predicts score * sigma, divided out here. (diffusers
            // divides by t in t's own kind, so f64 timesteps give it an f64 output; we keep ours.)
            let kind = out.kind();
            out / t.to_kind(kind).reshape([b, 1, 1, 1])
        } else {
            out
        }
    }
}

/// The old (pre-0.14) attention names `query`, `key`, `value`, `proj_attn` in their current
/// spelling (diffusers' `ModelMixin._fix_state_dict_keys_on_load`).
fn current_attention_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let n = parts.len();
    if n >= 4 && parts[n - 4] == "attentions" && matches!(parts[n - 1], "weight" | "bias") {
        let new = match parts[n - 2] {
            "query" => "to_q",
            "key" => "to_k",
            "value" => "to_v",
            "proj_attn" => "to_out.0",
            _ => return name.to_owned(),
        };
        let mut out = parts[..n - 2].join(".");
        out.push('.');
        out.push_str(new);
        out.push('.');
        out.push_str(parts[n - 1]);
        return out;
    }
    name.to_owned()
}

/// Load diffusers safetensors into a VarStore holding a UNet2d: accepts both the current
/// attention names (to_q, to_k, to_v, to_out.0) and the old ones (query, key, value, proj_attn);
/// reports all missing and unexpected names with shapes.
pub fn load_unet_weights(vs: &VarStore, path: &Path) -> Result<()> {
    let loaded = load_tensors(path)?;
    let tensors = loaded
        .tensors
        .into_iter()
        .map(|(name, t)| (current_attention_name(&name), t))
        .collect();
    load_named_into(vs, tensors, path, true)?;
    Ok(())
}

/// Save in diffusers' layout (current attention spelling); batch-norm running stats included.
pub fn save_unet_weights(vs: &VarStore, path: &Path) -> Result<()> {
    // diffusers' save_pretrained marks its files so; some loaders check it.
    let metadata = Metadata::from([("format".to_owned(), "pt".to_owned())]);
    save_var_store(vs, path, Some(metadata))
}

/// Number of parameters as diffusers counts them (`model.num_parameters()`: every parameter,
/// the frozen Fourier weights included, batch-norm running statistics not).
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.variables()
        .iter()
        .filter(|(name, _)| !name.ends_with(".running_mean") && !name.ends_with(".running_var"))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::current_attention_name;

    #[test]
    fn old_attention_names_are_renamed() {
        let cases = [
            (
                "mid_block.attentions.0.query.weight",
                "mid_block.attentions.0.to_q.weight",
            ),
            (
                "down_blocks.1.attentions.1.proj_attn.bias",
                "down_blocks.1.attentions.1.to_out.0.bias",
            ),
            (
                "up_blocks.0.attentions.2.value.bias",
                "up_blocks.0.attentions.2.to_v.bias",
            ),
            (
                "mid_block.attentions.0.group_norm.weight",
                "mid_block.attentions.0.group_norm.weight",
            ),
            (
                "mid_block.attentions.0.to_k.weight",
                "mid_block.attentions.0.to_k.weight",
            ),
            ("key.weight", "key.weight"),
        ];
        for (old, new) in cases {
            assert_eq!(current_attention_name(old), new);
        }
    }
}
