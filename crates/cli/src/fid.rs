//! The classifier-feature Fréchet distance: `diffuse train classifier` makes the small classifier
//! (shipped in `data/models/<dataset>-classifier`) and `diffuse eval image --metric fid` uses it.

use crate::image::EvalImageArgs;
use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_image::classifier::{
    accuracy, load_classifier_dir, load_reference_stats, save_classifier_dir, train_classifier,
    Classifier, ClassifierConfig, ClassifierInfo, ClassifierTrainConfig, INFO_FILE,
};
use diffuse_image::data::{ImageDataset, Split};
use diffuse_image::fid::{classifier_features, frechet_distance, FeatureStats, FidReport};
use diffuse_image::pipeline::ImagePipeline;
use diffuse_tensor::parse_device;
use std::path::{Path, PathBuf};

/// Where bundled models live (see [`diffuse_tensor::data::default_models_dir`]).
pub fn default_models_dir() -> PathBuf {
    diffuse_tensor::data::default_models_dir()
}

/// A dataset's short name: `mnist` stays `mnist`, a path gives its last component.
pub(crate) fn dataset_short_name(data: &str) -> String {
    Path::new(data)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| data.to_owned())
}

pub fn eval_fid(
    pipeline: &ImagePipeline,
    data_name: &str,
    test: &ImageDataset,
    args: &EvalImageArgs,
) -> Result<serde_json::Value> {
    let dir = args.classifier.clone().unwrap_or_else(|| {
        default_models_dir().join(format!("{}-classifier", dataset_short_name(data_name)))
    });
    if !dir.join(INFO_FILE).is_file() {
        bail!(
            "--classifier: {} is not a classifier directory (train one with `diffuse train classifier --data {data_name} --out {}`)",
            dir.display(),
            dir.display()
        );
    }
    let device = pipeline.device();
    let (classifier, _vs, info) =
        load_classifier_dir(&dir, device).map_err(|e| anyhow!("--classifier: {e}"))?;
    let (channels, _, _) = pipeline.image_shape()?;
    if classifier.config().in_channels != channels {
        bail!(
            "--classifier: {} takes {}-channel images but the model makes {channels}-channel ones",
            dir.display(),
            classifier.config().in_channels
        );
    }
    let batch = args.batch_size as i64;
    // The classifier's stored statistics describe its own dataset's test split; any other data
    // is described afresh from its test split (the images `test` holds).
    let own_data = dataset_short_name(data_name) == info.dataset;
    let stored = if own_data {
        load_reference_stats(&dir)?
    } else {
        None
    };
    let reference = match stored {
        Some(stats) => stats,
        None => {
            FeatureStats::from_features(&classifier_features(&classifier, test.pixels(), batch))
        }
    };
    if args.num < 2 {
        bail!("--num: the Fréchet distance needs at least 2 samples");
    }
    let options = args.sampler.options(args.num, Some(args.batch_size))?;
    let bar = diffuse_tensor::progress::progress_bar(0, "sample", "step");
    let samples = pipeline.sample(&options, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let stats = FeatureStats::from_features(&classifier_features(&classifier, &samples, batch));
    let value = frechet_distance(&stats, &reference);
    let reference_data = if own_data {
        (info.dataset.clone(), info.reference_split.clone())
    } else {
        (dataset_short_name(data_name), "test".to_string())
    };
    let report = FidReport::with_reference(
        value,
        &stats,
        &reference,
        classifier.config(),
        &info,
        (&reference_data.0, &reference_data.1),
    );
    let sampling = format!(
        "sampler {}, seed {}",
        pipeline.sampler_description(&options)?,
        args.sampler.seed
    );
    let mut json = serde_json::to_value(&report)?;
    json["sampling"] = sampling.clone().into();
    json["summary"] = format!("{}; samples: {sampling}", report.summary()).into();
    Ok(json)
}

/// `diffuse train classifier`.
#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// Labelled dataset: mnist, fashion-mnist, drums, or a folder with one subfolder per class (images or audio).
    #[arg(long)]
    pub data: String,
    /// Directory to write (config.json, model.safetensors, info.json and, for images, reference_stats.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser steps (default: 2000 for images, 1500 for audio).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Examples per step (default: 128 images, 64 clips).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (default: 3e-3 for images, 2e-3 for audio).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Networks in the ensemble, each from its own initial weights, predicting by their averaged probabilities (default: 1 for images, 1 for audio).
    #[arg(long)]
    pub members: Option<i64>,
    /// Image side (default: the dataset's own). Images only.
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Audio only: the files held out of training, whose accuracy is reported: every (every k-th file) or kits:NAME,NAME (default: drums holds out BJA_Pacific and Audiophob, other data every).
    #[arg(long)]
    pub holdout: Option<String>,
    /// Audio only: leave-kits-out folds over the training kits, each training a fresh classifier (0 skips them).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Audio only: clip length the classifier hears, seconds.
    #[arg(long, default_value_t = 0.512)]
    pub seconds: f64,
    /// Audio only: rate clips are resampled to, Hz (default: the dataset's own, 16000 for drums).
    #[arg(long)]
    pub sample_rate: Option<u32>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn train(args: TrainClassifierArgs) -> Result<()> {
    // The classifier trains in minutes with its own small loop; it is not data-parallel.
    if diffuse_tensor::dist::DistEnv::from_env()?.is_some_and(|e| e.world_size > 1) {
        bail!(
            "train classifier runs as one process; start it without `diffuse launch`/torchrun \
             (WORLD_SIZE is set)"
        );
    }
    let device = parse_device(&args.device).map_err(|e| anyhow!("--device: {e}"))?;
    // Like every other `train`, never write over what a directory holds: a classifier there
    // (the bundled one included) would be replaced by a possibly far worse one.
    if args.out.exists() {
        let empty = args
            .out
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            let what = if args.out.join(INFO_FILE).is_file() {
                "holds a classifier"
            } else {
                "is not an empty folder"
            };
            bail!(
                "--out: {} {what}; refusing to overwrite it (pick a new or empty --out)",
                args.out.display()
            );
        }
    }
    if crate::audio_judge::is_audio_data(&args.data) {
        return crate::audio_judge::train(&args, device);
    }
    if let Some(flag) =
        crate::given::given_among(["holdout", "folds", "seconds", "sample_rate"]).first()
    {
        bail!("{flag}: only for audio data; {} holds images", args.data);
    }
    let dir = ImageDataset::default_datasets_dir();
    let load = |split| {
        ImageDataset::load(&args.data, split, args.resolution, None, &dir)
            .map_err(|e| anyhow!("--data: {e}"))
    };
    let train_set = load(Split::Train)?;
    let test_set = load(Split::Test)?;
    let (Some(labels), Some(classes)) = (train_set.labels(), train_set.num_classes()) else {
        bail!(
            "--data: {} has no class labels to train a classifier on",
            args.data
        );
    };
    let test_labels = test_set
        .labels()
        .ok_or_else(|| anyhow!("--data: the test split of {} has no labels", args.data))?;
    let config = ClassifierConfig {
        in_channels: train_set.channels(),
        resolution: train_set.height(),
        num_classes: classes,
        members: args.members.unwrap_or(1),
        ..ClassifierConfig::default()
    };
    config.validate().map_err(|e| anyhow!("--members: {e}"))?;
    let defaults = ClassifierTrainConfig::default();
    let train_config = ClassifierTrainConfig {
        steps: args.steps.unwrap_or(defaults.steps),
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        lr: args.lr.unwrap_or(defaults.lr),
        seed: args.seed,
        ..defaults
    };
    let vs = tch::nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), &config)?;
    let started = std::time::Instant::now();
    let loss = train_classifier(&model, &vs, train_set.pixels(), labels, &train_config)?;
    let acc = accuracy(&model, test_set.pixels(), test_labels, 256);
    let reference =
        FeatureStats::from_features(&classifier_features(&model, test_set.pixels(), 256));
    let info = ClassifierInfo {
        dataset: dataset_short_name(&args.data),
        train_images: train_set.len() as i64,
        train: train_config,
        train_loss: loss,
        test_images: test_set.len() as i64,
        test_accuracy: acc,
        reference_split: "test".into(),
        ..ClassifierInfo::default()
    };
    save_classifier_dir(&args.out, &model, &vs, &info, Some(&reference))?;
    println!(
        "trained the {} classifier in {:.0} s: test accuracy {:.2}% on {} images; wrote {}",
        info.dataset,
        started.elapsed().as_secs_f64(),
        100.0 * acc,
        test_set.len(),
        args.out.display()
    );
    Ok(())
}
