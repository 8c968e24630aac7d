//! The audio commands end to end on the committed speech fixture (ten spoken digits, 8 kHz):
//! train a DiffWave and a UNet1d a few steps, resume exactly, sample WAV files (with
//! spectrograms), fill a gap in a recording (at the recording's level, rate and channels, with the
//! bundled drum model), evaluate the log-mel distance; one-line errors for
//! bad input. WAV files are read and written by hand here, so these tests do not depend on the
//! library they test.

use diffuse_e2e::{assert_user_error, diffuse, path_str as s, read_safetensors, repo_root};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    repo_root().join("data/fixtures/speech-digits")
}

/// (sample rate, channels, bits, interleaved integer samples) of a PCM WAV file.
fn read_wav(path: &Path) -> (u32, u16, u16, Vec<i32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"RIFF", "{}", path.display());
    assert_eq!(&bytes[8..12], b"WAVE");
    let (mut pos, mut fmt, mut data) = (12, None, None);
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        match id {
            b"fmt " => fmt = Some(body.to_vec()),
            b"data" => data = Some(body.to_vec()),
            _ => {}
        }
        pos += 8 + len + (len & 1);
    }
    let fmt = fmt.expect("fmt chunk");
    let data = data.expect("data chunk");
    let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
    let rate = u32::from_le_bytes(fmt[4..8].try_into().unwrap());
    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
    let samples = match bits {
        16 => data
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
            .collect(),
        32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => panic!("{}: {other}-bit WAV", path.display()),
    };
    (rate, channels, bits, samples)
}

/// A 16-bit PCM WAV file.
fn write_wav(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * channels as u32 * 2).to_le_bytes());
    b.extend_from_slice(&(channels * 2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for v in samples {
        b.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// A DiffWave of 4 layers of width 8 on quarter-second clips at the fixture's 8 kHz, 6 steps,
/// with DiffWave's own recipe (epsilon prediction on its linear schedule, no data scale, its
/// 6-step preview sampler) unless `extra` says otherwise: each command
/// takes seconds. (`train audio`'s defaults are the UNet recipe; its own test checks them.)
fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "audio", "--data", data, "--out", out];
    let unet = extra.contains(&"--network-config")
        || extra.windows(2).any(|w| w == ["--network", "unet1d"]);
    if !unet && !extra.contains(&"--network") {
        args.extend_from_slice(&["--network", "diffwave"]);
    }
    let v_prediction = extra.windows(2).any(|w| w[0] == "--prediction-type");
    if !v_prediction && !extra.contains(&"--zero-terminal-snr") {
        args.extend_from_slice(&["--prediction-type", "epsilon"]);
    }
    let defaults = [
        ("--data-scale", "none"),
        ("--sample-sampler", "diffwave-fast"),
        ("--sample-rate", "8000"),
        ("--seconds", "0.25"),
        ("--residual-channels", "8"),
        ("--residual-layers", "4"),
        ("--dilation-cycle", "2"),
        ("--steps", "6"),
        ("--batch-size", "4"),
        ("--warmup-steps", "2"),
        ("--checkpoint-every", "3"),
        ("--log-every", "1"),
        ("--sample-every", "0"),
        ("--sample-num", "2"),
        ("--val-fraction", "0.4"),
        ("--device", "cpu"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, value]);
        }
    }
    args.extend_from_slice(extra);
    args
}

fn run_ok(args: &[&str]) -> String {
    let r = diffuse(args, None);
    assert!(r.success(), "{args:?}: {}", r.stderr);
    r.stdout
}

