//! One audio clip in memory ([`AudioClip`]): channel-major f32 samples at a sample rate, and the
//! edits every dataset and model needs before audio meets a network — channel conversion,
//! band-limited resampling, trimming, padding and loudness normalisation. Samples are nominally
//! in [-1, 1] (integer files are read as `x / 2^(bits - 1)`, see [`crate::wav`]); nothing here
//! clips except where a function says so.
//!
//! Resampling is rubato's synchronous FFT resampler (a windowed-sinc low-pass applied by FFT
//! overlap-add, BlackmanHarris² window), which its authors recommend for fixed-ratio offline work
//! and whose quality equals their best sinc resampler; the filter delay is removed so the output
//! lines up with the input in time.

use diffuse_tensor::{Error, Result};
use rubato::audioadapter::Adapter;
use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};
use tch::{Device, Kind, Tensor};

/// Leading-silence trimming keeps this much audio before the first loud sample, so the attack of
/// a sound (which starts below any threshold) is not cut.
const TRIM_MARGIN_SECS: f64 = 0.005;

/// Target FFT block length (input frames) of the resampler: longer blocks give a sharper
/// anti-aliasing filter (transition band ~ 16 / block input samples wide for the squared
/// Blackman-Harris window), at a cost that grows only with log(block).
const RESAMPLE_BLOCK: usize = 2048;

/// The highest sample rate resampling accepts (768 kHz, the top of what audio interfaces offer):
/// a header claiming more is a broken or non-audio file, and its FFT blocks would be huge.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Audio samples: `channels[c][i]` is frame `i` of channel `c`; every channel has the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioClip {
    /// Frames per second, > 0.
    pub sample_rate: u32,
    /// Channel-major samples, nominally in [-1, 1].
    pub channels: Vec<Vec<f32>>,
}

