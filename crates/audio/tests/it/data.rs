//! Audio datasets from the committed speech-digit fixture, the FLAC/AIFF drum fixtures and files
//! written to temporary folders: shapes, normalisation, the deterministic split, channel and rate
//! conversion, and the errors for folders without audio and for broken files.

use super::wav::{fixture, speech_digits_dir};
use diffuse_audio::clip::AudioClip;
use diffuse_audio::data::{AudioDataConfig, AudioDataset, Normalize, Split};
use diffuse_audio::wav::{read_audio, write_wav, SampleFormat};
use std::path::Path;
use tch::{Kind, Tensor};

fn digits_config() -> AudioDataConfig {
    AudioDataConfig {
        sample_rate: 8000,
        channels: 1,
        clip_frames: 8000,
        normalize: Normalize::Peak(0.9),
        trim_silence: Some(0.01),
        validation_fraction: 0.2,
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
        trim_silence: Some(0.01),
        validation_fraction: 0.1,
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
