//! The quality figures of an audio model. First the Fréchet distance between Gaussians fitted to
//! the log-mel frames of generated clips and of held-out clips (in the spirit of the Fréchet Audio
//! Distance of Kilgour et al. 2019, with log-mel frames standing in for VGGish embeddings, so
//! figures compare diffuse runs on the same data and never published FADs). Frames are compared
//! part by part (the clip's first quarter with first quarters, and so on; the distance is the
//! mean over the parts), so a model must put the right sound at the right time, and levels are
//! dB below each clip's loudest bin floored at [`RELATIVE_FLOOR_DB`], so silent or zero-padded
//! tails are not rewarded by the -100 dB floor of an absolute log.
//!
//! A distance alone says little, so it is printed between bounds computed the same way on the
//! same reference: white noise normalised like the data (what a model that learned nothing but
//! the loudness would get), noise shaped by the real clips' own envelopes (a burst with the right
//! onset and decay but no spectrum: what a model must beat to have learned more than the
//! envelope), and a second, disjoint held-out set (what real audio from the same source gets,
//! with the same number of clips). The held-out clips are split into the reference and the
//! second set alternately, so both cover the whole validation split.
//!
//! With a judge ([`crate::judge`]) the report adds what it hears ([`JudgeReport`]): how often
//! clips asked for a class are heard as that class, the class mix and confidence of all
//! generated clips (both computed by `diffuse_tensor::quality`, which images share), and the
//! kernel distance (KID) on its features, each beside the same figure for real held-out clips
//! and for shaped noise.

use crate::clip::AudioClip;
use crate::data::Normalize;
use crate::features::{log_mel_spectrogram, MelConfig};
use crate::judge::AudioJudge;
use diffuse_tensor::frechet::{frechet_distance, FeatureStats};
use diffuse_tensor::kid::{kernel_inception_distance, Kid};
use diffuse_tensor::quality::{conditional_report, mix_and_confidence};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How clips asked for classes were heard: the report every modality shares.
pub use diffuse_tensor::quality::ConditionalReport;

/// The three distances to the reference set, and what they were computed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogMelReport {
    /// Generated clips vs the reference.
    pub generated: f64,
    /// White noise (normalised like the data) vs the reference: the upper bound.
    pub white_noise: f64,
    /// Noise shaped by the reference clips' envelopes vs the reference: what an envelope alone
    /// gets.
    pub shaped_noise: f64,
    /// The second held-out set vs the reference: the lower bound.
    pub held_out: f64,
    pub reference_clips: usize,
    pub second_set_clips: usize,
    pub generated_clips: usize,
    pub mel: MelConfig,
    /// Parts of the clip compared separately (the distance is their mean).
    pub segments: i64,
    /// Floor of the levels, dB below each clip's loudest bin.
    pub floor_db: f64,
}

/// Lowest level the distance sees, dB below a clip's loudest time-frequency bin.
pub const RELATIVE_FLOOR_DB: f64 = -80.0;

/// Log-mel spectrogram `[N, T, M]` of clips in dB relative to each clip's loudest bin, floored
/// at `floor_db`.
pub fn relative_log_mel(clips: &Tensor, mel: &MelConfig, floor_db: f64) -> Tensor {
    let db = log_mel_spectrogram(clips, mel);
    let peak = db.amax([1i64, 2].as_slice(), true);
    (db - peak).clamp_min(floor_db)
}

/// Mean over `segments` equal runs of frames of the Fréchet distance between the pooled frames
/// of `a` and `b` (both `[N, T, M]`, the same T) in that run.
fn segmented_frechet(a: &Tensor, b: &Tensor, segments: i64) -> f64 {
    let t = a.size()[1];
    let m = a.size()[2];
    let mut total = 0.0;
    for i in 0..segments {
        let (start, end) = (i * t / segments, (i + 1) * t / segments);
        let stats = |x: &Tensor| {
            FeatureStats::from_features(&x.narrow(1, start, end - start).reshape([-1, m]))
        };
        total += frechet_distance(&stats(a), &stats(b));
    }
    total / segments as f64
}

/// `num` clips `[num, C, L]` of white noise, each shaped by the envelope of a reference clip (in
/// turn): the noise is scaled by the RMS of the clip over a sliding window of about 16 ms, so it
/// starts, peaks and decays as the clip does, with a flat spectrum.
pub fn shaped_noise_like(reference: &Tensor, num: i64, sample_rate: u32) -> Tensor {
    let (n, c, l) = reference.size3().expect("reference clips are [N, C, L]");
    let window = ((sample_rate as i64 / 64) | 1).clamp(1, (l | 1).max(1));
    let index = Tensor::arange(num, (Kind::Int64, Device::Cpu)).remainder(n.max(1));
    let clips = reference
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .index_select(0, &index);
    let power = clips.square().reshape([num * c, 1, l]);
    let envelope = power
        .avg_pool1d([window], [1], [window / 2], false, false)
        .narrow(2, 0, l)
        .sqrt()
        .reshape([num, c, l]);
    Tensor::randn([num, c, l], (Kind::Float, Device::Cpu)) * envelope
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

/// Distances of `generated` and of white noise, shaped noise and `second` to `reference` (all
/// `[N, C, L]` at `sample_rate`), on relative log-mels compared by quarters of the clip (one
/// part when a clip has fewer than 8 frames). The mel settings are [`MelConfig::for_clip`] of
/// the reference's length, so clips shorter than the usual 64 ms window (short training clips,
/// low rates) are measured with a window that fits them; the report records the settings used.
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
    let shaped = shaped_noise_like(reference, generated.size()[0].max(2), sample_rate);
    let features = |x: &Tensor| relative_log_mel(x, &mel, RELATIVE_FLOOR_DB);
    let reference_features = features(reference);
    let frames = reference_features.size()[1];
    let segments = if frames >= 8 { 4 } else { 1 };
    let distance = |x: &Tensor| segmented_frechet(&features(x), &reference_features, segments);
    Ok(LogMelReport {
        generated: distance(generated),
        white_noise: distance(&noise),
        shaped_noise: distance(&shaped),
        held_out: distance(second),
        reference_clips: size[0] as usize,
        second_set_clips: second.size()[0] as usize,
        generated_clips: generated.size()[0] as usize,
        mel,
        segments,
        floor_db: RELATIVE_FLOOR_DB,
    })
}

