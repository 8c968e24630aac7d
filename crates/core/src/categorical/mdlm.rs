//! MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models"): masked
//! (absorbing) diffusion in continuous time t in [0, 1].
//!
//! Each token is kept with probability alpha_t and replaced by [MASK] (id V) otherwise; alpha
//! falls from alpha_0 = 1. The network's output goes through the SUBS parameterisation (the
//! [MASK] logit is -inf; unmasked positions copy their input), and the continuous-time ELBO is
//! E_t [ -alpha'_t / (1 - alpha_t) sum over masked positions of -log p~(x_0 | x_t) ], a weighted
//! cross-entropy (MDLM eq. 10-11), estimated with a time per sequence or, with
//! [`BoundEstimator::ExactCount`], with a masked count per sequence ([`super::masked`]). Training times are drawn on [eps, 1] (eps = 1e-3, MDLM's
//! `sampling_eps`), antithetically (stratified over the batch) by default, exactly as the reference
//! code; the bound therefore leaves out the prior term at t = 1 and the sliver t < eps, both of
//! order eps.
//!
//! The network is conditioned on sigma(t) = -ln alpha_t (MDLM passes the total noise); the default
//! MDLM network ignores it. Sampling follows the reference ancestral ("ddpm_cache") update: from t
//! to s each masked token becomes token k with probability p~(k) (alpha_s - alpha_t)/(1 - alpha_t)
//! and stays masked with probability (1 - alpha_s)/(1 - alpha_t); unmasked tokens never change, so
//! when a step changes nothing the next step may reuse the model output (the cache).

use super::masked::{
    ancestral, apply_mask, batched_bound, check_mask_rate_range, stratified, training_loss,
    uniforms, weighted_nats, BoundEstimator, MaskDraw, Masking, TrainingLoss,
};
use super::{
    check_infill, check_logits, check_tokens, cond_tensor, subs_log_probs, CategoricalSample,
    NllEstimate, SampleOptions, TokenDenoiser,
};
use crate::{Error, Result};
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// The masking schedule alpha_t (probability that a token is still unmasked at time t).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaskSchedule {
    /// alpha_t = 1 - (1 - eps) t (MDLM's default, eps = 1e-3): sigma(t) = -log(1 - (1 - eps) t),
    /// and the ELBO weight -alpha'/(1 - alpha) is 1/t.
    LogLinear { eps: f64 },
    /// sigma(t) = sigma_min + t (sigma_max - sigma_min), alpha_t = exp(-sigma(t)) (MDLM's `linear`
    /// noise, defaults 0 and 10).
    Linear { sigma_min: f64, sigma_max: f64 },
    /// alpha_t = eps + (1 - eps) cos(pi t / 2) (MDLM's `cosine` noise, eps = 1e-3).
    Cosine { eps: f64 },
}

impl Default for MaskSchedule {
    fn default() -> Self {
        MaskSchedule::LogLinear { eps: 1e-3 }
    }
}

impl MaskSchedule {
    fn validate(&self) -> Result<()> {
        let ok = match *self {
            MaskSchedule::LogLinear { eps } | MaskSchedule::Cosine { eps } => {
                (0.0..1.0).contains(&eps)
            }
            MaskSchedule::Linear {
                sigma_min,
                sigma_max,
            } => sigma_min >= 0.0 && sigma_max > sigma_min && sigma_max.is_finite(),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "invalid masking schedule {self:?}: eps must lie in [0, 1), and \
                 0 <= sigma_min < sigma_max"
            )))
        }
    }

    /// alpha_t.
    pub fn alpha(&self, t: f64) -> f64 {
        1.0 - self.one_minus_alpha(t)
    }

    /// 1 - alpha_t, the masking probability, computed without cancellation near t = 0.
    pub fn one_minus_alpha(&self, t: f64) -> f64 {
        match *self {
            MaskSchedule::LogLinear { eps } => (1.0 - eps) * t,
            MaskSchedule::Linear {
                sigma_min,
                sigma_max,
            } => -(-(sigma_min + t * (sigma_max - sigma_min))).exp_m1(),
            // 1 - cos x = 2 sin^2(x / 2).
            MaskSchedule::Cosine { eps } => (1.0 - eps) * 2.0 * (PI * t / 4.0).sin().powi(2),
        }
    }

    /// d alpha_t / dt (negative).
    pub fn alpha_derivative(&self, t: f64) -> f64 {
        match *self {
            MaskSchedule::LogLinear { eps } => -(1.0 - eps),
            MaskSchedule::Linear {
                sigma_min,
                sigma_max,
            } => -(sigma_max - sigma_min) * self.alpha(t),
            MaskSchedule::Cosine { eps } => -(1.0 - eps) * PI / 2.0 * (PI * t / 2.0).sin(),
        }
    }

    /// The total noise sigma(t) = -ln alpha_t: the network's time conditioning.
    pub fn sigma(&self, t: f64) -> f64 {
        -(-self.one_minus_alpha(t)).ln_1p()
    }

    /// The ELBO weight -alpha'_t / (1 - alpha_t) on the masked positions' cross-entropy.
    pub fn weight(&self, t: f64) -> f64 {
        -self.alpha_derivative(t) / self.one_minus_alpha(t)
    }
}

