//! Log-mel spectrograms: the features of the audio quality metric (the Fréchet distance between
//! Gaussians fitted to log-mel frames of two clip sets, the audio analogue of FID without a
//! trained classifier) and the pictures written beside generated clips.
//!
//! Conventions follow librosa, so numbers can be checked against it: the mel filterbank is
//! `librosa.filters.mel(htk=False, norm="slaney")` (Slaney's mel scale: linear below 1 kHz,
//! logarithmic above; each triangle scaled to unit area), frames are `torch.stft(center=True,
//! pad_mode="reflect")` with a periodic Hann window, the spectrum is the power |X|², and the log
//! is `librosa.power_to_db(ref=1, amin=1e-10, top_db=None)`: `10 log10(max(mel, 1e-10))` dB, so
//! digital silence sits at -100 dB instead of -inf.

use diffuse_tensor::frechet::{frechet_distance, FeatureStats};
use diffuse_tensor::{atomic, Error, Result};
use image::ImageEncoder;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Floor of the mel power before the log (librosa's `amin`): -100 dB.
const POWER_FLOOR: f64 = 1e-10;

/// Mel spectrogram parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MelConfig {
    /// Rate of the audio, Hz.
    pub sample_rate: u32,
    /// FFT length (= Hann window length), frames.
    pub n_fft: usize,
    /// Frames between successive windows.
    pub hop_length: usize,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest filter edge, Hz.
    pub f_min: f64,
    /// Highest filter edge, Hz.
    pub f_max: f64,
}

impl MelConfig {
    /// Sensible values for `sample_rate`: a window of about 64 ms (1024 at 16 kHz; the largest
    /// power of two not above `1024 * rate / 16000`, at least 256), hop a quarter window, 64 mel
    /// bands from 0 Hz to Nyquist.
    pub fn for_rate(sample_rate: u32) -> Self {
        let ideal = (1024 * sample_rate as u64 / 16000).max(256);
        let n_fft = 1usize << (63 - ideal.leading_zeros());
        MelConfig {
            sample_rate,
            n_fft,
            hop_length: n_fft / 4,
            n_mels: 64,
            f_min: 0.0,
            f_max: sample_rate as f64 / 2.0,
        }
    }

    /// [`MelConfig::for_rate`] fitted to clips of `frames` samples, for features of short clips
    /// (a few milliseconds, or a low sample rate): a window longer than the clip would be mostly
    /// padding, so when `frames < n_fft` the window shrinks to the largest power of two not above
    /// `frames` (at least 2), the hop stays a quarter window (at least 1), and the mel bands are
    /// at most `n_freqs / 2` (at least 1), so each triangle still spans a few FFT bins instead of
    /// falling between two and reading nothing. Clips of at least `n_fft` samples get
    /// `for_rate(sample_rate)` unchanged.
    pub fn for_clip(sample_rate: u32, frames: usize) -> Self {
        let base = Self::for_rate(sample_rate);
        if frames >= base.n_fft {
            return base;
        }
        let n_fft = (1usize << (usize::BITS - 1 - frames.max(2).leading_zeros())).max(2);
        MelConfig {
            n_fft,
            hop_length: (n_fft / 4).max(1),
            // n_freqs / 2 = (n_fft / 2 + 1) / 2, half the FFT bins.
            n_mels: base.n_mels.min((n_fft / 2).div_ceil(2)).max(1),
            ..base
        }
    }

    /// Number of FFT bins, `n_fft / 2 + 1`.
    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Check the fields (the feature functions panic on what this rejects).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("mel spectrogram: {m}")));
        if self.sample_rate == 0 {
            return bad("the sample rate must be above 0 Hz".into());
        }
        if self.n_fft < 2 || self.hop_length == 0 || self.n_mels == 0 {
            return bad(format!(
                "n_fft must be >= 2, hop_length and n_mels >= 1; got {}, {}, {}",
                self.n_fft, self.hop_length, self.n_mels
            ));
        }
        let nyquist = self.sample_rate as f64 / 2.0;
        if !(self.f_min >= 0.0 && self.f_min < self.f_max && self.f_max <= nyquist) {
            return bad(format!(
                "need 0 <= f_min < f_max <= {nyquist} Hz (Nyquist), got {} and {}",
                self.f_min, self.f_max
            ));
        }
        Ok(())
    }
}

