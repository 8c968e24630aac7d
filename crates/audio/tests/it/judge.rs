//! The audio judge and what `eval audio` measures with it: the input is level-free and in range,
//! the augmentation delays exactly, folds keep groups whole, reports count right, a judge learns
//! two synthetic classes and tells them apart on fresh clips, and the judge's report and the
//! log-mel distance put shaped noise between real clips and white noise.

use diffuse_audio::envelope::decay_envelope;
use diffuse_audio::eval::{judge_report, log_mel_report, shaped_noise_like, split_held_out};
use diffuse_audio::judge::{
    default_judge_training, group_folds, judge_network_config, judge_outputs, train_judge,
    AudioJudge, AudioJudgeRecord, ClassReport, JudgeAugment, JudgeInput, RECORD_KEY,
};
use diffuse_tensor::classifier::{save_classifier_dir, Classifier, ClassifierInfo};
use diffuse_tensor::manual_seed;
use tch::{nn, Device, Kind, Tensor};

const RATE: u32 = 8000;
const FRAMES: i64 = 2000;

/// `n` clips of class 0 (a decaying 220 Hz tone) or 1 (a decaying noise burst), with random
/// levels, decays and phases.
fn synthetic(n: i64, class: i64, seed: i64) -> Tensor {
    manual_seed(seed as u64);
    let opts = (Kind::Float, Device::Cpu);
    let t = Tensor::arange(FRAMES, opts).view([1, 1, FRAMES]) / RATE as f64;
    let tau = Tensor::rand([n, 1, 1], opts) * 0.05 + 0.03;
    let level = Tensor::rand([n, 1, 1], opts) * 0.8 + 0.1;
    let envelope = (-&t / tau).exp() * level;
    let body = if class == 0 {
        let phase = Tensor::rand([n, 1, 1], opts) * std::f64::consts::TAU;
        (&t * (2.0 * std::f64::consts::PI * 220.0) + phase).sin()
    } else {
        Tensor::randn([n, 1, FRAMES], opts) * 0.5
    };
    body * envelope
}

#[test]
fn the_judge_input_ignores_the_level_and_stays_in_range() {
    let input = JudgeInput::for_clips(16000, 8192);
    assert_eq!(
        (input.mel.n_fft, input.mel.hop_length, input.mel.n_mels),
        (512, 128, 64)
    );
    assert_eq!(input.frames(), 65);
    let clips = Tensor::randn([3, 1, 8192], (Kind::Float, Device::Cpu)) * 0.3;
    let x = input.prepare(&clips);
    assert_eq!(x.size(), [3, 1, 64, 65]);
    assert!(x.min().double_value(&[]) >= -1.0 && x.max().double_value(&[]) <= 1.0);
    // Each clip's loudest bin maps to 1.
    let peaks = Vec::<f64>::try_from(x.amax([1i64, 2, 3].as_slice(), false)).unwrap();
    assert!(peaks.iter().all(|&p| (p - 1.0).abs() < 1e-6), "{peaks:?}");
    let quieter = input.prepare(&(&clips * 0.05));
    let diff = (&x - &quieter).abs().max().double_value(&[]);
    assert!(
        diff < 1e-3,
        "a 26 dB quieter copy changes the input by {diff}"
    );
    // Shorter clips are padded, longer ones cut, to the same shape.
    assert_eq!(
        input.prepare(&clips.narrow(2, 0, 5000)).size(),
        [3, 1, 64, 65]
    );
    assert_eq!(
        input.prepare(&Tensor::cat(&[&clips, &clips], 2)).size(),
        [3, 1, 64, 65]
    );
}

