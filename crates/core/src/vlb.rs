//! The variational lower bound of a discrete-time Gaussian diffusion model (Ho et al. 2020, eq. 5;
//! Nichol & Dhariwal 2021, sec. 2-3): per-timestep KL terms L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)),
//! the decoder term L_0 = -log p(x_0|x_1) under a discretised Gaussian, the prior term
//! L_T = KL(q(x_T|x_0) || N(0, I)), bits per dimension of a dataset from the full T-term bound, and
//! the hybrid loss L_simple + lambda L_vlb with learned variance.
//!
//! Log variances follow improved-diffusion: the posterior variance at t = 0 (which is 0) is
//! replaced by that at t = 1 before taking logs, for the true posterior and for the model's
//! fixed_small and learned_range variances alike.

use crate::denoiser::Denoiser;
use crate::likelihood::{discretized_gaussian_log_likelihood, normal_kl};
use crate::prediction::PredictionType;
use crate::samplers::ddpm::VarianceType;
use crate::schedule::NoiseSchedule;
use crate::{Error, Result};
use std::f64::consts::LN_2;
use tch::{Device, Kind, Tensor};

/// Per-timestep constants of the bound, precomputed once per schedule.
pub struct VlbTables {
    schedule: NoiseSchedule,
    /// log of the posterior variance, with t = 0 taking t = 1's value.
    posterior_log_var_clipped: Vec<f64>,
    /// log beta, with t = 0 taking the posterior variance at t = 1 (improved-diffusion's fixed_large).
    log_beta_clipped: Vec<f64>,
}

