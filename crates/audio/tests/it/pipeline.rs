//! The audio model directory and pipeline: save/load round trips (weights, schedule, notes, a
//! user's model card kept), seeded sampling, any clip length, gap filling that keeps the
//! recording outside the gap exactly and its rate and channel count, at the recording's level
//! (not the training data's, and bounded over silence), and one clear error for each bad input.

use crate::rng_lock;
use diffuse_audio::clip::AudioClip;
use diffuse_audio::data::{AudioDataConfig, Normalize};
use diffuse_audio::diffwave::DiffWaveConfig;
use diffuse_audio::network::AudioNetworkConfig;
use diffuse_audio::pipeline::{AudioModelInfo, AudioPipeline, AudioSampleOptions, MAX_LEVEL_GAIN};
use diffuse_audio::train::diffwave_schedule;
use diffuse_audio::unet1d::UNet1dConfig;
use diffuse_audio::wav::SampleFormat;
use diffuse_core::sampler_choice::SamplerChoice;
use diffuse_core::scheduler_config::SchedulerConfig;
use std::fs;
use tch::{Device, Kind, Tensor};

fn tiny(network: &str) -> AudioPipeline {
    let config = match network {
        "diffwave" => AudioNetworkConfig::DiffWave(DiffWaveConfig {
            residual_channels: 8,
            residual_layers: 4,
            dilation_cycle: 2,
            ..DiffWaveConfig::default()
        }),
        _ => AudioNetworkConfig::Unet1d(UNet1dConfig {
            block_out_channels: vec![8, 16],
            down_factors: vec![4],
            norm_num_groups: 4,
            attention_head_dim: 8,
            ..UNet1dConfig::default()
        }),
    };
    let info = AudioModelInfo {
        sample_rate: 8000,
        channels: 1,
        clip_frames: 400,
        ..AudioModelInfo::default()
    };
    tch::manual_seed(3);
    let pipeline = AudioPipeline::new(
        &config,
        SchedulerConfig::Ddpm(diffwave_schedule()),
        info,
        Device::Cpu,
    )
    .unwrap();
    // Move every weight off its initial value so the zero-initialised output matters.
    tch::no_grad(|| {
        for (_, mut v) in pipeline.vs.variables() {
            let _ = v.g_add_(&(Tensor::randn_like(&v) * 0.05));
        }
    });
    pipeline
}

fn fast(num: usize, seconds: Option<f64>) -> AudioSampleOptions {
    AudioSampleOptions {
        num,
        seconds,
        sampler: SamplerChoice {
            name: Some("diffwave-fast".into()),
            ..SamplerChoice::default()
        },
        seed: Some(7),
        batch_size: None,
        ..AudioSampleOptions::default()
    }
}

#[test]
fn save_and_load_round_trip_and_keep_a_model_card() {
    let _guard = rng_lock();
    for network in ["diffwave", "unet1d"] {
        let pipeline = tiny(network);
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        pipeline.save(&model).unwrap();
        fs::write(model.join("README.md"), "my model card").unwrap();
        pipeline.save(&model).unwrap();
        assert_eq!(
            fs::read_to_string(model.join("README.md")).unwrap(),
            "my model card"
        );
        let loaded = AudioPipeline::load(&model, Device::Cpu).unwrap();
        assert_eq!(loaded.info, pipeline.info);
        assert_eq!(loaded.network.config(), pipeline.network.config());
        let a = pipeline.sample(&fast(2, None), |_, _| {}).unwrap();
        let b = loaded.sample(&fast(2, None), |_, _| {}).unwrap();
        assert_eq!(a.size(), [2, 1, 400]);
        assert!(a.equal(&b), "{network}: a loaded model samples differently");
        // A training run directory holding model/ loads too.
        assert!(AudioPipeline::load(dir.path(), Device::Cpu).is_ok());
    }
}

