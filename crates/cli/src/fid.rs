//! The classifier-feature quality report: `diffuse train classifier` makes the small classifier
//! (shipped in `data/models/<dataset>-classifier`) and `diffuse eval image --metric fid` uses it
//! to put the Fréchet distance of generated images between its floor (real training images) and
//! bound (noise), beside precision and recall, the class mix and, for class-conditional models,
//! the share of images in the requested class (`diffuse_image::fid::quality_report`).

use crate::class_key;
use crate::image::EvalImageArgs;
use crate::run_dir::check_dir_target;
use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_image::classifier::{
    accuracy, load_classifier_dir, load_reference_stats, save_classifier_dir, train_classifier,
    Classifier, ClassifierConfig, ClassifierInfo, ClassifierTrainConfig, INFO_FILE,
};
use diffuse_image::data::{ImageDataset, Split};
use diffuse_image::fid::{
    classifier_features, quality_report, FeatureStats, QualityInputs, QualityReport,
};
use diffuse_image::pipeline::{ImagePipeline, SampleOptions};
use diffuse_tensor::parse_device;
use diffuse_tensor::plot::{save_confusion_matrix, save_count_histograms, HistogramPanel};
use diffuse_tensor::quality::NEIGHBOURS;
use std::path::{Path, PathBuf};
use tch::Tensor;

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

/// The checks `eval image --metric fid` makes before any work: the sampler, `--num`, the
/// `--plots` folder, and the classes to ask a class-conditional model for (returned: `--class`'s
/// one, `--classes`, or every class; `None` for an unconditional model).
pub fn check_fid_args(pipeline: &ImagePipeline, args: &EvalImageArgs) -> Result<Option<Vec<i64>>> {
    let space = pipeline.class_space();
    let sampler = &args.sampler;
    let requested = if !space.class_embedded {
        if args.classes.is_some() {
            bail!("--classes: this model is not class-conditioned");
        }
        // --class and --guidance on a model without classes, refused as sampling would.
        space.guided(
            sampler.class,
            sampler.guidance,
            sampler.guidance_rescale,
            1,
            tch::Device::Cpu,
        )?;
        None
    } else {
        let (list, flag): (Vec<i64>, &str) = match (sampler.class, &args.classes) {
            (Some(_), Some(_)) => bail!("--classes: give either --class or --classes"),
            (Some(c), None) => (vec![c], "--class:"),
            (None, Some(text)) => (
                text.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        space.resolve(t).map_err(|e| {
                            anyhow!("{}", e.to_string().replace("--class:", "--classes:"))
                        })
                    })
                    .collect::<Result<_>>()?,
                "--classes:",
            ),
            (None, None) => match space.num_classes {
                Some(n) => ((0..n).collect(), "--classes:"),
                None => bail!(
                    "--classes: the model does not record how many classes it has; name the \
                     classes to ask for"
                ),
            },
        };
        if list.is_empty() {
            bail!("--classes: names no class");
        }
        for &c in &list {
            space
                .guided(
                    Some(c),
                    sampler.guidance,
                    sampler.guidance_rescale,
                    1,
                    tch::Device::Cpu,
                )
                .map_err(|e| anyhow!("{}", e.to_string().replace("--class:", flag)))?;
        }
        if args.num < list.len() {
            bail!(
                "--num: {} images cannot cover the {} requested classes; give at least {}",
                args.num,
                list.len(),
                list.len()
            );
        }
        Some(list)
    };
    let mut options = sampler.options(args.num, Some(args.batch_size))?;
    options.class = requested.as_ref().and_then(|r| r.first().copied());
    pipeline.check_sample_options(&options)?;
    let least = NEIGHBOURS as usize + 1;
    if args.num < least {
        bail!(
            "--num: the quality report needs at least {least} images (precision and recall use \
             {NEIGHBOURS} nearest neighbours), got {}",
            args.num
        );
    }
    if let Some(plots) = &args.plots {
        check_dir_target(plots, "--plots")?;
    }
    Ok(requested)
}

