//! Sampling that starts from or keeps parts of existing data: inpainting by replacement (every
//! sampler that reports its noise levels), RePaint resampling (Lugmayr et al. 2022) and SDEdit
//! (Meng et al. 2022: noise the input to strength s, then denoise).

use crate::denoiser::Denoiser;
use crate::samplers::{model_step, Sampler};
use crate::{Error, Result};
use tch::Tensor;

fn level_of(sampler: &dyn Sampler, done: usize) -> Result<(f64, f64)> {
    sampler.level(done).ok_or_else(|| {
        Error::InvalidArgument(
            "this sampler does not report its noise levels, so it cannot inpaint or edit".into(),
        )
    })
}

/// `x0` noised to level (a, s): a x0 + s eps with fresh eps.
fn noised(x0: &Tensor, (a, s): (f64, f64)) -> Tensor {
    x0 * a + Tensor::randn_like(x0) * s
}

/// RePaint's resampling: after every `jump_length` steps, go back up `jump_length` levels by the
/// forward process and down again, `jump_n_sample - 1` extra times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resampling {
    pub jump_length: usize,
    pub jump_n_sample: usize,
}

/// Inpaint: sample while keeping the region where `mask` is 1 equal to `known` (noised to each
/// step's level, so the model sees a consistent x_t). `mask` must broadcast against the sample
/// (e.g. `[B or 1, 1 or C, H, W]`); `x_t` is the starting noise. With `resampling`, RePaint.
pub fn inpaint(
    sampler: &mut dyn Sampler,
    model: &dyn Denoiser,
    x_t: Tensor,
    known: &Tensor,
    mask: &Tensor,
    resampling: Option<Resampling>,
    mut on_step: impl FnMut(usize, &Tensor),
) -> Result<Tensor> {
    let shape = x_t.size();
    if known.size() != shape {
        return Err(Error::InvalidArgument(format!(
            "the known image has shape {:?} but samples have shape {shape:?}",
            known.size()
        )));
    }
    let mask_shape = mask.size();
    let broadcasts = mask_shape.len() == shape.len()
        && mask_shape
            .iter()
            .zip(&shape)
            .all(|(&m, &s)| m == s || m == 1);
    if !broadcasts {
        return Err(Error::InvalidArgument(format!(
            "the mask has shape {mask_shape:?}, which does not broadcast against samples of shape {shape:?}"
        )));
    }
    let timesteps = sampler.timesteps().to_vec();
    let n = timesteps.len();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "set_timesteps must be called before sampling".into(),
        ));
    }
    level_of(sampler, 0)?;
    let order = sampler.order().max(1);
    let mask = mask.to_kind(x_t.kind()).to_device(x_t.device());
    let keep = |x: &Tensor, level: (f64, f64)| &mask * noised(known, level) + (-&mask + 1.0) * x;
    // The schedule of moves: true = a reverse step at index `done`, false = one sampler step
    // (`order` timesteps) back up.
    let mut moves = Vec::new();
    let mut extra: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    if let Some(r) = resampling {
        if r.jump_length == 0 || r.jump_n_sample == 0 {
            return Err(Error::InvalidArgument(
                "RePaint needs jump length and jump count of at least 1".into(),
            ));
        }
        // Jumps are counted in whole sampler steps (groups of `order` timesteps), so a jump
        // lands where the sampler can restart.
        let span = r.jump_length * order;
        for d in (span..n).step_by(span) {
            extra.insert(d, r.jump_n_sample - 1);
        }
    }
    let mut done = 0;
    while done < n {
        moves.push(true);
        done += 1;
        if let Some(left) = extra.get_mut(&done) {
            if *left > 0 {
                *left -= 1;
                let jump = resampling
                    .expect("extra is only filled with resampling")
                    .jump_length;
                // `jump` moves back, each one whole sampler step (`order` timesteps).
                moves.extend(std::iter::repeat_n(false, jump));
                done -= jump * order;
            }
        }
    }
    if resampling.is_some() {
        // Jumping back needs a sampler that can restart anywhere.
        sampler.start_at(0)?;
    }
    let mut x = keep(&x_t, level_of(sampler, 0)?);
    let mut done = 0;
    let mut x0_prev: Option<Tensor> = None;
    sampler.start_at(0)?;
    for (count, forward) in moves.into_iter().enumerate() {
        if forward {
            let (next, pred) = model_step(sampler, model, &x, timesteps[done], x0_prev.as_ref())?;
            if model.self_conditioning() {
                x0_prev = Some(pred);
            }
            done += 1;
            x = keep(&next, level_of(sampler, done)?);
        } else {
            // One sampler step back up: q(x_{higher} | x_{lower}) between two levels
            // (a1, s1) -> (a2, s2): x2 = (a2/a1) x1 + sqrt(s2^2 - (a2/a1)^2 s1^2) eps.
            let (a1, s1) = level_of(sampler, done)?;
            let (a2, s2) = level_of(sampler, done - order)?;
            let ratio = a2 / a1;
            let std = (s2 * s2 - ratio * ratio * s1 * s1).max(0.0).sqrt();
            x = &x * ratio + Tensor::randn_like(&x) * std;
            done -= order;
            sampler.start_at(done)?;
        }
        on_step(count, &x);
    }
    Ok(x)
}

/// SDEdit / image-to-image: noise `x0` to the level `strength` of the way up the schedule and
/// denoise from there. strength 0 returns `x0` unchanged, 1 starts from (almost) pure noise.
/// Runs round(strength * N) of the sampler's N steps (diffusers' img2img rule).
pub fn sdedit(
    sampler: &mut dyn Sampler,
    model: &dyn Denoiser,
    x0: &Tensor,
    strength: f64,
    on_step: impl FnMut(&crate::samplers::StepInfo<'_>),
) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::InvalidArgument(format!(
            "strength must lie in [0, 1], got {strength}"
        )));
    }
    let n = sampler.timesteps().len();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "set_timesteps must be called before sampling".into(),
        ));
    }
    // Counted in whole sampler steps (diffusers' img2img: t_start * scheduler.order), so a
    // multi-evaluation sampler such as Heun starts at a predictor.
    let order = sampler.order().max(1);
    let groups = n.div_ceil(order);
    let steps = ((strength * groups as f64).round() as usize).min(groups);
    if steps == 0 {
        return Ok(x0.shallow_clone());
    }
    let start = (groups - steps) * order;
    let x = noised(x0, level_of(sampler, start)?);
    crate::samplers::sample_from(sampler, model, x, start, on_step)
}