#[test]
fn diffwave_trains_resumes_samples_fills_a_gap_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture();
    let run = tmp.path().join("run");
    run_ok(&train_args(s(&data), s(&run), &[]));
    for file in [
        "run.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step-000000006.wav",
        "samples/step-000000006.png",
        "model/config.json",
        "model/model.safetensors",
        "model/scheduler_config.json",
        "model/diffuse.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing after training");
    }
    // The preview: two quarter-second clips a quarter second apart, at the speech's 8 kHz.
    let (rate, channels, _, preview) = read_wav(&run.join("samples/step-000000006.wav"));
    assert_eq!((rate, channels, preview.len()), (8000, 1, 6000));

    // Interrupted at step 3 and resumed: the same weights as the uninterrupted run.
    let run2 = tmp.path().join("run2");
    let out = run_ok(&train_args(s(&data), s(&run2), &["--stop-after", "3"]));
    assert!(out.contains("continue with --resume"), "{out}");
    run_ok(&[
        "train",
        "audio",
        "--out",
        s(&run2),
        "--resume",
        "--device",
        "cpu",
    ]);
    let weights = "model/model.safetensors";
    let (a, b) = (
        read_safetensors(&run.join(weights)),
        read_safetensors(&run2.join(weights)),
    );
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(b[name] == *tensor, "{name} differs after resume");
    }

    // Sampling: any length, seeded, one file per clip, spectrograms beside them.
    let model = run.join("model");
    let clip = tmp.path().join("clip.wav");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "audio",
            "--model",
            s(&model),
            "--num",
            "2",
            "--seconds",
            "0.3",
            "--seed",
            "1",
            "--device",
            "cpu",
        ];
        if !extra.contains(&"--sampler") {
            args.extend_from_slice(&["--sampler", "diffwave-fast"]);
        }
        args.extend_from_slice(extra);
        run_ok(&args)
    };
    let out = sample(&["--out", s(&clip), "--spectrogram"]);
    assert!(
        out.contains("clip-0.wav") && out.contains("clip-1.png"),
        "{out}"
    );
    let first = std::fs::read(tmp.path().join("clip-0.wav")).unwrap();
    let (rate, channels, bits, samples) = read_wav(&tmp.path().join("clip-0.wav"));
    assert_eq!((rate, channels, bits, samples.len()), (8000, 1, 16, 2400));
    assert!(samples.iter().any(|&v| v != 0));
    let png = std::fs::read(tmp.path().join("clip-1.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    sample(&["--out", s(&clip)]);
    assert_eq!(
        std::fs::read(tmp.path().join("clip-0.wav")).unwrap(),
        first,
        "the same seed made a different clip"
    );
    let dir = tmp.path().join("clips");
    sample(&[
        "--out-dir",
        s(&dir),
        "--sampler",
        "ddim",
        "--steps",
        "10",
        "--format",
        "int32",
    ]);
    let (_, _, bits, samples) = read_wav(&dir.join("sample-00001.wav"));
    assert_eq!((bits, samples.len()), (32, 2400));

    // Filling a gap: the recording outside it comes back sample for sample.
    let input = data.join("3.wav");
    let filled = tmp.path().join("filled.wav");
    run_ok(&[
        "inpaint",
        "audio",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--gap",
        "0.2:0.4",
        "--out",
        s(&filled),
        "--sampler",
        "diffwave-fast",
        "--spectrogram",
        "--device",
        "cpu",
    ]);
    let (_, _, _, original) = read_wav(&input);
    let (rate, _, _, result) = read_wav(&filled);
    assert_eq!((rate, result.len()), (8000, original.len()));
    assert_eq!(result[..1600], original[..1600]);
    assert_eq!(result[3200..], original[3200..]);
    assert_ne!(result[1600..3200], original[1600..3200]);
    assert!(filled.with_extension("png").is_file());

    // The log-mel distance between its bounds, on the held-out digits.
    let out = run_ok(&[
        "eval",
        "audio",
        "--model",
        s(&model),
        "--json",
        "--sampler",
        "diffwave-fast",
        "--device",
        "cpu",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let get = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {report}"))
    };
    assert!(get("generated").is_finite() && get("generated") >= 0.0);
    assert!(
        get("white_noise") > get("held_out"),
        "white noise should be further from speech than other speech: {report}"
    );
    assert_eq!(report["reference_clips"], 2);
    assert_eq!(report["second_set_clips"], 2);
    assert_eq!(report["steps"], 6);
}

#[test]
fn unet1d_trains_and_samples_stereo_at_another_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(&[
        "train",
        "audio",
        "--data",
        s(&fixture()),
        "--out",
        s(&run),
        "--network",
        "unet1d",
        "--block-out-channels",
        "8,16",
        "--down-factors",
        "4",
        "--layers-per-block",
        "1",
        "--channels",
        "2",
        "--sample-rate",
        "16000",
        "--seconds",
        "0.1",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--sample-every",
        "0",
        "--sample-num",
        "1",
        "--device",
        "cpu",
    ]);
    let clip = tmp.path().join("x.wav");
    run_ok(&[
        "sample",
        "audio",
        "--model",
        s(&run),
        "--seconds",
        "0.123",
        "--out",
        s(&clip),
        "--steps",
        "4",
        "--sampler",
        "ddim",
        "--device",
        "cpu",
    ]);
    let (rate, channels, _, samples) = read_wav(&clip);
    assert_eq!((rate, channels, samples.len()), (16000, 2, 2 * 1968));
}

#[test]
fn bad_audio_inputs_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(&train_args(s(&fixture()), s(&run), &["--steps", "1"]));
    let model = run.join("model");
    let inpaint = |input: &Path, gap: &str| {
        diffuse(
            &[
                "inpaint",
                "audio",
                "--model",
                s(&model),
                "--input",
                s(input),
                "--gap",
                gap,
                "--out",
                s(&tmp.path().join("o.wav")),
                "--sampler",
                "diffwave-fast",
                "--device",
                "cpu",
            ],
            None,
        )
    };
    // A truncated WAV (its header promises more than the file holds).
    let original = std::fs::read(fixture().join("3.wav")).unwrap();
    let truncated = tmp.path().join("truncated.wav");
    std::fs::write(&truncated, &original[..original.len() / 2 + 1]).unwrap();
    assert_user_error(
        &inpaint(&truncated, "0.1:0.2"),
        &["--input", "truncated.wav"],
    );
    // Text named .wav.
    let text = tmp.path().join("notes.wav");
    std::fs::write(&text, "these are my notes, not audio").unwrap();
    assert_user_error(&inpaint(&text, "0.1:0.2"), &["--input", "notes.wav"]);
    // A zero-length clip.
    let empty = tmp.path().join("empty.wav");
    write_wav(&empty, 8000, 1, &[]);
    assert_user_error(&inpaint(&empty, "0.1:0.2"), &["empty.wav", "no samples"]);
    // A gap outside the clip, and one that is not START:END.
    let input = fixture().join("3.wav");
    assert_user_error(&inpaint(&input, "5:6"), &["--gap", "past the end"]);
    assert_user_error(&inpaint(&input, "0.4:0.2"), &["--gap"]);
    assert_user_error(&inpaint(&input, "half:way"), &["--gap", "START:END"]);
    // A recording at a rate nothing is resampled from (a 1 MHz header).
    let fast = tmp.path().join("fast.wav");
    write_wav(&fast, 1_000_000, 1, &[100; 5000]);
    assert_user_error(
        &inpaint(&fast, "0.001:0.002"),
        &["--input", "fast.wav", "Hz"],
    );
    // Output names and lengths.
    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "audio", "--model", s(&model), "--device", "cpu"];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    let wav = tmp.path().join("x.wav");
    assert_user_error(&sample(&["--out", "x.mp3"]), &["--out", ".wav"]);
    assert_user_error(
        &sample(&["--out", s(&wav), "--seconds", "0"]),
        &["--seconds"],
    );
    assert_user_error(&sample(&[]), &["--out"]);
    assert_user_error(
        &sample(&["--out", s(&wav), "--sampler", "fastest"]),
        &["--sampler", "fastest"],
    );
    assert_user_error(
        &sample(&["--out", s(&wav), "--format", "int12"]),
        &["--format"],
    );
    assert!(!wav.exists(), "a failed command left a file");
    // Training data and settings.
    let train = |data: &Path, out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        diffuse(&train_args(s(data), s(&out), extra), None)
    };
    let empty_dir = tmp.path().join("nothing");
    std::fs::create_dir(&empty_dir).unwrap();
    assert_user_error(&train(&empty_dir, "r1", &[]), &["--data", "nothing"]);
    std::fs::write(empty_dir.join("readme.txt"), "no audio here").unwrap();
    assert_user_error(&train(&empty_dir, "r2", &[]), &["--data", "nothing"]);
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(fixture().join("1.wav"), broken.join("1.wav")).unwrap();
    std::fs::copy(&truncated, broken.join("2.wav")).unwrap();
    assert_user_error(&train(&broken, "r3", &[]), &["--data", "2.wav"]);
    assert_user_error(
        &train(&fixture(), "r4", &["--sample-rate", "0"]),
        &["--sample-rate"],
    );
    assert_user_error(
        &train(&fixture(), "r5", &["--network", "wavenet"]),
        &["--network", "wavenet"],
    );
    assert_user_error(
        &train(&fixture(), "r6", &["--down-factors", "4"]),
        &["--down-factors", "unet1d"],
    );
}

