//! Audio datasets from the committed speech-digit fixture, the FLAC/AIFF drum fixtures and files
//! written to temporary folders: shapes, normalisation, the deterministic split, channel and rate
//! conversion, and the errors for folders without audio and for broken files.

use super::wav::{fixture, speech_digits_dir};
use diffuse_audio::clip::AudioClip;
use diffuse_audio::data::{AudioDataConfig, AudioDataset, Holdout, Normalize, Split, Trim};
use diffuse_audio::wav::{read_audio, write_wav, SampleFormat};
use std::path::Path;
use tch::{Kind, Tensor};

fn digits_config() -> AudioDataConfig {
    AudioDataConfig {
        sample_rate: 8000,
        channels: 1,
        clip_frames: 8000,
        normalize: Normalize::Peak(0.9),
        trim_silence: Some(Trim::Absolute(0.01)),
        validation_fraction: 0.2,
        holdout: Holdout::EveryKth,
    }
}

fn load(
    spec: &Path,
    split: Split,
    config: &AudioDataConfig,
) -> diffuse_tensor::Result<AudioDataset> {
    let nowhere = tempfile::tempdir().unwrap();
    AudioDataset::load(spec.to_str().unwrap(), split, config, nowhere.path())
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn speech_digits_load_with_shapes_names_and_peak_normalisation() {
    let data = load(&speech_digits_dir(), Split::All, &digits_config()).unwrap();
    assert_eq!(data.clips().size(), [10, 1, 8000]);
    assert_eq!(data.clips().kind(), Kind::Float);
    assert_eq!(data.sample_rate(), 8000);
    let names: Vec<String> = (0..10).map(|i| format!("{i}.wav")).collect();
    assert_eq!(data.names(), names.as_slice());
    for i in 0..10 {
        let peak = max_abs(&data.clips().get(i));
        assert!((peak - 0.9).abs() < 1e-6, "clip {i} peaks at {peak}");
        // Leading silence trimmed: the first sample above the threshold (0.01 before the gain
        // of the peak normalisation) comes right after the 5 ms (40 frames) margin.
        let raw = read_audio(&speech_digits_dir().join(format!("{i}.wav"))).unwrap();
        let threshold = 0.01 * 0.9 / raw.peak();
        let clip = data.clip(i as usize);
        let onset = clip.channels[0].iter().position(|x| x.abs() > threshold);
        let raw_onset = raw.channels[0].iter().position(|x| x.abs() > 0.01).unwrap();
        assert_eq!(onset, Some(raw_onset.min(40)), "clip {i}");
    }
    let b = data.batch(&[3, 3, 0]);
    assert_eq!(b.size(), [3, 1, 8000]);
    assert!(b.get(0).equal(&data.clips().get(3)));
    println!(
        "speech digits: {:?} at {} Hz",
        data.clips().size(),
        data.sample_rate()
    );
}

#[test]
fn split_is_deterministic_disjoint_and_complete() {
    let config = digits_config();
    let dir = speech_digits_dir();
    let train = load(&dir, Split::Train, &config).unwrap();
    let val = load(&dir, Split::Validation, &config).unwrap();
    let all = load(&dir, Split::All, &config).unwrap();
    // 10 files x 0.2 = 2 held out, at the middle of each half of the sorted list.
    assert_eq!(val.names(), ["2.wav", "7.wav"]);
    assert_eq!(train.len(), 8);
    for name in val.names() {
        assert!(!train.names().contains(name));
    }
    let mut union: Vec<String> = train.names().iter().chain(val.names()).cloned().collect();
    union.sort();
    assert_eq!(union, all.names());
    let again = load(&dir, Split::Validation, &config).unwrap();
    assert!(again.clips().equal(val.clips()), "loading is deterministic");
    assert!(val.clips().get(0).equal(&all.clips().get(2)));
}

#[test]
fn resampling_changes_length_as_expected() {
    let config = AudioDataConfig {
        sample_rate: 16000,
        clip_frames: 16000,
        normalize: Normalize::None,
        trim_silence: None,
        ..digits_config()
    };
    let file = speech_digits_dir().join("0.wav");
    let data = load(&file, Split::All, &config).unwrap();
    assert_eq!(data.clips().size(), [1, 1, 16000]);
    assert_eq!(data.names(), ["0.wav"]);
    let original = read_audio(&file).unwrap();
    let resampled = original.resample(16000).unwrap();
    assert_eq!(resampled.frames(), 2 * original.frames());
    let expected = resampled.fit_length(16000).to_tensor();
    assert!(data.clips().get(0).allclose(&expected, 0.0, 0.0, false));
    // Zero padding after the 2 x 6998 resampled frames.
    let tail = data.clips().get(0).narrow(1, 2 * 6998, 16000 - 2 * 6998);
    assert_eq!(max_abs(&tail), 0.0);
    // A single file has no validation split.
    let e = load(&file, Split::Validation, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no held-out clips"), "{e}");
}

#[test]
fn channels_are_mixed_down_and_copied_up() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4000;
    let left: Vec<f32> = (0..n).map(|i| 0.4 * (i as f32 * 0.05).sin()).collect();
    let right: Vec<f32> = (0..n).map(|i| 0.2 * (i as f32 * 0.11).cos()).collect();
    let stereo = AudioClip::new(8000, vec![left.clone(), right.clone()]).unwrap();
    write_wav(
        &dir.path().join("stereo.wav"),
        &stereo,
        SampleFormat::Float32,
    )
    .unwrap();
    let config = AudioDataConfig {
        sample_rate: 8000,
        channels: 1,
        clip_frames: n,
        normalize: Normalize::None,
        trim_silence: None,
        validation_fraction: 0.0,
        holdout: Holdout::EveryKth,
    };
    let mono = load(dir.path(), Split::All, &config).unwrap();
    assert_eq!(mono.clips().size(), [1, 1, n as i64]);
    let expected: Vec<f32> = left
        .iter()
        .zip(&right)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let expected = Tensor::from_slice(&expected).view([1, n as i64]);
    assert!(mono.clips().get(0).allclose(&expected, 1e-7, 1e-7, false));

    let two = AudioDataConfig {
        channels: 2,
        ..config
    };
    let digits = load(&speech_digits_dir(), Split::Train, &two).unwrap();
    assert_eq!(digits.clips().size()[1], 2);
    assert!(digits
        .clips()
        .select(1, 0)
        .equal(&digits.clips().select(1, 1)));
}

#[test]
fn flac_and_aiff_drums_load_together_and_other_files_are_skipped() {
    // tests/fixtures holds one FLAC (48 kHz mono), one AIFF (44.1 kHz stereo) and a README.
    let config = AudioDataConfig {
        sample_rate: 22050,
        channels: 2,
        clip_frames: 4096,
        normalize: Normalize::RmsDb(-20.0),
        trim_silence: Some(Trim::Absolute(0.01)),
        validation_fraction: 0.1,
        holdout: Holdout::EveryKth,
    };
    let dir = fixture("");
    let data = load(&dir, Split::Train, &config).unwrap();
    assert_eq!(data.clips().size(), [2, 2, 4096]);
    assert_eq!(
        data.names(),
        ["bja-pacific-HH_01.aiff", "rumpf-beats_06-15.flac"]
    );
    for (i, name) in data.names().iter().enumerate() {
        // The documented pipeline, step by step, gives the same clip.
        let raw = read_audio(&dir.join(name)).unwrap();
        let prepared = raw
            .to_channels(2)
            .unwrap()
            .resample(22050)
            .unwrap()
            .trim_leading_silence(0.01);
        let loud = prepared.normalize_rms_db(-20.0);
        let rms_db = 20.0 * loud.rms().log10();
        assert!((rms_db + 20.0).abs() < 1e-3 || (loud.peak() - 1.0).abs() < 1e-6);
        assert_eq!(data.clip(i), loud.fit_length(4096));
        println!(
            "{name}: {} Hz {} ch -> 22050 Hz 2 ch, {} frames after trimming, RMS {rms_db:.2} dBFS, peak {:.3}",
            raw.sample_rate,
            raw.num_channels(),
            loud.frames(),
            loud.peak()
        );
    }
}

#[test]
fn errors_name_the_folder_or_the_file() {
    let config = digits_config();

    let empty = tempfile::tempdir().unwrap();
    let e = load(empty.path(), Split::All, &config)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no audio files") && e.contains(&empty.path().display().to_string()),
        "{e}"
    );

    let no_audio = tempfile::tempdir().unwrap();
    std::fs::write(no_audio.path().join("README.txt"), "hello").unwrap();
    std::fs::create_dir(no_audio.path().join("sub")).unwrap();
    std::fs::write(no_audio.path().join("sub/picture.png"), [0u8; 10]).unwrap();
    let e = load(no_audio.path(), Split::All, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no audio files"), "{e}");

    let broken = tempfile::tempdir().unwrap();
    for i in 0..4 {
        std::fs::copy(
            speech_digits_dir().join(format!("{i}.wav")),
            broken.path().join(format!("{i}.wav")),
        )
        .unwrap();
    }
    std::fs::create_dir(broken.path().join("more")).unwrap();
    let bad = broken.path().join("more/bad.wav");
    std::fs::write(&bad, "not audio at all").unwrap();
    let e = load(broken.path(), Split::All, &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&bad.display().to_string()), "{e}");
    println!("{e}");

    let few = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::copy(
            speech_digits_dir().join(format!("{i}.wav")),
            few.path().join(format!("{i}.wav")),
        )
        .unwrap();
    }
    assert_eq!(load(few.path(), Split::Train, &config).unwrap().len(), 3);
    let e = load(few.path(), Split::Validation, &config)
        .unwrap_err()
        .to_string();
    // It says what would help, not to pick a split no command offers.
    assert!(
        e.contains("no held-out clips") && e.contains("at least 5"),
        "{e}"
    );
    assert!(!e.contains("use the train split"), "{e}");
    let none_held = AudioDataConfig {
        validation_fraction: 0.0,
        ..config.clone()
    };
    let e = load(&speech_digits_dir(), Split::Validation, &none_held)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no held-out clips") && e.contains("--val-fraction"),
        "{e}"
    );

    let datasets = tempfile::tempdir().unwrap();
    let e = AudioDataset::load("speech", Split::Train, &config, datasets.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cargo xtask setup --data speech"), "{e}");
    let e = AudioDataset::load("no/such/folder", Split::Train, &config, datasets.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/such/folder"), "{e}");

    let bad_config = AudioDataConfig {
        clip_frames: 0,
        ..config
    };
    let e = load(&speech_digits_dir(), Split::All, &bad_config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip_frames"), "{e}");
}

#[test]
fn in_memory_datasets_check_their_shape() {
    let clips = Tensor::zeros([3, 1, 100], (Kind::Double, tch::Device::Cpu));
    let data = AudioDataset::from_clips(clips, 16000, vec![]);
    assert_eq!(
        (data.len(), data.channels(), data.clip_frames()),
        (3, 1, 100)
    );
    assert_eq!(data.clips().kind(), Kind::Float);
    assert_eq!(data.names()[2], "clip-00002");
    let flat = std::panic::catch_unwind(|| {
        AudioDataset::from_clips(
            Tensor::zeros([3, 100], (Kind::Float, tch::Device::Cpu)),
            16000,
            vec![],
        )
    });
    assert!(flat.is_err(), "[N, L] is refused");
    let out_of_range = std::panic::catch_unwind(|| data.batch(&[3]));
    assert!(out_of_range.is_err());
}

#[test]
fn held_out_warnings_say_how_many_files_eval_needs() {
    use diffuse_audio::data::{files_for_held_out, split_indices};
    use diffuse_audio::eval::MIN_HELD_OUT_CLIPS;
    use diffuse_audio::train::held_out_warning;
    for fraction in [0.05, 0.1, 0.2, 0.4, 0.5, 0.9, 0.99] {
        let needed = files_for_held_out(fraction, MIN_HELD_OUT_CLIPS).unwrap();
        let held = |n| split_indices(n, fraction, Split::Validation).len();
        assert!(held(needed) >= MIN_HELD_OUT_CLIPS, "{fraction}: {needed}");
        assert!(
            held(needed - 1) < MIN_HELD_OUT_CLIPS,
            "{fraction}: {needed} is not the least"
        );
        assert!(held_out_warning(needed, fraction).is_none());
        let w = held_out_warning(needed - 1, fraction).unwrap();
        assert!(w.contains(&format!("at least {needed} audio files")), "{w}");
    }
    assert_eq!(files_for_held_out(0.5, MIN_HELD_OUT_CLIPS), Some(7));
    let two = held_out_warning(2, 0.5).unwrap();
    assert!(
        two.contains("0 of 2") && two.contains("at least 7"),
        "{two}"
    );
    let none = held_out_warning(100, 0.0).unwrap();
    assert!(none.contains("--val-fraction above 0"), "{none}");
}

#[test]
fn an_all_silent_training_set_is_warned_about_once() {
    use diffuse_audio::train::silence_warning;
    let names = |n: usize| (0..n).map(|i| format!("{i}.wav")).collect::<Vec<_>>();
    let silent = AudioDataset::from_clips(
        Tensor::zeros([3, 1, 100], (Kind::Float, tch::Device::Cpu)),
        8000,
        names(3),
    );
    let w = silence_warning(&silent).unwrap();
    assert!(
        w.contains("all 3 training clips are silent") && w.contains("learn silence"),
        "{w}"
    );
    let mut samples = vec![0f32; 300];
    samples[250] = 0.1;
    let one_sound = AudioDataset::from_clips(
        Tensor::from_slice(&samples).view([3, 1, 100]),
        8000,
        names(3),
    );
    assert!(silence_warning(&one_sound).is_none());
}

#[test]
fn normalisation_errors_name_the_field_only_in_json() {
    let e = "peak:7".parse::<Normalize>().unwrap_err().to_string();
    assert!(!e.starts_with("normalize"), "{e}");
    assert!(e.contains("(0, 1]"), "{e}");
    let e = "rms:loud".parse::<Normalize>().unwrap_err().to_string();
    assert!(!e.starts_with("normalize") && e.contains("'loud'"), "{e}");
    let e = serde_json::from_str::<Normalize>("\"peak:7\"")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("normalize: "), "{e}");
}

/// A 8 kHz mono 16-bit WAV at `path` (folders made): a decaying 200 Hz tone peaking at `peak`
/// (all zeros for 0).
fn hit(path: &Path, peak: f32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let samples: Vec<f32> = (0..2000)
        .map(|i| {
            let t = i as f32 / 8000.0;
            peak * (-t * 20.0).exp() * (2.0 * std::f32::consts::PI * 200.0 * t).sin()
        })
        .collect();
    let clip = AudioClip::new(8000, vec![samples]).unwrap();
    write_wav(path, &clip, SampleFormat::Int16).unwrap();
}

fn kit_config() -> AudioDataConfig {
    AudioDataConfig {
        sample_rate: 8000,
        channels: 1,
        clip_frames: 1000,
        validation_fraction: 0.0,
        ..AudioDataConfig::default()
    }
}

/// Two small Hydrogen kits: KitA with a silent `emptySample.wav`, a placeholder-only file, a
/// file shared by two instruments and an `other` instrument; KitB with a file no instrument
/// plays, named after its class.
fn two_kits() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let instrument = |name: &str, files: &[&str]| {
        let layers: String = files
            .iter()
            .map(|f| format!("<layer><filename>{f}</filename><min>0</min></layer>"))
            .collect();
        format!("<instrument><id>0</id><name>{name}</name>{layers}</instrument>")
    };
    let kit = |name: &str, instruments: &[String]| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<drumkit_info \
             xmlns=\"http://www.hydrogen-music.org/drumkit\"><name>{name}</name>\
             <info>&lt;p>Kick &amp; snare&lt;/p></info><instrumentList>{}</instrumentList>\
             </drumkit_info>",
            instruments.concat()
        )
    };
    std::fs::create_dir_all(root.join("KitA")).unwrap();
    std::fs::write(
        root.join("KitA/drumkit.xml"),
        kit(
            "Kit A",
            &[
                instrument("Kick", &["kick_1.wav", "kick_2.wav"]),
                instrument("Cowbell", &["cowbell.wav"]),
                instrument("Closed HH", &["hh.wav"]),
                instrument("Pedal HH", &["hh.wav"]),
                instrument("17", &["beats_01.wav"]),
                instrument("18", &["emptySample.wav"]),
            ],
        ),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("KitB")).unwrap();
    std::fs::write(
        root.join("KitB/drumkit.xml"),
        kit(
            "Kit B",
            &[
                instrument("Snare &amp; Rim", &["sd_1.wav"]),
                instrument("Ride (Custom, 20\")", &["ride.wav"]),
            ],
        ),
    )
    .unwrap();
    for (file, peak) in [
        ("KitA/kick_1.wav", 0.9),
        ("KitA/kick_2.wav", 0.3),
        ("KitA/cowbell.wav", 0.5),
        ("KitA/hh.wav", 0.5),
        ("KitA/beats_01.wav", 0.5),
        ("KitA/emptySample.wav", 0.0),
        ("KitB/sd_1.wav", 0.7),
        ("KitB/ride.wav", 0.2),
        ("KitB/TomLow-0.wav", 0.6),
    ] {
        hit(&root.join(file), peak);
    }
    std::fs::write(root.join("README.txt"), "kits").unwrap();
    dir
}

