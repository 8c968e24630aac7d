//! The quality figure of an audio model: the Fréchet distance between Gaussians fitted to the
//! log-mel frames of generated clips and of held-out clips (in the spirit of the Fréchet Audio
//! Distance of Kilgour et al. 2019, with log-mel frames standing in for VGGish embeddings, so
//! figures compare diffuse runs on the same data and never published FADs).
//!
//! A distance alone says little, so it is printed between two bounds computed the same way on the
//! same reference: white noise normalised like the data (what a model that learned nothing but
//! the loudness would get) and a second, disjoint held-out set (what real audio from the same
//! source gets, with the same number of clips). The held-out clips are split into the reference
//! and the second set alternately, so both cover the whole validation split.

use crate::clip::AudioClip;
use crate::data::Normalize;
use crate::features::{log_mel_stats, MelConfig};
use diffuse_tensor::frechet::frechet_distance;
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The three distances to the reference set, and what they were computed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogMelReport {
    /// Generated clips vs the reference.
    pub generated: f64,
    /// White noise (normalised like the data) vs the reference: the upper bound.
    pub white_noise: f64,
    /// The second held-out set vs the reference: the lower bound.
    pub held_out: f64,
    pub reference_clips: usize,
    pub second_set_clips: usize,
    pub generated_clips: usize,
    pub mel: MelConfig,
}

/// Held-out clips the log-mel distance needs: 2 per set, since each set's frame statistics
/// are to stand for a set of clips rather than one.
pub const MIN_HELD_OUT_CLIPS: usize = 4;

/// Split held-out clips `[N, C, L]` alternately into a reference set and a second set.
pub fn split_held_out(clips: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = clips.size()[0];
    if n < MIN_HELD_OUT_CLIPS as i64 {
        return Err(Error::InvalidArgument(format!(
            "the log-mel distance needs at least {MIN_HELD_OUT_CLIPS} held-out clips (2 per set), \
             there are {n}"
        )));
    }
    let even = Tensor::arange_start_step(0, n, 2, (Kind::Int64, Device::Cpu));
    let odd = Tensor::arange_start_step(1, n, 2, (Kind::Int64, Device::Cpu));
    Ok((clips.index_select(0, &even), clips.index_select(0, &odd)))
}

/// `num` clips of white noise shaped `[num, C, L]`, normalised like the data.
pub fn white_noise_like(
    num: i64,
    channels: i64,
    frames: i64,
    sample_rate: u32,
    normalize: Option<&Normalize>,
) -> Result<Tensor> {
    let noise = Tensor::randn([num, channels, frames], (Kind::Float, Device::Cpu)) * 0.3;
    let mut clips = Vec::new();
    for i in 0..num {
        let clip = AudioClip::from_tensor(&noise.get(i), sample_rate)?;
        let clip = match normalize {
            Some(Normalize::Peak(p)) => clip.normalize_peak(*p),
            Some(Normalize::RmsDb(db)) => clip.normalize_rms_db(*db),
            Some(Normalize::None) | None => clip,
        };
        clips.push(clip.to_tensor());
    }
    Ok(Tensor::stack(&clips, 0).clamp(-1.0, 1.0))
}

/// Distances of `generated` and of white noise and `second` to `reference` (all `[N, C, L]` at
/// `sample_rate`). The mel settings are [`MelConfig::for_clip`] of the reference's length, so
/// clips shorter than the usual 64 ms window (short training clips, low rates) are measured
/// with a window that fits them; the report records the settings used.
pub fn log_mel_report(
    generated: &Tensor,
    reference: &Tensor,
    second: &Tensor,
    sample_rate: u32,
    normalize: Option<&Normalize>,
) -> Result<LogMelReport> {
    let size = reference.size();
    let mel = MelConfig::for_clip(sample_rate, size[2].max(1) as usize);
    let noise = white_noise_like(
        generated.size()[0].max(2),
        size[1],
        size[2],
        sample_rate,
        normalize,
    )?;
    let reference_stats = log_mel_stats(reference, &mel);
    let distance = |x: &Tensor| frechet_distance(&log_mel_stats(x, &mel), &reference_stats);
    Ok(LogMelReport {
        generated: distance(generated),
        white_noise: distance(&noise),
        held_out: distance(second),
        reference_clips: size[0] as usize,
        second_set_clips: second.size()[0] as usize,
        generated_clips: generated.size()[0] as usize,
        mel,
    })
}
