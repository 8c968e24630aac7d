//! The small image classifier whose penultimate features stand in for Inception-v3's in diffuse's
//! Fréchet distance ([`crate::fid`]): Inception weights are out of reach here, so diffuse trains
//! this network on the dataset itself and ships it, with the test split's feature statistics, in a
//! classifier directory (`config.json`, `model.safetensors`, `info.json`,
//! `reference_stats.safetensors`).
//!
//! The network: levels of 3x3 conv -> GroupNorm -> SiLU, each level after the first opening with a
//! stride-2 convolution; global average pooling; a `feature_dim` linear layer with SiLU (the
//! features); dropout; a linear head. GroupNorm rather than BatchNorm keeps an image's features
//! independent of its batch and identical in training and evaluation. Two convolutions per level
//! matter more than width: global pooling after single convolutions (receptive field 9 px) left
//! the small networks far behind. The defaults (81,626 parameters, 0.33 MB in f32) reach 99.4%
//! MNIST and 89.0% Fashion-MNIST test accuracy with the default 2000 steps of 128 images
//! (5.5 minutes on two CPU cores with one libtorch thread).

use crate::fid::FeatureStats;
use diffuse_tensor::atomic::write_json_atomic;
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::grad::clip_grad_norm;
use diffuse_tensor::lr::{LrSchedule, LrScheduleKind};
use diffuse_tensor::optim::{AdamW, AdamWConfig};
use diffuse_tensor::progress::progress_bar;
use diffuse_tensor::seed::derive_seed;
use diffuse_tensor::weights::{load_var_store, save_var_store, Metadata};
use diffuse_tensor::{manual_seed, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Name of the network configuration inside a classifier directory.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the weights inside a classifier directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the training and evaluation record inside a classifier directory.
pub const INFO_FILE: &str = "info.json";
/// Name of the reference feature statistics inside a classifier directory.
pub const REFERENCE_STATS_FILE: &str = "reference_stats.safetensors";

/// Shape of the classifier network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ClassifierConfig {
    /// Image channels (1 for MNIST).
    pub in_channels: i64,
    /// Side of the square input; other sizes are resized bilinearly.
    pub resolution: i64,
    /// Number of classes.
    pub num_classes: i64,
    /// Channels of each level; every level after the first halves the resolution.
    pub channels: Vec<i64>,
    /// Convolutions per level.
    pub layers_per_block: i64,
    /// GroupNorm groups (must divide every entry of `channels`).
    pub norm_num_groups: i64,
    /// Width of the feature layer used for the Fréchet distance.
    pub feature_dim: i64,
    /// Dropout on the features before the head, in training only.
    pub dropout: f64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            in_channels: 1,
            resolution: 28,
            num_classes: 10,
            channels: vec![16, 32, 64],
            layers_per_block: 2,
            norm_num_groups: 8,
            feature_dim: 128,
            dropout: 0.0,
        }
    }
}