#[test]
fn hydrogen_kits_give_labels_and_groups_and_silent_files_are_skipped() {
    let kits = two_kits();
    let data = load(kits.path(), Split::All, &kit_config()).unwrap();
    // Sorted relative paths, the silent file gone with its label and group.
    let expected = [
        ("KitA/beats_01.wav", -1, "KitA"),
        ("KitA/cowbell.wav", 5, "KitA"),
        ("KitA/hh.wav", 2, "KitA"),
        ("KitA/kick_1.wav", 0, "KitA"),
        ("KitA/kick_2.wav", 0, "KitA"),
        ("KitB/TomLow-0.wav", 3, "KitB"),
        ("KitB/ride.wav", 4, "KitB"),
        ("KitB/sd_1.wav", 1, "KitB"),
    ];
    assert_eq!(data.len(), expected.len());
    assert_eq!(data.clips().size(), [8, 1, 1000]);
    let labels = Vec::<i64>::try_from(data.labels().unwrap()).unwrap();
    for (i, (name, label, group)) in expected.iter().enumerate() {
        assert_eq!(
            (
                data.names()[i].as_str(),
                labels[i],
                data.groups()[i].as_str()
            ),
            (*name, *label, *group)
        );
    }
    assert_eq!(
        data.class_names().unwrap(),
        diffuse_audio::labels::DRUM_CLASSES
    );
    let counts = data.class_counts().unwrap();
    assert_eq!(counts.unlabelled, 1);
    assert_eq!(
        counts.to_string(),
        "kick 2, snare 1, hi-hat 1, tom 1, cymbal 1, other 1; 1 unlabelled"
    );
    assert_eq!(
        Vec::<i64>::try_from(data.batch_labels(&[3, 0, 3])).unwrap(),
        [0, -1, 0]
    );
    // Every clip kept has sound.
    let peaks = data.clips().abs().amax([1, 2], false);
    assert!(peaks.min().double_value(&[]) > 0.5, "{peaks}");
}

