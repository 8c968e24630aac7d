//! The audio denoiser as the rest of diffuse sees it: one config (`config.json`, tagged by
//! `"type": "diffwave" | "unet1d"`) and one network, [`AudioNetwork`], whose forward takes audio
//! `[B, C, L]` of any length, real (possibly fractional) timesteps `[B]` and, for a
//! class-conditional network, class labels `[B]`. Lengths the UNet cannot take are zero-padded at
//! the end up to [`AudioNetworkConfig::length_multiple`] and the output cropped back, so callers
//! never think about it. [`AudioDenoiser`] wraps the network as the `Denoiser` that
//! `diffuse-core`'s objectives and samplers drive.
//!
//! The two optional conditionings both networks share live here too: the class embedding
//! (`class_embedding`, `num_class_embeds` rows, the last one the null class that unlabelled
//! examples, label dropout and unconditional sampling use; added to the time embedding before its
//! activation, as diffusers' `UNet2DModel` does) and the position channel (frame index divided by
//! `position_frames`, the training clip length, appended to the audio as one more input channel
//! so that the otherwise translation-equivariant network can tell a clip's onset from its tail).
//! The position channel is made from the length the network is given, which for
//! [`AudioNetwork::forward_t`] is the padded one: padded frames get positions too, past 1 when
//! sampling is longer than training.

use crate::diffwave::{DiffWave, DiffWaveConfig};
use crate::unet1d::{UNet1d, UNet1dConfig};
use diffuse_core::denoiser::Denoiser;
use diffuse_core::prediction::PredictionType;
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

/// Which network, with its settings: the model directory's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AudioNetworkConfig {
    /// Dilated gated residual convolutions at the sample rate (Kong et al. 2021).
    #[serde(rename = "diffwave")]
    DiffWave(DiffWaveConfig),
    /// A 1-D UNet with strided downsampling.
    Unet1d(UNet1dConfig),
}

impl Default for AudioNetworkConfig {
    /// DiffWave with its CPU-sized defaults.
    fn default() -> Self {
        AudioNetworkConfig::DiffWave(DiffWaveConfig::default())
    }
}

impl AudioNetworkConfig {
    /// The `type` tag: `"diffwave"` or `"unet1d"`.
    pub fn name(&self) -> &'static str {
        match self {
            AudioNetworkConfig::DiffWave(_) => "diffwave",
            AudioNetworkConfig::Unet1d(_) => "unet1d",
        }
    }

    pub fn in_channels(&self) -> i64 {
        match self {
            AudioNetworkConfig::DiffWave(c) => c.in_channels,
            AudioNetworkConfig::Unet1d(c) => c.in_channels,
        }
    }

    pub fn out_channels(&self) -> i64 {
        match self {
            AudioNetworkConfig::DiffWave(c) => c.out_channels,
            AudioNetworkConfig::Unet1d(c) => c.out_channels,
        }
    }

    /// Set the audio channels in and the channels out (e.g. 2C for a learned variance).
    pub fn set_channels(&mut self, in_channels: i64, out_channels: i64) {
        match self {
            AudioNetworkConfig::DiffWave(c) => {
                c.in_channels = in_channels;
                c.out_channels = out_channels;
            }
            AudioNetworkConfig::Unet1d(c) => {
                c.in_channels = in_channels;
                c.out_channels = out_channels;
            }
        }
    }

    /// Rows of the class embedding (the classes plus the null class); None when unconditional.
    fn num_class_embeds(&self) -> Option<i64> {
        match self {
            AudioNetworkConfig::DiffWave(c) => c.num_class_embeds,
            AudioNetworkConfig::Unet1d(c) => c.num_class_embeds,
        }
    }

    /// The number of real classes K of a class-conditional network (labels `0..K`); None when
    /// unconditional.
    pub fn num_classes(&self) -> Option<i64> {
        self.num_class_embeds().map(|rows| rows - 1)
    }

    /// The null class (the embedding's last row, K): what unlabelled examples, label dropout and
    /// unconditional sampling use. None when unconditional.
    pub fn null_class(&self) -> Option<i64> {
        self.num_class_embeds().map(|rows| rows - 1)
    }

    /// Make the network class-conditional on `classes` classes (`num_class_embeds = classes + 1`,
    /// the extra row being the null class); `validate` refuses fewer than one class.
    pub fn set_classes(&mut self, classes: i64) {
        let rows = Some(classes.saturating_add(1));
        match self {
            AudioNetworkConfig::DiffWave(c) => c.num_class_embeds = rows,
            AudioNetworkConfig::Unet1d(c) => c.num_class_embeds = rows,
        }
    }

    /// The training clip length the position channel is scaled by; None without one.
    pub fn position_frames(&self) -> Option<i64> {
        let (on, frames) = match self {
            AudioNetworkConfig::DiffWave(c) => (c.position_channel, c.position_frames),
            AudioNetworkConfig::Unet1d(c) => (c.position_channel, c.position_frames),
        };
        if on {
            frames
        } else {
            None
        }
    }

    /// Whether the position channel is on but its length not yet set (the recipe's network
    /// before the clip length is known).
    pub fn position_channel_unsized(&self) -> bool {
        let (on, frames) = match self {
            AudioNetworkConfig::DiffWave(c) => (c.position_channel, c.position_frames),
            AudioNetworkConfig::Unet1d(c) => (c.position_channel, c.position_frames),
        };
        on && frames.is_none()
    }

    /// Turn the position channel on, scaled to `frames` (the training clip length), or off with
    /// None.
    pub fn set_position_channel(&mut self, frames: Option<i64>) {
        let (on, slot) = match self {
            AudioNetworkConfig::DiffWave(c) => (&mut c.position_channel, &mut c.position_frames),
            AudioNetworkConfig::Unet1d(c) => (&mut c.position_channel, &mut c.position_frames),
        };
        *on = frames.is_some();
        *slot = frames;
    }

    /// Check every field of the chosen network's config.
    pub fn validate(&self) -> Result<()> {
        match self {
            AudioNetworkConfig::DiffWave(c) => c.validate(),
            AudioNetworkConfig::Unet1d(c) => c.validate(),
        }
    }

    /// The network itself takes lengths that are multiples of this (1 for DiffWave);
    /// [`AudioNetwork::forward_t`] pads any other length.
    pub fn length_multiple(&self) -> i64 {
        match self {
            AudioNetworkConfig::DiffWave(_) => 1,
            AudioNetworkConfig::Unet1d(c) => c.length_multiple(),
        }
    }

    /// Read and validate a `config.json`; errors name the file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: AudioNetworkConfig = serde_json::from_str(&text).map_err(|e| {
            Error::format(
                path,
                format!(
                    "not an audio network config.json (an object with \"type\": \"diffwave\" or \
                     \"unet1d\" and that network's fields): {e}"
                ),
            )
        })?;
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