#[test]
fn the_augmentation_delays_the_onset_exactly_and_keeps_its_bounds() {
    let _guard = crate::rng_lock();
    manual_seed(3);
    let plain = JudgeAugment {
        max_gain_db: 0.0,
        noise_probability: 0.0,
        ..JudgeAugment::default()
    };
    let clips = Tensor::arange(64, (Kind::Float, Device::Cpu)).view([1, 1, 64]) + 1.0;
    let clips = clips.repeat([32, 1, 1]);
    let out = plain.apply(&clips, 10);
    for i in 0..32 {
        let row = Vec::<f32>::try_from(out.get(i).get(0)).unwrap();
        let delay = row.iter().take_while(|&&v| v == 0.0).count();
        assert!(delay <= 10, "delay {delay}");
        for (k, v) in row.iter().enumerate().skip(delay) {
            assert_eq!(*v, (k - delay + 1) as f32, "clip {i} frame {k}");
        }
    }
    // Gain stays within its range; noise below the peak by at least 30 dB.
    let gain_only = JudgeAugment {
        max_gain_db: 6.0,
        noise_probability: 0.0,
        ..JudgeAugment::default()
    };
    let ratio = gain_only.apply(&clips, 0) / &clips;
    let (lo, hi) = (ratio.min().double_value(&[]), ratio.max().double_value(&[]));
    assert!(lo >= 0.5 && hi <= 2.0 && hi > lo, "{lo} {hi}");
    let noisy = JudgeAugment {
        max_gain_db: 0.0,
        noise_probability: 1.0,
        ..JudgeAugment::default()
    };
    let silence_then_hit = Tensor::zeros([8, 1, 4000], (Kind::Float, Device::Cpu));
    let _ = silence_then_hit.narrow(2, 2000, 1).fill_(1.0);
    let added = noisy.apply(&silence_then_hit, 0) - &silence_then_hit;
    let rms = added.square().mean(Kind::Float).sqrt().double_value(&[]);
    assert!(
        rms > 0.0 && rms < 10f64.powf(-30.0 / 20.0),
        "noise rms {rms}"
    );
}

#[test]
fn folds_keep_groups_whole_and_balance_their_clips() {
    let groups: Vec<String> = ["a", "a", "a", "a", "b", "b", "c", "c", "d", "e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let fold = group_folds(&groups, 3);
    for (g, f) in groups.iter().zip(&fold) {
        let same: Vec<usize> = groups
            .iter()
            .zip(&fold)
            .filter(|(h, _)| *h == g)
            .map(|(_, &f)| f)
            .collect();
        assert!(same.iter().all(|x| x == f), "group {g} split: {fold:?}");
    }
    let mut load = [0; 3];
    for f in &fold {
        load[*f] += 1;
    }
    // a (4) alone; b, c (2 each) and d, e (1 each) share the other two: 4, 3, 3.
    load.sort();
    assert_eq!(load, [3, 3, 4], "{fold:?}");
}

#[test]
fn a_class_report_counts_its_confusions() {
    let names: Vec<String> = ["kick", "snare", "other"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let labels = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1]);
    let predicted = Tensor::from_slice(&[0i64, 0, 0, 2, 1, 0]);
    let r = ClassReport::new(&predicted, &labels, &names);
    assert_eq!(
        r.confusion,
        vec![vec![3, 0, 1], vec![1, 1, 0], vec![0, 0, 0]]
    );
    assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
    // Balanced over the two classes with clips: (3/4 + 1/2) / 2.
    assert!((r.balanced_accuracy - 0.625).abs() < 1e-12);
    assert_eq!(r.per_class[2].accuracy, None);
    assert!(r.summary().contains("kick 75% of 4"), "{}", r.summary());
}

#[test]
fn shaped_noise_keeps_the_envelope_and_sits_between_real_clips_and_white_noise() {
    let _guard = crate::rng_lock();
    let real = Tensor::cat(&[synthetic(6, 0, 1), synthetic(6, 1, 2)], 0);
    let shaped = shaped_noise_like(&real, 12, RATE);
    assert_eq!(shaped.size(), [12, 1, FRAMES]);
    let a = decay_envelope(&real, 8).unwrap();
    let b = decay_envelope(&shaped, 8).unwrap();
    // Over the first half, where the clips are well above any floor, levels agree within 3 dB.
    let gap = (a.narrow(1, 0, 4) - b.narrow(1, 0, 4))
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap < 3.0, "shaped noise misses the envelope by {gap} dB");
    let (reference, second) = split_held_out(&real).unwrap();
    let report = log_mel_report(&reference, &reference, &second, RATE, None).unwrap();
    assert_eq!(report.generated, 0.0, "a set against itself");
    assert!(
        report.segments == 4 && report.floor_db == -80.0,
        "{report:?}"
    );
    assert!(
        report.held_out < report.shaped_noise && report.shaped_noise < report.white_noise,
        "{report:?}"
    );
}