#[test]
fn a_group_holdout_holds_out_whole_kits_and_names_the_known_ones() {
    let kits = two_kits();
    let config = AudioDataConfig {
        holdout: Holdout::Groups(vec!["KitB".into()]),
        ..kit_config()
    };
    let val = load(kits.path(), Split::Validation, &config).unwrap();
    assert_eq!(
        val.names(),
        ["KitB/TomLow-0.wav", "KitB/ride.wav", "KitB/sd_1.wav"]
    );
    assert!(val.groups().iter().all(|g| g == "KitB"));
    let train = load(kits.path(), Split::Train, &config).unwrap();
    assert_eq!(train.len(), 5, "KitA less its silent file");
    assert!(train.groups().iter().all(|g| g == "KitA"));
    // The split is made on the file list: the same with or without the silent file.
    std::fs::remove_file(kits.path().join("KitA/emptySample.wav")).unwrap();
    assert_eq!(
        load(kits.path(), Split::Train, &config).unwrap().names(),
        train.names()
    );

    let unknown = AudioDataConfig {
        holdout: "kits:KitB, KitC".parse().unwrap(),
        ..kit_config()
    };
    let e = load(kits.path(), Split::Train, &unknown)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("holdout: ") && e.contains("'KitC'") && e.contains("KitA, KitB"),
        "{e}"
    );
    let everything = AudioDataConfig {
        holdout: "kits:KitA,KitB".parse().unwrap(),
        ..kit_config()
    };
    let e = load(kits.path(), Split::Train, &everything)
        .unwrap_err()
        .to_string();
    assert!(e.contains("leaving none to train on"), "{e}");
    assert_eq!(
        load(kits.path(), Split::Validation, &everything)
            .unwrap()
            .len(),
        8
    );
    // The string forms.
    assert_eq!("every".parse::<Holdout>().unwrap(), Holdout::EveryKth);
    assert_eq!(
        "kits:BJA_Pacific,Gimme A Hand 1.0"
            .parse::<Holdout>()
            .unwrap(),
        Holdout::Groups(vec!["BJA_Pacific".into(), "Gimme A Hand 1.0".into()])
    );
    for bad in ["kits:", "kits: , ", "some", "classes:a"] {
        assert!(bad.parse::<Holdout>().is_err(), "{bad}");
    }
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains(r#""holdout":{"kits":["KitB"]}"#), "{json}");
    assert_eq!(
        serde_json::from_str::<AudioDataConfig>(&json).unwrap(),
        config
    );
}