/// An MDLM process.
#[derive(Clone, Debug, PartialEq)]
pub struct MdlmConfig {
    /// V, the data vocabulary (tokens 0..V); [MASK] is V and the model outputs V + 1 logits.
    pub vocab_size: i64,
    pub schedule: MaskSchedule,
    /// Training and evaluation times are drawn from [sampling_eps, 1] (MDLM: 1e-3).
    pub sampling_eps: f64,
    /// Low-discrepancy times: for n draws, one in each [i/n, (i+1)/n) (MDLM's antithetic sampling).
    pub antithetic: bool,
    /// How the bound is estimated, in training and in [`Mdlm::nll`].
    pub estimator: BoundEstimator,
    /// What training minimises ([`Mdlm::nll`] is always the bound).
    pub loss: TrainingLoss,
    /// Training only: draw mask rates (t, or k / L) from this range instead of [0, 1].
    pub mask_rate_range: Option<(f64, f64)>,
}

impl MdlmConfig {
    pub fn new(vocab_size: i64) -> Self {
        MdlmConfig {
            vocab_size,
            schedule: MaskSchedule::default(),
            sampling_eps: 1e-3,
            antithetic: true,
            estimator: BoundEstimator::ContinuousTime,
            loss: TrainingLoss::Elbo,
            mask_rate_range: None,
        }
    }
}

/// An MDLM process.
#[derive(Clone, Debug)]
pub struct Mdlm {
    config: MdlmConfig,
}

