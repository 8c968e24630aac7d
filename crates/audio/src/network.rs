//! The audio denoiser as the rest of diffuse sees it: one config (`config.json`, tagged by
//! `"type": "diffwave" | "unet1d"`) and one network, [`AudioNetwork`], whose forward takes audio
//! `[B, C, L]` of any length and real (possibly fractional) timesteps `[B]`. Lengths the UNet
//! cannot take are zero-padded at the end up to [`AudioNetworkConfig::length_multiple`] and the
//! output cropped back, so callers never think about it. [`AudioDenoiser`] wraps the network as
//! the `Denoiser` that `diffuse-core`'s objectives and samplers drive.

use crate::diffwave::{DiffWave, DiffWaveConfig};
use crate::unet1d::{UNet1d, UNet1dConfig};
use diffuse_core::denoiser::Denoiser;
use diffuse_core::prediction::PredictionType;
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, VarStore};
use tch::{Kind, Tensor};

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
    /// moved to `x`'s device). `train` enables dropout. Panics on shapes the network cannot take.
    pub fn forward_t(&self, x: &Tensor, t: &Tensor, train: bool) -> Tensor {
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
            Net::DiffWave(n) => n.forward_t(&padded, &t, train),
            Net::UNet1d(n) => n.forward_t(&padded, &t, train),
        };
        if pad > 0 {
            out.narrow(2, 0, len)
        } else {
            out
        }
    }
}

/// The network as a [`Denoiser`]: its prediction type and train/eval mode.
pub struct AudioDenoiser<'a> {
    pub net: &'a AudioNetwork,
    pub prediction_type: PredictionType,
    pub train: bool,
}

impl Denoiser for AudioDenoiser<'_> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        self.net.forward_t(x_t, t, self.train)
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