#[test]
fn class_folders_label_by_sorted_folder_name_and_an_empty_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (file, peak) in [
        ("snare/a.wav", 0.5),
        ("kick/b.wav", 0.5),
        ("kick/deeper/c.wav", 0.5),
        ("zap/d.wav", 0.5),
    ] {
        hit(&root.join(file), peak);
    }
    let data = load(root, Split::All, &kit_config()).unwrap();
    assert_eq!(
        data.names(),
        [
            "kick/b.wav",
            "kick/deeper/c.wav",
            "snare/a.wav",
            "zap/d.wav"
        ]
    );
    assert_eq!(data.class_names().unwrap(), ["kick", "snare", "zap"]);
    assert_eq!(
        Vec::<i64>::try_from(data.labels().unwrap()).unwrap(),
        [0, 0, 1, 2]
    );
    assert_eq!(data.groups(), ["kick", "kick", "snare", "zap"]);
    assert_eq!(
        data.class_counts().unwrap().to_string(),
        "kick 2, snare 1, zap 1"
    );

    std::fs::create_dir_all(root.join("tom/empty")).unwrap();
    std::fs::write(root.join("tom/notes.txt"), "no audio").unwrap();
    let e = load(root, Split::All, &kit_config())
        .unwrap_err()
        .to_string();
    let tom = root.join("tom").display().to_string();
    assert!(
        e.contains(&tom) && e.contains("class folder without audio files"),
        "{e}"
    );
    // A file at the top makes it no class layout at all: no labels, and no error.
    std::fs::remove_dir_all(root.join("tom")).unwrap();
    hit(&root.join("top.wav"), 0.5);
    let plain = load(root, Split::All, &kit_config()).unwrap();
    assert!(plain.labels().is_none() && plain.class_counts().is_none());
    assert_eq!(plain.groups(), ["kick", "kick", "snare", ".", "zap"]);
    assert_eq!(
        Vec::<i64>::try_from(plain.batch_labels(&[1])).unwrap(),
        [-1]
    );
}