impl Mdlm {
    pub fn new(config: MdlmConfig) -> Result<Self> {
        if config.vocab_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "vocab_size must be at least 1, got {}",
                config.vocab_size
            )));
        }
        if !(config.sampling_eps > 0.0 && config.sampling_eps < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "sampling_eps must lie in (0, 1), got {}",
                config.sampling_eps
            )));
        }
        config.schedule.validate()?;
        if let Some(range) = config.mask_rate_range {
            check_mask_rate_range(range)?;
        }
        Ok(Mdlm { config })
    }

    pub fn config(&self) -> &MdlmConfig {
        &self.config
    }

    pub fn schedule(&self) -> &MaskSchedule {
        &self.config.schedule
    }

    /// The [MASK] id, V.
    pub fn mask_id(&self) -> i64 {
        self.config.vocab_size
    }

    /// K = V + 1: the model's output width.
    pub fn num_states(&self) -> i64 {
        self.config.vocab_size + 1
    }

    /// `n` training times in [sampling_eps, 1], from libtorch's generator (antithetic when set).
    pub fn sample_t(&self, n: usize) -> Vec<f64> {
        let u = Vec::<f64>::try_from(Tensor::rand([n as i64], (Kind::Double, Device::Cpu)))
            .expect("a 1-D f64 tensor");
        self.times_from_uniforms(&u, n)
    }

    /// Stratify `u` over groups of `n` (when antithetic) and map onto [eps, 1].
    fn times_from_uniforms(&self, u: &[f64], n: usize) -> Vec<f64> {
        let eps = self.config.sampling_eps;
        self.stratify(u, n)
            .into_iter()
            .map(|u| (1.0 - eps) * u + eps)
            .collect()
    }

    fn stratify(&self, u: &[f64], n: usize) -> Vec<f64> {
        if self.config.antithetic {
            stratified(u, n)
        } else {
            u.to_vec()
        }
    }

    fn masking(&self, training: bool) -> Masking {
        Masking {
            schedule: self.config.schedule,
            estimator: self.config.estimator,
            sampling_eps: self.config.sampling_eps,
            range: self.config.mask_rate_range.filter(|_| training),
        }
    }

    /// x_t ~ q(x_t | x_0): each token masked independently with probability 1 - alpha_t, one t
    /// per example.
    pub fn q_sample(&self, x0: &Tensor, t: &[f64]) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        self.check_times(x0, t)?;
        Ok(self.noise(x0, t))
    }

    fn check_times(&self, x0: &Tensor, t: &[f64]) -> Result<()> {
        if t.len() as i64 != x0.size()[0] || t.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(Error::InvalidArgument(format!(
                "need one time in [0, 1] per example: {} times for a batch of {}",
                t.len(),
                x0.size()[0]
            )));
        }
        Ok(())
    }

    fn noise(&self, x0: &Tensor, t: &[f64]) -> Tensor {
        let device = x0.device();
        let x0 = x0.to_kind(Kind::Int64);
        let p: Vec<f64> = t
            .iter()
            .map(|&t| self.config.schedule.one_minus_alpha(t))
            .collect();
        let masked = Tensor::rand(x0.size(), (Kind::Double, device))
            .lt_tensor(&Tensor::from_slice(&p).to_device(device).unsqueeze(1));
        x0.full_like(self.mask_id()).where_self(&masked, &x0)
    }

    /// SUBS log p~(x_0 | x_t) `[B, L, V + 1]` from the model's logits, in the logits' float kind
    /// (at least f32): -inf on [MASK], carry-over on unmasked positions.
    pub fn subs_log_probs(&self, logits: &Tensor, x_t: &Tensor) -> Result<Tensor> {
        check_logits(logits, x_t, self.num_states())?;
        let kind = match logits.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        Ok(subs_log_probs(logits, x_t, self.mask_id(), kind))
    }

    /// The time conditioning sigma(t) for each example.
    fn cond(&self, t: &[f64], device: Device) -> Tensor {
        let sigma: Vec<f64> = t.iter().map(|&t| self.config.schedule.sigma(t)).collect();
        cond_tensor(&sigma, device)
    }

    /// The network's conditioning for a draw: sigma(t) of its time, or for a masked share r
    /// (count estimator) the sigma of the time that masks r, -ln(1 - r), capped at the
    /// schedule's last (1 - r = 0 has no time).
    fn draw_cond(&self, draw: &MaskDraw, device: Device) -> Tensor {
        match self.config.estimator {
            BoundEstimator::ContinuousTime => self.cond(&draw.level, device),
            BoundEstimator::ExactCount => {
                let floor = self.config.schedule.alpha(1.0).max(1e-12);
                let sigma: Vec<f64> = draw
                    .level
                    .iter()
                    .map(|&r| -(1.0 - r).max(floor).ln())
                    .collect();
                cond_tensor(&sigma, device)
            }
        }
    }

    /// A draw of masks for `x0` `[B, L]` from stratified uniforms `s` `[B]`, and the SUBS
    /// log-probabilities of the model on the masked sequence.
    fn score(
        &self,
        model: &dyn TokenDenoiser,
        x0: &Tensor,
        s: &[f64],
        training: bool,
    ) -> Result<(MaskDraw, Tensor)> {
        let (b, len) = (x0.size()[0], x0.size()[1]);
        let draw = self.masking(training).draw(s, b, len, len, x0.device());
        let x_t = apply_mask(x0, &draw, self.mask_id());
        let logits = model.logits(&x_t, &self.draw_cond(&draw, x0.device()));
        let log_p = self.subs_log_probs(&logits, &x_t)?;
        Ok((draw, log_p))
    }

    /// The training loss on tokens `x0` `[B, L]` (scalar, with gradients): the bound in nats per
    /// token (or the masked cross-entropy, as configured), one draw per sequence, stratified
    /// over the batch when antithetic.
    pub fn loss(&self, model: &dyn TokenDenoiser, x0: &Tensor) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        let n = x0.size()[0] as usize;
        let s = self.stratify(&uniforms(n), n);
        let x0 = x0.to_kind(Kind::Int64);
        let (draw, log_p) = self.score(model, &x0, &s, true)?;
        Ok(training_loss(&log_p, &x0, &draw, self.config.loss))
    }

    /// The continuous-time bound at the given per-example times (in (0, 1]), nats per token,
    /// whatever the configured estimator.
    pub fn loss_at(&self, model: &dyn TokenDenoiser, x0: &Tensor, t: &[f64]) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        self.check_times(x0, t)?;
        if t.iter().any(|&t| t <= 0.0) {
            return Err(Error::InvalidArgument(
                "loss times must be > 0 (the ELBO weight is infinite at t = 0)".into(),
            ));
        }
        let x0 = x0.to_kind(Kind::Int64);
        let x_t = self.noise(&x0, t);
        let logits = model.logits(&x_t, &self.cond(t, x0.device()));
        let log_p = self.subs_log_probs(&logits, &x_t)?;
        let kind = log_p.kind();
        // Unmasked positions contribute log 1 = 0 through the carry-over.
        let nll = -log_p.gather(-1, &x0.unsqueeze(-1), false).squeeze_dim(-1);
        let w: Vec<f64> = t.iter().map(|&t| self.config.schedule.weight(t)).collect();
        let w = Tensor::from_slice(&w).to_kind(kind).to_device(x0.device());
        let per = nll.sum_dim_intlist(-1, false, kind) * w;
        Ok(per.sum(per.kind()) / x0.numel() as f64)
    }

    /// The NLL upper bound on held-out tokens `data` `[N, L]` (on the model's device): every
    /// sequence is scored `mc_samples` times (stratified when antithetic: times, or masked counts
    /// with the count estimator), `batch_size` rows per model call, in f64. `on_progress(done,
    /// total)` counts model calls.
    pub fn nll(
        &self,
        model: &dyn TokenDenoiser,
        data: &Tensor,
        batch_size: i64,
        mc_samples: usize,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<NllEstimate> {
        check_tokens(data, self.config.vocab_size, "data")?;
        if batch_size < 1 || mc_samples < 1 {
            return Err(Error::InvalidArgument(
                "batch_size and mc_samples must be at least 1".into(),
            ));
        }
        let n = data.size()[0];
        let mc = mc_samples as i64;
        let rows = data
            .to_kind(Kind::Int64)
            .repeat_interleave_self_int(mc, 0, None);
        let s = self.stratify(&uniforms((n * mc) as usize), mc_samples);
        batched_bound(
            &rows,
            mc_samples,
            batch_size,
            &mut |x0, start| {
                let b = x0.size()[0];
                let ss = &s[start as usize..(start + b) as usize];
                let wrapped = DoubleLogits(model);
                let (draw, log_p) = self.score(&wrapped, x0, ss, false)?;
                Ok(weighted_nats(&log_p, x0, &draw).sum_dim_intlist(-1, false, Kind::Double))
            },
            &mut on_progress,
        )
    }

    /// Ancestral sampling of `batch` sequences of `len` tokens, starting from all [MASK].
    pub fn sample(
        &self,
        model: &dyn TokenDenoiser,
        batch: i64,
        len: i64,
        device: Device,
        options: &SampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<CategoricalSample> {
        if batch < 1 || len < 1 {
            return Err(Error::InvalidArgument(format!(
                "batch and length must be at least 1, got {batch} and {len}"
            )));
        }
        let tokens = Tensor::zeros([batch, len], (Kind::Int64, device));
        let fixed = Tensor::zeros([batch, len], (Kind::Bool, device));
        self.run(model, &tokens, &fixed, options, on_step)
    }

    /// Infilling: positions where `fixed` `[B, L]` (bool) is true hold their tokens from `tokens`
    /// `[B, L]` unmasked from the start and never change (a prefix, a suffix or any span); the
    /// others start as [MASK] and are generated.
    pub fn infill(
        &self,
        model: &dyn TokenDenoiser,
        tokens: &Tensor,
        fixed: &Tensor,
        options: &SampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<CategoricalSample> {
        check_infill(tokens, fixed, self.config.vocab_size)?;
        self.run(model, tokens, fixed, options, on_step)
    }

    /// Semi-autoregressive generation of `total_len` tokens with a model whose context is
    /// `window` tokens: the first block fills the window (after `prompt` `[B, P]`, if given, which
    /// counts toward `total_len`); each later block keeps the last `window - stride` tokens as
    /// fixed context and generates `stride` new ones (MDLM's semi-AR sampler). `on_step` counts
    /// steps over all blocks; `model_calls` sums them.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_semi_autoregressive(
        &self,
        model: &dyn TokenDenoiser,
        batch: i64,
        total_len: i64,
        window: i64,
        stride: i64,
        prompt: Option<&Tensor>,
        device: Device,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<CategoricalSample> {
        options.validate()?;
        if batch < 1 || window < 1 || total_len < 1 || !(1..=window).contains(&stride) {
            return Err(Error::InvalidArgument(format!(
                "semi-autoregressive sampling needs batch, window and total length >= 1 and \
                 stride in 1..=window; got batch {batch}, total {total_len}, window {window}, \
                 stride {stride}"
            )));
        }
        let mut out = match prompt {
            Some(p) => {
                check_tokens(p, self.config.vocab_size, "the prompt")?;
                if p.size()[0] != batch || p.size()[1] > total_len {
                    return Err(Error::InvalidArgument(format!(
                        "the prompt has shape {:?}; expected [{batch}, at most {total_len}]",
                        p.size()
                    )));
                }
                p.to_kind(Kind::Int64).to_device(device)
            }
            None => Tensor::zeros([batch, 0], (Kind::Int64, device)),
        };
        // Plan the blocks first so progress knows its total: (context length, new tokens).
        let mut plan = Vec::new();
        let mut have = out.size()[1];
        while have < total_len {
            let ctx = have.min(window - stride);
            let new = (window - ctx).min(total_len - have);
            plan.push((ctx, new));
            have += new;
        }
        let total = plan.len() * options.steps;
        let mut calls = 0;
        for (i, &(ctx, new)) in plan.iter().enumerate() {
            let have = out.size()[1];
            let tokens = Tensor::cat(
                &[
                    out.narrow(1, have - ctx, ctx),
                    Tensor::zeros([batch, new], (Kind::Int64, device)),
                ],
                1,
            );
            let fixed = Tensor::cat(
                &[
                    Tensor::ones([batch, ctx], (Kind::Bool, device)),
                    Tensor::zeros([batch, new], (Kind::Bool, device)),
                ],
                1,
            );
            let offset = i * options.steps;
            let block = self.run(model, &tokens, &fixed, options, |done, _| {
                on_step(offset + done, total)
            })?;
            calls += block.model_calls;
            out = Tensor::cat(&[out, block.tokens.narrow(1, ctx, new)], 1);
        }
        Ok(CategoricalSample {
            tokens: out,
            model_calls: calls,
        })
    }

    fn run(
        &self,
        model: &dyn TokenDenoiser,
        given: &Tensor,
        fixed: &Tensor,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<CategoricalSample> {
        let device = given.device();
        let b = given.size()[0];
        let k = self.num_states();
        let n = options.steps;
        ancestral(
            &self.config.schedule,
            self.mask_id(),
            given,
            fixed,
            options,
            &mut |x, t| {
                let logits = model.logits(x, &self.cond(&vec![t; b as usize], device));
                check_logits(&logits, x, k)?;
                Ok(logits)
            },
            &mut |done| on_step(done, n),
        )
    }
}

/// A model whose logits are cast to f64, so that likelihood evaluation runs in f64.
pub(crate) struct DoubleLogits<'a>(pub(crate) &'a dyn TokenDenoiser);

impl TokenDenoiser for DoubleLogits<'_> {
    fn logits(&self, x_t: &Tensor, cond: &Tensor) -> Tensor {
        self.0.logits(x_t, cond).to_kind(Kind::Double)
    }
}
