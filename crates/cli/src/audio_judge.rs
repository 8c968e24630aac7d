//! `diffuse train classifier` on audio data: the drum-class judge (`diffuse_audio::judge`),
//! trained on the training kits, reported on the held-out kits and by leave-kits-out folds over
//! the training kits, and written as a classifier directory that `eval audio` loads
//! (`data/models/drums-classifier` is this command's output on `drums`).

use crate::fid::{dataset_short_name, TrainClassifierArgs};
use anyhow::{anyhow, bail, Result};
use diffuse_audio::data::{AudioDataConfig, AudioDataset, Holdout, Split, DATASET_NAMES};
use diffuse_audio::judge::{
    default_judge_training, judge_network_config, judge_outputs, leave_groups_out_predictions,
    train_judge, AudioJudgeRecord, ClassReport, JudgeAugment, JudgeInput, RECORD_KEY,
};
use diffuse_audio::labels::UNLABELLED;
use diffuse_audio::train::{default_holdout, default_sample_rate};
use diffuse_tensor::classifier::{save_classifier_dir, Classifier, ClassifierInfo};
use std::path::Path;
use tch::{Device, Tensor};

/// Whether `--data` names audio: a bundled audio dataset, or a folder or file of audio.
pub fn is_audio_data(data: &str) -> bool {
    if DATASET_NAMES.contains(&data) {
        return true;
    }
    let path = Path::new(data);
    if path.is_dir() {
        return diffuse_audio::data::audio_files(path).is_ok_and(|f| !f.is_empty());
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    ["wav", "flac", "aif", "aiff"].contains(&ext.as_str())
}

/// The labelled clips of `data` (`[N, 1, L]`, labels `[N]`, groups), unlabelled ones left out.
fn labelled(data: &AudioDataset) -> (Tensor, Tensor, Vec<String>) {
    let labels = data.labels().expect("checked by the caller");
    let keep: Vec<i64> = Vec::<i64>::try_from(labels)
        .expect("labels are a vector")
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != UNLABELLED)
        .map(|(i, _)| i as i64)
        .collect();
    let index = Tensor::from_slice(&keep);
    let groups = keep
        .iter()
        .map(|&i| data.groups()[i as usize].clone())
        .collect();
    (
        data.clips().index_select(0, &index),
        labels.index_select(0, &index),
        groups,
    )
}

/// The judge network with `--members` networks (the default's otherwise).
fn with_members(
    mut network: diffuse_tensor::classifier::ClassifierConfig,
    members: Option<i64>,
) -> Result<diffuse_tensor::classifier::ClassifierConfig> {
    if let Some(k) = members {
        network.members = k;
    }
    network.validate().map_err(|e| anyhow!("--members: {e}"))?;
    Ok(network)
}