#[test]
fn relative_trimming_follows_the_peak_and_old_absolute_configs_still_load() {
    // A 0.05-peak clip: -40 dB below its peak is 5e-4, so the cut comes at the first sample
    // above that (less the 5 ms margin), not at the absolute 0.01.
    let mut samples = vec![0f32; 400];
    for x in &mut samples[100..200] {
        *x = 4e-4;
    }
    samples[200] = 6e-4;
    samples[300] = 0.05;
    let clip = AudioClip::new(8000, vec![samples.clone()]).unwrap();
    let margin = 40; // 5 ms at 8 kHz
    let relative = clip.trim_leading_silence_db(-40.0);
    assert_eq!(relative.channels[0], samples[200 - margin..]);
    assert_eq!(Trim::RelativeDb(-40.0).apply(&clip), relative);
    assert_eq!(
        Trim::Absolute(0.01).apply(&clip).channels[0],
        samples[300 - margin..]
    );
    // The same shape at full scale is cut at the same place.
    let loud: Vec<f32> = samples.iter().map(|x| x * 20.0).collect();
    let loud = AudioClip::new(8000, vec![loud]).unwrap();
    assert_eq!(
        loud.trim_leading_silence_db(-40.0).frames(),
        relative.frames()
    );
    let silent = AudioClip::new(8000, vec![vec![0.0; 100]]).unwrap();
    assert_eq!(silent.trim_leading_silence_db(-40.0), silent);

    // Old diffuse.json files hold a bare number: an absolute level, as before.
    let old: AudioDataConfig =
        serde_json::from_str(r#"{"trim_silence": 0.01, "validation_fraction": 0.1}"#).unwrap();
    assert_eq!(old.trim_silence, Some(Trim::Absolute(0.01)));
    assert_eq!(old.holdout, Holdout::EveryKth);
    let json = serde_json::to_string(&old).unwrap();
    assert!(json.contains(r#""trim_silence":0.01,"#), "{json}");
    assert_eq!(serde_json::from_str::<AudioDataConfig>(&json).unwrap(), old);
    // The record of the drums model bundled before (2026-11), as it was written.
    let old_record = r#"{"sample_rate": 16000, "channels": 1, "clip_frames": 8000, "data": {
        "sample_rate": 16000, "channels": 1, "clip_frames": 8000, "normalize": "peak:0.95",
        "trim_silence": 0.01, "validation_fraction": 0.1}, "dataset": "drums", "steps": 2500}"#;
    let info: serde_json::Value = serde_json::from_str(old_record).unwrap();
    let bundled: AudioDataConfig = serde_json::from_value(info["data"].clone()).unwrap();
    assert_eq!(bundled.trim_silence, Some(Trim::Absolute(0.01)));
    assert_eq!(bundled.holdout, Holdout::EveryKth);
    // The bundled model's record today: relative trimming, two kits held out.
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/models/drums/diffuse.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let bundled: AudioDataConfig = serde_json::from_value(info["data"].clone()).unwrap();
    assert_eq!(bundled.trim_silence, Some(Trim::RelativeDb(-40.0)));
    assert_eq!(
        bundled.holdout,
        Holdout::Groups(vec!["BJA_Pacific".into(), "Audiophob".into()])
    );
    // New configs trim relative to the peak, written as a string.
    let default = serde_json::to_value(AudioDataConfig::default()).unwrap();
    assert_eq!(default["trim_silence"], "-40dB");
    assert_eq!(default["holdout"], "every");
    assert_eq!(
        serde_json::from_value::<AudioDataConfig>(default).unwrap(),
        AudioDataConfig::default()
    );
    assert_eq!("-30 dB".parse::<Trim>().unwrap(), Trim::RelativeDb(-30.0));
    assert_eq!("0.02".parse::<Trim>().unwrap(), Trim::Absolute(0.02));
    for bad in [
        r#"{"trim_silence": 1.5}"#,
        r#"{"trim_silence": "3dB"}"#,
        r#"{"trim_silence": "loud"}"#,
        r#"{"trim_silence": true}"#,
    ] {
        let e = serde_json::from_str::<AudioDataConfig>(bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("trim_silence") || e.contains("-40dB"),
            "{bad}: {e}"
        );
    }
}

/// The labelling rule on the real `drums` dataset reproduces the counts of issue 18's plan:
/// run only where `cargo xtask setup --data drums` has fetched it.
#[test]
fn drums_labels_match_the_documented_counts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/datasets/drums");
    if !root.join("BJA_Pacific").is_dir() {
        println!("skipped: {} is not there", root.display());
        return;
    }
    let files = diffuse_audio::data::audio_files(&root).unwrap();
    assert_eq!(files.len(), 754);
    let labelling = diffuse_audio::labels::label_files(&root, &files).unwrap();
    assert_eq!(labelling.layout, diffuse_audio::labels::Layout::Kits);
    let mut groups = labelling.groups.clone();
    groups.dedup();
    assert_eq!(groups.len(), 14);

    let config = AudioDataConfig {
        sample_rate: 16000,
        channels: 1,
        clip_frames: 8000,
        holdout: diffuse_audio::train::default_holdout("drums"),
        ..AudioDataConfig::default()
    };
    // Training and held-out kits together are the whole dataset, read once.
    let train = load(&root, Split::Train, &config).unwrap();
    let held = load(&root, Split::Validation, &config).unwrap();
    // The two digitally silent emptySample.flac files (both in training kits) are skipped.
    assert_eq!((train.len(), held.len()), (652, 100));
    assert!(!train
        .names()
        .iter()
        .any(|n| n.ends_with("emptySample.flac")));
    assert!(held
        .groups()
        .iter()
        .all(|g| g == "BJA_Pacific" || g == "Audiophob"));
    assert!(train
        .groups()
        .iter()
        .all(|g| g != "BJA_Pacific" && g != "Audiophob"));
    let (train_counts, held_counts) = (train.class_counts().unwrap(), held.class_counts().unwrap());
    let mut all = train_counts.clone();
    for (total, (_, n)) in all.classes.iter_mut().zip(&held_counts.classes) {
        total.1 += n;
    }
    all.unlabelled += held_counts.unlabelled;
    println!("drums: {all}\ntraining kits: {train_counts}\nheld-out kits: {held_counts}");
    assert_eq!(
        all.to_string(),
        "kick 54, snare 132, hi-hat 125, tom 78, cymbal 124, other 127; 112 unlabelled"
    );
    assert_eq!(
        held_counts.to_string(),
        "kick 9, snare 24, hi-hat 24, tom 19, cymbal 23, other 1"
    );
}