impl AudioClip {
    /// A clip from channel-major samples; errors on rate 0, no channels or unequal lengths.
    pub fn new(sample_rate: u32, channels: Vec<Vec<f32>>) -> Result<Self> {
        if sample_rate == 0 {
            return Err(Error::InvalidArgument(
                "an audio clip needs a sample rate above 0 Hz".into(),
            ));
        }
        if channels.is_empty() {
            return Err(Error::InvalidArgument(
                "an audio clip needs at least one channel".into(),
            ));
        }
        let frames = channels[0].len();
        if let Some((c, ch)) = channels
            .iter()
            .enumerate()
            .find(|(_, ch)| ch.len() != frames)
        {
            return Err(Error::InvalidArgument(format!(
                "audio channels differ in length: channel 0 has {frames} frames, channel {c} has {}",
                ch.len()
            )));
        }
        Ok(AudioClip {
            sample_rate,
            channels,
        })
    }

    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Number of channels.
    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    /// Length in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.frames() as f64 / self.sample_rate as f64
    }

    /// Samples as a `[C, L]` f32 CPU tensor.
    pub fn to_tensor(&self) -> Tensor {
        let (c, l) = (self.num_channels() as i64, self.frames() as i64);
        let flat: Vec<f32> = self.channels.concat();
        Tensor::from_slice(&flat).view([c, l])
    }

    /// A clip from a `[C, L]` or `[L]` tensor of any float kind on any device.
    pub fn from_tensor(t: &Tensor, sample_rate: u32) -> Result<Self> {
        if !t.is_floating_point() {
            return Err(Error::InvalidArgument(format!(
                "audio samples must be floating point, got a {:?} tensor",
                t.kind()
            )));
        }
        let t = match t.dim() {
            1 => t.unsqueeze(0),
            2 => t.shallow_clone(),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "audio samples must be [C, L] or [L], got shape {:?}",
                    t.size()
                )))
            }
        };
        let (c, l) = (t.size()[0] as usize, t.size()[1] as usize);
        let t = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let mut flat = vec![0f32; c * l];
        t.copy_data(&mut flat, c * l);
        let channels = if l == 0 {
            vec![Vec::new(); c]
        } else {
            flat.chunks(l).map(<[f32]>::to_vec).collect()
        };
        AudioClip::new(sample_rate, channels)
    }

    /// The clip with `n` channels: the same clip when it has `n`, the average of all channels
    /// when `n == 1`, copies of the one channel when it is mono. Anything else (say 3 -> 2) has
    /// no single sensible mapping and is an error.
    pub fn to_channels(&self, n: usize) -> Result<Self> {
        let have = self.num_channels();
        if n == have {
            return Ok(self.clone());
        }
        if n == 1 {
            let scale = 1.0 / have as f32;
            let mono = (0..self.frames())
                .map(|i| self.channels.iter().map(|ch| ch[i]).sum::<f32>() * scale)
                .collect();
            return AudioClip::new(self.sample_rate, vec![mono]);
        }
        if have == 1 && n > 1 {
            return AudioClip::new(self.sample_rate, vec![self.channels[0].clone(); n]);
        }
        Err(Error::InvalidArgument(format!(
            "cannot convert {have}-channel audio to {n} channel(s): only mixing down to mono \
             and copying mono to several channels are supported"
        )))
    }

    /// The clip at `rate` Hz (at most [`MAX_SAMPLE_RATE`]): band-limited (windowed-sinc) resampling with rubato's FFT
    /// resampler, filter delay removed so output time t matches input time t. The result has
    /// `round(frames * rate / sample_rate)` frames; the same rate returns the clip unchanged.
    pub fn resample(&self, rate: u32) -> Result<Self> {
        if rate == 0 {
            return Err(Error::InvalidArgument(format!(
                "cannot resample to {rate} Hz: the sample rate must be above 0"
            )));
        }
        if rate == self.sample_rate {
            return Ok(self.clone());
        }
        if rate > MAX_SAMPLE_RATE || self.sample_rate > MAX_SAMPLE_RATE {
            return Err(Error::InvalidArgument(format!(
                "cannot resample {} Hz to {rate} Hz: rates above {MAX_SAMPLE_RATE} Hz are not supported",
                self.sample_rate
            )));
        }
        let (from, to) = (self.sample_rate as u64, rate as u64);
        let frames = self.frames();
        // Round half up, in integers so long clips cannot pick up float error.
        let out_len = ((frames as u128 * to as u128 + from as u128 / 2) / from as u128) as usize;
        if frames == 0 {
            return AudioClip::new(rate, vec![Vec::new(); self.num_channels()]);
        }
        let channels = self.num_channels();
        let resampler_error = |e: &dyn std::fmt::Display| {
            Error::InvalidArgument(format!(
                "cannot resample {} Hz to {rate} Hz: {e}",
                self.sample_rate
            ))
        };
        // The FFT block holds a whole number of "rate / gcd" frames on each side. Making that
        // number even makes both block lengths even, so the filter's delay (half a block) is a
        // whole number of frames on both sides and trimming it leaves no fractional offset.
        let g = gcd(from, to);
        let min_in = (from / g) as usize;
        let blocks = RESAMPLE_BLOCK.div_ceil(min_in).max(2).next_multiple_of(2);
        let mut resampler = Fft::<f64>::new_custom(
            self.sample_rate as usize,
            rate as usize,
            blocks * min_in,
            1,
            channels,
            WindowFunction::BlackmanHarris2,
            FixedSync::Both,
        )
        .map_err(|e| resampler_error(&e))?;
        let input: Vec<Vec<f64>> = self
            .channels
            .iter()
            .map(|ch| ch.iter().map(|&x| x as f64).collect())
            .collect();
        let adapter = SequentialSliceOfVecs::new(&input, channels, frames)
            .map_err(|e| resampler_error(&e))?;
        // process_all runs the chunk loop, pads the tail with silence and trims the delay.
        let output = resampler
            .process_all(&adapter, frames, None)
            .map_err(|e| resampler_error(&e))?;
        let produced = output.frames();
        let data = output.take_data();
        let out = (0..channels)
            .map(|c| {
                (0..out_len)
                    .map(|i| {
                        if i < produced {
                            data[i * channels + c] as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        AudioClip::new(rate, out)
    }

    /// The first `frames` frames, zero-padded at the end when the clip is shorter.
    pub fn fit_length(&self, frames: usize) -> Self {
        let channels = self
            .channels
            .iter()
            .map(|ch| {
                let mut ch = ch[..frames.min(ch.len())].to_vec();
                ch.resize(frames, 0.0);
                ch
            })
            .collect();
        AudioClip {
            sample_rate: self.sample_rate,
            channels,
        }
    }

    /// Drop the frames before the first sample (of any channel) whose magnitude exceeds
    /// `threshold`, keeping 5 ms before it so the onset survives. A clip with no such sample is
    /// returned unchanged: there is no sound to align to.
    pub fn trim_leading_silence(&self, threshold: f32) -> Self {
        let first = self
            .channels
            .iter()
            .filter_map(|ch| ch.iter().position(|x| x.abs() > threshold))
            .min();
        let Some(first) = first else {
            return self.clone();
        };
        let margin = (TRIM_MARGIN_SECS * self.sample_rate as f64).round() as usize;
        let start = first.saturating_sub(margin);
        AudioClip {
            sample_rate: self.sample_rate,
            channels: self
                .channels
                .iter()
                .map(|ch| ch[start..].to_vec())
                .collect(),
        }
    }

    /// [`AudioClip::trim_leading_silence`] at `db` dB relative to the clip's own peak (e.g. -40:
    /// a hundredth of it), so a quiet hit is cut where a loud one of the same shape is; an
    /// absolute threshold sits anywhere from -45 to -4 dB below the peaks of real one-shots. A
    /// silent clip is returned unchanged.
    pub fn trim_leading_silence_db(&self, db: f32) -> Self {
        let peak = self.peak();
        if !(peak > 0.0 && peak.is_finite()) {
            return self.clone();
        }
        self.trim_leading_silence(peak * 10f32.powf(db / 20.0))
    }

    /// Largest absolute sample over all channels (0 for an empty clip).
    pub fn peak(&self) -> f32 {
        self.channels
            .iter()
            .flatten()
            .fold(0f32, |m, &x| m.max(x.abs()))
    }

    /// Root mean square over all channels and frames (0 for an empty clip).
    pub fn rms(&self) -> f32 {
        let n = self.frames() * self.num_channels();
        if n == 0 {
            return 0.0;
        }
        let sum: f64 = self
            .channels
            .iter()
            .flatten()
            .map(|&x| x as f64 * x as f64)
            .sum();
        (sum / n as f64).sqrt() as f32
    }

    /// The gain [`AudioClip::normalize_peak`] applies; `None` for a silent clip (or one with
    /// non-finite samples), which it leaves as it is.
    pub fn peak_gain(&self, peak: f32) -> Option<f32> {
        let current = self.peak();
        (current != 0.0 && current.is_finite()).then(|| peak / current)
    }

    /// The clip scaled so that its largest absolute sample is `peak`; a silent clip stays silent.
    pub fn normalize_peak(&self, peak: f32) -> Self {
        match self.peak_gain(peak) {
            Some(gain) => self.scaled(gain),
            None => self.clone(),
        }
    }

    /// The gain [`AudioClip::normalize_rms_db`] applies; `None` for a silent clip (or one with
    /// non-finite samples), which it leaves as it is.
    pub fn rms_db_gain(&self, dbfs: f32) -> Option<f32> {
        let (rms, peak) = (self.rms(), self.peak());
        if rms == 0.0 || !rms.is_finite() || !peak.is_finite() {
            return None;
        }
        let target = 10f32.powf(dbfs / 20.0);
        Some((target / rms).min(1.0 / peak))
    }

    /// The clip scaled to an RMS loudness of `dbfs` (dB relative to a full-scale square wave,
    /// whose RMS is 1), but never louder than a peak of 1.0: when the asked gain would push a
    /// sample past full scale the gain is lowered to exactly that (a clean limit, no clipping
    /// distortion), so peaky sounds such as drum hits may come out quieter than asked. A silent
    /// clip stays silent.
    pub fn normalize_rms_db(&self, dbfs: f32) -> Self {
        match self.rms_db_gain(dbfs) {
            Some(gain) => self.scaled(gain),
            None => self.clone(),
        }
    }

    /// Every sample multiplied by `gain`.
    fn scaled(&self, gain: f32) -> Self {
        AudioClip {
            sample_rate: self.sample_rate,
            channels: self
                .channels
                .iter()
                .map(|ch| ch.iter().map(|&x| x * gain).collect())
                .collect(),
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(channels: Vec<Vec<f32>>) -> AudioClip {
        AudioClip::new(1000, channels).unwrap()
    }

    #[test]
    fn constructor_checks_shape_and_rate() {
        assert!(AudioClip::new(0, vec![vec![0.0]]).is_err());
        assert!(AudioClip::new(8000, vec![]).is_err());
        let err = AudioClip::new(8000, vec![vec![0.0; 3], vec![0.0; 2]]).unwrap_err();
        assert!(err.to_string().contains("channel 1 has 2"), "{err}");
        let c = clip(vec![vec![0.0; 500], vec![0.0; 500]]);
        assert_eq!((c.frames(), c.num_channels()), (500, 2));
        assert!((c.duration_secs() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn tensor_round_trip_keeps_layout() {
        let c = clip(vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        let t = c.to_tensor();
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(t.double_value(&[1, 0]), 4.0);
        assert_eq!(AudioClip::from_tensor(&t, 1000).unwrap(), c);
        let mono = AudioClip::from_tensor(&Tensor::from_slice(&[0.5f64, -0.5]), 22050).unwrap();
        assert_eq!(mono.channels, vec![vec![0.5, -0.5]]);
        assert!(
            AudioClip::from_tensor(&Tensor::zeros([1, 2, 3], (Kind::Float, Device::Cpu)), 1)
                .is_err()
        );
        assert!(AudioClip::from_tensor(&Tensor::from_slice(&[1i64, 2]), 1).is_err());
    }

    #[test]
    fn channel_conversion() {
        let stereo = clip(vec![vec![1.0, 0.0], vec![0.0, -1.0]]);
        assert_eq!(
            stereo.to_channels(1).unwrap().channels,
            vec![vec![0.5, -0.5]]
        );
        let mono = clip(vec![vec![0.25, 0.5]]);
        assert_eq!(
            mono.to_channels(2).unwrap().channels,
            vec![vec![0.25, 0.5]; 2]
        );
        assert_eq!(stereo.to_channels(2).unwrap(), stereo);
        let three = clip(vec![vec![0.0]; 3]);
        let err = three.to_channels(2).unwrap_err().to_string();
        assert!(
            err.contains("3-channel") && err.contains("2 channel"),
            "{err}"
        );
    }

    #[test]
    fn length_trim_and_loudness() {
        let c = clip(vec![vec![1.0, 2.0, 3.0]]);
        assert_eq!(c.fit_length(2).channels, vec![vec![1.0, 2.0]]);
        assert_eq!(
            c.fit_length(5).channels,
            vec![vec![1.0, 2.0, 3.0, 0.0, 0.0]]
        );

        // At 1000 Hz the 5 ms margin is 5 frames.
        let mut samples = vec![0.001f32; 20];
        samples[12] = 0.5;
        let trimmed = clip(vec![samples]).trim_leading_silence(0.01);
        assert_eq!(trimmed.frames(), 13);
        assert_eq!(trimmed.channels[0][5], 0.5);
        let quiet = clip(vec![vec![0.001; 4]]);
        assert_eq!(quiet.trim_leading_silence(0.01), quiet);

        let c = clip(vec![vec![0.1, -0.2], vec![0.05, 0.0]]);
        let p = c.normalize_peak(0.9);
        assert!((p.peak() - 0.9).abs() < 1e-6 && (p.channels[0][0] - 0.45).abs() < 1e-6);
        let silent = clip(vec![vec![0.0; 4]]);
        assert_eq!(silent.normalize_peak(0.9), silent);
        assert_eq!(silent.normalize_rms_db(-20.0), silent);

        // A square wave at RMS -20 dBFS has samples of +-0.1.
        let square = clip(vec![vec![0.3, -0.3, 0.3, -0.3]]);
        let r = square.normalize_rms_db(-20.0);
        assert!((r.rms() - 0.1).abs() < 1e-6, "{}", r.rms());
        // A spike cannot reach -3 dBFS RMS without exceeding full scale: limited to peak 1.
        let mut spike = vec![0.0f32; 100];
        spike[50] = 0.2;
        let l = clip(vec![spike]).normalize_rms_db(-3.0);
        assert!((l.peak() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn resample_identity_and_empty() {
        let c = clip(vec![vec![0.1, 0.2, 0.3]]);
        assert_eq!(c.resample(1000).unwrap(), c);
        let empty = clip(vec![vec![], vec![]]);
        let r = empty.resample(16000).unwrap();
        assert_eq!((r.frames(), r.num_channels(), r.sample_rate), (0, 2, 16000));
        let err = c.resample(0).unwrap_err().to_string();
        assert!(err.contains("0 Hz"), "{err}");
    }
}
