//! `UNet2DModel`'s `config.json` (diffusers 0.42.1, `models/unets/unet_2d.py`): read leniently
//! (unknown keys ignored, missing keys take diffusers' defaults), written with every key.

use diffuse_core::scheduler_config::DIFFUSERS_VERSION;
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::path::Path;

/// The `_class_name` diffusers gives this model.
pub const CLASS_NAME: &str = "UNet2DModel";

/// Down block types diffuse builds (diffusers also accepts them with a `UNetRes` prefix).
pub const DOWN_BLOCK_TYPES: &[&str] =
    &["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"];
/// Up block types diffuse builds (diffusers also accepts them with a `UNetRes` prefix).
pub const UP_BLOCK_TYPES: &[&str] = &["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"];

/// `sample_size`: one number for square samples or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Height = width.
    Square(i64),
    /// `[height, width]`.
    HeightWidth([i64; 2]),
}

/// Which normalisation the blocks use. `Batch` is a diffuse-only variant (every GroupNorm of the
/// resnets, attentions and `conv_norm_out` becomes a BatchNorm2d with running statistics);
/// diffusers cannot load it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormType {
    /// GroupNorm, as diffusers builds it.
    #[default]
    Group,
    /// BatchNorm2d (momentum 0.1, eps `norm_eps`), diffuse only.
    Batch,
}

impl NormType {
    fn is_group(&self) -> bool {
        *self == NormType::Group
    }
}

/// Write a float that holds a whole number as an integer, as diffusers' own configs do
/// (`"freq_shift": 1`, `"mid_block_scale_factor": 1`).
fn whole_as_int<S: Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