impl ClassifierConfig {
    /// Check that the numbers describe a buildable network.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidArgument(format!("classifier config: {msg}")));
        if self.in_channels < 1 || self.num_classes < 2 || self.feature_dim < 1 {
            return fail(format!(
                "in_channels {} (>= 1), num_classes {} (>= 2) and feature_dim {} (>= 1) are out of range",
                self.in_channels, self.num_classes, self.feature_dim
            ));
        }
        if self.channels.is_empty() || self.layers_per_block < 1 || self.norm_num_groups < 1 {
            return fail(
                "channels must list at least one level; layers_per_block and norm_num_groups must be >= 1"
                    .into(),
            );
        }
        if let Some(c) = self
            .channels
            .iter()
            .find(|&&c| c < 1 || c % self.norm_num_groups != 0)
        {
            return fail(format!(
                "channel count {c} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if self.resolution < 1 << (self.channels.len() - 1) {
            return fail(format!(
                "resolution {} is too small for {} levels",
                self.resolution,
                self.channels.len()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout {} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ConvBlock {
    conv: nn::Conv2D,
    norm: nn::GroupNorm,
}

/// A small CNN classifier: conv-GroupNorm-SiLU levels with stride-2 downsampling, global average
/// pooling, a `feature_dim` feature layer and a linear head.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    blocks: Vec<ConvBlock>,
    feature: nn::Linear,
    head: nn::Linear,
    device: Device,
}

impl Classifier {
    /// Build the network under `vs` (variables `blocks.K.conv`, `blocks.K.norm`, `feature`, `head`).
    pub fn new(vs: &nn::Path, cfg: &ClassifierConfig) -> Result<Self> {
        cfg.validate()?;
        let mut blocks = Vec::new();
        let mut in_channels = cfg.in_channels;
        for (level, &out_channels) in cfg.channels.iter().enumerate() {
            for layer in 0..cfg.layers_per_block {
                let stride = if level > 0 && layer == 0 { 2 } else { 1 };
                let conv_cfg = nn::ConvConfig {
                    stride,
                    padding: 1,
                    // GroupNorm follows, so a bias would be cancelled.
                    bias: false,
                    ..Default::default()
                };
                let path = vs / "blocks" / blocks.len();
                blocks.push(ConvBlock {
                    conv: nn::conv2d(&path / "conv", in_channels, out_channels, 3, conv_cfg),
                    norm: nn::group_norm(
                        &path / "norm",
                        cfg.norm_num_groups,
                        out_channels,
                        Default::default(),
                    ),
                });
                in_channels = out_channels;
            }
        }
        let feature = nn::linear(
            vs / "feature",
            in_channels,
            cfg.feature_dim,
            Default::default(),
        );
        let head = nn::linear(
            vs / "head",
            cfg.feature_dim,
            cfg.num_classes,
            Default::default(),
        );
        Ok(Classifier {
            config: cfg.clone(),
            blocks,
            feature,
            head,
            device: vs.device(),
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Features before dropout: `[B, C, H, W]` in [-1, 1] -> `[B, feature_dim]`.
    fn features_t(&self, xs: &Tensor) -> Tensor {
        let (_, c, h, w) = xs.size4().expect("classifier input must be [B, C, H, W]");
        assert_eq!(
            c, self.config.in_channels,
            "classifier built for {} channels got images with {c}",
            self.config.in_channels
        );
        let r = self.config.resolution;
        let mut hs = xs.to_kind(Kind::Float);
        if (h, w) != (r, r) {
            hs = hs.upsample_bilinear2d([r, r], false, None, None);
        }
        for block in &self.blocks {
            hs = block.norm.forward(&block.conv.forward(&hs)).silu();
        }
        let pooled = hs.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        self.feature.forward(&pooled).silu()
    }

    /// Logits `[B, num_classes]` of images `[B, C, H, W]` in [-1, 1] (resized bilinearly to
    /// `resolution` if needed); `train` enables dropout.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let features = self.features_t(xs).dropout(self.config.dropout, train);
        self.head.forward(&features)
    }

    /// Penultimate activations `[B, feature_dim]` (evaluation mode) of images `[B, C, H, W]` in
    /// [-1, 1]: the features of the Fréchet distance.
    pub fn features(&self, xs: &Tensor) -> Tensor {
        self.features_t(xs)
    }
}

/// Images as f32 in [-1, 1]: u8 pixels are mapped from 0..=255, float images are taken as they are.
pub fn images_to_unit_range(images: &Tensor) -> Tensor {
    if images.kind() == Kind::Uint8 {
        images.to_kind(Kind::Float) / 127.5 - 1.0
    } else {
        images.to_kind(Kind::Float)
    }
}

/// Shift each image of `[B, C, H, W]` (in [-1, 1]) by its own random whole number of pixels in
/// -max_shift..=max_shift along each axis, filling with the background value -1.
fn random_translate(xs: &Tensor, max_shift: i64) -> Tensor {
    if max_shift == 0 {
        return xs.shallow_clone();
    }
    let (b, c, h, w) = xs.size4().expect("images must be [B, C, H, W]");
    let device = xs.device();
    let s = max_shift;
    let padded = (xs + 1.0).constant_pad_nd([s, s, s, s]) - 1.0;
    let dy = Tensor::randint_low(0, 2 * s + 1, [b, 1], (Kind::Int64, device));
    let dx = Tensor::randint_low(0, 2 * s + 1, [b, 1], (Kind::Int64, device));
    let rows = (Tensor::arange(h, (Kind::Int64, device)).unsqueeze(0) + dy)
        .view([b, 1, h, 1])
        .expand([b, c, h, w + 2 * s], false);
    let cols = (Tensor::arange(w, (Kind::Int64, device)).unsqueeze(0) + dx)
        .view([b, 1, 1, w])
        .expand([b, c, h, w], false);
    padded.gather(2, &rows, false).gather(3, &cols, false)
}

/// How [`train_classifier`] trains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ClassifierTrainConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak AdamW learning rate (linear warmup, then cosine decay to 0).
    pub lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Largest random translation, in pixels, applied to each training image.
    pub max_shift: i64,
    /// Global gradient-norm clip (0 disables it).
    pub grad_clip: f64,
    /// Seed of the data order, the augmentations and dropout.
    pub seed: u64,
    /// Steps between log lines.
    pub log_every: u64,
}

impl Default for ClassifierTrainConfig {
    fn default() -> Self {
        ClassifierTrainConfig {
            steps: 2000,
            batch_size: 128,
            lr: 3e-3,
            warmup_steps: 100,
            weight_decay: 0.01,
            max_shift: 2,
            grad_clip: 1.0,
            seed: 0,
            log_every: 100,
        }
    }
}

impl ClassifierTrainConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0
            || self.batch_size == 0
            || self.lr <= 0.0
            || self.weight_decay < 0.0
            || self.max_shift < 0
            || self.grad_clip < 0.0
        {
            return Err(Error::InvalidArgument(format!(
                "classifier training: steps {} and batch size {} must be >= 1, lr {} > 0, weight decay {}, \
                 max shift {} and grad clip {} >= 0",
                self.steps, self.batch_size, self.lr, self.weight_decay, self.max_shift, self.grad_clip
            )));
        }
        Ok(())
    }
}

/// Checks that `images` `[N, C, H, W]` and `labels` `[N]` fit the model.
fn check_labelled(model: &Classifier, images: &Tensor, labels: &Tensor) -> Result<i64> {
    let cfg = model.config();
    let size = images.size();
    if size.len() != 4 || size[1] != cfg.in_channels || size[0] < 1 {
        return Err(Error::InvalidArgument(format!(
            "classifier images must be [N, {}, H, W] with N >= 1, got {size:?}",
            cfg.in_channels
        )));
    }
    if labels.size() != [size[0]] {
        return Err(Error::InvalidArgument(format!(
            "{} images but labels of shape {:?}",
            size[0],
            labels.size()
        )));
    }
    let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
    if lo < 0 || hi >= cfg.num_classes {
        return Err(Error::InvalidArgument(format!(
            "labels range over {lo}..={hi}, outside the classifier's 0..{}",
            cfg.num_classes
        )));
    }
    Ok(size[0])
}

/// Train `model` (its variables in `vs`) on images `[N, C, H, W]` (u8 in 0..=255, converted per
/// batch, or f32 in [-1, 1]) with labels `[N]` (i64): cross-entropy, AdamW with warmup and cosine
/// decay, random translations by up to `max_shift` pixels. Images stay where they are; each
/// batch moves to the model's device. Uses libtorch's global generator, reseeded every step from
/// (seed, step). Returns the mean training loss of the last 50 steps (or of all, if fewer).
pub fn train_classifier(
    model: &Classifier,
    vs: &nn::VarStore,
    images: &Tensor,
    labels: &Tensor,
    cfg: &ClassifierTrainConfig,
) -> Result<f64> {
    cfg.validate()?;
    let n = check_labelled(model, images, labels)?;
    let device = model.device();
    let labels = labels.to_kind(Kind::Int64);
    let sampler = EpochSampler::new(n as usize, cfg.batch_size, cfg.seed);
    let mut optimizer = AdamW::new(
        vs,
        AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let schedule = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: cfg.warmup_steps,
        total_steps: cfg.steps,
    };
    tracing::info!(
        images = n,
        steps = cfg.steps,
        batch_size = cfg.batch_size,
        lr = cfg.lr,
        "training the feature classifier"
    );
    let bar = progress_bar(cfg.steps, "classifier", "step");
    let tail = 50.min(cfg.steps) as usize;
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut window = (0.0, 0, 0);
    for step in 0..cfg.steps {
        manual_seed(derive_seed(cfg.seed, step));
        let index: Vec<i64> = sampler.batch(step).into_iter().map(|i| i as i64).collect();
        let index = Tensor::from_slice(&index);
        let xs = images.index_select(0, &index.to_device(images.device()));
        let xs = random_translate(&images_to_unit_range(&xs.to_device(device)), cfg.max_shift);
        let ys = labels.index_select(0, &index.to_device(labels.device()));
        let ys = ys.to_device(device);
        let logits = model.forward_t(&xs, true);
        let loss = logits.cross_entropy_for_logits(&ys);
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            bar.abandon();
            return Err(Error::NonFinite {
                what: "classifier loss".into(),
                step,
                value: loss_value,
            });
        }
        optimizer.zero_grad();
        loss.backward();
        if cfg.grad_clip > 0.0 {
            clip_grad_norm(optimizer.parameters(), cfg.grad_clip);
        }
        optimizer.step(schedule.lr(cfg.lr, step));
        if recent.len() == tail {
            recent.pop_front();
        }
        recent.push_back(loss_value);
        let correct = logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64);
        window.0 += loss_value;
        window.1 += correct.int64_value(&[]);
        window.2 += ys.size()[0];
        bar.inc(1);
        if (step + 1) % cfg.log_every.max(1) == 0 || step + 1 == cfg.steps {
            let steps_in_window = ((step % cfg.log_every.max(1)) + 1) as f64;
            let mean_loss = window.0 / steps_in_window;
            let train_acc = window.1 as f64 / window.2 as f64;
            bar.set_message(format!("loss {mean_loss:.4} acc {:.2}%", 100.0 * train_acc));
            tracing::info!(
                step = step + 1,
                loss = mean_loss,
                train_accuracy = train_acc,
                lr = schedule.lr(cfg.lr, step),
                "classifier training"
            );
            window = (0.0, 0, 0);
        }
    }
    bar.finish_and_clear();
    Ok(recent.iter().sum::<f64>() / recent.len() as f64)
}

/// Fraction of `images` `[N, C, H, W]` (u8 or f32 in [-1, 1]) whose most likely class is the
/// label `[N]`, evaluated in batches without gradients.
pub fn accuracy(model: &Classifier, images: &Tensor, labels: &Tensor, batch_size: i64) -> f64 {
    assert!(batch_size > 0, "accuracy needs a positive batch size");
    let n = images.size()[0];
    assert_eq!(labels.size(), [n], "one label per image");
    if n == 0 {
        return 0.0;
    }
    let labels = labels.to_kind(Kind::Int64);
    let mut correct = 0;
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = batch_size.min(n - start);
            let xs = images_to_unit_range(&images.narrow(0, start, len).to_device(model.device()));
            let predicted = model.forward_t(&xs, false).argmax(-1, false);
            let ys = labels.narrow(0, start, len).to_device(model.device());
            correct += predicted.eq_tensor(&ys).sum(Kind::Int64).int64_value(&[]);
            start += len;
        }
    });
    correct as f64 / n as f64
}