#[test]
fn a_judge_learns_two_sounds_and_reports_what_it_hears() {
    let _guard = crate::rng_lock();
    let train = Tensor::cat(&[synthetic(24, 0, 10), synthetic(24, 1, 11)], 0);
    let labels = Tensor::cat(
        &[
            Tensor::zeros([24], (Kind::Int64, Device::Cpu)),
            Tensor::ones([24], (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    let input = JudgeInput::for_clips(RATE, FRAMES as usize);
    input.validate().unwrap();
    let augment = JudgeAugment::default();
    let network = judge_network_config(&input, 2);
    let cfg = diffuse_tensor::classifier::ClassifierTrainConfig {
        steps: 60,
        batch_size: 16,
        warmup_steps: 10,
        ..default_judge_training()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Classifier::new(&vs.root(), &network).unwrap();
    train_judge(&model, &vs, &train, &labels, &input, &augment, &cfg).unwrap();
    let fresh = Tensor::cat(&[synthetic(8, 0, 20), synthetic(8, 1, 21)], 0);
    let fresh_labels = Tensor::cat(
        &[
            Tensor::zeros([8], (Kind::Int64, Device::Cpu)),
            Tensor::ones([8], (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    let (logits, features) = judge_outputs(&model, &input, &fresh, 5);
    assert_eq!(features.size(), [16, 128]);
    let names = vec!["tone".to_string(), "burst".to_string()];
    let report = ClassReport::new(&logits.argmax(-1, false), &fresh_labels, &names);
    assert!(report.accuracy >= 0.9, "{}", report.summary());

    // Through a directory, as eval audio loads it.
    let dir = tempfile::tempdir().unwrap();
    let record = AudioJudgeRecord {
        input: input.clone(),
        augment,
        held_out_groups: vec![],
        held_out: report,
        folds: 0,
        fold_by: "kits".into(),
        leave_kits_out: None,
    };
    let mut info = ClassifierInfo {
        dataset: "synthetic".into(),
        class_names: names,
        ..ClassifierInfo::default()
    };
    info.extra
        .insert(RECORD_KEY.into(), serde_json::to_value(&record).unwrap());
    save_classifier_dir(dir.path(), &model, &vs, &info, None).unwrap();
    let judge = AudioJudge::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(judge.record, record);

    // "Generated" clips asked for the tone are the tone 8 times and the burst 4 times: the
    // judge hears 8 of 12 as requested; the real clips are heard as labelled.
    let generated = Tensor::cat(&[synthetic(8, 0, 30), synthetic(4, 1, 31)], 0);
    let requested = Tensor::zeros([12], (Kind::Int64, Device::Cpu));
    let (reference, second) = split_held_out(&fresh).unwrap();
    let real_labels = Tensor::cat(
        &[
            fresh_labels.index_select(
                0,
                &Tensor::arange_start_step(0, 16, 2, (Kind::Int64, Device::Cpu)),
            ),
            fresh_labels.index_select(
                0,
                &Tensor::arange_start_step(1, 16, 2, (Kind::Int64, Device::Cpu)),
            ),
        ],
        0,
    );
    let r = judge_report(
        &judge,
        &generated,
        Some(&requested),
        &reference,
        &second,
        &real_labels,
        RATE,
        0,
    )
    .unwrap();
    let c = r.conditional.as_ref().unwrap();
    assert_eq!(c.per_class.len(), 1);
    assert_eq!(c.per_class[0].clips, 12);
    let heard = c.confusion[0][0];
    assert_eq!(c.confusion[0].iter().sum::<u64>(), 12);
    assert!((7..=9).contains(&heard), "{r:?}");
    assert!(
        (c.mean_accuracy - heard as f64 / 12.0).abs() < 1e-9,
        "{r:?}"
    );
    assert!(c.real_mean_accuracy.unwrap() >= 0.85, "{r:?}");
    assert!((c.chance - 0.5).abs() < 1e-12);
    assert!((r.generated_mix.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(
        (r.generated_mix[0] - heard as f64 / 12.0).abs() < 1e-9,
        "{r:?}"
    );
    assert!(r.kid_held_out.mean.is_finite() && r.kid_generated.mean.is_finite());
    // Real clips of the same two sounds are closer to the reference than noise shaped like them.
    assert!(r.kid_held_out.mean < r.kid_shaped_noise.mean, "{r:?}");
    // An image classifier is no audio judge.
    let image = tempfile::tempdir().unwrap();
    let plain = ClassifierInfo::default();
    save_classifier_dir(image.path(), &model, &vs, &plain, None).unwrap();
    let err = AudioJudge::load(image.path(), Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("not an audio judge"), "{err}");
}