/// A kernel distance with its spread over subsets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KidFigure {
    pub mean: f64,
    pub std: f64,
}

impl From<Kid> for KidFigure {
    fn from(k: Kid) -> Self {
        KidFigure {
            mean: k.mean,
            std: k.std,
        }
    }
}

/// What the judge hears in generated clips, each figure beside real held-out clips and noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    /// The judge's classes, in its label order.
    pub classes: Vec<String>,
    /// The judge's own accuracy on its held-out kits (from its record).
    pub judge_held_out_accuracy: f64,
    /// Present when clips were asked for classes.
    pub conditional: Option<ConditionalReport>,
    /// Share of the generated clips heard as each class.
    pub generated_mix: Vec<f64>,
    /// Share of the real held-out clips heard as each class.
    pub real_mix: Vec<f64>,
    /// Mean largest class probability of generated clips, of real held-out clips and of shaped
    /// noise.
    pub generated_confidence: f64,
    pub real_confidence: f64,
    pub shaped_noise_confidence: f64,
    /// KID on the judge's features against the reference set: generated clips, the second
    /// held-out set (the floor) and shaped noise (the bound).
    pub kid_generated: KidFigure,
    pub kid_held_out: KidFigure,
    pub kid_shaped_noise: KidFigure,
}

/// Clips `[N, C, L]` at `from` Hz resampled to `to` Hz (band-limited, clip by clip).
pub fn resample_clips(clips: &Tensor, from: u32, to: u32) -> Result<Tensor> {
    if from == to {
        return Ok(clips.shallow_clone());
    }
    let mut out = Vec::new();
    for i in 0..clips.size()[0] {
        let clip = AudioClip::from_tensor(&clips.get(i), from)?.resample(to)?;
        out.push(clip.to_tensor());
    }
    Ok(Tensor::stack(&out, 0))
}

/// The judge's report on `generated` clips (`[N, C, L]` at `sample_rate`), `requested` `[N]`
/// the judge's class index each clip was asked for (conditional models), against the held-out
/// `reference` and `second` sets (their labels `[.]` in the judge's indices, -1 for none).
#[allow(clippy::too_many_arguments)]
pub fn judge_report(
    judge: &AudioJudge,
    generated: &Tensor,
    requested: Option<&Tensor>,
    reference: &Tensor,
    second: &Tensor,
    real_labels: &Tensor,
    sample_rate: u32,
    seed: u64,
) -> Result<JudgeReport> {
    let rate = judge.record.input.sample_rate;
    let to_judge = |x: &Tensor| resample_clips(x, sample_rate, rate);
    let k = judge.model.config().num_classes;
    let (gen_logits, gen_features) = judge.outputs(&to_judge(generated)?);
    let (ref_logits, ref_features) = judge.outputs(&to_judge(reference)?);
    let (sec_logits, sec_features) = judge.outputs(&to_judge(second)?);
    let shaped = shaped_noise_like(reference, generated.size()[0].max(2), sample_rate);
    let (noise_logits, noise_features) = judge.outputs(&to_judge(&shaped)?);
    let real_logits = Tensor::cat(&[&ref_logits, &sec_logits], 0);
    let (generated_mix, generated_confidence) = mix_and_confidence(&gen_logits, k);
    let (real_mix, real_confidence) = mix_and_confidence(&real_logits, k);
    let (_, shaped_noise_confidence) = mix_and_confidence(&noise_logits, k);
    let kid = |x: &Tensor| -> Result<KidFigure> {
        Ok(kernel_inception_distance(x, &ref_features, 100, 1000, seed)?.into())
    };
    let names = judge.class_names();
    let conditional = requested
        .map(|requested| {
            conditional_report(
                requested,
                &gen_logits.argmax(-1, false),
                real_labels,
                &real_logits.argmax(-1, false),
                names,
            )
        })
        .transpose()?;
    Ok(JudgeReport {
        classes: names.to_vec(),
        judge_held_out_accuracy: judge.record.held_out.accuracy,
        conditional,
        generated_mix,
        real_mix,
        generated_confidence,
        real_confidence,
        shaped_noise_confidence,
        kid_generated: kid(&gen_features)?,
        kid_held_out: kid(&sec_features)?,
        kid_shaped_noise: kid(&noise_features)?,
    })
}