#[test]
fn any_length_seeded_and_batched_sampling() {
    let _guard = rng_lock();
    for network in ["diffwave", "unet1d"] {
        let pipeline = tiny(network);
        // 0.1234 s at 8 kHz = 987 frames, not a multiple of the UNet's downsampling.
        let x = pipeline.sample(&fast(3, Some(0.1234)), |_, _| {}).unwrap();
        assert_eq!(x.size(), [3, 1, 987]);
        assert!(x.abs().max().double_value(&[]) <= 1.0);
        let again = pipeline.sample(&fast(3, Some(0.1234)), |_, _| {}).unwrap();
        assert!(
            x.equal(&again),
            "{network}: seeded sampling is not reproducible"
        );
        let mut calls = 0;
        let mut batched = fast(3, Some(0.1234));
        batched.batch_size = Some(2);
        let y = pipeline
            .sample(&batched, |done, total| {
                calls += 1;
                assert!(done <= total && total == 6);
            })
            .unwrap();
        assert_eq!(y.size(), [3, 1, 987]);
        // The batch size splits the network's calls, not the sampler's steps.
        assert_eq!(calls, 6, "6 steps, for all clips together");
        let clips = pipeline
            .sample_clips(&fast(1, Some(0.05)), |_, _| {})
            .unwrap();
        assert_eq!(clips[0].frames(), 400);
        assert_eq!(clips[0].sample_rate, 8000);
    }
}

#[test]
fn seeded_clips_do_not_depend_on_the_batch_size() {
    let _guard = rng_lock();
    let pipeline = tiny("diffwave");
    // Stochastic per-step noise (ddpm, ddim with eta 1) as well as the initial noise.
    for (name, eta) in [("ddpm", None), ("ddim", None), ("ddim", Some(1.0))] {
        let options = |batch_size| AudioSampleOptions {
            num: 3,
            seconds: Some(0.02),
            sampler: SamplerChoice {
                name: Some(name.into()),
                steps: Some(5),
                eta,
                ..SamplerChoice::default()
            },
            seed: Some(5),
            batch_size,
            ..AudioSampleOptions::default()
        };
        let all = pipeline.sample(&options(None), |_, _| {}).unwrap();
        for batch in [1, 2, 3, 7] {
            let x = pipeline.sample(&options(Some(batch)), |_, _| {}).unwrap();
            assert!(
                x.allclose(&all, 1e-5, 1e-6, false),
                "{name} eta {eta:?}: batch size {batch} changed the clips by {}",
                (&x - &all).abs().max().double_value(&[])
            );
        }
    }
}

#[test]
fn gap_filling_keeps_the_recordings_rate_channels_and_samples() {
    let _guard = rng_lock();
    let pipeline = tiny("diffwave");
    // A 16 kHz stereo recording with different channels: the model sees it mixed to mono at
    // its 8 kHz; what comes back is stereo at 16 kHz.
    let t = Tensor::arange(16000, (Kind::Float, Device::Cpu)) / 16000.0;
    let tone = (&t * (2.0 * std::f64::consts::PI * 440.0)).sin() * 0.5;
    let other = (&t * (2.0 * std::f64::consts::PI * 220.0)).sin() * 0.3;
    let stereo = Tensor::stack(&[tone, other], 0);
    let recording = AudioClip::from_tensor(&stereo, 16000).unwrap();
    let conformed = pipeline.conform(&recording).unwrap();
    assert_eq!((conformed.sample_rate, conformed.num_channels()), (8000, 1));
    assert_eq!(conformed.frames(), 8000);
    let filled = pipeline
        .fill_gap(&recording, (0.25, 0.5), None, &fast(2, None), |_| {})
        .unwrap();
    assert_eq!(filled.len(), 2);
    for clip in &filled {
        assert_eq!(
            (clip.sample_rate, clip.num_channels(), clip.frames()),
            (16000, 2, 16000)
        );
        for (got, original) in clip.channels.iter().zip(&recording.channels) {
            assert_eq!(got[..4000], original[..4000], "before the gap");
            assert_eq!(got[8000..], original[8000..], "after the gap");
            let changed = (4000..8000)
                .map(|i| (got[i] - original[i]).abs())
                .fold(0f32, f32::max);
            assert!(changed > 0.01, "the gap was not regenerated");
        }
        // The mono model's gap is spread to both channels (past the fades at its edges).
        assert_eq!(clip.channels[0][4200..7800], clip.channels[1][4200..7800]);
    }
    assert_ne!(filled[0], filled[1]);
}