/// A one-step model on the fixture, trained in `dir/run` with `extra` flags: seconds.
fn tiny_model(dir: &Path, extra: &[&str]) -> PathBuf {
    let run = dir.join("run");
    let mut flags = vec!["--steps", "1"];
    flags.extend_from_slice(extra);
    run_ok(&train_args(s(&fixture()), s(&run), &flags));
    run.join("model")
}

/// A WAV file of `format` (1 PCM, 3 IEEE float) with `bits` per sample and raw `data`.
fn wav_file(path: &Path, format: u16, rate: u32, bits: u16, data: &[u8]) {
    let block = bits / 8;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * block as u32).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// (format code, bits, data chunk) of a WAV file.
fn wav_data(path: &Path) -> (u16, u16, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let (mut pos, mut fmt, mut data) = (12, None, None);
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let body = bytes[pos + 8..(pos + 8 + len).min(bytes.len())].to_vec();
        match &bytes[pos..pos + 4] {
            b"fmt " => fmt = Some(body),
            b"data" => data = Some(body),
            _ => {}
        }
        pos += 8 + len + (len & 1);
    }
    let fmt = fmt.expect("fmt chunk");
    // WAVE_FORMAT_EXTENSIBLE keeps the real format code at the start of its sub-format GUID.
    let code = match u16::from_le_bytes([fmt[0], fmt[1]]) {
        0xFFFE => u16::from_le_bytes([fmt[24], fmt[25]]),
        code => code,
    };
    (
        code,
        u16::from_le_bytes([fmt[14], fmt[15]]),
        data.expect("data chunk"),
    )
}

/// Files (names) directly in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn non_finite_samples_are_refused_naming_the_file_and_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), &[]);
    // Half a second of float samples at 8 kHz with one NaN at frame 1000 (0.125 s).
    let samples: Vec<f32> = (0..4000)
        .map(|i| {
            if i == 1000 {
                f32::NAN
            } else {
                0.1 * (i as f32 * 0.05).sin()
            }
        })
        .collect();
    let data: Vec<u8> = samples.iter().flat_map(|x| x.to_le_bytes()).collect();
    let nan = tmp.path().join("nan.wav");
    wav_file(&nan, 3, 8000, 32, &data);
    let out = tmp.path().join("filled.wav");
    let run = diffuse(
        &[
            "inpaint",
            "audio",
            "--model",
            s(&model),
            "--input",
            s(&nan),
            "--gap",
            "0.3:0.4",
            "--out",
            s(&out),
            "--sampler",
            "diffwave-fast",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(
        &run,
        &[
            "--input",
            "nan.wav",
            "frame 1000",
            "0.125",
            "channel 1",
            "NaN",
        ],
    );
    assert!(
        !out.exists(),
        "a refused recording still made {}",
        out.display()
    );
    // Training on a folder holding it names the file too, not the learning rate.
    let folder = tmp.path().join("with-nan");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..3 {
        let name = format!("{i}.wav");
        std::fs::copy(fixture().join(&name), folder.join(&name)).unwrap();
    }
    std::fs::copy(&nan, folder.join("3.wav")).unwrap();
    let run = diffuse(
        &train_args(s(&folder), s(&tmp.path().join("r")), &["--steps", "1"]),
        None,
    );
    assert_user_error(&run, &["--data", "3.wav", "frame 1000", "NaN"]);
    assert!(!run.stderr.contains("learning rate"), "{}", run.stderr);
}

#[test]
fn damaged_model_notes_and_empty_validation_splits_are_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), &["--val-fraction", "0"]);
    // No held-out files: the error says what to do, with flags that exist.
    let run = diffuse(
        &[
            "eval",
            "audio",
            "--model",
            s(&model),
            "--sampler",
            "diffwave-fast",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&run, &["no held-out clips", "--val-fraction"]);
    assert!(!run.stderr.contains("train split"), "{}", run.stderr);

    let info_path = model.join("diffuse.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    for (field, value) in [
        ("clip_frames", serde_json::json!(0)),
        ("sample_rate", serde_json::json!(0)),
        ("channels", serde_json::json!(7)),
    ] {
        let mut info = good.clone();
        info[field] = value;
        std::fs::write(&info_path, info.to_string()).unwrap();
        let run = diffuse(
            &[
                "sample",
                "audio",
                "--model",
                s(&model),
                "--out",
                s(&tmp.path().join("x.wav")),
                "--sampler",
                "diffwave-fast",
                "--device",
                "cpu",
            ],
            None,
        );
        assert_user_error(&run, &["--model", "diffuse.json", field]);
    }
}

#[test]
fn train_errors_name_the_flag_that_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture();
    for (i, (extra, flag)) in [
        (&["--channels", "0"][..], "--channels"),
        (&["--channels", "3"], "--channels"),
        (&["--seconds", "1e12"], "--seconds"),
        (&["--sample-rate", "100000000"], "--sample-rate"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--sample-sampler", "fastest"], "--sample-sampler"),
        (
            &["--sample-sampler", "ddim", "--sample-steps", "5000"],
            "--sample-steps",
        ),
        (&["--residual-channels", "0"], "--residual-channels"),
        (&["--dilation-cycle", "30"], "--dilation-cycle"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("r{i}"));
        let run = diffuse(&train_args(s(&data), s(&out), extra), None);
        assert_user_error(&run, &[flag]);
        let line = run.stderr.trim();
        assert!(
            line.starts_with(&format!("error: {flag}:")),
            "{extra:?}: the error should start with {flag}: {line}"
        );
        assert!(!line.contains("--data"), "{extra:?}: {line}");
        assert!(
            !out.exists(),
            "{extra:?}: a refused run made {}",
            out.display()
        );
    }
}

