//! Generation: start from the prior (almost always all zeros) at t = T and thicken to t = 0.
//!
//! - [`JumpSampler::Thickening`] (JUMP): z_s = z_t + Poisson(mu), mu the thickening rate of
//!   [`JumpProcess::thickening_rate`] at the model's x_0 estimate. Any subsequence of the
//!   training steps works, since thickening over several steps is one Poisson jump.
//! - [`JumpSampler::Blackout`] (binomial thinning only): the binomial bridge of a death process,
//!   z_s = z_t + Binomial(n, (alpha_s - alpha_t) / (1 - alpha_t)) with n the model's expected
//!   number of dead units x_0_hat - z_t, rounded stochastically to a whole number with the same
//!   mean. At s = 0 the success probability is 1 and the sample is z_t + n.
//!
//! Inpainting runs the known elements down their exact posterior path (the same step with the
//! true x_0), so they end exactly at the known values under binomial thinning, while the rest
//! is generated around them.

use super::process::{JumpProcess, Thinning};
use super::schedule::sampling_timesteps;
use super::{as_float, stochastic_round, CountDenoiser};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// The reverse step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JumpSampler {
    Thickening,
    Blackout,
}

impl JumpSampler {
    pub const NAMES: [&'static str; 2] = ["jump", "blackout"];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "jump" | "thickening" => Ok(JumpSampler::Thickening),
            "blackout" => Ok(JumpSampler::Blackout),
            other => Err(Error::InvalidArgument(format!(
                "--sampler: unknown count-diffusion sampler {other:?}; expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JumpSampler::Thickening => "jump",
            JumpSampler::Blackout => "blackout",
        }
    }

    /// Whether this sampler applies to `process`.
    pub fn check(self, process: &JumpProcess) -> Result<()> {
        if self == JumpSampler::Blackout && process.thinning() != Thinning::Binomial {
            return Err(Error::InvalidArgument(
                "--sampler blackout: the binomial bridge needs a model trained with binomial \
                 thinning; this one uses Poisson thinning (use --sampler jump)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// z_T from the model's prior, Poisson(lambda alpha_T m) per element (m the data mean).
pub fn prior_sample(process: &JumpProcess, shape: &[i64], device: Device) -> Tensor {
    let c = process.config();
    let rate = process.lambda() * process.alphas()[process.timesteps()] * c.signal_mean;
    Tensor::full(shape, rate, (Kind::Float, device)).poisson()
}

/// One reverse step from t to s < t given an x_0 (the model's estimate or, for known elements,
/// the truth).
pub fn reverse_step(
    process: &JumpProcess,
    sampler: JumpSampler,
    z_t: &Tensor,
    x0: &Tensor,
    t: usize,
    s: usize,
) -> Tensor {
    let batch = z_t.size()[0] as usize;
    let (ts, ss) = (vec![t; batch], vec![s; batch]);
    let z = as_float(z_t);
    match sampler {
        JumpSampler::Thickening => &z + process.thickening_rate(x0, &z, &ts, &ss).poisson(),
        JumpSampler::Blackout => {
            let (at, as_) = (process.alphas()[t], process.alphas()[s]);
            let p = ((as_ - at) / (1.0 - at)).clamp(0.0, 1.0);
            let n = stochastic_round(&(x0 - &z).clamp_min(0.0));
            &z + Tensor::binomial(&n, &n.full_like(p))
        }
    }
}

/// Latent counts at step 0 to data units: z_0 (binomial) or z_0 / lambda (Poisson).
pub fn to_data(process: &JumpProcess, z0: &Tensor) -> Tensor {
    match process.thinning() {
        Thinning::Binomial => z0.shallow_clone(),
        Thinning::Poisson => z0 / process.lambda(),
    }
}

/// The (t, s) pairs of a `steps`-step run: T -> ... -> 0.
pub fn step_pairs(process: &JumpProcess, steps: usize) -> Result<Vec<(usize, usize)>> {
    let ts = sampling_timesteps(process.timesteps(), steps)?;
    Ok(ts
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, ts.get(i + 1).copied().unwrap_or(0)))
        .collect())
}

/// Generate `shape[0]` samples of shape `shape[1..]` in data units with `steps` model calls.
/// `on_step(done, total)` reports progress.
pub fn sample(
    process: &JumpProcess,
    model: &dyn CountDenoiser,
    shape: &[i64],
    steps: usize,
    sampler: JumpSampler,
    device: Device,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    sampler.check(process)?;
    let pairs = step_pairs(process, steps)?;
    let mut z = prior_sample(process, shape, device);
    tch::no_grad(|| {
        for (i, &(t, s)) in pairs.iter().enumerate() {
            let x0 = process.estimate_x0(model, &z, t);
            z = reverse_step(process, sampler, &z, &x0, t, s);
            on_step(i + 1, pairs.len());
        }
    });
    Ok(to_data(process, &z))
}

/// Fill in the elements of `known` (data units, `[N, ...]`) where `mask` (broadcasting against
/// it) is 0, keeping those where it is 1 (see the module doc).
pub fn inpaint(
    process: &JumpProcess,
    model: &dyn CountDenoiser,
    known: &Tensor,
    mask: &Tensor,
    steps: usize,
    sampler: JumpSampler,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    sampler.check(process)?;
    process.check_data(known)?;
    let pairs = step_pairs(process, steps)?;
    let known = as_float(known);
    let mask = mask.to_kind(known.kind()).expand_as(&known);
    let batch = known.size()[0] as usize;
    let device = known.device();
    let prior = prior_sample(process, &known.size(), device);
    let known_t = process.q_sample(&known, &vec![process.timesteps(); batch]);
    let mut z = &known_t * &mask + prior * (1.0 - &mask);
    tch::no_grad(|| {
        for (i, &(t, s)) in pairs.iter().enumerate() {
            let x0_hat = process.estimate_x0(model, &z, t);
            // Known elements step with their true x_0 (the thickening sampler's Poisson step is
            // exact for Poisson thinning; binomial thinning takes its exact bridge).
            let known_sampler = match process.thinning() {
                Thinning::Binomial => JumpSampler::Blackout,
                Thinning::Poisson => JumpSampler::Thickening,
            };
            let z_known = reverse_step(process, known_sampler, &z, &known, t, s);
            let z_model = reverse_step(process, sampler, &z, &x0_hat, t, s);
            z = &z_known * &mask + z_model * (1.0 - &mask);
            on_step(i + 1, pairs.len());
        }
    });
    let out = to_data(process, &z);
    // Under binomial thinning the known elements are already exact; under Poisson thinning
    // z_0 / lambda is a noisy copy, so put the known values back.
    Ok(&known * &mask + out * (1.0 - &mask))
}

/// SDEdit for counts: thin `x0` (data units) to step round(strength T) and thicken it back with
/// `steps` steps spread over that part of the chain (at least one). `strength` in [0, 1]; 0
/// returns `x0` unchanged.
pub fn edit(
    process: &JumpProcess,
    model: &dyn CountDenoiser,
    x0: &Tensor,
    strength: f64,
    steps: usize,
    sampler: JumpSampler,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Tensor> {
    sampler.check(process)?;
    process.check_data(x0)?;
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::InvalidArgument(format!(
            "--strength: must lie in [0, 1], got {strength}"
        )));
    }
    let start = (strength * process.timesteps() as f64).round() as usize;
    if start == 0 {
        return Ok(as_float(x0));
    }
    let steps = ((steps as f64 * strength).round() as usize).clamp(1, start);
    let ts = sampling_timesteps(start, steps)?;
    let batch = x0.size()[0] as usize;
    let mut z = process.q_sample(x0, &vec![start; batch]);
    tch::no_grad(|| {
        for (i, &t) in ts.iter().enumerate() {
            let s = ts.get(i + 1).copied().unwrap_or(0);
            let x0_hat = process.estimate_x0(model, &z, t);
            z = reverse_step(process, sampler, &z, &x0_hat, t, s);
            on_step(i + 1, ts.len());
        }
    });
    Ok(to_data(process, &z))
}
