//! Reverse-process samplers, one per file. Each offers diffusers' step API (`set_timesteps`,
//! `timesteps`, `scale_model_input`, `step`) through [`Sampler`], and [`sample`] runs the whole loop
//! with a model, k-diffusion style. Coefficients are computed in f64 and applied in the sample's dtype.
//! Stochastic steps draw from libtorch's generator in the same order diffusers does, so a seeded
//! run reproduces a seeded diffusers run with a CPU generator.

pub mod ddim;
pub mod ddpm;
pub mod diffwave;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod sigmas;

use crate::denoiser::Denoiser;
use crate::{Error, Result};
use tch::{Kind, Tensor};

/// What one step produced.
pub struct StepOutput {
    /// x at the next (less noisy) timestep.
    pub prev_sample: Tensor,
    /// The model's estimate of the clean sample at this step (for previews).
    pub pred_original_sample: Tensor,
}

/// diffusers' scheduler interface.
pub trait Sampler {
    /// Choose `n` inference steps.
    fn set_timesteps(&mut self, n: usize) -> Result<()>;
    /// The timesteps to visit, noisiest first (in the training schedule's units).
    fn timesteps(&self) -> &[f64];
    /// The standard deviation of the initial noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Scale x before the model sees it (identity for variance-preserving samplers).
    fn scale_model_input(&self, sample: &Tensor, _t: f64) -> Tensor {
        sample.shallow_clone()
    }
    /// One reverse step from timestep `t` given the model output there.
    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor) -> Result<StepOutput>;

    /// The noise level of the sample after `done` steps (0: the starting noise) as (a, s): that
    /// sample is distributed as a x_0 + s eps. Inpainting and SDEdit use it to noise known data to
    /// the sampler's current level. `None` where a sampler cannot say.
    fn level(&self, _done: usize) -> Option<(f64, f64)> {
        None
    }

    /// Model evaluations per step: the timesteps come in groups of this many (Heun: a predictor
    /// and a corrector, as diffusers' `scheduler.order`), and sampling can start or jump back
    /// only at the first index of a group.
    fn order(&self) -> usize {
        1
    }

    /// Continue from step `index` (after `index` steps were taken elsewhere, or to repeat steps as
    /// RePaint does): resets whatever the sampler carries between steps.
    fn start_at(&mut self, index: usize) -> Result<()> {
        if index == 0 {
            Ok(())
        } else {
            Err(Error::InvalidArgument(
                "this sampler cannot start part-way through its timesteps".into(),
            ))
        }
    }
}

/// Progress of a sampling loop, passed to the per-step callback.
pub struct StepInfo<'a> {
    /// 0-based index of the step just taken.
    pub index: usize,
    pub total: usize,
    pub t: f64,
    pub sample: &'a Tensor,
    pub pred_original_sample: &'a Tensor,
}

/// Run the reverse process from noise `x_t` (already scaled by `init_noise_sigma`) with `model`,
/// calling `on_step` after every step (progress bars, previews). Timesteps must be set.
pub fn sample(
    sampler: &mut dyn Sampler,
    model: &dyn Denoiser,
    x_t: Tensor,
    on_step: impl FnMut(&StepInfo<'_>),
) -> Result<Tensor> {
    sample_from(sampler, model, x_t, 0, on_step)
}

/// [`sample`] starting at step `start` with `x` at that step's noise level (SDEdit, resuming).
pub fn sample_from(
    sampler: &mut dyn Sampler,
    model: &dyn Denoiser,
    x: Tensor,
    start: usize,
    mut on_step: impl FnMut(&StepInfo<'_>),
) -> Result<Tensor> {
    let timesteps = sampler.timesteps().to_vec();
    if timesteps.is_empty() {
        return Err(Error::InvalidArgument(
            "set_timesteps must be called before sampling".into(),
        ));
    }
    sampler.start_at(start)?;
    let mut x = x;
    let mut x0_prev: Option<Tensor> = None;
    for (index, &t) in timesteps.iter().enumerate().skip(start) {
        let (next, pred) = model_step(sampler, model, &x, t, x0_prev.as_ref())?;
        x = next;
        if model.self_conditioning() {
            x0_prev = Some(pred.shallow_clone());
        }
        on_step(&StepInfo {
            index,
            total: timesteps.len(),
            t,
            sample: &x,
            pred_original_sample: &pred,
        });
    }
    Ok(x)
}

/// One model evaluation and sampler step at timestep `t`: (next sample, predicted x0).
/// A self-conditioned model gets `x0_prev`, the previous step's x0 estimate (zeros at the start).
pub(crate) fn model_step(
    sampler: &mut dyn Sampler,
    model: &dyn Denoiser,
    x: &Tensor,
    t: f64,
    x0_prev: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let input = sampler.scale_model_input(x, t);
    let t_batch = Tensor::full([x.size()[0]], t, (Kind::Float, x.device()));
    let output = tch::no_grad(|| {
        if model.self_conditioning() {
            let zeros;
            let prev = match x0_prev {
                Some(p) => p,
                None => {
                    zeros = x.zeros_like();
                    &zeros
                }
            };
            model.forward_self_cond(&input, &t_batch, prev)
        } else {
            model.forward(&input, &t_batch)
        }
    });
    let step = sampler.step(&output, t, x)?;
    Ok((step.prev_sample, step.pred_original_sample))
}

/// Dynamic thresholding (Saharia et al. 2022, sec. 2.3): per example, s = the `ratio` quantile of
/// |x0| clamped to [1, max_value]; x0 is clamped to [-s, s] and divided by s.
pub fn dynamic_threshold(x0: &Tensor, ratio: f64, max_value: f64) -> Tensor {
    let size = x0.size();
    let kind = x0.kind();
    let flat = x0.to_kind(Kind::Float).reshape([size[0], -1]);
    let s = flat
        .abs()
        .quantile_scalar(ratio, Some(1), false, "linear")
        .clamp(1.0, max_value)
        .unsqueeze(1);
    let clamped = flat.minimum(&s).maximum(&(-&s)) / &s;
    clamped.reshape(&size).to_kind(kind)
}

/// Custom timesteps must be strictly descending and within [0, num_train - 1].
pub(crate) fn check_custom_timesteps(timesteps: &[f64], num_train: usize) -> Result<()> {
    let t_max = (num_train - 1) as f64;
    if timesteps.is_empty() || timesteps.windows(2).any(|w| w[1] >= w[0]) {
        return Err(Error::InvalidArgument(
            "custom timesteps must be non-empty and strictly descending".into(),
        ));
    }
    if timesteps[0] > t_max || *timesteps.last().expect("non-empty") < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "custom timesteps must lie in [0, {t_max}]"
        )));
    }
    Ok(())
}

/// The index of `t` in `timesteps` (the samplers step along the list, never by arithmetic on t).
pub(crate) fn index_of(timesteps: &[f64], t: f64) -> Result<usize> {
    timesteps.iter().position(|&s| s == t).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "timestep {t} is not one of this sampler's timesteps"
        ))
    })
}

/// A scalar as a 0-dim tensor of `like`'s kind and device, for coefficient arithmetic.
pub(crate) fn scalar(value: f64, like: &Tensor) -> Tensor {
    Tensor::from(value)
        .to_kind(like.kind())
        .to_device(like.device())
}