/// What a classifier directory records besides the network: how it was trained, how well it
/// classifies, and what its reference statistics describe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ClassifierInfo {
    /// Dataset name, e.g. "mnist" or "fashion-mnist".
    pub dataset: String,
    /// Number of training images.
    pub train_images: i64,
    /// The training settings.
    pub train: ClassifierTrainConfig,
    /// Final training loss (see [`train_classifier`]).
    pub train_loss: f64,
    /// Number of test images the accuracy was measured on.
    pub test_images: i64,
    /// Accuracy on the test split, in [0, 1].
    pub test_accuracy: f64,
    /// The split whose features give the reference statistics (normally "test").
    pub reference_split: String,
}

impl Default for ClassifierInfo {
    fn default() -> Self {
        ClassifierInfo {
            dataset: String::new(),
            train_images: 0,
            train: ClassifierTrainConfig::default(),
            train_loss: f64::NAN,
            test_images: 0,
            test_accuracy: f64::NAN,
            reference_split: "test".into(),
        }
    }
}

/// Write a classifier directory: `config.json`, `model.safetensors`, `info.json` and, when given,
/// `reference_stats.safetensors` (each file written atomically; the directory is created).
pub fn save_classifier_dir(
    dir: &Path,
    model: &Classifier,
    vs: &nn::VarStore,
    info: &ClassifierInfo,
    reference: Option<&FeatureStats>,
) -> Result<()> {
    diffuse_tensor::atomic::write_dir_atomic(
        dir,
        INFO_FILE,
        &[CONFIG_FILE, WEIGHTS_FILE, INFO_FILE, REFERENCE_STATS_FILE],
        |staging| {
            write_json_atomic(&staging.join(CONFIG_FILE), model.config())?;
            let mut metadata = Metadata::new();
            metadata.insert("format".into(), "diffuse-classifier".into());
            metadata.insert("dataset".into(), info.dataset.clone());
            save_var_store(vs, &staging.join(WEIGHTS_FILE), Some(metadata))?;
            write_json_atomic(&staging.join(INFO_FILE), info)?;
            if let Some(stats) = reference {
                let mut metadata = Metadata::new();
                metadata.insert("dataset".into(), info.dataset.clone());
                metadata.insert("split".into(), info.reference_split.clone());
                stats.save(&staging.join(REFERENCE_STATS_FILE), Some(metadata))?;
            }
            Ok(())
        },
    )
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Load a classifier directory written by [`save_classifier_dir`] onto `device` (weights loaded
/// strictly: every missing or unexpected tensor is reported).
pub fn load_classifier_dir(
    dir: &Path,
    device: Device,
) -> Result<(Classifier, nn::VarStore, ClassifierInfo)> {
    let config: ClassifierConfig = read_json(&dir.join(CONFIG_FILE))?;
    let info: ClassifierInfo = read_json(&dir.join(INFO_FILE))?;
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), &config)
        .map_err(|e| Error::format(dir.join(CONFIG_FILE), e.to_string()))?;
    load_var_store(&vs, &dir.join(WEIGHTS_FILE), true)?;
    Ok((model, vs, info))
}

/// The reference feature statistics of a classifier directory, or `None` if it has none.
pub fn load_reference_stats(dir: &Path) -> Result<Option<FeatureStats>> {
    let path = dir.join(REFERENCE_STATS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(FeatureStats::load(&path)?.0))
}