/// `eval image --metric fid`: the quality report ([`quality_report`]) of `--num` generated
/// images, shared out evenly over `requested` classes for a class-conditional model, as JSON
/// with its text in `summary`; `--plots` pictures written.
pub fn eval_fid(
    pipeline: &ImagePipeline,
    data_name: &str,
    test: &ImageDataset,
    requested: Option<&[i64]>,
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
    let (channels, h, _) = pipeline.image_shape()?;
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
    // The classifier's class names: its own record's, else the data's when they are as many.
    let k = classifier.config().num_classes;
    let names: Vec<String> = if info.class_names.len() as i64 == k {
        info.class_names.clone()
    } else {
        match test.class_names() {
            Some(n) if own_data && n.len() as i64 == k => n.to_vec(),
            _ => (0..k).map(|c| c.to_string()).collect(),
        }
    };
    let classifier_class = |name: &str| {
        names
            .iter()
            .position(|n| class_key(n) == class_key(name))
            .map(|p| p as i64)
    };
    // The floor's images: the training split, the reference's held-out counterpart.
    let train = ImageDataset::load(
        data_name,
        Split::Train,
        Some(h as u32),
        Some(channels as u32),
        &ImageDataset::default_datasets_dir(),
    )
    .map_err(|e| anyhow!("--data: {e} (the Fréchet floor needs the training split)"))?;
    let train_held_out = !(train.len() == test.len() && train.pixels().equal(test.pixels()));
    // Test labels in the classifier's classes (-1: a class it does not know).
    let test_labels = test.labels().map(|labels| {
        let lookup: Vec<i64> = (0..test.num_classes().unwrap_or(0))
            .map(|l| {
                let name = test
                    .class_names()
                    .and_then(|n| n.get(l as usize).cloned())
                    .unwrap_or_else(|| l.to_string());
                classifier_class(&name).unwrap_or(-1)
            })
            .collect();
        Tensor::from_slice(&lookup).index_select(0, labels)
    });
    let space = pipeline.class_space();
    let model_class_name = |c: i64| -> String {
        space
            .class_names
            .as_ref()
            .and_then(|n| n.get(c as usize).cloned())
            .unwrap_or_else(|| c.to_string())
    };
    let mut options = args.sampler.options(args.num, Some(args.batch_size))?;
    let sample = |options: &SampleOptions, what: &str| -> Result<Tensor> {
        let bar = diffuse_tensor::progress::progress_bar(0, what, "step");
        let images = pipeline.sample(options, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        Ok(images.to_device(tch::Device::Cpu))
    };
    let (samples, requested_judge) = match requested {
        None => (sample(&options, "sample")?, None),
        Some(classes) => {
            // The images shared out evenly, each class from its own seed (as eval audio does).
            let map: Vec<i64> = classes
                .iter()
                .map(|&c| {
                    let name = model_class_name(c);
                    classifier_class(&name).ok_or_else(|| {
                        anyhow!(
                            "--classifier: the classifier does not know the class '{name}' (its classes: {})",
                            names.join(", ")
                        )
                    })
                })
                .collect::<Result<_>>()?;
            let (each, extra) = (args.num / classes.len(), args.num % classes.len());
            let mut parts = Vec::new();
            let mut asked = Vec::new();
            for (i, &c) in classes.iter().enumerate() {
                let n = each + usize::from(i < extra);
                options.num = n;
                options.class = Some(c);
                options.seed = Some(args.sampler.seed.wrapping_add(i as u64));
                parts.push(sample(
                    &options,
                    &format!("sample {}", model_class_name(c)),
                )?);
                asked.extend(std::iter::repeat_n(map[i], n));
            }
            (Tensor::cat(&parts, 0), Some(Tensor::from_slice(&asked)))
        }
    };
    let reference_data = if own_data {
        (info.dataset.clone(), info.reference_split.clone())
    } else {
        (dataset_short_name(data_name), "test".to_string())
    };
    let report = quality_report(
        &classifier,
        &info,
        &QualityInputs {
            generated: &samples,
            requested: requested_judge.as_ref(),
            reference: &reference,
            reference_data: (&reference_data.0, &reference_data.1),
            train: train.pixels(),
            train_held_out,
            test: test.pixels(),
            test_labels: test_labels.as_ref(),
            class_names: &names,
            seed: args.sampler.seed,
            batch_size: batch,
        },
    )?;
    if let Some(plots) = &args.plots {
        write_plots(&report, plots)?;
    }
    let sampling = format!(
        "sampler {}, seed {}",
        pipeline.sampler_description(&options)?,
        args.sampler.seed
    );
    let mut json = serde_json::to_value(&report)?;
    json["sampling"] = sampling.clone().into();
    if let Some(classes) = requested {
        json["requested_classes"] = classes
            .iter()
            .map(|&c| model_class_name(c))
            .collect::<Vec<_>>()
            .into();
        json["guidance"] = args.sampler.guidance.into();
    }
    json["summary"] = format!(
        "{}\nprotocol: {}; {}; samples: {sampling}",
        report.summary(),
        report.fid.protocol,
        report.method()
    )
    .into();
    Ok(json)
}

/// `--plots`: classes.png (the class histogram of generated and test images) and, for a
/// class-conditional model, confusion.png (requested x predicted).
fn write_plots(report: &QualityReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow!("--plots: cannot create {}: {e}", dir.display()))?;
    // The count-histogram picture draws values; each class index repeated as often as images
    // went to it (the shares times the set's size are whole numbers) gives its bars.
    let values = |mix: &[f64], n: i64| -> Vec<f64> {
        mix.iter()
            .enumerate()
            .flat_map(|(c, s)| std::iter::repeat_n(c as f64, (s * n as f64).round() as usize))
            .collect()
    };
    let panel = HistogramPanel {
        title: format!(
            "classes {}",
            report
                .classes
                .iter()
                .enumerate()
                .map(|(i, n)| if *n == i.to_string() {
                    n.clone()
                } else {
                    format!("{i} {n}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        reference: values(&report.test_mix, report.test_images),
        generated: values(&report.generated_mix, report.fid.samples),
    };
    save_count_histograms(
        &[panel],
        "images per class (data: test split)",
        &dir.join("classes.png"),
    )?;
    if let Some(c) = &report.conditional {
        let rows: Vec<String> = c.per_class.iter().map(|p| p.class.clone()).collect();
        let title = match c.real_mean_accuracy {
            Some(real) => format!(
                "in the requested class: {:.0}% (test images {:.0}%)",
                100.0 * c.mean_accuracy,
                100.0 * real
            ),
            None => format!("in the requested class: {:.0}%", 100.0 * c.mean_accuracy),
        };
        save_confusion_matrix(
            &c.confusion,
            &rows,
            &report.classes,
            &title,
            &dir.join("confusion.png"),
        )?;
    }
    Ok(())
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