/// Boxed: the two networks' structs differ in size by several hundred bytes.
#[derive(Debug)]
enum Net {
    DiffWave(Box<DiffWave>),
    UNet1d(Box<UNet1d>),
}

/// The audio denoising network; see the module docs.
#[derive(Debug)]
pub struct AudioNetwork {
    config: AudioNetworkConfig,
    net: Net,
}

impl AudioNetwork {
    /// Build the configured network under `path` (its variables sit directly under it, named as
    /// in the PyTorch twin `tests/golden/make_network_golden.py`).
    pub fn new(path: &nn::Path, config: &AudioNetworkConfig) -> Result<Self> {
        let net = match config {
            AudioNetworkConfig::DiffWave(c) => Net::DiffWave(Box::new(DiffWave::new(path, c)?)),
            AudioNetworkConfig::Unet1d(c) => Net::UNet1d(Box::new(UNet1d::new(path, c)?)),
        };
        Ok(AudioNetwork {
            config: config.clone(),
            net,
        })
    }

    pub fn config(&self) -> &AudioNetworkConfig {
        &self.config
    }

    /// The prediction `[B, out_channels, L]` for audio `x` `[B, in_channels, L]` (any L >= 1)
    /// and real timesteps `t` `[B]` (or a scalar, the same for every example; any numeric kind,
    /// moved to `x`'s device). `class_labels` are integer labels `[B]` (or one, the same for
    /// every example) in `0..=null_class`; None on a class-conditional network means the null
    /// class for every example. `train` enables dropout. Panics on shapes the network cannot take
    /// and on class labels given to an unconditional network or out of range.
    pub fn forward_t(
        &self,
        x: &Tensor,
        t: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let size = x.size();
        assert!(
            size.len() == 3 && size[1] == self.config.in_channels() && size[2] > 0,
            "audio network: the input must be [batch, {} channels, length >= 1], got {size:?}",
            self.config.in_channels()
        );
        let (batch, len) = (size[0], size[2]);
        let t = t.to_device(x.device()).to_kind(Kind::Float);
        let t = match t.size().as_slice() {
            [] => t.expand([batch], false),
            [b] if *b == batch => t,
            other => panic!("audio network: timesteps must be [batch] = [{batch}], got {other:?}"),
        };
        let multiple = self.config.length_multiple();
        let pad = (multiple - len % multiple) % multiple;
        let padded = if pad > 0 {
            x.constant_pad_nd([0, pad])
        } else {
            x.shallow_clone()
        };
        let out = match &self.net {
            Net::DiffWave(n) => n.forward_t(&padded, &t, class_labels, train),
            Net::UNet1d(n) => n.forward_t(&padded, &t, class_labels, train),
        };
        if pad > 0 {
            out.narrow(2, 0, len)
        } else {
            out
        }
    }
}

/// The network as a [`Denoiser`]: its prediction type, train/eval mode and fixed class labels.
pub struct AudioDenoiser<'a> {
    pub net: &'a AudioNetwork,
    pub prediction_type: PredictionType,
    pub train: bool,
    /// Labels `[B]` for every call (or one label for any batch); None: unconditional, which on a
    /// class-conditional network is the null class.
    pub class_labels: Option<Tensor>,
}

