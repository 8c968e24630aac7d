//! The decay envelope of clips: the RMS level, in dB, of each of a few equal parts of a clip
//! (eighths by default), and the median over a set of clips. A drum hit is loud at its onset and
//! decays; a model that makes a burst that never dies away shows as a flat envelope, which a
//! feature distance pooled over time cannot see. `eval audio` compares the generated median with
//! the real one part by part (the target: within 6 dB everywhere).

use diffuse_tensor::{Error, Result};
use tch::{Kind, Tensor};

/// The level a part of exact digital silence gets, so that medians stay finite.
pub const ENVELOPE_FLOOR_DB: f64 = -100.0;

/// The RMS level in dB (re full scale 1.0) of each of `segments` equal parts of each clip of
/// `clips` `[N, C, L]` (channels pooled), floored at [`ENVELOPE_FLOOR_DB`]: `[N, segments]` f64.
/// Part `i` covers frames `floor(i L / segments)` up to `floor((i + 1) L / segments)`.
pub fn decay_envelope(clips: &Tensor, segments: i64) -> Result<Tensor> {
    let size = clips.size();
    if size.len() != 3 || segments < 1 || size[2] < segments {
        return Err(Error::InvalidArgument(format!(
            "a decay envelope needs clips [N, C, L] with at least {segments} frames, got {size:?}"
        )));
    }
    let (n, length) = (size[0], size[2]);
    let power = clips
        .to_kind(Kind::Double)
        .square()
        .mean_dim(1, false, Kind::Double);
    let floor = 10f64.powf(ENVELOPE_FLOOR_DB / 10.0);
    let parts: Vec<Tensor> = (0..segments)
        .map(|i| {
            let (start, end) = (i * length / segments, (i + 1) * length / segments);
            power
                .narrow(1, start, end - start)
                .mean_dim(1, false, Kind::Double)
        })
        .collect();
    let levels = Tensor::stack(&parts, 1).clamp_min(floor).log10() * 10.0;
    debug_assert_eq!(levels.size(), [n, segments]);
    Ok(levels)
}

/// The median envelope of real and generated clips, and how far apart they are.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopeReport {
    /// Median over the real clips of each part's level, dB.
    pub real_median: Vec<f64>,
    /// The same over the generated clips.
    pub generated_median: Vec<f64>,
    /// The largest |generated - real| over the parts, dB.
    pub max_abs_diff_db: f64,
}

/// Median decay envelopes of `real` and `generated` clips (`[N, C, L]`, the same L) over
/// `segments` parts.
pub fn envelope_report(real: &Tensor, generated: &Tensor, segments: i64) -> Result<EnvelopeReport> {
    let median = |clips: &Tensor| -> Result<Vec<f64>> {
        let levels = decay_envelope(clips, segments)?;
        // The lower median for even counts, as torch's median.
        Ok(Vec::<f64>::try_from(levels.median_dim(0, false).0)?)
    };
    let real_median = median(real)?;
    let generated_median = median(generated)?;
    let max_abs_diff_db = real_median
        .iter()
        .zip(&generated_median)
        .map(|(r, g)| (g - r).abs())
        .fold(0.0, f64::max);
    Ok(EnvelopeReport {
        real_median,
        generated_median,
        max_abs_diff_db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// a exp(-t / tau) sampled finely: each part's mean power is a^2 tau / (2 T_part)
    /// (e^{-2 t0 / tau} - e^{-2 t1 / tau}), so its level is known in closed form.
    #[test]
    fn exponential_decays_have_their_analytic_levels_and_silence_its_floor() {
        let (length, rate, tau, a) = (80_000i64, 80_000.0, 0.2, 0.8);
        let t = Tensor::arange(length, (Kind::Double, Device::Cpu)) / rate;
        let clip = ((-&t / tau).exp() * a).view([1, 1, length]);
        let silent = Tensor::zeros([1, 1, length], (Kind::Double, Device::Cpu));
        let levels = decay_envelope(&Tensor::cat(&[clip, silent], 0), 8).unwrap();
        let got = Vec::<f64>::try_from(levels.get(0)).unwrap();
        for (i, level) in got.iter().enumerate() {
            let (t0, t1) = (i as f64 / 8.0, (i + 1) as f64 / 8.0);
            let power = a * a * tau / (2.0 * (t1 - t0))
                * ((-2.0 * t0 / tau).exp() - (-2.0 * t1 / tau).exp());
            let want = 10.0 * power.log10();
            assert!((level - want).abs() < 1e-3, "part {i}: {level} vs {want}");
        }
        let floor = Vec::<f64>::try_from(levels.get(1)).unwrap();
        assert!(floor.iter().all(|&l| l == ENVELOPE_FLOOR_DB), "{floor:?}");
    }

    #[test]
    fn a_set_against_itself_differs_by_nothing_and_a_flat_burst_by_its_missing_decay() {
        let t = Tensor::arange(8000, (Kind::Float, Device::Cpu)) / 8000.0;
        let noise = Tensor::randn([6, 1, 8000], (Kind::Float, Device::Cpu));
        let decaying = &noise * (-&t * 8.0).exp() * 0.5;
        let flat = &noise * 0.2;
        let same = envelope_report(&decaying, &decaying, 8).unwrap();
        assert_eq!(same.max_abs_diff_db, 0.0);
        let burst = envelope_report(&decaying, &flat, 8).unwrap();
        // The decay reaches about -34 dB below the flat level by the last eighth.
        assert!(burst.max_abs_diff_db > 20.0, "{burst:?}");
        assert!(decay_envelope(&decaying, 9000).is_err());
    }
}
