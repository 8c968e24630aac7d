//! Log-mel features against librosa 0.11 (golden values from tests/golden/make_mel_golden.py):
//! Slaney filterbanks and whole log-mel spectrograms of a synthetic signal and a real spoken
//! digit; tones landing in their mel band; the log-mel Fréchet distance ordering same < similar
//! < different; and the spectrogram PNG.

use super::wav::speech_digits_dir;
use diffuse_audio::data::{AudioDataConfig, AudioDataset, Holdout, Normalize, Split, Trim};
use diffuse_audio::features::{
    log_mel_frechet, log_mel_spectrogram, log_mel_stats, mel_filterbank, save_spectrogram_png,
    MelConfig,
};
use diffuse_audio::wav::read_audio;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn golden() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mel_golden.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn config_of(g: &serde_json::Value) -> MelConfig {
    serde_json::from_value(g["config"].clone()).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).contiguous().view([-1]);
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    v
}

#[test]
fn mel_filterbanks_match_librosa() {
    let g = golden();
    for bank in g["filterbanks"].as_array().unwrap() {
        let config = config_of(bank);
        let fb = mel_filterbank(&config);
        let n_freqs = config.n_fft / 2 + 1;
        assert_eq!(fb.size(), [config.n_mels as i64, n_freqs as i64]);
        let fb = to_vec(&fb);
        let mut worst = 0f64;
        for (m, row) in bank["rows"].as_array().unwrap().iter().enumerate() {
            let start = row["start"].as_u64().unwrap() as usize;
            let weights: Vec<f64> = row["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .collect();
            let scale = weights.iter().fold(0f64, |a, &w| a.max(w));
            for k in 0..n_freqs {
                let want = if (start..start + weights.len()).contains(&k) {
                    weights[k - start]
                } else {
                    0.0
                };
                let got = fb[m * n_freqs + k] as f64;
                let err = (got - want).abs() / scale;
                worst = worst.max(err);
                assert!(err < 1e-6, "band {m} bin {k}: {got} vs librosa {want}");
            }
        }
        println!(
            "filterbank {} Hz n_fft {} {} mels {}-{} Hz: worst relative difference {worst:.1e}",
            config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.f_max
        );
    }
}

/// Compare a log-mel result with librosa's: within 0.01 dB where librosa's value is within 80 dB
/// of the loudest cell (f32 STFT rounding is far below that), within 1 dB further down, where
/// f32 leakage of 1e-7 of the loudest bin is no longer negligible.
fn compare_db(got: &Tensor, g: &serde_json::Value, what: &str) {
    let want: Vec<Vec<f64>> = serde_json::from_value(g["db"].clone()).unwrap();
    let frames = g["frames"].as_u64().unwrap() as i64;
    let n_mels = want[0].len() as i64;
    assert_eq!(got.size(), [1, frames, n_mels], "{what}");
    let got = to_vec(got);
    let top = want.iter().flatten().fold(f64::MIN, |a, &b| a.max(b));
    let (mut worst_loud, mut worst_quiet) = (0f64, 0f64);
    for (t, frame) in want.iter().enumerate() {
        for (m, &w) in frame.iter().enumerate() {
            let err = (got[t * n_mels as usize + m] as f64 - w).abs();
            if w > top - 80.0 {
                worst_loud = worst_loud.max(err);
            } else {
                worst_quiet = worst_quiet.max(err);
            }
        }
    }
    println!(
        "{what}: {frames} frames x {n_mels} mels, largest difference from librosa \
         {worst_loud:.1e} dB (cells within 80 dB of the top), {worst_quiet:.1e} dB (below)"
    );
    assert!(worst_loud < 0.01, "{what}: {worst_loud} dB");
    assert!(worst_quiet < 1.0, "{what}: {worst_quiet} dB");
}

#[test]
fn log_mel_spectrograms_match_librosa() {
    let g = golden();
    let synthetic = &g["synthetic"];
    let config = config_of(synthetic);
    let rate = config.sample_rate as f64;
    let x: Vec<f64> = (0..2000)
        .map(|i| {
            let t = i as f64 / rate;
            let tau = std::f64::consts::TAU;
            let chirp = (tau * (100.0 * t + 0.5 * (3500.0 - 100.0) / 0.25 * t * t)).sin();
            0.5 * (tau * 440.0 * t).sin() + 0.25 * (tau * 1900.0 * t + 0.3).sin() + 0.1 * chirp
        })
        .collect();
    let x = Tensor::from_slice(&x).to_kind(Kind::Float);
    compare_db(&log_mel_spectrogram(&x, &config), synthetic, "synthetic");

    let speech = &g["speech"];
    let config = config_of(speech);
    assert_eq!(
        config,
        MelConfig::for_rate(8000),
        "the golden uses the 8 kHz defaults"
    );
    let clip = read_audio(&speech_digits_dir().join("0.wav")).unwrap();
    let db = log_mel_spectrogram(&clip.to_tensor(), &config);
    compare_db(&db, speech, "speech digit 0");
}

#[test]
fn shapes_and_channel_averaging() {
    let config = MelConfig::for_rate(16000);
    let x = Tensor::randn([3, 2, 4000], (Kind::Float, Device::Cpu));
    let db = log_mel_spectrogram(&x, &config);
    assert_eq!(db.size(), [3, 1 + 4000 / 256, 64]);
    let mono = x.mean_dim(1, false, Kind::Float);
    assert!(db.allclose(&log_mel_spectrogram(&mono, &config), 1e-5, 1e-4, false));
    let single = log_mel_spectrogram(&mono.get(1), &config);
    assert!(single.allclose(&db.narrow(0, 1, 1), 1e-5, 1e-4, false));
}

#[test]
fn a_tone_peaks_in_the_band_holding_its_frequency() {
    let config = MelConfig::for_rate(16000);
    let fb = to_vec(&mel_filterbank(&config));
    let n_freqs = config.n_fft / 2 + 1;
    for freq in [300.0, 1000.0, 3000.0, 6000.0] {
        let x: Vec<f32> = (0..16000)
            .map(|i| (0.5 * (std::f64::consts::TAU * freq * i as f64 / 16000.0).sin()) as f32)
            .collect();
        let db = log_mel_spectrogram(&Tensor::from_slice(&x), &config);
        let mean = db.mean_dim(1, false, Kind::Float).squeeze_dim(0);
        let band = mean.argmax(0, false).int64_value(&[]) as usize;
        // The band whose triangle weighs the tone's FFT bin most.
        let bin = (freq * config.n_fft as f64 / 16000.0).round() as usize;
        let expected = (0..config.n_mels)
            .max_by(|&a, &b| fb[a * n_freqs + bin].total_cmp(&fb[b * n_freqs + bin]))
            .unwrap();
        assert!(
            fb[band * n_freqs + bin] > 0.0,
            "{freq} Hz: band {band} does not cover it"
        );
        assert_eq!(band, expected, "{freq} Hz");
    }
}

fn digits(split: Split) -> Tensor {
    let config = AudioDataConfig {
        sample_rate: 8000,
        channels: 1,
        clip_frames: 6000,
        normalize: Normalize::Peak(0.9),
        trim_silence: Some(Trim::Absolute(0.01)),
        validation_fraction: 0.0,
        holdout: Holdout::EveryKth,
    };
    let nowhere = tempfile::tempdir().unwrap();
    AudioDataset::load(
        speech_digits_dir().to_str().unwrap(),
        split,
        &config,
        nowhere.path(),
    )
    .unwrap()
    .clips()
    .shallow_clone()
}

#[test]
fn frechet_orders_same_similar_and_different() {
    let _guard = super::rng_lock();
    let config = MelConfig::for_rate(8000);
    let all = digits(Split::All);
    let same = log_mel_frechet(&all, &all, &config);
    let first = all.narrow(0, 0, 5);
    let second = all.narrow(0, 5, 5);
    let halves = log_mel_frechet(&first, &second, &config);
    tch::manual_seed(0);
    let noise = (Tensor::randn([10, 1, 6000], (Kind::Float, Device::Cpu)) * 0.3).clamp(-1.0, 1.0);
    let vs_noise = log_mel_frechet(&first, &noise, &config);
    println!(
        "log-mel Fréchet (dB^2): same set {same:.2e}, digits 0-4 vs 5-9 {halves:.1}, \
         digits 0-4 vs white noise {vs_noise:.1}"
    );
    assert!(same < 1e-6 * halves, "{same}");
    assert!(
        halves > 0.0 && halves * 5.0 < vs_noise,
        "{halves} vs {vs_noise}"
    );
    let stats = log_mel_stats(&all, &config);
    assert_eq!(stats.dim(), 64);
    assert_eq!(stats.count, 10 * (1 + 6000 / 128));
}

#[test]
fn spectrogram_png_is_a_readable_picture() {
    let dir = tempfile::tempdir().unwrap();
    let clip = read_audio(&speech_digits_dir().join("0.wav")).unwrap();
    let path = dir.path().join("pictures/zero.png");
    save_spectrogram_png(&clip.to_tensor(), clip.sample_rate, &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // 6998 frames at 8 kHz with a 40-frame hop: 1 + 6998 / 40 = 175 columns; 128 mels x 2 px.
    assert_eq!(img.dimensions(), (175, 256));
    // Speech at 8 kHz is loudest below 1 kHz: the bottom quarter is brighter than the top one.
    let brightness = |rows: std::ops::Range<u32>| {
        let mut sum = 0f64;
        for y in rows.clone() {
            for x in 0..img.width() {
                sum += img.get_pixel(x, y).0.iter().map(|&c| c as f64).sum::<f64>();
            }
        }
        sum / (rows.len() as f64 * img.width() as f64)
    };
    let (top, bottom) = (brightness(0..64), brightness(192..256));
    println!("spectrogram PNG 175 x 256: mean brightness top quarter {top:.0}, bottom {bottom:.0}");
    assert!(bottom > top + 30.0, "{bottom} vs {top}");

    // Stereo input, long clips capped at 2048 columns, short ones stretched to 128, silence black.
    let long = Tensor::randn([2, 8000 * 20], (Kind::Float, Device::Cpu)) * 0.1;
    save_spectrogram_png(&long, 8000, &path).unwrap();
    assert_eq!(image::image_dimensions(&path).unwrap(), (2048, 256));
    let silent = Tensor::zeros([100], (Kind::Float, Device::Cpu));
    save_spectrogram_png(&silent, 16000, &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (128, 256));
    assert!(img.pixels().all(|p| p.0 == [0, 0, 4]));
    let names: Vec<_> = std::fs::read_dir(dir.path().join("pictures"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["zero.png"], "no temporary left behind");
    let e = save_spectrogram_png(&Tensor::zeros([0], (Kind::Float, Device::Cpu)), 8000, &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no samples"), "{e}");
}

#[test]
fn short_clips_and_low_rates_have_features() {
    // Shorter than half the usual window (8 ms at 16 kHz; 1 s at 100 Hz): padded with silence
    // instead of a panic.
    for (rate, len) in [(16000u32, 128i64), (100, 100), (16000, 1)] {
        let config = MelConfig::for_rate(rate);
        let x = Tensor::randn([2, len], (Kind::Float, Device::Cpu)) * 0.3;
        let db = log_mel_spectrogram(&x, &config);
        let padded = len.max(config.n_fft as i64 / 2 + 1);
        assert_eq!(
            db.size(),
            [
                2,
                1 + padded / config.hop_length as i64,
                config.n_mels as i64
            ]
        );
        assert!(db.isfinite().all().int64_value(&[]) == 1);
    }
    // What is long enough is measured as before: for_clip changes nothing there.
    for rate in [100, 8000, 16000, 44100] {
        let base = MelConfig::for_rate(rate);
        assert_eq!(MelConfig::for_clip(rate, base.n_fft), base);
        assert_eq!(MelConfig::for_clip(rate, 10 * base.n_fft), base);
    }
    // Shorter clips get a window that fits them, and bands that each read some FFT bins.
    for (rate, frames, n_fft) in [
        (16000, 128, 128),
        (100, 100, 64),
        (16000, 200, 128),
        (8000, 1, 2),
    ] {
        let c = MelConfig::for_clip(rate, frames);
        assert!(c.validate().is_ok(), "{c:?}");
        assert_eq!(c.n_fft, n_fft, "{rate} Hz, {frames} frames");
        assert!(c.n_fft <= frames.max(2) && c.hop_length >= 1);
        let fb = mel_filterbank(&c);
        let per_band = fb.sum_dim_intlist(1, false, Kind::Float);
        if frames >= 64 {
            assert!(
                per_band.gt(0.0).all().int64_value(&[]) == 1,
                "{c:?}: an empty mel band"
            );
        }
    }
}

#[test]
fn the_log_mel_report_measures_short_clips() {
    use diffuse_audio::eval::{log_mel_report, split_held_out};
    for (rate, frames) in [(16000u32, 128i64), (100, 100)] {
        let held = Tensor::randn([6, 1, frames], (Kind::Float, Device::Cpu)) * 0.2;
        let (reference, second) = split_held_out(&held).unwrap();
        let generated = Tensor::randn([1, 1, frames], (Kind::Float, Device::Cpu)) * 0.2;
        let report = log_mel_report(&generated, &reference, &second, rate, None).unwrap();
        assert_eq!(report.mel, MelConfig::for_clip(rate, frames as usize));
        for d in [report.generated, report.white_noise, report.held_out] {
            assert!(d.is_finite() && d >= 0.0, "{rate} Hz: {report:?}");
        }
    }
}
