//! DiffWave's fast sampling (Kong et al. 2021, "DiffWave", appendix B, algorithm 2): a short
//! inference noise schedule beta^infer (6 steps by default: 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5) is run
//! as an ancestral DDPM chain of its own, and at each of its steps the network trained on the long
//! schedule is asked at the *aligned* real timestep t_s whose training noise level matches:
//! sqrt(alpha_bar_train) is interpolated linearly between the two integer timesteps that bracket
//! sqrt(alpha_bar_infer[s]), exactly as the paper's reference sampler does. The network therefore
//! sees fractional timesteps (diffuse's networks embed real t).
//!
//! The chain starts from N(0, I) even though alpha_bar_infer of the last step is far from 0 (0.376
//! for the default schedule): that is the paper's algorithm, and audio's small amplitudes make the
//! mismatch small. Any other prediction type is converted to epsilon with the inference schedule's
//! noise level, which by construction equals the training one at the aligned timestep.

use super::{index_of, Sampler, StepOutput};
use crate::prediction::PredictionType;
use crate::schedule::NoiseSchedule;
use crate::{Error, Result};
use tch::Tensor;

/// DiffWave's 6-step inference noise schedule (the paper's and its reference code's default).
pub const DIFFWAVE_FAST_BETAS: [f64; 6] = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5];

/// The fast sampler: a short ancestral chain aligned to a long training schedule.
pub struct DiffWaveFastSampler {
    prediction_type: PredictionType,
    /// beta^infer, least noisy first (index s = 0 .. S-1 as in the paper).
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// The aligned training timesteps, noisiest first (what `timesteps()` returns).
    timesteps: Vec<f64>,
    /// Clamp the x0 estimate to [-1, 1] for previews (the chain itself does not use x0).
    clip_sample: bool,
}

impl DiffWaveFastSampler {
    /// Align `inference_betas` (least noisy first) to the training `schedule`. Fails when a step's
    /// noise level lies outside the training schedule's range, where no timestep matches it.
    pub fn new(
        schedule: &NoiseSchedule,
        inference_betas: &[f64],
        prediction_type: PredictionType,
    ) -> Result<Self> {
        if inference_betas.is_empty()
            || inference_betas
                .iter()
                .any(|&b| !(b > 0.0 && b < 1.0 && b.is_finite()))
        {
            return Err(Error::InvalidArgument(format!(
                "the DiffWave inference schedule needs betas in (0, 1), got {inference_betas:?}"
            )));
        }
        let train = schedule.alphas_cumprod();
        let mut alphas_cumprod = Vec::with_capacity(inference_betas.len());
        let mut product = 1.0;
        for &b in inference_betas {
            product *= 1.0 - b;
            alphas_cumprod.push(product);
        }
        let mut aligned = Vec::with_capacity(inference_betas.len());
        for (s, &abar) in alphas_cumprod.iter().enumerate() {
            aligned.push(align(train, abar).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the DiffWave inference schedule's step {s} has alpha_bar {abar:.4}, outside the \
                     training schedule's range [{:.4}, {:.4}] (train with more timesteps or larger \
                     betas, or use another sampler)",
                    train[train.len() - 1],
                    train[0]
                ))
            })?);
        }
        aligned.reverse();
        Ok(DiffWaveFastSampler {
            prediction_type,
            betas: inference_betas.to_vec(),
            alphas_cumprod,
            timesteps: aligned,
            clip_sample: true,
        })
    }

    /// Number of steps of the inference schedule.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// Leave the previews' x0 estimate unclamped (for data outside [-1, 1]).
    pub fn without_clipping(mut self) -> Self {
        self.clip_sample = false;
        self
    }
}

/// The real timestep whose interpolated sqrt(alpha_bar) equals sqrt(`abar`) (the paper's T^align).
/// `train[t]` is alpha_bar after step t (diffusers' indexing, alpha_bar[0] = 1 - beta_0).
fn align(train: &[f64], abar: f64) -> Option<f64> {
    let target = abar.sqrt();
    if abar > train[0] {
        // Less noisy than the first training step: DiffWave's table starts at beta_0, so the
        // schedule's first beta^infer equals beta_0 exactly; allow rounding there.
        return ((abar - train[0]).abs() < 1e-12).then_some(0.0);
    }
    for t in 0..train.len() - 1 {
        let (hi, lo) = (train[t].sqrt(), train[t + 1].sqrt());
        if lo <= target && target <= hi {
            let twiddle = if hi > lo {
                (hi - target) / (hi - lo)
            } else {
                0.0
            };
            return Some(t as f64 + twiddle);
        }
    }
    None
}

impl Sampler for DiffWaveFastSampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        if n != self.betas.len() {
            return Err(Error::InvalidArgument(format!(
                "the diffwave-fast sampler takes its {} steps from its inference noise schedule; \
                 {n} were asked for",
                self.betas.len()
            )));
        }
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn level(&self, done: usize) -> Option<(f64, f64)> {
        // After `done` steps the sample sits at inference step S-1-done.
        let s = self.betas.len().checked_sub(done + 1);
        Some(match s {
            Some(s) => {
                let abar = self.alphas_cumprod[s];
                (abar.sqrt(), (1.0 - abar).sqrt())
            }
            None => (1.0, 0.0),
        })
    }

    fn start_at(&mut self, index: usize) -> Result<()> {
        if index > self.timesteps.len() {
            return Err(Error::InvalidArgument(format!(
                "start step {index} is past the {} steps",
                self.timesteps.len()
            )));
        }
        Ok(())
    }

    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput> {
        let index = index_of(&self.timesteps, t)?;
        let s = self.betas.len() - 1 - index;
        let (beta, abar) = (self.betas[s], self.alphas_cumprod[s]);
        let (a, sg) = (
            super::scalar(abar.sqrt(), sample),
            super::scalar((1.0 - abar).sqrt(), sample),
        );
        let eps = self.prediction_type.to_eps(model_output, sample, &a, &sg);
        // x_{s-1} = (x_s - beta_s / sqrt(1 - abar_s) eps) / sqrt(alpha_s) + sigma_s z.
        let c1 = 1.0 / (1.0 - beta).sqrt();
        let c2 = beta / (1.0 - abar).sqrt();
        let mut prev_sample = (sample - &eps * c2) * c1;
        if s > 0 {
            let abar_prev = self.alphas_cumprod[s - 1];
            let sigma = ((1.0 - abar_prev) / (1.0 - abar) * beta).sqrt();
            prev_sample += Tensor::randn_like(sample) * sigma;
        }
        let mut x0 = (sample - &eps * (1.0 - abar).sqrt()) / abar.sqrt();
        if self.clip_sample {
            x0 = x0.clamp(-1.0, 1.0);
        }
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: x0,
        })
    }
}
