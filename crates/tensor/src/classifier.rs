//! The small classifier every modality trains as its judge: its penultimate features stand in for
//! Inception-v3's in the image Fréchet distance (`diffuse_image::fid`) and for a pretrained audio
//! network's in the audio kernel distance, and its predictions say which class a generated sample
//! looks like. Pretrained weights are out of reach here, so diffuse trains this network on the
//! dataset itself and ships it in a classifier directory (`config.json`, `model.safetensors`,
//! `info.json`, optionally `reference_stats.safetensors`).
//!
//! The network sees `[B, C, H, W]` inputs: images as they are, audio as log-mel spectrograms (one
//! channel, mel bands by frames). What a modality's raw data becomes before the network (scaling,
//! augmentation) is its own `prepare` function, passed to [`train_classifier_with`] and
//! [`classifier_outputs`]; the network, its training loop and its directory live here once.
//!
//! The network: levels of 3x3 conv -> GroupNorm -> SiLU, each level after the first opening with a
//! stride-2 convolution; global average pooling; a `feature_dim` linear layer with SiLU (the
//! features); dropout; a linear head. GroupNorm rather than BatchNorm keeps an image's features
//! independent of its batch and identical in training and evaluation. Two convolutions per level
//! matter more than width: global pooling after single convolutions (receptive field 9 px) left
//! the small networks far behind. The defaults (81,626 parameters, 0.33 MB in f32) reach 99.4%
//! MNIST and 89.0% Fashion-MNIST test accuracy with the default 2000 steps of 128 images
//! (5.5 minutes on two CPU cores with one libtorch thread).
//!
//! A classifier may be an ensemble (`members` > 1; Lakshminarayanan et al. 2017, "Simple and
//! Scalable Predictive Uncertainty Estimation using Deep Ensembles"): that many copies of the
//! network from different initial weights, each trained on its own cross-entropy over the same
//! batches, predicting by their averaged probabilities, with their features side by side. It
//! trades K times the compute for less variance where data is scarce (a judge of a few hundred
//! drum clips), and removes most of the run-to-run spread a single small network shows there.

use crate::atomic::write_json_atomic;
use crate::data::EpochSampler;
use crate::frechet::FeatureStats;
use crate::grad::clip_grad_norm;
use crate::lr::{LrSchedule, LrScheduleKind};
use crate::optim::{AdamW, AdamWConfig};
use crate::progress::progress_bar;
use crate::seed::derive_seed;
use crate::weights::{load_var_store, save_var_store, Metadata};
use crate::{manual_seed, Error, Result};
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
    /// Height of the input, and its width unless `width` is set; other sizes are resized
    /// bilinearly.
    pub resolution: i64,
    /// Width of the input when it is not square (a log-mel spectrogram's frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
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
    /// Networks in the ensemble (1: a single network; the field is then not written).
    #[serde(skip_serializing_if = "is_one")]
    pub members: i64,
}

fn is_one(n: &i64) -> bool {
    *n == 1
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            in_channels: 1,
            resolution: 28,
            width: None,
            num_classes: 10,
            channels: vec![16, 32, 64],
            layers_per_block: 2,
            norm_num_groups: 8,
            feature_dim: 128,
            dropout: 0.0,
            members: 1,
        }
    }
}

impl ClassifierConfig {
    /// Height and width of the network's input.
    pub fn input_size(&self) -> (i64, i64) {
        (self.resolution, self.width.unwrap_or(self.resolution))
    }

    /// Width of [`Classifier::features`]: `feature_dim` for each member.
    pub fn feature_width(&self) -> i64 {
        self.feature_dim * self.members
    }