/// diffusers' `UNet2DModel` config; field names are its `config.json` keys, defaults its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2dConfig {
    /// Height and width of the samples (diffusers: int or `[h, w]`); only informative.
    pub sample_size: Option<SampleSize>,
    /// Channels of the input sample.
    pub in_channels: i64,
    /// Channels of the output.
    pub out_channels: i64,
    /// Map inputs from [0, 1] to [-1, 1] first (`2x - 1`).
    pub center_input_sample: bool,
    /// `positional` (sinusoidal), `fourier` (Gaussian Fourier features of log t) or `learned`.
    pub time_embedding_type: String,
    /// Width of the time embedding; `None` means `4 * block_out_channels[0]`.
    pub time_embedding_dim: Option<i64>,
    /// Sinusoidal frequencies are exp(-ln(10000) i / (half - freq_shift)).
    #[serde(serialize_with = "whole_as_int")]
    pub freq_shift: f64,
    /// Sinusoidal features in `[cos, sin]` order instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// One per level, from the highest resolution down (see [`DOWN_BLOCK_TYPES`]).
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D` or `None` (no mid block).
    pub mid_block_type: Option<String>,
    /// One per level, from the lowest resolution up (see [`UP_BLOCK_TYPES`]).
    pub up_block_types: Vec<String>,
    /// Channels of each level.
    pub block_out_channels: Vec<i64>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: i64,
    /// The mid block divides its resnet and attention outputs by this.
    #[serde(serialize_with = "whole_as_int")]
    pub mid_block_scale_factor: f64,
    /// 1: stride-2 convolution with padding 1; 0: pad right and bottom by one, then no padding.
    pub downsample_padding: i64,
    /// `conv` or `resnet`: how `AttnDownBlock2D` downsamples (the other blocks ignore it).
    pub downsample_type: String,
    /// `conv` or `resnet`: how `AttnUpBlock2D` upsamples (the other blocks ignore it).
    pub upsample_type: String,
    /// Dropout before each resnet's second conv (not in `AttnUpBlock2D`, as in diffusers).
    pub dropout: f64,
    /// `silu` (= `swish`), `mish`, `gelu` or `relu`.
    pub act_fn: String,
    /// Channels per attention head; `None` means one head as wide as the block.
    pub attention_head_dim: Option<i64>,
    /// Groups of every GroupNorm (ignored by the batch-norm variant).
    pub norm_num_groups: i64,
    /// Groups of the mid block's attention norm; `None`: `norm_num_groups` with the `default`
    /// time conditioning, no norm at all with `scale_shift` (diffusers' `UNetMidBlock2D`).
    pub attn_norm_num_groups: Option<i64>,
    /// Epsilon of every norm.
    pub norm_eps: f64,
    /// `default` (add the time embedding) or `scale_shift` (FiLM after the second norm).
    pub resnet_time_scale_shift: String,
    /// Whether the mid block has its attention.
    pub add_attention: bool,
    /// `None` (a label table when `num_class_embeds` is set), `timestep` or `identity`.
    pub class_embed_type: Option<String>,
    /// Number of classes of the label table (`class_embed_type` `None`).
    pub num_class_embeds: Option<i64>,
    /// Size of the `learned` time embedding table.
    pub num_train_timesteps: Option<i64>,
    /// diffuse-only: `group` (diffusers' blocks) or `batch`; written only when `batch`.
    #[serde(skip_serializing_if = "NormType::is_group")]
    pub norm_type: NormType,
}

impl Default for UNet2dConfig {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        UNet2dConfig {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: strings(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: strings(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
            norm_type: NormType::Group,
        }
    }
}

/// A block type with diffusers' `UNetRes` prefix removed (`get_down_block` / `get_up_block`).
pub(crate) fn block_kind(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "UNet2d config: {field} \"{value}\" is not supported (supported: {})",
            allowed.join(", ")
        )))
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(format!("UNet2d config: {message}"))
}

impl UNet2dConfig {
    /// Read a diffusers `config.json` (keys diffuse does not know are ignored) and validate it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::format(path, m),
            other => other,
        })
    }

    /// Parse and validate config JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        // serde would read an array as the fields in order: a config is an object.
        if !value.is_object() {
            return Err(invalid(
                "expected a JSON object of UNet2DModel settings (a diffusers config.json)".into(),
            ));
        }
        if let Some(class) = value.get("_class_name").and_then(Value::as_str) {
            if class != CLASS_NAME {
                return Err(invalid(format!(
                    "\"_class_name\" is \"{class}\"; diffuse reads only {CLASS_NAME} configs"
                )));
            }
        }
        let config: UNet2dConfig = serde_json::from_value(value.clone()).map_err(|e| {
            // serde's message lacks the key; find it by reading the keys one at a time.
            let key = value.as_object().and_then(|map| {
                map.iter().find_map(|(k, v)| {
                    let single = Value::Object([(k.clone(), v.clone())].into_iter().collect());
                    serde_json::from_value::<UNet2dConfig>(single)
                        .is_err()
                        .then_some(k)
                })
            });
            match key {
                Some(k) => invalid(format!("{k}: {e}")),
                None => invalid(e.to_string()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as diffusers writes it: every key plus `_class_name` and `_diffusers_version`.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("UNet2d configs serialise");
        let map = value.as_object_mut().expect("configs are objects");
        map.insert("_class_name".into(), Value::from(CLASS_NAME));
        map.insert("_diffusers_version".into(), Value::from(DIFFUSERS_VERSION));
        value
    }

    /// Write `config.json` atomically in diffusers' layout.
    pub fn to_json_file(&self, path: &Path) -> Result<()> {
        diffuse_tensor::atomic::write_json_atomic(path, &self.to_json())
    }

    /// Set `sample_size` as diffusers writes it: one number when square, `[height, width]` otherwise.
    pub fn set_sample_size(&mut self, height: i64, width: i64) {
        self.sample_size = Some(if height == width {
            SampleSize::Square(height)
        } else {
            SampleSize::HeightWidth([height, width])
        });
    }

    /// `sample_size` as (height, width), if set.
    pub fn sample_size_hw(&self) -> Option<(i64, i64)> {
        self.sample_size.map(|s| match s {
            SampleSize::Square(n) => (n, n),
            SampleSize::HeightWidth([h, w]) => (h, w),
        })
    }

    /// Width of the time embedding (diffusers' `time_embed_dim`).
    pub fn time_embed_dim(&self) -> i64 {
        self.time_embedding_dim
            .unwrap_or_else(|| 4 * self.block_out_channels.first().copied().unwrap_or(0))
    }

    /// Check every value diffuse can build, naming the field and the allowed values.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(invalid("block_out_channels is empty".into()));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(invalid(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({n}) must have \
                 the same length",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        for t in &self.down_block_types {
            one_of("down block type", block_kind(t), DOWN_BLOCK_TYPES)
                .map_err(|_| unknown_block("down_block_types", t, DOWN_BLOCK_TYPES))?;
        }
        for t in &self.up_block_types {
            one_of("up block type", block_kind(t), UP_BLOCK_TYPES)
                .map_err(|_| unknown_block("up_block_types", t, UP_BLOCK_TYPES))?;
        }
        if let Some(mid) = &self.mid_block_type {
            one_of("mid_block_type", mid, &["UNetMidBlock2D"])?;
        }
        one_of(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional", "fourier", "learned"],
        )?;
        one_of(
            "act_fn",
            &self.act_fn,
            &["silu", "swish", "mish", "gelu", "relu"],
        )?;
        one_of(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default", "scale_shift"],
        )?;
        one_of(
            "downsample_type",
            &self.downsample_type,
            &["conv", "resnet"],
        )?;
        one_of("upsample_type", &self.upsample_type, &["conv", "resnet"])?;
        if let Some(c) = &self.class_embed_type {
            one_of("class_embed_type", c, &["timestep", "identity"])?;
        }
        let positive = |name: &str, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err(invalid(format!("{name} must be positive, got {v}")))
            }
        };
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        positive("layers_per_block", self.layers_per_block)?;
        for &c in &self.block_out_channels {
            positive("every block_out_channels entry", c)?;
        }
        positive("time embedding width", self.time_embed_dim())?;
        if let Some(k) = self.num_class_embeds {
            positive("num_class_embeds", k)?;
        }
        if self.time_embedding_type == "learned" {
            match self.num_train_timesteps {
                Some(t) => positive("num_train_timesteps", t)?,
                None => {
                    return Err(invalid(
                        "time_embedding_type \"learned\" needs num_train_timesteps".into(),
                    ))
                }
            }
        }
        if self.downsample_padding < 0 {
            return Err(invalid(format!(
                "downsample_padding must be 0 or more, got {}",
                self.downsample_padding
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(invalid(format!(
                "norm_eps must be positive, got {}",
                self.norm_eps
            )));
        }
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor != 0.0) {
            return Err(invalid(format!(
                "mid_block_scale_factor must be finite and non-zero, got {}",
                self.mid_block_scale_factor
            )));
        }
        if let Some((h, w)) = self.sample_size_hw() {
            if h <= 0 || w <= 0 {
                return Err(invalid(format!(
                    "sample_size must be positive, got {h}x{w}"
                )));
            }
        }
        if self.norm_type == NormType::Group {
            // Every GroupNorm sees a sum of block widths, so checking each width suffices.
            positive("norm_num_groups", self.norm_num_groups)?;
            for &c in &self.block_out_channels {
                if c % self.norm_num_groups != 0 {
                    return Err(invalid(format!(
                        "block_out_channels {c} is not divisible by norm_num_groups {}",
                        self.norm_num_groups
                    )));
                }
            }
            if let Some(g) = self.attn_norm_num_groups {
                let last = self.block_out_channels[n - 1];
                if g <= 0 || last % g != 0 {
                    return Err(invalid(format!(
                        "the mid block's {last} channels are not divisible by attn_norm_num_groups {g}"
                    )));
                }
            }
        }
        // diffusers builds `channels / attention_head_dim` heads of `attention_head_dim`
        // channels (inner width heads * head_dim); a block narrower than one head has none.
        let mut attention_widths: Vec<i64> = Vec::new();
        for (i, t) in self.down_block_types.iter().enumerate() {
            if block_kind(t) == "AttnDownBlock2D" {
                attention_widths.push(self.block_out_channels[i]);
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if block_kind(t) == "AttnUpBlock2D" {
                attention_widths.push(self.block_out_channels[n - 1 - i]);
            }
        }
        if self.mid_block_type.is_some() && self.add_attention {
            attention_widths.push(self.block_out_channels[n - 1]);
        }
        if let Some(d) = self.attention_head_dim {
            positive("attention_head_dim", d)?;
            if let Some(&c) = attention_widths.iter().find(|&&c| c < d) {
                return Err(invalid(format!(
                    "attention_head_dim {d} is wider than an attention block's {c} channels"
                )));
            }
        }
        Ok(())
    }
}

fn unknown_block(field: &str, value: &str, allowed: &[&str]) -> Error {
    invalid(format!(
        "{field}: unknown or unsupported block type \"{value}\" (supported: {})",
        allowed.join(", ")
    ))
}