/// Slaney's mel scale (Auditory Toolbox; librosa `hz_to_mel(htk=False)`): 3 mels per 200 Hz
/// below 1 kHz, then logarithmic with 27 mels per factor 6.4.
fn hz_to_mel(hz: f64) -> f64 {
    let (f_sp, min_log_hz, min_log_mel) = (200.0 / 3.0, 1000.0, 15.0);
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

/// Inverse of [`hz_to_mel`] (librosa `mel_to_hz(htk=False)`).
fn mel_to_hz(mel: f64) -> f64 {
    let (f_sp, min_log_hz, min_log_mel) = (200.0 / 3.0, 1000.0, 15.0);
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// Mel filterbank `[n_mels, n_fft / 2 + 1]` f32 (CPU), as `librosa.filters.mel(sr, n_fft,
/// n_mels, fmin, fmax, htk=False, norm="slaney")`: triangles between consecutive mel-spaced
/// edges, each scaled by `2 / (upper - lower edge in Hz)`. Computed in f64. Panics on an
/// invalid config (see [`MelConfig::validate`]).
pub fn mel_filterbank(config: &MelConfig) -> Tensor {
    if let Err(e) = config.validate() {
        panic!("{e}");
    }
    let n_freqs = config.n_freqs();
    let n_mels = config.n_mels;
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|k| k as f64 * config.sample_rate as f64 / config.n_fft as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(config.f_min), hz_to_mel(config.f_max));
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
        let area_norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - left) / (centre - left);
            let falling = (right - f) / (right - centre);
            let w = rising.min(falling).max(0.0);
            weights[m * n_freqs + k] = (w * area_norm) as f32;
        }
    }
    Tensor::from_slice(&weights).view([n_mels as i64, n_freqs as i64])
}

/// Log-mel spectrogram in dB `[N, frames, n_mels]` f32 (on the input's device) of samples `[L]`,
/// `[N, L]` or `[N, C, L]` (channels averaged first). `frames = 1 + L / hop_length` (centred
/// frames, reflect padding as `torch.stft(center=True)`). A clip of `L <= n_fft / 2` samples is
/// too short to reflect-pad, so it is first zero-padded at the end to `n_fft / 2 + 1` samples
/// (silence after it; `frames` then counts that length): short clips give features instead of a
/// failure, though ones much shorter than the window are best measured with
/// [`MelConfig::for_clip`]. Panics on an invalid config or on other shapes (caller errors).
pub fn log_mel_spectrogram(samples: &Tensor, config: &MelConfig) -> Tensor {
    if let Err(e) = config.validate() {
        panic!("{e}");
    }
    let x = samples.to_kind(Kind::Float);
    let x = match x.dim() {
        1 => x.unsqueeze(0),
        2 => x,
        3 => x.mean_dim(1, false, Kind::Float),
        _ => panic!(
            "log_mel_spectrogram expects samples [L], [N, L] or [N, C, L], got {:?}",
            samples.size()
        ),
    };
    let len = x.size()[1];
    let device = x.device();
    let pad = (config.n_fft / 2) as i64;
    // Reflect padding needs more than n_fft / 2 samples; silence after a shorter clip keeps its
    // frames honest (no mirrored copy of the sound) and lets any clip length through.
    let x = if len <= pad {
        let silence = Tensor::zeros([x.size()[0], pad + 1 - len], (Kind::Float, device));
        Tensor::cat(&[x, silence], 1)
    } else {
        x
    };
    let window = Tensor::hann_window_periodic(config.n_fft as i64, true, (Kind::Float, device));
    // Centred frames by reflect padding here and a plain STFT: tch 0.24's `stft_center` always
    // passes `align_to_window`, which libtorch refuses together with `center=true`.
    let padded = x.unsqueeze(1).reflection_pad1d([pad, pad]).squeeze_dim(1);
    let spec = padded.stft(
        config.n_fft as i64,
        config.hop_length as i64,
        config.n_fft as i64,
        Some(&window),
        false,
        true,
        true,
        false,
    );
    // [N, F, T] complex -> power, then [N, T, F] x [F, M].
    let power = spec.abs().square();
    let fb = mel_filterbank(config).to_device(device);
    let mel = power.transpose(1, 2).matmul(&fb.tr());
    mel.clamp_min(POWER_FLOOR).log10() * 10.0
}

/// Mean and covariance of every log-mel frame of every clip (`[N, C, L]`, `[N, L]` or `[L]`),
/// pooled: the statistics [`log_mel_frechet`] compares. Panics as [`log_mel_spectrogram`] does,
/// or when there are fewer than 2 frames in all.
pub fn log_mel_stats(clips: &Tensor, config: &MelConfig) -> FeatureStats {
    let features = log_mel_spectrogram(clips, config).reshape([-1, config.n_mels as i64]);
    FeatureStats::from_features(&features)
}

/// Fréchet distance (dB²) between the log-mel frame statistics of two clip sets: 0 for the
/// same set, growing as their spectra and spectral variability differ.
pub fn log_mel_frechet(a: &Tensor, b: &Tensor, config: &MelConfig) -> f64 {
    frechet_distance(&log_mel_stats(a, config), &log_mel_stats(b, config))
}

/// matplotlib's "magma" colour map at 11 evenly spaced points, linearly interpolated between:
/// perceptually uniform, dark for quiet, light for loud, readable in grey.
const MAGMA: [[u8; 3]; 11] = [
    [0, 0, 4],
    [20, 14, 54],
    [59, 15, 112],
    [100, 26, 128],
    [140, 41, 129],
    [183, 55, 121],
    [222, 73, 104],
    [247, 112, 92],
    [254, 159, 109],
    [254, 207, 146],
    [252, 253, 191],
];

