//! Resampling: tones keep their frequency and phase (compared with the analytically resampled
//! sine), impulses stay in place, tones above the new Nyquist frequency are removed rather than
//! folded back, and lengths follow round(frames * new_rate / old_rate).

use diffuse_audio::clip::AudioClip;
use tch::{Kind, Tensor};

fn sine(rate: u32, freq: f64, secs: f64, amplitude: f64) -> Vec<f32> {
    let n = (rate as f64 * secs).round() as usize;
    (0..n)
        .map(|i| {
            (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32
        })
        .collect()
}

/// Index of the largest bin of the Hann-windowed magnitude spectrum, and the number of samples.
fn dominant_bin(x: &[f32]) -> (i64, usize) {
    let t = Tensor::from_slice(x);
    let n = x.len() as i64;
    let w = Tensor::hann_window_periodic(n, true, (Kind::Float, tch::Device::Cpu));
    let spectrum = (t * w).fft_rfft(None, 0, "backward").abs();
    (spectrum.argmax(0, false).int64_value(&[]), x.len())
}

/// RMS of `x[skip..len - skip]`.
fn rms(x: &[f32], skip: usize) -> f64 {
    let mid = &x[skip..x.len() - skip];
    (mid.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / mid.len() as f64).sqrt()
}

#[test]
fn tones_keep_frequency_and_phase() {
    // (from, to, tone Hz)
    let cases = [
        (8000, 16000, 440.0),
        (44100, 16000, 440.0),
        (48000, 22050, 440.0),
        (16000, 8000, 1000.0),
        (22050, 44100, 3000.0),
        (44100, 16000, 6000.0), // 75 % of the new Nyquist: still in the passband
    ];
    for (from, to, freq) in cases {
        let secs = 1.0;
        let clip = AudioClip::new(from, vec![sine(from, freq, secs, 0.5)]).unwrap();
        let out = clip.resample(to).unwrap();
        assert_eq!(out.sample_rate, to);
        assert_eq!(out.frames(), to as usize);
        let y = &out.channels[0];
        let (bin, n) = dominant_bin(y);
        let expected_bin = freq * n as f64 / to as f64;
        assert!(
            (bin as f64 - expected_bin).abs() <= 1.0,
            "{from}->{to}: {freq} Hz peaks in bin {bin}, expected {expected_bin}"
        );
        // Against the sine sampled directly at the new rate, 50 ms in from both ends (the
        // filter sees silence beyond the clip, so the first and last few ms differ).
        let reference = sine(to, freq, secs, 0.5);
        let skip = to as usize / 20;
        let err: Vec<f32> = y.iter().zip(&reference).map(|(a, b)| a - b).collect();
        let rms_err = rms(&err, skip);
        println!(
            "{from} -> {to} Hz, {freq} Hz tone: peak bin {bin} (expected {expected_bin:.1}), \
             RMS error {rms_err:.2e} (amplitude 0.5)"
        );
        assert!(rms_err < 1e-5, "{from}->{to}: RMS error {rms_err}");
    }
}

#[test]
fn impulses_stay_in_place_in_every_channel() {
    for (from, to, at) in [
        (8000u32, 16000u32, 1000usize),
        (44100, 16000, 4410),
        (48000, 22050, 9600),
    ] {
        let mut left = vec![0f32; from as usize];
        left[at] = 1.0;
        let mut right = vec![0f32; from as usize];
        right[2 * at] = -1.0;
        let out = AudioClip::new(from, vec![left, right])
            .unwrap()
            .resample(to)
            .unwrap();
        let expected = |k: usize| (k as f64 * to as f64 / from as f64).round() as usize;
        let argmax = |ch: &[f32]| {
            ch.iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0
        };
        assert_eq!(argmax(&out.channels[0]), expected(at), "{from}->{to} left");
        assert_eq!(
            argmax(&out.channels[1]),
            expected(2 * at),
            "{from}->{to} right"
        );
        assert!(out.channels[1][expected(2 * at)] < 0.0, "sign kept");
    }
}

#[test]
fn tones_above_the_new_nyquist_are_removed() {
    // (from, to, tone Hz): every tone lies above to / 2 and would alias without a filter.
    let cases = [
        (48000, 16000, 12000.0),
        (44100, 16000, 10000.0),
        (48000, 22050, 15000.0),
        (16000, 8000, 4500.0),
    ];
    for (from, to, freq) in cases {
        let clip = AudioClip::new(from, vec![sine(from, freq, 1.0, 0.5)]).unwrap();
        let out = clip.resample(to).unwrap();
        let input_rms = rms(&clip.channels[0], 0);
        let output_rms = rms(&out.channels[0], to as usize / 20);
        let attenuation_db = 20.0 * (input_rms / output_rms.max(1e-30)).log10();
        println!("{from} -> {to} Hz, {freq} Hz tone: attenuated by {attenuation_db:.1} dB");
        assert!(
            attenuation_db > 40.0,
            "{from}->{to} {freq} Hz: only {attenuation_db} dB"
        );
    }
}

#[test]
fn lengths_follow_the_rounding_rule_and_rate_zero_is_refused() {
    for (from, to) in [
        (8000u32, 16000u32),
        (44100, 16000),
        (48000, 22050),
        (16000, 44100),
        (22050, 8000),
    ] {
        for frames in [0usize, 1, 2, 7, 100, 1001, 12345] {
            let clip = AudioClip::new(from, vec![vec![0.1; frames]; 2]).unwrap();
            let out = clip.resample(to).unwrap();
            let expected = (frames as f64 * to as f64 / from as f64).round() as usize;
            assert_eq!(out.frames(), expected, "{frames} frames {from}->{to}");
            assert_eq!(out.num_channels(), 2);
        }
    }
    let clip = AudioClip::new(8000, vec![vec![0.0; 10]]).unwrap();
    let e = clip.resample(0).unwrap_err().to_string();
    assert!(e.contains("0 Hz"), "{e}");
}