    /// Check that the numbers describe a buildable network.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidArgument(format!("classifier config: {msg}")));
        if !(1..=64).contains(&self.members) {
            return fail(format!(
                "members {} is outside 1..=64 (networks in the ensemble)",
                self.members
            ));
        }
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
        let (h, w) = self.input_size();
        if h.min(w) < 1 << (self.channels.len() - 1) {
            return fail(format!(
                "input {h}x{w} is too small for {} levels",
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

/// One network of a [`Classifier`].
#[derive(Debug)]
struct Member {
    blocks: Vec<ConvBlock>,
    feature: nn::Linear,
    head: nn::Linear,
}

/// A small CNN classifier: conv-GroupNorm-SiLU levels with stride-2 downsampling, global average
/// pooling, a `feature_dim` feature layer and a linear head; or an ensemble of them.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    members: Vec<Member>,
    device: Device,
}

impl Classifier {
    /// Build the network under `vs` (variables `blocks.K.conv`, `blocks.K.norm`, `feature`,
    /// `head`; an ensemble's further members under `member1.`, `member2.`, ...).
    pub fn new(vs: &nn::Path, cfg: &ClassifierConfig) -> Result<Self> {
        cfg.validate()?;
        let members = (0..cfg.members)
            .map(|i| match i {
                0 => Member::new(vs, cfg),
                i => Member::new(&(vs / format!("member{i}")), cfg),
            })
            .collect();
        Ok(Classifier {
            config: cfg.clone(),
            members,
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

    /// Each member's logits `[B, num_classes]` (`train` enables dropout).
    fn member_logits(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        let xs = self.resized(xs);
        self.members
            .iter()
            .map(|m| m.logits(&m.features(&xs), self.config.dropout, train))
            .collect()
    }

    /// The ensemble's prediction from its members' logits: log of the mean probability (the
    /// logits themselves for a single network).
    fn combine(logits: Vec<Tensor>) -> Tensor {
        if logits.len() == 1 {
            return logits.into_iter().next().expect("one member");
        }
        let k = logits.len() as f64;
        Tensor::stack(&logits, 0)
            .log_softmax(-1, Kind::Float)
            .logsumexp([0i64].as_slice(), false)
            - k.ln()
    }

    /// Inputs as float at the configured size (resized bilinearly if needed).
    fn resized(&self, xs: &Tensor) -> Tensor {
        let (_, c, h, w) = xs.size4().expect("classifier input must be [B, C, H, W]");
        assert_eq!(
            c, self.config.in_channels,
            "classifier built for {} channels got inputs with {c}",
            self.config.in_channels
        );
        let (rh, rw) = self.config.input_size();
        let hs = xs.to_kind(Kind::Float);
        if (h, w) != (rh, rw) {
            return hs.upsample_bilinear2d([rh, rw], false, None, None);
        }
        hs
    }

    /// Logits `[B, num_classes]` of inputs `[B, C, H, W]` in about [-1, 1] (resized bilinearly
    /// to the configured size if needed); `train` enables dropout. An ensemble's are the log of
    /// its members' mean probabilities.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        Self::combine(self.member_logits(xs, train))
    }

    /// Penultimate activations `[B, feature_width]` (evaluation mode) of inputs `[B, C, H, W]`:
    /// the features of the Fréchet and kernel distances (an ensemble's members side by side).
    pub fn features(&self, xs: &Tensor) -> Tensor {
        self.outputs(xs).1
    }

    /// Logits and features of inputs in evaluation mode, in one pass.
    pub fn outputs(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let xs = self.resized(xs);
        let (logits, features): (Vec<Tensor>, Vec<Tensor>) = self
            .members
            .iter()
            .map(|m| {
                let f = m.features(&xs);
                (m.logits(&f, 0.0, false), f)
            })
            .unzip();
        (Self::combine(logits), Tensor::cat(&features, 1))
    }
}

impl Member {
    fn new(vs: &nn::Path, cfg: &ClassifierConfig) -> Self {
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
        Member {
            blocks,
            feature,
            head,
        }
    }

    /// Features before dropout: float `[B, C, H, W]` at the configured size -> `[B, feature_dim]`.
    fn features(&self, xs: &Tensor) -> Tensor {
        let mut hs = xs.shallow_clone();
        for block in &self.blocks {
            hs = block.norm.forward(&block.conv.forward(&hs)).silu();
        }
        let pooled = hs.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        self.feature.forward(&pooled).silu()
    }

    fn logits(&self, features: &Tensor, dropout: f64, train: bool) -> Tensor {
        self.head.forward(&features.dropout(dropout, train))
    }
}

/// How [`train_classifier_with`] trains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ClassifierTrainConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak AdamW learning rate (linear warmup, then cosine decay to 0).
    pub lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Largest random shift applied to each training example by the modality's augmentation:
    /// pixels along each axis for images, milliseconds in time for audio.
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

/// Checks that `inputs` (`[N, ...]`) and `labels` `[N]` fit the model; returns N.
fn check_labelled(model: &Classifier, inputs: &Tensor, labels: &Tensor) -> Result<i64> {
    let cfg = model.config();
    let size = inputs.size();
    if size.is_empty() || size[0] < 1 {
        return Err(Error::InvalidArgument(format!(
            "classifier training needs at least one example, got inputs of shape {size:?}"
        )));
    }
    if labels.size() != [size[0]] {
        return Err(Error::InvalidArgument(format!(
            "{} examples but labels of shape {:?}",
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

/// Train `model` (its variables in `vs`) on raw examples `inputs` `[N, ...]` with labels `[N]`
/// (i64): cross-entropy, AdamW with warmup and cosine decay. Each step gathers a batch, moves it
/// to the model's device and hands it to `prepare(batch, true)`, which returns the network's
/// `[B, C, H, W]` input with the modality's augmentation applied (`prepare(batch, false)` is the
/// same without augmentation, as [`classifier_outputs`] calls it). Uses libtorch's global
/// generator, reseeded every step from (seed, step), so `prepare`'s random draws are seeded too.
/// Returns the mean training loss of the last 50 steps (or of all, if fewer).
pub fn train_classifier_with(
    model: &Classifier,
    vs: &nn::VarStore,
    inputs: &Tensor,
    labels: &Tensor,
    cfg: &ClassifierTrainConfig,
    prepare: impl Fn(&Tensor, bool) -> Tensor,
) -> Result<f64> {
    cfg.validate()?;
    let n = check_labelled(model, inputs, labels)?;
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
        examples = n,
        steps = cfg.steps,
        batch_size = cfg.batch_size,
        lr = cfg.lr,
        "training the classifier"
    );
    let bar = progress_bar(cfg.steps, "classifier", "step");
    let tail = 50.min(cfg.steps) as usize;
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut window = (0.0, 0, 0);
    for step in 0..cfg.steps {
        manual_seed(derive_seed(cfg.seed, step));
        let index: Vec<i64> = sampler.batch(step).into_iter().map(|i| i as i64).collect();
        let index = Tensor::from_slice(&index);
        let xs = inputs.index_select(0, &index.to_device(inputs.device()));
        let xs = prepare(&xs.to_device(device), true);
        let ys = labels.index_select(0, &index.to_device(labels.device()));
        let ys = ys.to_device(device);
        // Each member learns from its own cross-entropy (an ensemble of independent networks,
        // not one network trained through the averaged prediction).
        let member_logits = model.member_logits(&xs, true);
        let loss = member_logits
            .iter()
            .map(|l| l.cross_entropy_for_logits(&ys))
            .reduce(|a, b| a + b)
            .expect("at least one member")
            / member_logits.len() as f64;
        let logits = Classifier::combine(member_logits);
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

/// Logits `[N, num_classes]` and features `[N, feature_width]` (both f32 on the CPU) of raw
/// examples `inputs` `[N, ...]`, each batch moved to the model's device and given to
/// `prepare(batch, false)`; evaluated without gradients, with a progress bar counting `what`.
pub fn classifier_outputs(
    model: &Classifier,
    inputs: &Tensor,
    batch_size: i64,
    what: &'static str,
    prepare: impl Fn(&Tensor, bool) -> Tensor,
) -> (Tensor, Tensor) {
    assert!(
        batch_size > 0,
        "classifier_outputs needs a positive batch size"
    );
    let n = inputs.size()[0];
    let bar = progress_bar(n as u64, "classifier", what);
    let (mut logits, mut features) = (Vec::new(), Vec::new());
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = batch_size.min(n - start);
            let xs = prepare(
                &inputs.narrow(0, start, len).to_device(model.device()),
                false,
            );
            let (l, f) = model.outputs(&xs);
            logits.push(l.to_device(Device::Cpu));
            features.push(f.to_device(Device::Cpu));
            start += len;
            bar.inc(len as u64);
        }
    });
    bar.finish_and_clear();
    if logits.is_empty() {
        let cfg = model.config();
        let opts = (Kind::Float, Device::Cpu);
        return (
            Tensor::zeros([0, cfg.num_classes], opts),
            Tensor::zeros([0, cfg.feature_width()], opts),
        );
    }
    (Tensor::cat(&logits, 0), Tensor::cat(&features, 0))
}

/// Fraction of rows of `logits` `[N, K]` whose largest entry is the label `[N]` (0 when N = 0).
pub fn accuracy_of_logits(logits: &Tensor, labels: &Tensor) -> f64 {
    let n = logits.size()[0];
    assert_eq!(labels.size(), [n], "one label per row of logits");
    if n == 0 {
        return 0.0;
    }
    let predicted = logits.argmax(-1, false);
    let labels = labels.to_kind(Kind::Int64).to_device(predicted.device());
    predicted
        .eq_tensor(&labels)
        .sum(Kind::Int64)
        .int64_value(&[]) as f64
        / n as f64
}

/// What a classifier directory records besides the network: how it was trained, how well it
/// classifies, and what its reference statistics describe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ClassifierInfo {
    /// Dataset name, e.g. "mnist", "fashion-mnist" or "drums".
    pub dataset: String,
    /// Number of training examples.
    pub train_images: i64,
    /// The training settings.
    pub train: ClassifierTrainConfig,
    /// Final training loss (see [`train_classifier_with`]); NaN (JSON null) when not trained here.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Number of test examples the accuracy was measured on.
    pub test_images: i64,
    /// Accuracy on the test split, in [0, 1]; NaN (JSON null) when not measured.
    #[serde(deserialize_with = "nan_if_null")]
    pub test_accuracy: f64,
    /// The split whose features give the reference statistics (normally "test").
    pub reference_split: String,
    /// Names of the classes, in label order (empty when the labels are their own names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// What a modality records beyond this (audio: how clips become log-mels, held-out-kit and
    /// leave-kits-out accuracies), under its own keys, so a judge is fed as it was trained.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A number that JSON may hold as null (serde_json writes NaN so), read back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
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
            class_names: Vec::new(),
            extra: serde_json::Map::new(),
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
    crate::atomic::write_dir_atomic(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_square_inputs_keep_their_shapes_and_old_configs_still_read() {
        // The bundled MNIST classifier's config, written before `width`.
        let old = r#"{"in_channels": 1, "resolution": 28, "num_classes": 10, "channels": [16, 32, 64],
            "layers_per_block": 2, "norm_num_groups": 8, "feature_dim": 128, "dropout": 0.0}"#;
        let cfg: ClassifierConfig = serde_json::from_str(old).unwrap();
        assert_eq!(cfg, ClassifierConfig::default());
        assert_eq!(cfg.input_size(), (28, 28));
        // Written back, the default stays out of the file.
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(!text.contains("width"), "{text}");

        let spectrogram = ClassifierConfig {
            resolution: 64,
            width: Some(65),
            num_classes: 6,
            channels: vec![16, 32, 64, 128],
            ..ClassifierConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), &spectrogram).unwrap();
        let xs = Tensor::randn([3, 1, 64, 65], (Kind::Float, Device::Cpu));
        assert_eq!(model.forward_t(&xs, false).size(), [3, 6]);
        assert_eq!(model.features(&xs).size(), [3, 128]);
        // Another size is resized to 64 x 65 first: a resized copy of the same input gives the
        // features of its resized self.
        let wide = xs.upsample_bilinear2d([64, 130], false, None, None);
        let back = wide.upsample_bilinear2d([64, 65], false, None, None);
        let gap = (model.features(&wide) - model.features(&back)).abs().max();
        assert!(gap.double_value(&[]) < 1e-5);
        // Too small an input for the levels is refused.
        let tiny = ClassifierConfig {
            width: Some(4),
            ..spectrogram.clone()
        };
        assert!(Classifier::new(&vs.root(), &tiny).is_err());
    }

    #[test]
    fn an_ensemble_averages_its_members_probabilities_and_each_member_learns() {
        crate::manual_seed(7);
        let cfg = ClassifierConfig {
            resolution: 8,
            num_classes: 3,
            channels: vec![8, 8],
            feature_dim: 16,
            members: 3,
            ..ClassifierConfig::default()
        };
        let single = ClassifierConfig {
            members: 1,
            ..cfg.clone()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), &cfg).unwrap();
        // Member 0 keeps a single network's variable names; the others are their own networks.
        let single_vs = nn::VarStore::new(Device::Cpu);
        Classifier::new(&single_vs.root(), &single).unwrap();
        let names = vs.variables();
        assert_eq!(names.len(), 3 * single_vs.variables().len());
        for name in single_vs.variables().keys() {
            assert!(names.contains_key(name), "{name}");
            assert!(names.contains_key(&format!("member2.{name}")), "{name}");
        }
        let xs = Tensor::randn([5, 1, 8, 8], (Kind::Float, Device::Cpu));
        // The prediction is the log of the members' mean probability, exactly.
        let members = tch::no_grad(|| model.member_logits(&xs, false));
        assert_eq!(members.len(), 3);
        let mean = Tensor::stack(&members, 0)
            .softmax(-1, Kind::Float)
            .mean_dim([0i64].as_slice(), false, Kind::Float);
        let (logits, features) = tch::no_grad(|| model.outputs(&xs));
        let gap = (logits.exp() - &mean).abs().max().double_value(&[]);
        assert!(gap < 1e-6, "{gap}");
        assert!(!members[0].allclose(&members[1], 1e-3, 1e-3, false));
        assert_eq!(features.size(), [5, 48]);
        assert_eq!(cfg.feature_width(), 48);
        // Training: three textures (horizontal stripes, vertical stripes, a checkerboard) under
        // noise, learned by every member.
        let labels = Tensor::arange(256, (Kind::Int64, Device::Cpu)).remainder(3);
        let i = Tensor::arange(8, (Kind::Float, Device::Cpu));
        let rows = i.view([8, 1]).remainder(2) * 2.0 - 1.0;
        let cols = i.view([1, 8]).remainder(2) * 2.0 - 1.0;
        let textures = Tensor::stack(
            &[
                rows.expand([8, 8], false),
                cols.expand([8, 8], false),
                &rows * &cols,
            ],
            0,
        );
        let inputs = textures.index_select(0, &labels).unsqueeze(1)
            + Tensor::randn([256, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.5;
        let train = ClassifierTrainConfig {
            steps: 300,
            batch_size: 64,
            lr: 3e-3,
            max_shift: 0,
            log_every: 1000,
            ..ClassifierTrainConfig::default()
        };
        train_classifier_with(&model, &vs, &inputs, &labels, &train, |x, _| {
            x.shallow_clone()
        })
        .unwrap();
        let members = tch::no_grad(|| model.member_logits(&inputs, false));
        for (i, logits) in members.iter().enumerate() {
            let acc = accuracy_of_logits(logits, &labels);
            assert!(acc > 0.8, "member {i}: training accuracy {acc}");
        }
        // Written with its members, read back the same; a single network writes no such field.
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains("\"members\":3"), "{text}");
        assert_eq!(
            serde_json::from_str::<ClassifierConfig>(&text).unwrap(),
            cfg
        );
        assert!(!serde_json::to_string(&single).unwrap().contains("members"));
        assert!(ClassifierConfig {
            members: 0,
            ..cfg.clone()
        }
        .validate()
        .is_err());
    }
}
