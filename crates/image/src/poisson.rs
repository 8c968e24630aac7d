//! Images as counts: an 8-bit pixel is a count 0..255, and a model trained with
//! `--process poisson` thins and thickens those counts (`diffuse_core::poisson`) instead of adding
//! Gaussian noise. The UNet is the same diffusers UNet2DModel; it reads the process's network input
//! (the latent counts rescaled to [0, input_clip]) and the timestep t - 1, and its output is read by
//! the process's parameterisation. The process config is saved in the model directory's
//! `diffuse.json`, so `ImagePipeline` knows which kind of model it holds.
//!
//! Conversions: a [-1, 1] image tensor x is the count round((x + 1) * 127.5); a count c is the
//! image c / 127.5 - 1.

use crate::unet::UNet2d;
use diffuse_core::poisson::{CountDenoiser, JumpConfig, JumpPrediction, JumpSampler};
use diffuse_core::sampler_choice::{MODEL_SCHEDULER, SAMPLER_NAMES};
use diffuse_tensor::{Error, Result};
use tch::Tensor;

/// Largest 8-bit count.
pub const MAX_COUNT: f64 = 255.0;

/// [-1, 1] images to pixel counts 0..255 (f32 whole numbers).
pub fn to_counts(images: &Tensor) -> Tensor {
    ((images.to_kind(tch::Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, MAX_COUNT)
}

/// Pixel counts to [-1, 1] images (counts above 255 are clipped).
pub fn from_counts(counts: &Tensor) -> Tensor {
    counts.clamp(0.0, MAX_COUNT) / 127.5 - 1.0
}

/// The count-process settings for images, before the data mean is known (`signal_mean` 0 means
/// "fill in from the training data"): 255 counts per network unit, x_0_hat clipped at 255.
pub fn image_jump_config() -> JumpConfig {
    JumpConfig {
        signal_mean: 0.0,
        scale: MAX_COUNT,
        input_clip: 2.0,
        clip_max: Some(MAX_COUNT),
        ..JumpConfig::default()
    }
}

/// The UNet as a [`CountDenoiser`], with fixed class labels (or none); with `guidance` != 1 and
/// unconditional labels, classifier-free guidance on the network output (linear in it, as the
/// Gaussian guidance is in epsilon).
pub struct UNetCounts<'a> {
    pub unet: &'a UNet2d,
    pub class_labels: Option<Tensor>,
    pub unconditional_labels: Option<Tensor>,
    pub guidance: f64,
    pub train: bool,
}

impl UNetCounts<'_> {
    fn labels_for(labels: &Option<Tensor>, batch: i64) -> Option<Tensor> {
        labels.as_ref().map(|l| {
            if l.size()[0] == batch {
                l.shallow_clone()
            } else {
                l.narrow(0, 0, 1).expand([batch], true)
            }
        })
    }
}

impl CountDenoiser for UNetCounts<'_> {
    fn forward(&self, input: &Tensor, t: &Tensor) -> Tensor {
        let batch = input.size()[0];
        let cond = Self::labels_for(&self.class_labels, batch);
        let out = self.unet.forward_t(input, t, cond.as_ref(), self.train);
        match &self.unconditional_labels {
            Some(_) if self.guidance != 1.0 => {
                let uncond = Self::labels_for(&self.unconditional_labels, batch);
                let out_u = self.unet.forward_t(input, t, uncond.as_ref(), self.train);
                &out_u + (out - &out_u) * self.guidance
            }
            _ => out,
        }
    }
}

/// Steps a count image model samples in when none are asked for (at most its training steps):
/// thickening in 50 steps already gives clean digits on MNIST (BENCHMARKS.md), where every
/// training step would take 1000 model calls.
pub const COUNT_DEFAULT_STEPS: usize = 50;

/// The count sampler a sampling request names: `None` is the thickening sampler; any other name
/// (a Gaussian sampler, the saved scheduler) is refused with the count samplers listed.
pub fn count_sampler(name: Option<&str>) -> Result<JumpSampler> {
    match name {
        None => Ok(JumpSampler::Thickening),
        Some(n) => JumpSampler::parse(n).map_err(|_| {
            let what = if n == MODEL_SCHEDULER || SAMPLER_NAMES.contains(&n) {
                "is a sampler for Gaussian models"
            } else {
                "is not a sampler"
            };
            Error::InvalidArgument(format!(
                "--sampler: {n} {what}, but this model diffuses pixel counts (--process poisson); \
                 its samplers are jump (the default) and blackout"
            ))
        }),
    }
}

/// Check a count config is usable for images (the prediction parameterisations all are).
pub fn check_image_config(config: &JumpConfig) -> Result<()> {
    if config.prediction == JumpPrediction::Deaths
        && config.thinning != diffuse_core::poisson::Thinning::Binomial
    {
        return Err(Error::InvalidArgument(
            "--jump-prediction deaths: needs --thinning binomial".into(),
        ));
    }
    Ok(())
}