#[test]
fn data_paths_are_recorded_absolute_and_resume_can_replace_them() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // A folder of one's own called `speech`, beside the bundled dataset's name.
    let speech = work.join("speech");
    std::fs::create_dir_all(&speech).unwrap();
    for i in 0..10 {
        let name = format!("{i}.wav");
        std::fs::copy(fixture().join(&name), speech.join(&name)).unwrap();
    }
    let run = work.join("run");
    // Started in `work` with relative paths and stopped half way.
    let r = diffuse(
        &train_args("speech", "run", &["--stop-after", "3"]),
        Some(&work),
    );
    assert!(r.success(), "{}", r.stderr);
    let recorded = |file: &Path, key: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {v}"))
            .to_owned()
    };
    let local = std::fs::canonicalize(&speech).unwrap();
    let got = PathBuf::from(recorded(&run.join("run.json"), "data"));
    assert!(got.is_absolute(), "{}", got.display());
    assert_eq!(
        std::fs::canonicalize(&got).unwrap(),
        local,
        "--data speech beside a folder named speech means that folder"
    );

    // The data moved; resumed from another folder with --data saying where it is now.
    let moved = work.join("moved");
    std::fs::rename(&speech, &moved).unwrap();
    let r = diffuse(
        &[
            "train",
            "audio",
            "--out",
            s(&run),
            "--resume",
            "--data",
            "../work/moved",
            "--device",
            "cpu",
        ],
        Some(&elsewhere),
    );
    assert!(r.success(), "{}", r.stderr);
    let moved = std::fs::canonicalize(&moved).unwrap();
    for (file, key) in [
        (run.join("run.json"), "data"),
        (run.join("model/diffuse.json"), "dataset"),
    ] {
        let got = PathBuf::from(recorded(&file, key));
        assert!(got.is_absolute(), "{}: {}", file.display(), got.display());
        assert_eq!(
            std::fs::canonicalize(&got).unwrap(),
            moved,
            "{}",
            file.display()
        );
    }
    // `eval audio` finds the held-out clips from yet another folder.
    let r = diffuse(
        &[
            "eval",
            "audio",
            "--model",
            s(&run.join("model")),
            "--json",
            "--sampler",
            "diffwave-fast",
            "--device",
            "cpu",
        ],
        Some(tmp.path()),
    );
    assert!(r.success(), "{}", r.stderr);
}