pub fn train(args: &TrainClassifierArgs, device: Device) -> Result<()> {
    if crate::given::given("resolution") {
        bail!("--resolution: only for images; {} holds audio", args.data);
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!(
            "--seconds: expected a clip length above 0, got {}",
            args.seconds
        );
    }
    let sample_rate = args
        .sample_rate
        .unwrap_or_else(|| default_sample_rate(&args.data));
    if sample_rate < 4000 {
        bail!("--sample-rate: expected at least 4000 Hz for a spectrogram of drum sounds, got {sample_rate}");
    }
    let holdout = match &args.holdout {
        Some(text) => text
            .parse::<Holdout>()
            .map_err(|e| anyhow!("--holdout: {e}"))?,
        None => default_holdout(&args.data),
    };
    let input = JudgeInput::for_clips(
        sample_rate,
        (args.seconds * sample_rate as f64).round() as usize,
    );
    input.validate().map_err(|e| anyhow!("--seconds: {e}"))?;
    let config = AudioDataConfig {
        sample_rate,
        channels: 1,
        clip_frames: input.clip_frames,
        holdout: holdout.clone(),
        ..AudioDataConfig::default()
    };
    let dir = AudioDataset::default_datasets_dir();
    let load = |split| {
        AudioDataset::load(&args.data, split, &config, &dir).map_err(|e| {
            let message = e.to_string();
            match message.strip_prefix("holdout: ") {
                Some(why) => anyhow!("--holdout: {why}"),
                None => anyhow!("--data: {message}"),
            }
        })
    };
    let train_set = load(Split::Train)?;
    let Some(class_names) = train_set.class_names().map(<[String]>::to_vec) else {
        bail!(
            "--data: {} has no class labels to train a classifier on (drum kits with drumkit.xml, or one subfolder per class)",
            args.data
        );
    };
    let held_set = load(Split::Validation)?;
    let (clips, labels, groups) = labelled(&train_set);
    let (held_clips, held_labels, held_groups) = labelled(&held_set);
    if clips.size()[0] < 2 || held_clips.size()[0] < 1 {
        bail!(
            "--data: {} has {} labelled training clip(s) and {} labelled held-out clip(s); a classifier needs at least 2 and 1",
            args.data,
            clips.size()[0],
            held_clips.size()[0]
        );
    }
    let defaults = default_judge_training();
    let cfg = diffuse_tensor::classifier::ClassifierTrainConfig {
        steps: args.steps.unwrap_or(defaults.steps),
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        lr: args.lr.unwrap_or(defaults.lr),
        seed: args.seed,
        ..defaults
    };
    cfg.validate()
        .map_err(|e| anyhow!("--steps/--batch-size/--lr: {e}"))?;
    let augment = JudgeAugment::default();
    let network = with_members(
        judge_network_config(&input, class_names.len() as i64),
        args.members,
    )?;
    let started = std::time::Instant::now();
    let vs = tch::nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), &network)?;
    let loss = train_judge(&model, &vs, &clips, &labels, &input, &augment, &cfg)?;
    let (logits, _) = judge_outputs(&model, &input, &held_clips, 64);
    let held_out = ClassReport::new(&logits.argmax(-1, false), &held_labels, &class_names);
    println!("held-out kits: {}", held_out.summary());
    // Folds of whole kits say how the judge does on a kit it never heard. When a class lives
    // in one group only (class folders: the groups are the classes), leaving a group out would
    // leave its class out, so the folds are then every k-th clip of each class instead.
    let label_list = Vec::<i64>::try_from(&labels)?;
    let by_kits = (0..class_names.len() as i64).all(|c| {
        let kits: std::collections::BTreeSet<&String> = groups
            .iter()
            .zip(&label_list)
            .filter(|(_, &l)| l == c)
            .map(|(g, _)| g)
            .collect();
        kits.len() != 1
    });
    let fold_groups: Vec<String> = if by_kits {
        groups.clone()
    } else {
        let mut seen = vec![0usize; class_names.len()];
        label_list
            .iter()
            .map(|&l| {
                let k = seen[l as usize];
                seen[l as usize] += 1;
                format!("fold-{}", k % args.folds.max(1))
            })
            .collect()
    };
    let fold_by = if by_kits { "kits" } else { "clips" };
    let leave_kits_out = if args.folds >= 2 {
        let predicted = leave_groups_out_predictions(
            &clips,
            &labels,
            &fold_groups,
            args.folds,
            &network,
            &input,
            &augment,
            &cfg,
            device,
        )
        .map_err(|e| anyhow!("--folds: {e}"))?;
        let report = ClassReport::new(&predicted, &labels, &class_names);
        let what = if by_kits {
            "leave-kits-out"
        } else {
            "k-fold over clips"
        };
        println!("{what} ({} folds): {}", args.folds, report.summary());
        Some(report)
    } else {
        None
    };
    let mut held_out_groups: Vec<String> = held_groups;
    held_out_groups.sort();
    held_out_groups.dedup();
    let record = AudioJudgeRecord {
        input,
        augment,
        held_out_groups,
        held_out: held_out.clone(),
        folds: if leave_kits_out.is_some() {
            args.folds
        } else {
            0
        },
        fold_by: fold_by.into(),
        leave_kits_out,
    };
    let mut extra = serde_json::Map::new();
    extra.insert(RECORD_KEY.into(), serde_json::to_value(&record)?);
    let info = ClassifierInfo {
        dataset: dataset_short_name(&args.data),
        train_images: clips.size()[0],
        train: cfg,
        train_loss: loss,
        test_images: held_out.clips as i64,
        test_accuracy: held_out.accuracy,
        reference_split: "validation".into(),
        class_names,
        extra,
    };
    save_classifier_dir(&args.out, &model, &vs, &info, None)?;
    println!(
        "trained the {} classifier in {:.0} s on {} labelled clips: held-out accuracy {:.1}%; wrote {}",
        info.dataset,
        started.elapsed().as_secs_f64(),
        info.train_images,
        100.0 * held_out.accuracy,
        args.out.display()
    );
    Ok(())
}
