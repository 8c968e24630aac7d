//! BD3-LM (Arriola et al., ICLR 2025, "Block Diffusion: Interpolating Between Autoregressive and
//! Diffusion Language Models"): a sequence of L tokens is cut into blocks of B; the blocks are
//! generated left to right, each by masked diffusion (MDLM's process and SUBS parameterisation)
//! conditioned on the clean blocks before it. The likelihood factorises over blocks,
//! log p(x) = sum_b log p(x^b | x^{<b}), and each factor has MDLM's bound, so the NELBO is the sum
//! of per-block masked-diffusion bounds: with B = 1 it is the autoregressive cross-entropy, with
//! B = L it is MDLM's bound.
//!
//! The network ([`BlockDenoiser`]) is trained in one pass over `[x_t ; x_0]` with BD3-LM's
//! attention mask (the text crate's transformer implements it), one noise level per block drawn
//! stratified over batch x blocks; the estimators, the optional clipped mask-rate range and the
//! masked cross-entropy loss are [`super::masked`]'s. Sampling runs MDLM's cached ancestral
//! sampler on one block at a time; the clean prefix enters through a [`BlockContext`] (the
//! transformer's key/value cache: computed once per block, not per step), and past the model's
//! window the context slides by whole blocks, so any length can be generated.

use super::masked::{
    ancestral, apply_mask, batched_bound, training_loss, uniforms, weighted_nats, BoundEstimator,
    MaskDraw, Masking, TrainingLoss,
};
use super::mdlm::MaskSchedule;
use super::{
    check_logits, check_tokens, subs_log_probs, CategoricalSample, NllEstimate, SampleOptions,
};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// A network for block diffusion. Its logits cover all K = V + 1 states (the [MASK] column is
/// ignored), as [`super::TokenDenoiser`]'s do.
pub trait BlockDenoiser {
    /// Logits `[B, L, K]` at the positions of the noisy `x_t` `[B, L]`, each position seeing its
    /// own noisy block of `x_t` and the blocks of the clean `x0` `[B, L]` before it.
    fn two_stream_logits(&self, x_t: &Tensor, x0: &Tensor, block_size: i64) -> Result<Tensor>;

    /// A sampling context holding the clean `prefix` `[B, P]` (P a multiple of `block_size`;
    /// P = 0 is an empty context).
    fn context(&self, prefix: &Tensor, block_size: i64) -> Result<Box<dyn BlockContext + '_>>;
}

/// The clean tokens a block is generated after ([`BlockDenoiser::context`]).
pub trait BlockContext {
    /// Tokens held.
    fn len(&self) -> i64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logits `[B, n, K]` of the noisy block `block` `[B, n]` that follows the context.
    fn logits(&self, block: &Tensor) -> Result<Tensor>;

    /// Append the clean block `block` `[B, n]`.
    fn push(&mut self, block: &Tensor) -> Result<()>;
}

/// A BD3-LM process.
#[derive(Clone, Debug, PartialEq)]
pub struct Bd3lmConfig {
    /// V, the data vocabulary; [MASK] is V and the network outputs V + 1 logits.
    pub vocab_size: i64,
    /// B, tokens per block; must divide the sequence length.
    pub block_size: i64,
    pub schedule: MaskSchedule,
    /// Times are drawn from [sampling_eps, 1] (time estimator).
    pub sampling_eps: f64,
    /// Stratify draws over batch x blocks in training and over Monte Carlo passes in
    /// evaluation.
    pub antithetic: bool,
    pub estimator: BoundEstimator,
    pub loss: TrainingLoss,
    /// Training only: BD3-LM's clipped schedule, mask rates drawn from [lo, hi].
    pub mask_rate_range: Option<(f64, f64)>,
}

impl Bd3lmConfig {
    /// BD3-LM with the reference's defaults: log-linear schedule, sampling eps 1e-3, antithetic
    /// times, the bound as the loss, no clipping.
    pub fn new(vocab_size: i64, block_size: i64) -> Self {
        Bd3lmConfig {
            vocab_size,
            block_size,
            schedule: MaskSchedule::default(),
            sampling_eps: 1e-3,
            antithetic: true,
            estimator: BoundEstimator::ContinuousTime,
            loss: TrainingLoss::Elbo,
            mask_rate_range: None,
        }
    }
}

/// A BD3-LM process.
#[derive(Clone, Debug)]
pub struct Bd3lm {
    config: Bd3lmConfig,
}