#[test]
fn outputs_are_checked_before_sampling_and_written_all_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), &[]);
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "audio",
            "--model",
            s(&model),
            "--seconds",
            "0.1",
            "--sampler",
            "diffwave-fast",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    // Missing folders of --out are made.
    let nested = tmp.path().join("new/deeper/x.wav");
    let r = sample(&["--out", s(&nested), "--spectrogram"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(nested.is_file() && nested.with_extension("png").is_file());

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // A folder where a file goes.
    std::fs::create_dir(out.join("taken.wav")).unwrap();
    assert_user_error(
        &sample(&["--out", s(&out.join("taken.wav"))]),
        &["--out", "taken.wav", "folder"],
    );
    // A spectrogram that cannot be written: neither file is.
    std::fs::create_dir(out.join("clip.png")).unwrap();
    assert_user_error(
        &sample(&["--out", s(&out.join("clip.wav")), "--spectrogram"]),
        &["--spectrogram", "clip.png"],
    );
    // A file where a folder goes.
    let file = out.join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    assert_user_error(
        &sample(&["--out", s(&file.join("x.wav"))]),
        &["--out", "notes.txt", "not a folder"],
    );
    assert_user_error(
        &sample(&["--out-dir", s(&file)]),
        &["--out-dir", "notes.txt"],
    );
    assert_eq!(names_in(&out), ["clip.png", "notes.txt", "taken.wav"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    // A refused --model or --format makes no --out-dir.
    let newdir = tmp.path().join("newdir");
    assert_user_error(
        &sample(&["--out-dir", s(&newdir), "--format", "int12"]),
        &["--format"],
    );
    let r = diffuse(
        &[
            "sample",
            "audio",
            "--model",
            s(&tmp.path().join("no-model")),
            "--out-dir",
            s(&newdir),
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--model"]);
    assert!(
        !newdir.exists(),
        "a refused command made {}",
        newdir.display()
    );
    let r = sample(&["--out-dir", s(&newdir), "--num", "2"]);
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(names_in(&newdir), ["sample-00000.wav", "sample-00001.wav"]);

    // inpaint: the same checks, and never over its own input.
    let input = tmp.path().join("in.wav");
    std::fs::copy(fixture().join("3.wav"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let inpaint = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "inpaint",
            "audio",
            "--model",
            s(&model),
            "--input",
            s(&input),
            "--gap",
            "0.2:0.3",
            "--out",
            s(out),
            "--sampler",
            "diffwave-fast",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    assert_user_error(&inpaint(&input, &[]), &["--out", "in.wav", "--input"]);
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert_user_error(
        &inpaint(&out.join("clip.wav"), &["--spectrogram"]),
        &["--spectrogram", "clip.png"],
    );
    assert_eq!(names_in(&out), ["clip.png", "notes.txt", "taken.wav"]);
    let filled = tmp.path().join("made/for/it/filled.wav");
    let r = inpaint(&filled, &["--spectrogram"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(filled.is_file() && filled.with_extension("png").is_file());
}

#[test]
fn inpainting_leaves_32_bit_and_float_recordings_bit_exact_outside_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), &[]);
    // Half a second at 8 kHz; the gap 0.2:0.3 s is frames 1600..2400.
    let codes: Vec<i32> = (0..4000i64)
        .map(|i| ((i * 7919 % 4001 - 2000) * 250_007 + 1) as i32)
        .collect();
    let int32: Vec<u8> = codes.iter().flat_map(|q| q.to_le_bytes()).collect();
    let floats: Vec<u8> = codes
        .iter()
        .flat_map(|&q| (q as f32 / 2f32.powi(31) * 0.5 + 1e-7).to_le_bytes())
        .collect();
    for (name, format, bits, data, extra) in [
        ("int32.wav", 1, 32, &int32, &[][..]),
        ("int32-flag.wav", 1, 32, &int32, &["--format", "int32"][..]),
        ("float.wav", 3, 32, &floats, &[][..]),
    ] {
        let input = tmp.path().join(name);
        wav_file(&input, format, 8000, bits, data);
        let out = tmp.path().join(format!("filled-{name}"));
        let mut args = vec![
            "inpaint",
            "audio",
            "--model",
            s(&model),
            "--input",
            s(&input),
            "--gap",
            "0.2:0.3",
            "--out",
            s(&out),
            "--sampler",
            "diffwave-fast",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run_ok(&args);
        let (got_format, got_bits, got) = wav_data(&out);
        assert_eq!(
            (got_format, got_bits),
            (format, bits),
            "{name}: not in its own format"
        );
        assert_eq!(got.len(), data.len(), "{name}");
        let (a, b) = (1600 * 4, 2400 * 4);
        assert!(got[..a] == data[..a], "{name}: changed before the gap");
        assert!(got[b..] == data[b..], "{name}: changed after the gap");
        assert!(got[a..b] != data[a..b], "{name}: the gap was not filled");
    }
}

/// `eval audio` on models of clips shorter than the usual 64 ms log-mel window (8 ms at 16 kHz)
/// and of a 100 Hz rate, and the spectrograms of their samples and training previews: results,
/// never a panic.
#[test]
fn short_clips_and_low_rates_evaluate_and_draw_spectrograms() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, rate, seconds) in [("short", "16000", "0.008"), ("slow", "100", "1")] {
        let run = tmp.path().join(name);
        run_ok(&train_args(
            s(&fixture()),
            s(&run),
            &[
                "--sample-rate",
                rate,
                "--seconds",
                seconds,
                "--residual-layers",
                "2",
                "--val-fraction",
                "0.5",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--sample-every",
                "1",
            ],
        ));
        assert!(run.join("samples/step-000000001.png").is_file());
        let model = run.join("model");
        let out = run_ok(&[
            "eval",
            "audio",
            "--model",
            s(&model),
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(report["generated"].as_f64().unwrap().is_finite(), "{out}");
        let wav = tmp.path().join(format!("{name}.wav"));
        run_ok(&[
            "sample",
            "audio",
            "--model",
            s(&model),
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            s(&wav),
            "--spectrogram",
        ]);
        assert!(wav.with_extension("png").is_file());
    }
}

/// With one seed, `sample audio` and `eval audio` give the same clips at any --batch-size, for
/// stochastic samplers too.
#[test]
fn seeded_results_do_not_depend_on_the_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), &[]);
    for sampler in ["ddpm", "ddim"] {
        let mut outputs = Vec::new();
        for batch in [None, Some("1"), Some("2")] {
            let dir = tmp.path().join(format!("{sampler}-{batch:?}"));
            let mut args = vec![
                "sample",
                "audio",
                "--model",
                s(&model),
                "--sampler",
                sampler,
                "--steps",
                "20",
                "--num",
                "3",
                "--seed",
                "5",
                "--format",
                "float32",
                "--device",
                "cpu",
                "--out-dir",
                s(&dir),
            ];
            if let Some(b) = batch {
                args.extend_from_slice(&["--batch-size", b]);
            }
            run_ok(&args);
            let clips: Vec<Vec<u8>> = (0..3)
                .map(|i| std::fs::read(dir.join(format!("sample-{i:05}.wav"))).unwrap())
                .collect();
            outputs.push(clips);
        }
        assert_eq!(outputs[0], outputs[1], "{sampler}: --batch-size 1 differs");
        assert_eq!(outputs[0], outputs[2], "{sampler}: --batch-size 2 differs");
    }
    let eval = |batch: Option<&str>| {
        let mut args = vec![
            "eval",
            "audio",
            "--model",
            s(&model),
            "--sampler",
            "ddpm",
            "--steps",
            "10",
            "--device",
            "cpu",
            "--json",
        ];
        if let Some(b) = batch {
            args.extend_from_slice(&["--batch-size", b]);
        }
        let out: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
        out["generated"].as_f64().unwrap()
    };
    let all = eval(None);
    let one = eval(Some("1"));
    assert!(
        (all - one).abs() <= 1e-6 * all.abs().max(1.0),
        "{all} vs {one}"
    );
}

/// A folder of the fixture's files `names`, in `dir`.
fn some_digits(dir: &Path, names: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for n in names {
        std::fs::copy(fixture().join(n), dir.join(n)).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn training_warns_of_held_out_splits_too_small_for_eval_and_of_silent_data() {
    let tmp = tempfile::tempdir().unwrap();
    let two = some_digits(&tmp.path().join("two"), &["0.wav", "1.wav"]);
    let r = diffuse(
        &train_args(
            s(&two),
            s(&tmp.path().join("r2")),
            &["--val-fraction", "0.5", "--steps", "1"],
        ),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stderr.contains("WARN") && r.stderr.contains("0 of 2") && r.stderr.contains("at least 7"),
        "{}",
        r.stderr
    );
    // Enough held-out files: no warning.
    let r = diffuse(
        &train_args(
            s(&fixture()),
            s(&tmp.path().join("r10")),
            &["--val-fraction", "0.4", "--steps", "1"],
        ),
        None,
    );
    assert!(
        r.success() && !r.stderr.contains("held-out split"),
        "{}",
        r.stderr
    );

    let silent = tmp.path().join("silent");
    std::fs::create_dir_all(&silent).unwrap();
    for i in 0..3 {
        write_wav(&silent.join(format!("{i}.wav")), 8000, 1, &[0; 4000]);
    }
    let r = diffuse(
        &train_args(s(&silent), s(&tmp.path().join("rs")), &["--steps", "1"]),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(r.stderr.matches("learn silence").count(), 1, "{}", r.stderr);
}

#[test]
fn flags_that_contradict_or_are_missing_are_said_once_and_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), &[]);
    let config = model.join("config.json");
    // The config file holds a DiffWave: a typed --network unet1d would be ignored.
    let r = diffuse(
        &train_args(
            s(&fixture()),
            s(&tmp.path().join("n1")),
            &["--network-config", s(&config), "--network", "unet1d"],
        ),
        None,
    );
    assert_user_error(&r, &["--network:", "diffwave", "unet1d", "config.json"]);
    assert!(!tmp.path().join("n1").exists());
    // Agreeing with the file is fine.
    run_ok(&train_args(
        s(&fixture()),
        s(&tmp.path().join("n2")),
        &[
            "--network-config",
            s(&config),
            "--network",
            "diffwave",
            "--steps",
            "1",
        ],
    ));

    let r = diffuse(
        &train_args(
            s(&fixture()),
            s(&tmp.path().join("n3")),
            &["--normalize", "peak:7"],
        ),
        None,
    );
    assert_user_error(&r, &["--normalize: the peak"]);
    assert!(!r.stderr.contains("normalize: normalize"), "{}", r.stderr);

    // Six files at --val-fraction 0.5 hold out 3: eval without --data says whose split that was.
    let six = some_digits(
        &tmp.path().join("six"),
        &["0.wav", "1.wav", "2.wav", "3.wav", "4.wav", "5.wav"],
    );
    let run = tmp.path().join("six-run");
    run_ok(&train_args(
        s(&six),
        s(&run),
        &["--val-fraction", "0.5", "--steps", "1"],
    ));
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "audio",
            "--model",
            s(&run),
            "--sampler",
            "ddim",
            "--steps",
            "2",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    let r = eval(&[]);
    assert_user_error(
        &r,
        &[
            "at least 4 held-out clips",
            "model's training data",
            "give --data",
        ],
    );
    assert!(!r.stderr.contains("error: --data"), "{}", r.stderr);
    let r = eval(&["--data", s(&six)]);
    assert_user_error(&r, &["--data:", "at least 4 held-out clips"]);
}

/// Drum-like hits (noise bursts over a falling low tone) every quarter second at `rate`, as
/// 16-bit codes at `rms_dbfs`; `seed` varies the noise.
fn quiet_drums(rate: u32, seconds: f64, rms_dbfs: f64, seed: u64) -> Vec<i16> {
    let n = (rate as f64 * seconds).round() as usize;
    let mut state = seed;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f64 / (1u64 << 23) as f64 - 1.0
    };
    let x: Vec<f64> = (0..n)
        .map(|i| {
            let t = (i as f64 / rate as f64) % 0.25;
            let body = (2.0 * std::f64::consts::PI * 70.0 * t).sin() * (-t / 0.08).exp();
            body + 0.6 * noise() * (-t / 0.02).exp()
        })
        .collect();
    let rms = (x.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
    let gain = 10f64.powf(rms_dbfs / 20.0) / rms * 32768.0;
    x.iter().map(|v| (v * gain).round() as i16).collect()
}

/// RMS of 16-bit codes, in dBFS.
fn rms_dbfs(codes: &[i32]) -> f64 {
    let mean = codes
        .iter()
        .map(|&q| (q as f64 / 32768.0).powi(2))
        .sum::<f64>()
        / codes.len() as f64;
    10.0 * mean.log10()
}

#[test]
fn inpainting_a_quiet_stereo_48_khz_recording_keeps_its_level_rate_and_channels() {
    let tmp = tempfile::tempdir().unwrap();
    // One second of quiet (-40 dBFS) stereo drums at 48 kHz, the channels different; the
    // bundled drum model works in mono at 16 kHz, peak-normalised.
    let (left, right) = (
        quiet_drums(48000, 1.0, -40.0, 1),
        quiet_drums(48000, 1.0, -43.0, 2),
    );
    let interleaved: Vec<i16> = left
        .iter()
        .zip(&right)
        .flat_map(|(&l, &r)| [l, r])
        .collect();
    let input = tmp.path().join("quiet.wav");
    write_wav(&input, 48000, 2, &interleaved);
    let out = tmp.path().join("filled.wav");
    let stdout = run_ok(&[
        "inpaint",
        "audio",
        "--model",
        s(&repo_root().join("data/models/drums")),
        "--input",
        s(&input),
        "--gap",
        "0.4:0.6",
        "--out",
        s(&out),
        "--sampler",
        "diffwave-fast",
        "--device",
        "cpu",
    ]);
    let (rate, channels, bits, result) = read_wav(&out);
    assert_eq!((rate, channels, bits), (48000, 2, 16), "{stdout}");
    let (_, _, _, original) = read_wav(&input);
    assert_eq!(result.len(), original.len());
    // 0.4:0.6 s is frames 19200..28800, two samples a frame.
    let (a, b) = (19200 * 2, 28800 * 2);
    assert!(result[..a] == original[..a], "changed before the gap");
    assert!(result[b..] == original[b..], "changed after the gap");
    assert!(result[a..b] != original[a..b], "the gap was not filled");
    let surroundings = rms_dbfs(&[&result[..a], &result[b..]].concat());
    let gap = rms_dbfs(&result[a..b]);
    assert!(
        (gap - surroundings).abs() < 10.0,
        "the gap is at {gap:.1} dBFS, its surroundings at {surroundings:.1} dBFS"
    );
}

#[test]
fn holdout_trim_and_class_folder_mistakes_name_their_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = tmp.path().join("classes");
    some_digits(&classes.join("kick"), &["0.wav", "1.wav", "2.wav"]);
    std::fs::create_dir_all(classes.join("tom")).unwrap();
    let args = |out: &str, extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "audio",
            "--data",
            s(&classes),
            "--out",
            s(&tmp.path().join(out)),
            "--sample-rate",
            "8000",
            "--seconds",
            "0.25",
            "--network",
            "diffwave",
            "--residual-channels",
            "8",
            "--residual-layers",
            "2",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--sample-every",
            "0",
            "--sample-num",
            "1",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |out: &str, extra: &[&'static str]| {
        let args = args(out, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        diffuse(&refs, None)
    };
    // A class folder without audio is named, before anything is written.
    let r = run("r0", &[]);
    assert_user_error(&r, &["--data", "tom", "class folder without audio files"]);
    assert!(!tmp.path().join("r0").exists());
    some_digits(&classes.join("tom"), &["3.wav", "4.wav"]);
    for (i, (extra, needles)) in [
        (
            &["--holdout", "kits:snare"][..],
            &["--holdout", "'snare'", "kick, tom"][..],
        ),
        (&["--holdout", "sometimes"], &["--holdout", "every"]),
        (&["--trim-db", "3"], &["--trim-db", "below 0"]),
        (
            &["--trim-db", "-30", "--keep-silence"],
            &["--trim-db", "--keep-silence"],
        ),
        (
            &["--holdout", "kits:tom", "--val-fraction", "0.2"],
            &["--val-fraction", "--holdout every"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let out = format!("r{}", i + 1);
        let r = run(&out, extra);
        assert_user_error(&r, needles);
        assert!(
            r.stderr
                .trim()
                .starts_with(&format!("error: {}:", needles[0])),
            "{extra:?}: {}",
            r.stderr
        );
        assert!(!tmp.path().join(&out).exists(), "{extra:?}");
    }
    // Holding out the tom folder trains on the kicks and says so; run.json records both choices.
    let r = run("ok", &["--holdout", "kits:tom", "--trim-db", "-30"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("training on 3 clips; classes: kick 3, tom 0"),
        "{}",
        r.stderr
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("ok/run.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["audio"]["holdout"],
        serde_json::json!({"kits": ["tom"]})
    );
    assert_eq!(config["audio"]["trim_silence"], "-30dB");
}

/// Class-conditional training on class folders with the drums recipe's flags (v-prediction, zero
/// terminal SNR, data scaled to a spread, a position channel), then sampling a class by name with
/// guidance; and every mistake with classes and guidance is one line naming its flag, with
/// nothing written.
#[test]
fn class_conditional_audio_trains_samples_with_guidance_and_refuses_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = tmp.path().join("classes");
    some_digits(&classes.join("kick"), &["0.wav", "1.wav", "2.wav"]);
    some_digits(&classes.join("snare"), &["3.wav", "4.wav", "5.wav"]);
    let run = tmp.path().join("run");
    let recipe = [
        "--class-conditional",
        "--prediction-type",
        "v_prediction",
        "--zero-terminal-snr",
        "--data-scale",
        "std:0.5",
        "--position-channel",
        "--sample-sampler",
        "dpm++2m",
        "--sample-steps",
        "3",
        "--sample-every",
        "2",
        "--steps",
        "2",
        "--val-fraction",
        "0.34",
    ];
    let out = run_ok(&train_args(s(&classes), s(&run), &recipe));
    let _ = out;
    let model = run.join("model");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("diffuse.json")).unwrap())
            .unwrap();
    assert_eq!(info["class_names"], serde_json::json!(["kick", "snare"]));
    assert!(info["data_scale"].as_f64().unwrap() > 1.0, "{info}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_class_embeds"], 3, "{config}");
    assert_eq!(config["position_frames"], 2000, "{config}");
    // The preview has one clip per class.
    assert!(run.join("samples").read_dir().unwrap().count() >= 2);

    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "audio", "--model", s(&model), "--device", "cpu"];
        if !extra.contains(&"--sampler") {
            args.extend_from_slice(&["--sampler", "dpm++2m", "--steps", "3"]);
        }
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    let wav = tmp.path().join("snare.wav");
    let r = sample(&["--class", "Snare", "--guidance", "3", "--out", s(&wav)]);
    assert!(r.success(), "{}", r.stderr);
    let (rate, channels, _, samples) = read_wav(&wav);
    assert_eq!((rate, channels, samples.len()), (8000, 1, 2000));
    // By number, unconditional (the null class), and guidance rescale.
    for extra in [
        &["--class", "0"][..],
        &[],
        &[
            "--class",
            "kick",
            "--guidance",
            "2",
            "--guidance-rescale",
            "0.7",
        ],
    ] {
        let out = tmp.path().join("more.wav");
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--out", s(&out)]);
        let r = sample(&args);
        assert!(r.success(), "{extra:?}: {}", r.stderr);
    }

    let bad = tmp.path().join("bad.wav");
    for (extra, needles) in [
        (
            &["--class", "tom"][..],
            &["--class", "'tom'", "0 kick, 1 snare"][..],
        ),
        (&["--class", "5"], &["--class", "out of range", "1 snare"]),
        (&["--guidance", "3"], &["--guidance needs --class"]),
        (
            &["--class", "kick", "--guidance", "-1"],
            &["--guidance", ">= 0"],
        ),
        (
            &["--class", "kick", "--guidance-rescale", "2"],
            &["--guidance-rescale", "[0, 1]"],
        ),
        (
            &["--sampler", "heun"],
            &["--sampler", "heun", "zero-terminal-SNR"],
        ),
    ] {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--out", s(&bad)]);
        assert_user_error(&sample(&args), needles);
        assert!(!bad.exists(), "{extra:?} wrote a file");
    }
    // An unconditional model takes neither a class nor guidance.
    let plain = tiny_model(&tmp.path().join("plain"), &[]);
    let plain_sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "audio",
            "--model",
            s(&plain),
            "--device",
            "cpu",
            "--out",
            s(&bad),
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    assert_user_error(
        &plain_sample(&["--class", "kick"]),
        &["--class", "not class-conditioned"],
    );
    assert_user_error(
        &plain_sample(&["--guidance", "3"]),
        &["--guidance", "not class-conditioned"],
    );
    assert!(!bad.exists());
    // Training mistakes: no classes in the data, label dropout without classes, a bad scale,
    // zero SNR with epsilon.
    for (data, extra, needles) in [
        (
            fixture(),
            &["--class-conditional"][..],
            &["--class-conditional", "no classes"][..],
        ),
        (
            classes.clone(),
            &["--label-dropout", "0.2"],
            &["--label-dropout", "--class-conditional"],
        ),
        (
            classes.clone(),
            &["--data-scale", "std:-1"],
            &["--data-scale", "std:S"],
        ),
        (
            classes.clone(),
            &["--zero-terminal-snr", "--prediction-type", "epsilon"],
            &["--zero-terminal-snr", "v_prediction"],
        ),
        (
            classes.clone(),
            &["--attention-levels", "3"],
            &["--attention-levels", "unet1d"],
        ),
    ] {
        let out = tmp.path().join("refused");
        let r = diffuse(&train_args(s(&data), s(&out), extra), None);
        assert_user_error(&r, needles);
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
}

/// Class folders of synthetic sounds at 8 kHz: `tone` (a decaying 220 Hz sine) and `burst` (a
/// decaying noise burst), `n` quarter-second clips each with their own level and decay.
fn tone_and_burst_classes(dir: &Path, n: usize) -> PathBuf {
    let mut state = 12345u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for class in ["tone", "burst"] {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..n {
            let (level, tau) = (0.2 + 0.6 * uniform(), 0.03 + 0.05 * uniform());
            let samples: Vec<i16> = (0..2000)
                .map(|k| {
                    let t = k as f64 / 8000.0;
                    let body = if class == "tone" {
                        (2.0 * std::f64::consts::PI * 220.0 * t).sin()
                    } else {
                        2.0 * uniform() - 1.0
                    };
                    (body * level * (-t / tau).exp() * 32000.0) as i16
                })
                .collect();
            write_wav(&folder.join(format!("{i}.wav")), 8000, 1, &samples);
        }
    }
    dir.to_path_buf()
}

#[test]
fn an_audio_judge_trains_and_eval_audio_reports_what_it_hears() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = tone_and_burst_classes(&tmp.path().join("classes"), 10);
    let judge = tmp.path().join("judge");
    let out = run_ok(&[
        "train",
        "classifier",
        "--data",
        s(&classes),
        "--out",
        s(&judge),
        "--sample-rate",
        "8000",
        "--seconds",
        "0.25",
        "--steps",
        "40",
        "--batch-size",
        "16",
        "--folds",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(out.contains("held-out"), "{out}");
    // Class folders are the groups, so the folds take every other clip of each class.
    assert!(out.contains("k-fold over clips (2 folds)"), "{out}");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(judge.join("info.json")).unwrap()).unwrap();
    assert_eq!(info["class_names"], serde_json::json!(["burst", "tone"]));
    assert_eq!(info["audio"]["fold_by"], "clips");
    assert_eq!(info["audio"]["input"]["sample_rate"], 8000);
    let loko = &info["audio"]["leave_kits_out"];
    assert_eq!(
        loko["clips"].as_u64().unwrap() + info["test_images"].as_u64().unwrap(),
        20
    );
    assert!(
        info["audio"]["held_out"]["accuracy"].as_f64().unwrap() >= 0.5,
        "{info}"
    );

    // A class-conditional model of the same sounds, judged.
    let run = tmp.path().join("run");
    run_ok(&train_args(
        s(&classes),
        s(&run),
        &[
            "--class-conditional",
            "--prediction-type",
            "v_prediction",
            "--steps",
            "2",
            "--val-fraction",
            "0.5",
        ],
    ));
    let model = run.join("model");
    let plots = tmp.path().join("plots");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "audio",
            "--model",
            s(&model),
            "--sampler",
            "dpm++2m",
            "--steps",
            "3",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    let r = eval(&[
        "--judge",
        s(&judge),
        "--guidance",
        "2",
        "--plots",
        s(&plots),
        "--json",
    ]);
    assert!(r.success(), "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let c = &report["judge"]["conditional"];
    assert_eq!(
        report["classes"],
        serde_json::json!(["burst", "tone"]),
        "{report}"
    );
    let per_class = c["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 2, "{report}");
    let generated: u64 = per_class.iter().map(|p| p["clips"].as_u64().unwrap()).sum();
    assert_eq!(generated, report["generated_clips"].as_u64().unwrap());
    assert_eq!(c["chance"], 0.5);
    for key in ["kid_generated", "kid_held_out", "kid_shaped_noise"] {
        assert!(
            report["judge"][key]["mean"].as_f64().unwrap().is_finite(),
            "{key}"
        );
    }
    let envelope = &report["envelope"];
    assert_eq!(envelope["generated_median_db"].as_array().unwrap().len(), 8);
    assert!(report["shaped_noise"].as_f64().unwrap() < report["white_noise"].as_f64().unwrap());
    assert!(plots.join("envelope.png").is_file() && plots.join("confusion.png").is_file());
    // Text output names the bounds.
    let r = eval(&["--judge", s(&judge), "--classes", "tone"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stdout.contains("heard as the requested class") && r.stdout.contains("chance 50.0%"),
        "{}",
        r.stdout
    );

    // Mistakes: one clear line each.
    let image_judge = repo_root().join("data/models/mnist-classifier");
    assert_user_error(
        &eval(&["--judge", s(&image_judge)]),
        &["--judge", "not an audio judge"],
    );
    assert_user_error(
        &eval(&["--judge", s(&judge), "--classes", "cello"]),
        &["--classes", "cello"],
    );
    assert_user_error(
        &eval(&["--judge", s(&judge), "--class", "tone", "--classes", "tone"]),
        &["--classes", "either --class or --classes"],
    );
    let plain = tiny_model(&tmp.path().join("plain"), &[]);
    let r = diffuse(
        &[
            "eval",
            "audio",
            "--model",
            s(&plain),
            "--classes",
            "tone",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--classes", "not class-conditioned"]);
    let r = diffuse(
        &[
            "eval",
            "audio",
            "--model",
            s(&plain),
            "--guidance",
            "3",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--guidance", "not class-conditioned"]);
    let r = diffuse(
        &[
            "train",
            "classifier",
            "--data",
            s(&classes),
            "--out",
            s(&tmp.path().join("j2")),
            "--resolution",
            "28",
        ],
        None,
    );
    assert_user_error(&r, &["--resolution", "only for images"]);
    assert!(!tmp.path().join("j2").exists());
}

/// `train audio` with no recipe flags trains the measured recipe (BENCHMARKS.md, "Choosing the
/// audio recipe"): the five-level UNet1d with attention in its two coarsest levels (no position
/// channel), v-prediction on DiffWave's schedule rescaled to zero terminal SNR with
/// trailing steps, clips scaled to a spread of 0.5, DDIM previews, and a clip length the network
/// takes whole (1.024 s at a folder's default 16 kHz: 16384 frames, a multiple of 4^4); each part
/// can be turned off or changed by its flag.
#[test]
fn train_audio_defaults_to_the_measured_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture();
    let train = |name: &str, extra: &[&str]| -> serde_json::Value {
        let out = tmp.path().join(name);
        let mut args = vec![
            "train",
            "audio",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--sample-every",
            "0",
            "--sample-num",
            "1",
            "--sample-steps",
            "2",
            "--val-fraction",
            "0.4",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run_ok(&args);
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap()
    };
    let run = train("default", &[]);
    assert_eq!(run["audio"]["sample_rate"], 16000);
    assert_eq!(run["audio"]["clip_frames"], 16384);
    let net = &run["network"];
    assert_eq!(net["type"], "unet1d");
    assert_eq!(
        net["block_out_channels"],
        serde_json::json!([16, 32, 64, 96, 128])
    );
    assert_eq!(net["down_factors"], serde_json::json!([4, 4, 4, 4]));
    assert_eq!(
        net["attention_levels"],
        serde_json::json!([false, false, false, true, true])
    );
    // Off, so not written.
    assert!(net["position_channel"].is_null() && net["position_frames"].is_null());
    assert_eq!(run["objective"]["prediction_type"], "v_prediction");
    assert_eq!(run["scheduler"]["rescale_betas_zero_snr"], true);
    assert_eq!(run["scheduler"]["timestep_spacing"], "trailing");
    assert_eq!(run["data_scale"], serde_json::json!({"std": 0.5}));
    assert_eq!(run["sample_sampler"], "ddim");
    assert_eq!(run["train"]["optimizer"]["lr"], 4e-4);

    // Each part by its flag: a typed length is kept as typed, the position channel turns on
    // (sized to it), epsilon prediction leaves the rescaled schedule out, four levels keep
    // attention in their two coarsest.
    let run = train(
        "changed",
        &[
            "--seconds",
            "0.3",
            "--position-channel",
            "--prediction-type",
            "epsilon",
            "--block-out-channels",
            "16,32,64,96",
        ],
    );
    assert_eq!(run["audio"]["clip_frames"], 4800);
    assert_eq!(run["network"]["position_channel"], true);
    assert_eq!(run["network"]["position_frames"], 4800);
    assert_eq!(
        run["network"]["attention_levels"],
        serde_json::json!([false, false, true, true])
    );
    assert_eq!(run["objective"]["prediction_type"], "epsilon");
    assert_eq!(run["scheduler"]["rescale_betas_zero_snr"], false);
    let run = train(
        "diffwave",
        &[
            "--network",
            "diffwave",
            "--residual-channels",
            "8",
            "--residual-layers",
            "2",
            "--zero-terminal-snr",
            "false",
        ],
    );
    assert_eq!(run["network"]["type"], "diffwave");
    // DiffWave takes any length: 1.024 s as it is; the zero-SNR schedule turns off.
    assert_eq!(run["audio"]["clip_frames"], 16384);
    assert!(run["network"]["position_channel"].is_null());
    assert_eq!(run["objective"]["prediction_type"], "v_prediction");
    assert_eq!(run["scheduler"]["rescale_betas_zero_snr"], false);
}