fn magma(v: f64) -> [u8; 3] {
    let x = v.clamp(0.0, 1.0) * (MAGMA.len() - 1) as f64;
    let i = (x.floor() as usize).min(MAGMA.len() - 2);
    let t = x - i as f64;
    let (a, b) = (MAGMA[i], MAGMA[i + 1]);
    std::array::from_fn(|c| (a[c] as f64 + (b[c] as f64 - a[c] as f64) * t).round() as u8)
}

/// Mel bands of the picture; each band is `PNG_ROW_PX` pixels tall.
const PNG_MELS: usize = 128;
const PNG_ROW_PX: usize = 2;
/// Picture columns per second of audio, and the limits on the width.
const PNG_COLUMNS_PER_SEC: f64 = 200.0;
const PNG_MIN_WIDTH: usize = 128;
const PNG_MAX_WIDTH: usize = 2048;
/// Loudness range shown, dB below the loudest cell (quieter is black).
const PNG_RANGE_DB: f64 = 80.0;

/// Write the log-mel spectrogram of `samples` (`[L]`, or `[C, L]` with channels averaged) as a
/// PNG: 128 mel bands from 0 Hz to Nyquist, low frequencies at the bottom, 256 px tall; 200
/// columns per second of audio (at least 128 and at most 2048 px wide: short clips are
/// stretched, long ones averaged); the magma colour map over the 80 dB below the loudest cell.
/// Parent folders are created and the file is written atomically.
pub fn save_spectrogram_png(samples: &Tensor, sample_rate: u32, path: &Path) -> Result<()> {
    let invalid = |m: String| Error::InvalidArgument(format!("{}: {m}", path.display()));
    if sample_rate == 0 {
        return Err(invalid("the sample rate must be above 0 Hz".into()));
    }
    let x = samples.detach().to_device(Device::Cpu).to_kind(Kind::Float);
    let x = match x.dim() {
        1 => x,
        2 => x.mean_dim(0, false, Kind::Float),
        _ => {
            return Err(invalid(format!(
                "a spectrogram needs samples [L] or [C, L], got {:?}",
                samples.size()
            )))
        }
    };
    let len = x.size()[0] as usize;
    if len == 0 {
        return Err(invalid("the clip has no samples".into()));
    }
    let base = MelConfig::for_rate(sample_rate);
    let config = MelConfig {
        n_mels: PNG_MELS,
        hop_length: ((sample_rate as f64 / PNG_COLUMNS_PER_SEC).round() as usize).max(1),
        ..base
    };
    // A clip shorter than half the window is padded with silence by log_mel_spectrogram.
    let db = log_mel_spectrogram(&x, &config).squeeze_dim(0).contiguous(); // [T, M]
    let (frames, mels) = (db.size()[0] as usize, db.size()[1] as usize);
    let mut cells = vec![0f32; frames * mels];
    db.copy_data(&mut cells, frames * mels);
    let silence_db = 10.0 * POWER_FLOOR.log10() + 1e-3;
    let top = cells
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let width = frames.clamp(PNG_MIN_WIDTH, PNG_MAX_WIDTH);
    let height = mels * PNG_ROW_PX;
    let mut rgb = vec![0u8; width * height * 3];
    for col in 0..width {
        // The frames this column covers: several when shrinking, the nearest one when stretching.
        let first = col * frames / width;
        let last = ((col + 1) * frames / width).max(first + 1).min(frames);
        for m in 0..mels {
            let mean = (first..last)
                .map(|t| cells[t * mels + m] as f64)
                .sum::<f64>()
                / (last - first) as f64;
            let colour = if mean <= silence_db || top <= silence_db {
                magma(0.0)
            } else {
                magma((mean - (top - PNG_RANGE_DB)) / PNG_RANGE_DB)
            };
            for r in 0..PNG_ROW_PX {
                let y = height - 1 - (m * PNG_ROW_PX + r);
                let at = (y * width + col) * 3;
                rgb[at..at + 3].copy_from_slice(&colour);
            }
        }
    }
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            &rgb,
            width as u32,
            height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    atomic::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_matches_slaney_anchors() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-9);
        assert!((hz_to_mel(200.0) - 3.0).abs() < 1e-12);
        for hz in [0.0, 123.0, 999.0, 1000.0, 4321.0, 22050.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9 * (1.0 + hz));
        }
    }

    #[test]
    fn config_for_rates() {
        let n = |r| MelConfig::for_rate(r).n_fft;
        assert_eq!(
            [n(8000), n(16000), n(22050), n(44100), n(48000)],
            [512, 1024, 1024, 2048, 2048]
        );
        let c = MelConfig::for_rate(16000);
        assert_eq!((c.hop_length, c.n_mels, c.f_max), (256, 64, 8000.0));
        assert!(c.validate().is_ok());
        let bad = MelConfig {
            f_max: 9000.0,
            ..c.clone()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn colour_map_ends() {
        assert_eq!(magma(0.0), [0, 0, 4]);
        assert_eq!(magma(1.0), [252, 253, 191]);
        assert_eq!(magma(2.0), [252, 253, 191]);
        assert_eq!(magma(0.05), [10, 7, 29]);
    }
}