impl VlbTables {
    pub fn new(schedule: NoiseSchedule) -> Self {
        let n = schedule.len();
        let post_var: Vec<f64> = (0..n)
            .map(|t| {
                if t == 0 {
                    0.0
                } else {
                    schedule.posterior(t as f64, Some((t - 1) as f64)).variance
                }
            })
            .collect();
        let first = if n > 1 {
            post_var[1]
        } else {
            schedule.betas()[0]
        };
        let posterior_log_var_clipped = (0..n)
            .map(|t| if t == 0 { first.ln() } else { post_var[t].ln() })
            .collect();
        let log_beta_clipped = (0..n)
            .map(|t| {
                if t == 0 {
                    first.ln()
                } else {
                    schedule.betas()[t].ln()
                }
            })
            .collect();
        VlbTables {
            schedule,
            posterior_log_var_clipped,
            log_beta_clipped,
        }
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// A per-example value as a `[B, 1, ...]` tensor broadcasting against `like`.
    fn per_example(values: Vec<f64>, like: &Tensor) -> Tensor {
        let mut shape = vec![values.len() as i64];
        shape.extend(std::iter::repeat_n(1, like.dim() - 1));
        Tensor::from_slice(&values)
            .to_kind(like.kind())
            .to_device(like.device())
            .reshape(&shape)
    }

    /// The true posterior q(x_{t-1} | x_t, x_0) per example: (mean, log variance).
    fn posterior(&self, x0: &Tensor, x_t: &Tensor, t: &[usize]) -> (Tensor, Tensor) {
        let p: Vec<_> = t
            .iter()
            .map(|&t| {
                self.schedule
                    .posterior(t as f64, t.checked_sub(1).map(|s| s as f64))
            })
            .collect();
        let coef_x0 = Self::per_example(p.iter().map(|p| p.coef_x0).collect(), x0);
        let coef_xt = Self::per_example(p.iter().map(|p| p.coef_xt).collect(), x0);
        let log_var = Self::per_example(
            t.iter()
                .map(|&t| self.posterior_log_var_clipped[t])
                .collect(),
            x0,
        );
        (x0 * coef_x0 + x_t * coef_xt, log_var)
    }

    /// The model's p(x_{t-1} | x_t) per example: (mean, log variance) from its output.
    /// `clip` clamps the implied x0 to [-1, 1] (data scaled from 8-bit images).
    fn model_posterior(
        &self,
        output: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        prediction: PredictionType,
        variance: VarianceType,
        clip: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (mean_out, var_out) = variance.split_output(output, x_t.size()[1])?;
        let abar: Vec<f64> = t
            .iter()
            .map(|&t| self.schedule.alphas_cumprod()[t])
            .collect();
        let a = Self::per_example(abar.iter().map(|a| a.sqrt()).collect(), x_t);
        let s = Self::per_example(abar.iter().map(|a| (1.0 - a).sqrt()).collect(), x_t);
        let mut x0 = prediction.to_x0(&mean_out, x_t, &a, &s);
        if clip {
            x0 = x0.clamp(-1.0, 1.0);
        }
        let (mean, posterior_log_var) = self.posterior(&x0, x_t, t);
        let log_var = match variance {
            VarianceType::FixedSmall | VarianceType::FixedSmallLog => posterior_log_var,
            VarianceType::FixedLarge | VarianceType::FixedLargeLog => {
                Self::per_example(t.iter().map(|&t| self.log_beta_clipped[t]).collect(), x_t)
            }
            VarianceType::Learned => var_out.expect("learned").clamp_min(1e-20).log(),
            VarianceType::LearnedRange => {
                // Nichol & Dhariwal 2021, eq. 15: v interpolates log beta-tilde and log beta.
                let frac = (var_out.expect("learned") + 1.0) / 2.0;
                let max_log = Self::per_example(
                    t.iter().map(|&t| self.schedule.betas()[t].ln()).collect(),
                    x_t,
                );
                &frac * max_log + (-&frac + 1.0) * posterior_log_var
            }
        };
        Ok((mean, log_var))
    }

    /// L_{t-1} in bits per dimension, per example `[B]`, each example at its own timestep `t[i]`
    /// given the model `output` at x_t; where t = 0, the decoder's negative log-likelihood.
    #[allow(clippy::too_many_arguments)]
    pub fn term_bpd(
        &self,
        output: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        prediction: PredictionType,
        variance: VarianceType,
        clip: bool,
    ) -> Result<Tensor> {
        if t.len() as i64 != x0.size()[0] {
            return Err(Error::InvalidArgument(format!(
                "{} timesteps for a batch of {}",
                t.len(),
                x0.size()[0]
            )));
        }
        let (model_mean, model_log_var) =
            self.model_posterior(output, x_t, t, prediction, variance, clip)?;
        let (true_mean, true_log_var) = self.posterior(x0, x_t, t);
        let kl = normal_kl(
            &true_mean,
            &(x0.zeros_like() + true_log_var),
            &model_mean,
            &model_log_var,
        );
        let decoder =
            -discretized_gaussian_log_likelihood(x0, &model_mean, &(&model_log_var * 0.5));
        let at_zero = Self::per_example(
            t.iter().map(|&t| if t == 0 { 1.0 } else { 0.0 }).collect(),
            x0,
        )
        .gt(0.5);
        let nats = decoder.where_self(&at_zero, &kl);
        let dims: Vec<i64> = (1..x0.dim() as i64).collect();
        Ok(nats.mean_dim(Some(dims.as_slice()), false, Kind::Double) / LN_2)
    }

    /// L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per example.
    pub fn prior_bpd(&self, x0: &Tensor) -> Tensor {
        let abar = *self
            .schedule
            .alphas_cumprod()
            .last()
            .expect("non-empty schedule");
        let mean = x0 * abar.sqrt();
        let log_var = mean.zeros_like() + (1.0 - abar).max(1e-30).ln();
        let kl = normal_kl(&mean, &log_var, &mean.zeros_like(), &mean.zeros_like());
        let dims: Vec<i64> = (1..x0.dim() as i64).collect();
        kl.mean_dim(Some(dims.as_slice()), false, Kind::Double) / LN_2
    }
}

/// The full bound of a batch `x0` (scaled to [-1, 1]) under `model`, in bits per dimension per
/// example: all T terms plus the prior, each term evaluated on a fresh x_t ~ q(x_t | x_0)
/// (improved-diffusion's `calc_bpd_loop`). `on_term` is called after each timestep (progress).
pub fn bits_per_dim(
    tables: &VlbTables,
    model: &dyn Denoiser,
    x0: &Tensor,
    variance: VarianceType,
    mut on_term: impl FnMut(usize),
) -> Result<Tensor> {
    let n = tables.schedule().len();
    let batch = x0.size()[0];
    let mut total = tables.prior_bpd(x0);
    for (done, t) in (0..n).rev().enumerate() {
        let noise = Tensor::randn_like(x0);
        let x_t = tables
            .schedule()
            .add_noise(x0, &noise, &vec![t as f64; batch as usize]);
        let t_in = Tensor::full([batch], t as f64, (Kind::Float, x0.device()));
        let output = tch::no_grad(|| model.forward(&x_t, &t_in));
        total += tables.term_bpd(
            &output,
            x0,
            &x_t,
            &vec![t; batch as usize],
            model.prediction_type(),
            variance,
            true,
        )?;
        on_term(done + 1);
    }
    Ok(total.to_device(Device::Cpu))
}

/// Bits per dimension of a whole dataset (improved-diffusion's evaluation protocol): the full bound
/// of every batch, averaged over examples, with a progress bar over batches x timesteps (drawn on
/// stderr when it is a terminal) and a log line per batch. `total_examples` sizes the bar.
pub fn dataset_bits_per_dim(
    tables: &VlbTables,
    model: &dyn Denoiser,
    batches: impl IntoIterator<Item = Tensor>,
    total_examples: Option<u64>,
    variance: VarianceType,
) -> Result<f64> {
    let t = tables.schedule().len() as u64;
    let bar = diffuse_tensor::progress::progress_bar(
        total_examples.map_or(0, |n| n * t),
        "bits/dim",
        "term",
    );
    let (mut sum, mut count) = (0.0, 0usize);
    for (index, batch) in batches.into_iter().enumerate() {
        let size = batch.size()[0] as u64;
        let per_example = bits_per_dim(tables, model, &batch, variance, |_| bar.inc(size))?;
        let values =
            Vec::<f64>::try_from(per_example.to_kind(Kind::Double)).expect("per-example bits/dim");
        sum += values.iter().sum::<f64>();
        count += values.len();
        tracing::info!(
            batch = index,
            examples = count,
            bits_per_dim = sum / count as f64,
            "bits/dim"
        );
        bar.set_message(format!(
            "{:.4} bits/dim over {count} examples",
            sum / count as f64
        ));
    }
    bar.finish();
    if count == 0 {
        return Err(Error::InvalidArgument(
            "bits/dim of an empty dataset".into(),
        ));
    }
    Ok(sum / count as f64)
}

/// The two parts of the hybrid objective of Nichol & Dhariwal 2021 (eq. 16) for a model with
/// learned variance, per example: (mean squared error of the mean channels on `target`, the bound's
/// term at each example's timestep in bits/dim with gradients reaching only the variance channels).
#[allow(clippy::too_many_arguments)]
pub fn hybrid_terms(
    tables: &VlbTables,
    output: &Tensor,
    target: &Tensor,
    x0: &Tensor,
    x_t: &Tensor,
    timesteps: &[i64],
    prediction: PredictionType,
    variance: VarianceType,
) -> Result<(Tensor, Tensor)> {
    if !variance.is_learned() {
        return Err(Error::InvalidArgument(format!(
            "the hybrid loss trains a learned variance; variance type {variance:?} has none"
        )));
    }
    let (mean_out, var_out) = variance.split_output(output, x0.size()[1])?;
    let var_out = var_out.expect("learned variance has variance channels");
    let mean_out = &mean_out;
    let dims: Vec<i64> = (1..x0.dim() as i64).collect();
    let mse = (mean_out - target)
        .square()
        .mean_dim(Some(dims.as_slice()), false, Kind::Float);
    // Stop-gradient through the mean: the bound term only shapes the variance.
    let frozen = Tensor::cat(&[mean_out.detach(), var_out.shallow_clone()], 1);
    let t: Vec<usize> = timesteps.iter().map(|&t| t as usize).collect();
    let vb = tables
        .term_bpd(&frozen, x0, x_t, &t, prediction, variance, false)?
        .to_kind(Kind::Float);
    Ok((mse, vb))
}

/// The hybrid loss L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16): the bound's term at the
/// drawn timestep is scaled by T because the bound sums T such terms; lambda = 0.001 is the paper's.
#[allow(clippy::too_many_arguments)]
pub fn hybrid_loss(
    tables: &VlbTables,
    output: &Tensor,
    target: &Tensor,
    x0: &Tensor,
    x_t: &Tensor,
    timesteps: &[i64],
    prediction: PredictionType,
    variance: VarianceType,
    lambda: f64,
) -> Result<Tensor> {
    let (mse, vb) = hybrid_terms(
        tables, output, target, x0, x_t, timesteps, prediction, variance,
    )?;
    let scale = lambda * tables.schedule().len() as f64;
    Ok((mse + vb * scale).mean(Kind::Float))
}