/// The tiny random 8 kHz model, recording peak normalisation as trained models do.
fn tiny_peak_normalised() -> AudioPipeline {
    let mut pipeline = tiny("diffwave");
    pipeline.info.data = Some(AudioDataConfig {
        normalize: Normalize::Peak(0.95),
        ..AudioDataConfig::default()
    });
    pipeline
}

/// Root mean square of `x`, in dBFS.
fn rms_db(x: &[f32]) -> f64 {
    let mean = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    10.0 * mean.log10()
}

/// Drum-like hits (noise bursts over a falling low tone) every quarter second, at `rms_dbfs`.
fn drum_loop(rate: u32, seconds: f64, rms_dbfs: f64) -> Vec<f32> {
    let n = (rate as f64 * seconds).round() as usize;
    let mut state = 12345u64;
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
    let gain = 10f64.powf(rms_dbfs / 20.0) / rms;
    x.iter().map(|v| (v * gain) as f32).collect()
}

#[test]
fn the_gap_is_filled_at_the_recordings_level_not_the_models() {
    let _guard = rng_lock();
    let pipeline = tiny_peak_normalised();
    let loud = AudioClip::new(8000, vec![drum_loop(8000, 0.5, -20.0)]).unwrap();
    let quiet = AudioClip::new(8000, vec![drum_loop(8000, 0.5, -60.0)]).unwrap();
    let fill = |clip: &AudioClip| {
        pipeline
            .fill_gap(clip, (0.2, 0.3), None, &fast(1, None), |_| {})
            .unwrap()
            .remove(0)
    };
    // The model sees both at its level, so it makes the same gap, 40 dB apart.
    let (a, b) = (fill(&loud), fill(&quiet));
    let gap = 1600..2400;
    let scale = quiet.peak() as f64 / loud.peak() as f64;
    let worst = gap
        .clone()
        .map(|i| (a.channels[0][i] as f64 * scale - b.channels[0][i] as f64).abs())
        .fold(0f64, f64::max);
    assert!(
        worst < 1e-4 * scale,
        "the quiet recording's gap is not the loud one's scaled by {scale}: off by {worst}"
    );
    let peak = b.channels[0][gap.clone()]
        .iter()
        .fold(0f32, |m, &x| m.max(x.abs()));
    assert!(peak > 0.0 && peak <= 1.0 / pipeline.level_gain(&quiet, &gap) + 1e-6);

    // Silent surroundings: the gain is bounded, the gap comes back near silent, never NaN.
    let silence = AudioClip::new(8000, vec![vec![0.0; 4000]]).unwrap();
    assert_eq!(pipeline.level_gain(&silence, &gap), MAX_LEVEL_GAIN);
    let filled = fill(&silence);
    assert!(filled.channels[0]
        .iter()
        .all(|x| x.is_finite() && x.abs() <= 1.0 / MAX_LEVEL_GAIN));
    // A gap that is the whole clip has no surroundings: the model's own level.
    let whole = pipeline
        .fill_gap(&quiet, (0.0, 0.5), None, &fast(1, None), |_| {})
        .unwrap();
    assert!(whole[0].peak() > 20.0 * quiet.peak());
}

#[test]
fn the_level_is_measured_as_training_normalised_it_around_the_gap() {
    // Making the model draws its weights from the generator.
    let _guard = rng_lock();
    let mut pipeline = tiny("diffwave");
    // 400-frame training clips: only the kept audio within 400 frames of the gap counts.
    let mut samples = vec![0.0f32; 3000];
    samples[1000] = 0.25;
    samples[1100] = -0.05;
    samples[2900] = 0.9;
    let clip = AudioClip::new(8000, vec![samples]).unwrap();
    let gap = 1200..1500;
    assert_eq!(
        pipeline.level_gain(&clip, &gap),
        1.0,
        "no normalisation recorded"
    );
    let mut with = |normalize| {
        pipeline.info.data = Some(AudioDataConfig {
            normalize,
            ..AudioDataConfig::default()
        });
        pipeline.level_gain(&clip, &gap)
    };
    assert_eq!(with(Normalize::None), 1.0);
    assert!((with(Normalize::Peak(0.5)) - 2.0).abs() < 1e-6);
    // RMS over the 400 + 400 kept frames around the gap, limited so the peak stays below 1.
    let rms = ((0.25f32 * 0.25 + 0.05 * 0.05) / 800.0).sqrt();
    let expected = (0.01 / rms).min(4.0);
    assert!((with(Normalize::RmsDb(-40.0)) - expected).abs() < 1e-4);
    assert!((with(Normalize::RmsDb(-3.0)) - 4.0).abs() < 1e-6);
}