impl Denoiser for AudioDenoiser<'_> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        self.net
            .forward_t(x_t, t, self.class_labels.as_ref(), self.train)
    }

    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}

/// Number of trainable parameters in a var store.
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

/// Checks the conditioning fields both network configs share; the message leaves out the
/// config's own prefix.
pub(crate) fn check_conditioning(
    num_class_embeds: Option<i64>,
    position_channel: bool,
    position_frames: Option<i64>,
) -> std::result::Result<(), String> {
    if let Some(rows) = num_class_embeds {
        if rows < 2 {
            return Err(format!(
                "num_class_embeds counts the classes plus the null class and must be at least 2, \
                 got {rows}"
            ));
        }
    }
    match (position_channel, position_frames) {
        (_, Some(f)) if f <= 0 => Err(format!("position_frames must be positive, got {f}")),
        (true, None) => Err(
            "position_channel needs position_frames (the training clip length \
             in frames: positions are frame / position_frames)"
                .into(),
        ),
        (false, Some(f)) => Err(format!(
            "position_frames is {f} but position_channel is off (set both or neither)"
        )),
        _ => Ok(()),
    }
}

/// `[batch, 1, len]` in `kind` on `device`: frame index / `position_frames` (0 at the first
/// frame, 1 at the training clip length). Made in float32 and then cast, as the PyTorch twin does.
pub fn position_channel(
    batch: i64,
    len: i64,
    position_frames: i64,
    kind: Kind,
    device: Device,
) -> Tensor {
    (Tensor::arange(len, (Kind::Float, device)) / position_frames as f64)
        .to_kind(kind)
        .view([1, 1, len])
        .expand([batch, 1, len], false)
}

/// `xs` with the position channel appended when `position_frames` is set (the network's first
/// layer then takes one channel more than the audio has).
pub(crate) fn with_positions(xs: &Tensor, position_frames: Option<i64>) -> Tensor {
    match position_frames {
        None => xs.shallow_clone(),
        Some(frames) => {
            let size = xs.size();
            let (batch, len) = (size[0], size[size.len() - 1]);
            let pos = position_channel(batch, len, frames, xs.kind(), xs.device());
            Tensor::cat(&[xs, &pos], 1)
        }
    }
}

/// The class embedding table `[num_class_embeds, dim]` (PyTorch's `nn.Embedding` initialisation,
/// N(0, 1)), shared by both networks.
#[derive(Debug)]
pub(crate) struct ClassEmbedding {
    table: nn::Embedding,
    rows: i64,
}

impl ClassEmbedding {
    pub(crate) fn new(vs: nn::Path, rows: i64, dim: i64) -> Self {
        ClassEmbedding {
            table: nn::embedding(vs, rows, dim, Default::default()),
            rows,
        }
    }

    /// `[batch, dim]` in `kind` on `device`: the rows of `labels` (`[batch]`, `[1]` or a scalar;
    /// any integer kind), or the null row for every example when there are none. Panics on
    /// float labels, a wrong batch or a label outside `0..rows` (checked where the labels are,
    /// before they move to `device`).
    fn forward(&self, labels: Option<&Tensor>, batch: i64, device: Device, kind: Kind) -> Tensor {
        let null = self.rows - 1;
        let labels = match labels {
            None => Tensor::full([batch], null, (Kind::Int64, device)),
            Some(labels) => {
                let label_kind = labels.kind();
                assert!(
                    matches!(
                        label_kind,
                        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
                    ),
                    "audio network: class labels must be integers, got {label_kind:?}"
                );
                let labels = match labels.size().as_slice() {
                    [] | [1] => labels.reshape([1]).expand([batch], false),
                    [b] if *b == batch => labels.shallow_clone(),
                    other => panic!(
                        "audio network: class labels must be [batch] = [{batch}] (or one label), \
                         got {other:?}"
                    ),
                };
                if batch > 0 {
                    let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
                    assert!(
                        lo >= 0 && hi <= null,
                        "audio network: class labels must be in 0..={null} (the classes and the \
                         null class {null}), got labels from {lo} to {hi}"
                    );
                }
                labels.to_device(device).to_kind(Kind::Int64)
            }
        };
        self.table.forward(&labels).to_kind(kind)
    }
}

/// The class embedding's rows for one forward: None for an unconditional network (which panics
/// when given labels), else [`ClassEmbedding::forward`]'s.
pub(crate) fn class_rows(
    embedding: Option<&ClassEmbedding>,
    labels: Option<&Tensor>,
    batch: i64,
    device: Device,
    kind: Kind,
) -> Option<Tensor> {
    match (embedding, labels) {
        (None, Some(_)) => panic!(
            "audio network: class labels given, but the network is not class-conditional \
             (its config has no num_class_embeds)"
        ),
        (None, None) => None,
        (Some(e), labels) => Some(e.forward(labels, batch, device, kind)),
    }
}