impl Bd3lm {
    pub fn new(config: Bd3lmConfig) -> Result<Self> {
        if config.block_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "the block size must be at least 1, got {}",
                config.block_size
            )));
        }
        // Everything but the blocks is MDLM's, and checked as MDLM checks it.
        super::mdlm::Mdlm::new(super::mdlm::MdlmConfig {
            vocab_size: config.vocab_size,
            schedule: config.schedule,
            sampling_eps: config.sampling_eps,
            antithetic: config.antithetic,
            estimator: config.estimator,
            loss: config.loss,
            mask_rate_range: config.mask_rate_range,
        })?;
        Ok(Bd3lm { config })
    }

    pub fn config(&self) -> &Bd3lmConfig {
        &self.config
    }

    pub fn block_size(&self) -> i64 {
        self.config.block_size
    }

    /// The [MASK] id, V.
    pub fn mask_id(&self) -> i64 {
        self.config.vocab_size
    }

    /// K = V + 1.
    pub fn num_states(&self) -> i64 {
        self.config.vocab_size + 1
    }

    /// The sequence length must be whole blocks.
    pub fn check_length(&self, len: i64) -> Result<()> {
        let b = self.config.block_size;
        if len < 1 || len % b != 0 {
            return Err(Error::InvalidArgument(format!(
                "sequences of {len} tokens are not whole blocks of {b}"
            )));
        }
        Ok(())
    }

    fn masking(&self, training: bool) -> Masking {
        Masking {
            schedule: self.config.schedule,
            estimator: self.config.estimator,
            sampling_eps: self.config.sampling_eps,
            range: self.config.mask_rate_range.filter(|_| training),
        }
    }

    /// Masks for `x0` `[R, L]` from the uniforms `s` (one per row and block) and the SUBS
    /// log-probabilities of the model, in the logits' float kind (at least f32).
    fn score(
        &self,
        model: &dyn BlockDenoiser,
        x0: &Tensor,
        s: &[f64],
        training: bool,
        double: bool,
    ) -> Result<(MaskDraw, Tensor)> {
        let (rows, len) = (x0.size()[0], x0.size()[1]);
        let draw = self
            .masking(training)
            .draw(s, rows, len, self.config.block_size, x0.device());
        let x_t = apply_mask(x0, &draw, self.mask_id());
        let logits = model.two_stream_logits(&x_t, x0, self.config.block_size)?;
        check_logits(&logits, &x_t, self.num_states())?;
        let kind = if double || logits.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        Ok((draw, subs_log_probs(&logits, &x_t, self.mask_id(), kind)))
    }

    /// The training loss on `x0` `[B, L]` (scalar, with gradients): the block-summed bound in
    /// nats per token (or the masked cross-entropy, as configured), one noise level per block,
    /// stratified over batch x blocks when antithetic.
    pub fn loss(&self, model: &dyn BlockDenoiser, x0: &Tensor) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        let (rows, len) = (x0.size()[0], x0.size()[1]);
        self.check_length(len)?;
        let n = (rows * (len / self.config.block_size)) as usize;
        let u = uniforms(n);
        let s = if self.config.antithetic {
            super::masked::stratified(&u, n)
        } else {
            u
        };
        let x0 = x0.to_kind(Kind::Int64);
        let (draw, log_p) = self.score(model, &x0, &s, true, false)?;
        Ok(training_loss(&log_p, &x0, &draw, self.config.loss))
    }

    /// The NELBO on held-out `data` `[N, L]` (on the model's device), nats per token: the sum
    /// over blocks of each block's bound, every sequence scored in `mc_samples` passes (each
    /// block's draws stratified over the passes when antithetic: with the count estimator and
    /// `mc_samples` = B every block is scored at every count once), `batch_size` rows per model
    /// call, in f64. Always the full bound (no clipping).
    pub fn nll(
        &self,
        model: &dyn BlockDenoiser,
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
        let (n, len) = (data.size()[0], data.size()[1]);
        self.check_length(len)?;
        let nb = (len / self.config.block_size) as usize;
        let mc = mc_samples;
        let rows = data
            .to_kind(Kind::Int64)
            .repeat_interleave_self_int(mc as i64, 0, None);
        // Row r = sequence * mc + pass; block j of it gets stratum `pass` of its own draws.
        let u = uniforms(n as usize * mc * nb);
        let s: Vec<f64> = u
            .iter()
            .enumerate()
            .map(|(i, &u)| {
                let pass = (i / nb) % mc;
                if self.config.antithetic {
                    (u + pass as f64) / mc as f64
                } else {
                    u
                }
            })
            .collect();
        batched_bound(
            &rows,
            mc,
            batch_size,
            &mut |x0, start| {
                let b = x0.size()[0];
                let ss = &s[start as usize * nb..(start + b) as usize * nb];
                let (draw, log_p) = self.score(model, x0, ss, false, true)?;
                Ok(weighted_nats(&log_p, x0, &draw).sum_dim_intlist(-1, false, Kind::Double))
            },
            &mut on_progress,
        )
    }

    /// Generate `total_len` tokens for `batch` sequences block by block, after `prompt` `[B, P]`
    /// (kept; it counts toward `total_len`) if given. Each block is unmasked in
    /// `options.steps` steps of the cached ancestral sampler, attending to at most `window`
    /// tokens (a multiple of the block size: the model's context): the clean blocks before it,
    /// computed once per block, the oldest dropped a block at a time past the window. A prompt
    /// that ends inside a block fixes that block's first positions. A last partial block is
    /// generated whole and cut. `on_step(done, total)` counts steps over all blocks;
    /// `model_calls` counts every network evaluation (denoising steps and context updates).
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        model: &dyn BlockDenoiser,
        batch: i64,
        total_len: i64,
        window: i64,
        prompt: Option<&Tensor>,
        device: Device,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<CategoricalSample> {
        options.validate()?;
        let bs = self.config.block_size;
        if batch < 1 || total_len < 1 {
            return Err(Error::InvalidArgument(format!(
                "batch and length must be at least 1, got {batch} and {total_len}"
            )));
        }
        if window < bs || window % bs != 0 {
            return Err(Error::InvalidArgument(format!(
                "the context window of {window} tokens is not whole blocks of {bs}"
            )));
        }
        let prompt = match prompt {
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
        let p = prompt.size()[1];
        let whole = p / bs * bs;
        let partial = prompt.narrow(1, whole, p - whole);
        let mut out = prompt.narrow(1, 0, whole);
        let blocks = ((total_len - whole + bs - 1) / bs).max(0) as usize;
        let total = blocks * options.steps;
        let keep = window - bs;
        let mut calls = 0;
        let mut ctx =
            model.context(&out.narrow(1, whole - whole.min(keep), whole.min(keep)), bs)?;
        calls += usize::from(!ctx.is_empty());
        // Whether `ctx` ends with the last generated block (else it is rebuilt from `out`).
        let mut current = true;
        for blk in 0..blocks {
            if !current || ctx.len() + bs > window {
                let have = out.size()[1];
                let kept = have.min(keep);
                ctx = model.context(&out.narrow(1, have - kept, kept), bs)?;
                calls += 1;
            }
            let mut given = Tensor::zeros([batch, bs], (Kind::Int64, device));
            let mut fixed = Tensor::zeros([batch, bs], (Kind::Bool, device));
            if blk == 0 && partial.size()[1] > 0 {
                let r = partial.size()[1];
                given = Tensor::cat(&[&partial, &given.narrow(1, r, bs - r)], 1);
                fixed = Tensor::cat(
                    &[
                        Tensor::ones([batch, r], (Kind::Bool, device)),
                        fixed.narrow(1, r, bs - r),
                    ],
                    1,
                );
            }
            let offset = blk * options.steps;
            let k = self.num_states();
            let context = &ctx;
            let block = ancestral(
                &self.config.schedule,
                self.mask_id(),
                &given,
                &fixed,
                options,
                &mut |x, _t| {
                    let logits = context.logits(x)?;
                    check_logits(&logits, x, k)?;
                    Ok(logits)
                },
                &mut |done| on_step(offset + done, total),
            )?;
            calls += block.model_calls;
            out = Tensor::cat(&[&out, &block.tokens], 1);
            // Only when the next block can attend to it without sliding (else it rebuilds).
            current = blk + 1 < blocks && ctx.len() + 2 * bs <= window;
            if current {
                ctx.push(&block.tokens)?;
                calls += 1;
            }
        }
        Ok(CategoricalSample {
            tokens: out.narrow(1, 0, total_len),
            model_calls: calls,
        })
    }
}