#[test]
fn the_bundled_drum_model_fills_a_quiet_recording_as_quietly() {
    let _guard = rng_lock();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/models/drums");
    let pipeline = AudioPipeline::load(&model, Device::Cpu).unwrap();
    // One second at -40 dBFS; the gap 0.4:0.6 s holds the hit at 0.5 s.
    let quiet = AudioClip::new(16000, vec![drum_loop(16000, 1.0, -40.0)]).unwrap();
    let filled = pipeline
        .fill_gap(&quiet, (0.4, 0.6), None, &fast(1, None), |_| {})
        .unwrap()
        .remove(0);
    let x = &filled.channels[0];
    let around = [&x[..6400], &x[9600..]].concat();
    let (gap, surroundings) = (rms_db(&x[6400..9600]), rms_db(&around));
    assert!(
        (gap - surroundings).abs() < 10.0,
        "the gap is at {gap:.1} dBFS, its surroundings at {surroundings:.1} dBFS"
    );
}

fn err<T>(r: diffuse_tensor::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_one_clear_error() {
    let _guard = rng_lock();
    let pipeline = tiny("diffwave");
    let clip = AudioClip::new(8000, vec![vec![0.1; 800]]).unwrap();
    let e = err(pipeline.fill_gap(&clip, (0.05, 0.2), None, &fast(1, None), |_| {}));
    assert!(e.contains("--gap") && e.contains("past the end"), "{e}");
    let e = err(pipeline.fill_gap(&clip, (0.08, 0.02), None, &fast(1, None), |_| {}));
    assert!(e.contains("--gap") && e.contains("START < END"), "{e}");
    let e = err(pipeline.fill_gap(&clip, (-0.1, 0.02), None, &fast(1, None), |_| {}));
    assert!(e.contains("--gap"), "{e}");
    let e = err(pipeline.sample(&fast(1, Some(0.0)), |_, _| {}));
    assert!(e.contains("--seconds"), "{e}");
    let e = err(pipeline.sample(&fast(0, None), |_, _| {}));
    assert!(e.contains("--num"), "{e}");
    let e = err(pipeline.sampler(&SamplerChoice {
        name: Some("ddim".into()),
        steps: Some(500),
        ..SamplerChoice::default()
    }));
    assert!(e.starts_with("--steps"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let e = err(AudioPipeline::load(&dir.path().join("absent"), Device::Cpu));
    assert!(e.contains("no such model directory"), "{e}");
    pipeline.save(&dir.path().join("m")).unwrap();
    fs::remove_file(dir.path().join("m/scheduler_config.json")).unwrap();
    let e = err(AudioPipeline::load(&dir.path().join("m"), Device::Cpu));
    assert!(e.contains("scheduler_config.json is missing"), "{e}");
    pipeline.save(&dir.path().join("n")).unwrap();
    fs::write(dir.path().join("n/diffuse.json"), r#"{"sample_rate": 0}"#).unwrap();
    let e = err(AudioPipeline::load(&dir.path().join("n"), Device::Cpu));
    assert!(
        e.contains("diffuse.json") && e.contains("sample_rate") && e.contains("got 0"),
        "{e}"
    );
}

#[test]
fn every_field_of_diffuse_json_is_checked_on_loading() {
    let _guard = rng_lock();
    let pipeline = tiny("diffwave");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    pipeline.save(&model).unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(model.join("diffuse.json")).unwrap()).unwrap();
    let mut data = serde_json::to_value(diffuse_audio::data::AudioDataConfig::default()).unwrap();
    data["validation_fraction"] = 1.5.into();
    for (field, value, expected) in [
        ("clip_frames", serde_json::json!(0), "clip_frames"),
        ("clip_frames", serde_json::json!(1u64 << 40), "clip_frames"),
        ("sample_rate", serde_json::json!(0), "sample_rate"),
        (
            "sample_rate",
            serde_json::json!(4_000_000_000u32),
            "sample_rate",
        ),
        ("channels", serde_json::json!(0), "channels"),
        ("channels", serde_json::json!(3), "channels"),
        ("channels", serde_json::json!(2), "network takes 1"),
        ("data", data, "validation_fraction"),
    ] {
        let mut info = good.clone();
        info[field] = value.clone();
        fs::write(model.join("diffuse.json"), info.to_string()).unwrap();
        let e = err(AudioPipeline::load(&model, Device::Cpu));
        assert!(
            e.contains("diffuse.json") && e.contains(expected) && !e.contains('\n'),
            "{field} = {value}: {e}"
        );
    }
    // A network whose output is neither C nor 2C channels.
    fs::write(model.join("diffuse.json"), good.to_string()).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["out_channels"] = 3.into();
    fs::write(model.join("config.json"), config.to_string()).unwrap();
    let e = err(AudioPipeline::load(&model, Device::Cpu));
    assert!(
        e.contains("diffuse.json") && e.contains("3 channels"),
        "{e}"
    );
}

#[test]
fn gap_filling_keeps_32_bit_recordings_bit_exact() {
    use diffuse_audio::wav::{read_audio_exact, write_wav_exact, ExactAudio, StoredFormat};
    let _guard = rng_lock();
    let pipeline = tiny("diffwave");
    // One second of 32-bit codes whose low bits are set: f32 cannot hold them.
    let codes: Vec<i32> = (0..8000i64)
        .map(|i| ((i * 7919 % 4001 - 2000) * 250_007 + 1) as i32)
        .collect();
    let recording = ExactAudio::new(
        8000,
        vec![codes.iter().map(|&q| q as f64 / 2f64.powi(31)).collect()],
        Some(StoredFormat::Int(32)),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    write_wav_exact(&input, &recording, SampleFormat::Int32).unwrap();
    let recording = read_audio_exact(&input).unwrap();
    let filled = pipeline
        .fill_gap_exact(&recording, (0.25, 0.5), None, &fast(1, None), |_| {})
        .unwrap();
    let out = dir.path().join("out.wav");
    write_wav_exact(&out, &filled[0], SampleFormat::Int32).unwrap();
    let written: Vec<i32> = hound::WavReader::open(&out)
        .unwrap()
        .into_samples::<i32>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(written.len(), 8000);
    assert_eq!(written[..2000], codes[..2000], "before the gap");
    assert_eq!(written[4000..], codes[4000..], "after the gap");
    assert_ne!(
        written[2000..4000],
        codes[2000..4000],
        "the gap was not filled"
    );
    // Through f32 the same recording would not survive: the exact path is what keeps it.
    let through_f32 = recording.to_clip();
    assert!(through_f32.channels[0]
        .iter()
        .zip(&codes)
        .any(|(&x, &q)| (x as f64 * 2f64.powi(31)) as i64 != q as i64));
}

#[test]
fn a_model_that_makes_nan_is_an_error_not_silence() {
    let _guard = rng_lock();
    let pipeline = tiny("diffwave");
    tch::no_grad(|| {
        for (_, mut v) in pipeline.vs.variables() {
            let _ = v.fill_(f64::NAN);
        }
    });
    let clip = AudioClip::new(8000, vec![vec![0.1; 800]]).unwrap();
    let e = err(pipeline.fill_gap(&clip, (0.02, 0.05), None, &fast(1, None), |_| {}));
    assert!(e.contains("NaN"), "{e}");
    let e = err(pipeline.sample(&fast(1, None), |_, _| {}));
    assert!(e.contains("NaN"), "{e}");
}
