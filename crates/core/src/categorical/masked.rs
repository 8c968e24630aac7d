//! What the two masked-diffusion processes share, MDLM ([`super::mdlm`], one block the length of
//! the sequence) and BD3-LM ([`super::bd3lm`], blocks of B tokens): how a bound estimate chooses
//! which tokens to mask and how it weights their cross-entropies, and the cached ancestral sampler
//! that unmasks a span (in random order, or left to right or by confidence: [`UnmaskOrder`]).
//!
//! The masked-diffusion bound of a block of B tokens is, in continuous time,
//! E_t [ -alpha'_t / (1 - alpha_t) sum over masked positions of -log p(x_0 | x_t) ] (MDLM eq. 10).
//! Given that exactly k tokens are masked, the masked set is uniform among the k-subsets, and
//! P(k | t) = C(B, k) (1 - alpha_t)^k alpha_t^(B - k); integrating the weight against it over t
//! gives C(B, k) Beta(k, B - k + 1) = 1/k whatever the schedule. So the bound is also
//! B E_{k ~ U{1..B}} [ (1/k) sum over a uniform k-subset of the cross-entropy ] (the any-order
//! autoregressive form; Ou et al. 2024, "Your Absorbing Discrete Diffusion Secretly Models the
//! Conditional Distributions of Clean Data", Prop. 3.1), the eps -> 0 limit of the time form with
//! no time left to draw: [`BoundEstimator::ExactCount`]. With B = 1 it is the exact
//! autoregressive cross-entropy.

use super::{
    filtered_probs, flat_true, sample_rows, CategoricalSample, NllEstimate, SampleOptions,
    UnmaskOrder,
};
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

use super::mdlm::MaskSchedule;

/// How a bound estimate of masked diffusion draws its masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BoundEstimator {
    /// A time t per block (stratified), each token masked independently with probability
    /// 1 - alpha_t and weighted by -alpha'_t / (1 - alpha_t): MDLM's and BD3-LM's reference
    /// estimator.
    #[default]
    ContinuousTime,
    /// A count k ~ U{1..B} per block (stratified), exactly k tokens masked, each weighted B / k:
    /// the same bound (as eps -> 0) with the randomness of t and of the number masked gone.
    ExactCount,
}

/// The `--estimator` names, in [`BoundEstimator`] order.
pub const ESTIMATOR_NAMES: &[&str] = &["time", "count"];

impl BoundEstimator {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "time" => Ok(BoundEstimator::ContinuousTime),
            "count" => Ok(BoundEstimator::ExactCount),
            other => Err(Error::InvalidArgument(format!(
                "unknown bound estimator '{other}' (expected one of {})",
                ESTIMATOR_NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BoundEstimator::ContinuousTime => "time",
            BoundEstimator::ExactCount => "count",
        }
    }
}

/// What training minimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainingLoss {
    /// The bound itself (as estimated), per token.
    #[default]
    Elbo,
    /// The plain cross-entropy of the masked tokens, averaged over them (no 1/t or B/k weight):
    /// Sahoo et al. 2024 report it trains faster; the model is still scored with the bound.
    MaskedCrossEntropy,
}

/// The `--loss` names, in [`TrainingLoss`] order.
pub const LOSS_NAMES: &[&str] = &["elbo", "masked-ce"];

impl TrainingLoss {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "elbo" => Ok(TrainingLoss::Elbo),
            "masked-ce" => Ok(TrainingLoss::MaskedCrossEntropy),
            other => Err(Error::InvalidArgument(format!(
                "unknown training loss '{other}' (expected one of {})",
                LOSS_NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TrainingLoss::Elbo => "elbo",
            TrainingLoss::MaskedCrossEntropy => "masked-ce",
        }
    }
}

/// A range of mask rates [lo, hi] within [0, 1], lo < hi: training draws t (time estimator) or
/// k / B (count estimator) only from it (BD3-LM's clipped schedule, Arriola et al. 2025 sec. 5).
pub fn check_mask_rate_range(range: (f64, f64)) -> Result<()> {
    let (lo, hi) = range;
    if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi && hi <= 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "the mask-rate range must satisfy 0 <= lo < hi <= 1, got [{lo}, {hi}]"
        )))
    }
}

/// Stratify uniforms: in each group of `group` consecutive draws, draw i lies in the i-th of
/// `group` equal strata of [0, 1) (MDLM's antithetic sampling when `group` is the batch).
pub(crate) fn stratified(u: &[f64], group: usize) -> Vec<f64> {
    let n = group.max(1) as f64;
    u.iter()
        .enumerate()
        .map(|(i, &u)| ((u / n) + (i % group.max(1)) as f64 / n) % 1.0)
        .collect()
}

/// `n` uniforms in [0, 1) from libtorch's generator.
pub(crate) fn uniforms(n: usize) -> Vec<f64> {
    Vec::<f64>::try_from(Tensor::rand([n as i64], (Kind::Double, Device::Cpu)))
        .expect("a 1-D f64 tensor")
}

/// Which tokens one bound estimate masks.
pub(crate) struct MaskDraw {
    /// `[R, L]` bool: positions replaced by [MASK].
    pub masked: Tensor,
    /// `[R, L]` f64: the weight of each position's cross-entropy in the bound (0 if unmasked).
    pub weight: Tensor,
    /// Per row and block (`[R * L / B]`, row-major): the time t (time estimator) or the masked
    /// share k / B (count estimator).
    pub level: Vec<f64>,
}

/// How a [`MaskDraw`] is made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Masking {
    pub schedule: MaskSchedule,
    pub estimator: BoundEstimator,
    /// Times are drawn from [sampling_eps, 1] (time estimator, full bound).
    pub sampling_eps: f64,
    /// Training only: the clipped mask-rate range.
    pub range: Option<(f64, f64)>,
}

impl Masking {
    /// Masks for `rows` sequences of `len` tokens in blocks of `block`, from `s` (one stratified
    /// uniform per row and block, row-major) on `device`.
    pub fn draw(&self, s: &[f64], rows: i64, len: i64, block: i64, device: Device) -> MaskDraw {
        let nb = len / block;
        debug_assert_eq!(s.len() as i64, rows * nb);
        let shape = [rows, nb, block];
        let (masked, weight, level) = match self.estimator {
            BoundEstimator::ContinuousTime => {
                let (lo, hi) = match self.range {
                    Some((lo, hi)) => (lo.max(self.sampling_eps), hi.max(self.sampling_eps)),
                    None => (self.sampling_eps, 1.0),
                };
                let t: Vec<f64> = s.iter().map(|&s| lo + (hi - lo) * s).collect();
                let p: Vec<f64> = t
                    .iter()
                    .map(|&t| self.schedule.one_minus_alpha(t))
                    .collect();
                let w: Vec<f64> = t.iter().map(|&t| self.schedule.weight(t)).collect();
                let per_block = |v: &[f64]| {
                    Tensor::from_slice(v)
                        .to_device(device)
                        .reshape([rows, nb, 1])
                };
                let masked = Tensor::rand(shape, (Kind::Double, device)).lt_tensor(&per_block(&p));
                let weight = masked.to_kind(Kind::Double) * per_block(&w);
                (masked, weight, t)
            }
            BoundEstimator::ExactCount => {
                let (k_lo, k_hi) = count_range(block, self.range);
                let span = (k_hi - k_lo + 1) as f64;
                let k: Vec<i64> = s
                    .iter()
                    .map(|&s| (k_lo + (s * span) as i64).min(k_hi))
                    .collect();
                // A uniformly random k-subset of each block: the positions whose random rank
                // within the block is below k.
                let rank = Tensor::rand(shape, (Kind::Double, device))
                    .argsort(-1, false)
                    .argsort(-1, false);
                let kt = Tensor::from_slice(&k)
                    .to_device(device)
                    .reshape([rows, nb, 1]);
                let masked = rank.lt_tensor(&kt);
                let w: Vec<f64> = k.iter().map(|&k| block as f64 / k as f64).collect();
                let weight = masked.to_kind(Kind::Double)
                    * Tensor::from_slice(&w)
                        .to_device(device)
                        .reshape([rows, nb, 1]);
                let level = k.iter().map(|&k| k as f64 / block as f64).collect();
                (masked, weight, level)
            }
        };
        MaskDraw {
            masked: masked.reshape([rows, len]),
            weight: weight.reshape([rows, len]),
            level,
        }
    }
}

/// The counts k a block of `block` tokens may mask: 1..=B, or those with k / B in the clipped
/// range (at least one).
fn count_range(block: i64, range: Option<(f64, f64)>) -> (i64, i64) {
    match range {
        None => (1, block),
        Some((lo, hi)) => {
            let k_lo = ((lo * block as f64).ceil() as i64).clamp(1, block);
            let k_hi = ((hi * block as f64).floor() as i64).clamp(k_lo, block);
            (k_lo, k_hi)
        }
    }
}

/// A bound over `rows` `[N * mc, L]` (each sequence repeated `mc` times in a row), `batch_size`
/// rows at a time: `per_batch(x0, start)` gives the weighted nats `[b]` of rows `start..start +
/// b`. Per-sequence means over the `mc` draws, in nats per token. `on_progress(done, total)`
/// counts batches.
pub(crate) fn batched_bound(
    rows: &Tensor,
    mc: usize,
    batch_size: i64,
    per_batch: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<NllEstimate> {
    let (total_rows, len) = (rows.size()[0], rows.size()[1]);
    let total = ((total_rows + batch_size - 1) / batch_size) as usize;
    let mut per_row = Vec::with_capacity(total_rows as usize);
    for (i, start) in (0..total_rows).step_by(batch_size as usize).enumerate() {
        let b = batch_size.min(total_rows - start);
        let x0 = rows.narrow(0, start, b);
        let per = tch::no_grad(|| per_batch(&x0, start))?;
        per_row.extend(Vec::<f64>::try_from(per / len as f64).map_err(Error::Torch)?);
        on_progress(i + 1, total);
    }
    let per_seq: Vec<f64> = per_row
        .chunks(mc)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    Ok(NllEstimate::from_per_sequence(
        &per_seq,
        (total_rows / mc as i64 * len) as usize,
    ))
}

/// `x0` with the drawn positions replaced by [MASK] (`mask_id`).
pub(crate) fn apply_mask(x0: &Tensor, draw: &MaskDraw, mask_id: i64) -> Tensor {
    x0.full_like(mask_id).where_self(&draw.masked, x0)
}

/// Per-row weighted cross-entropy `[R]` (nats, summed over positions) and the masked count, in
/// the kind of `log_p` (SUBS log-probabilities `[R, L, K]`).
pub(crate) fn weighted_nats(log_p: &Tensor, x0: &Tensor, draw: &MaskDraw) -> Tensor {
    let kind = log_p.kind();
    let nll = -log_p.gather(-1, &x0.unsqueeze(-1), false).squeeze_dim(-1);
    // Unmasked positions carry over (log 1 = 0) and have weight 0; `where` keeps a -inf * 0 out.
    let w = draw.weight.to_kind(kind);
    nll.where_self(&draw.masked, &nll.zeros_like()) * w
}

/// The training loss from per-position weighted cross-entropies `[R, L]`: the bound per token,
/// or (masked cross-entropy) the unweighted mean over masked positions.
pub(crate) fn training_loss(
    log_p: &Tensor,
    x0: &Tensor,
    draw: &MaskDraw,
    loss: TrainingLoss,
) -> Tensor {
    match loss {
        TrainingLoss::Elbo => {
            let nats = weighted_nats(log_p, x0, draw);
            nats.sum(nats.kind()) / x0.numel() as f64
        }
        TrainingLoss::MaskedCrossEntropy => {
            let kind = log_p.kind();
            let nll = -log_p.gather(-1, &x0.unsqueeze(-1), false).squeeze_dim(-1);
            let nll = nll.where_self(&draw.masked, &nll.zeros_like());
            let count = draw.masked.sum(Kind::Int64).int64_value(&[]).max(1);
            nll.sum(kind) / count as f64
        }
    }
}

/// One step of the ordered samplers ([`UnmaskOrder`]): draw a token at every masked position of
/// `x` `[B, n]` from the filtered model distribution (`out` `[B, n, K]`, uniforms `u` `[B n]`),
/// then keep the draws at the positions the order ranks first, so that `remaining` `[B]` (f64)
/// positions per sequence stay masked.
fn reveal_ordered(
    x: &Tensor,
    out: &Tensor,
    m: i64,
    remaining: &Tensor,
    u: &Tensor,
    options: &SampleOptions,
) -> Tensor {
    let (b, len, k) = (out.size()[0], out.size()[1], out.size()[2]);
    let device = x.device();
    let is_masked = x.eq(m);
    let probs = filtered_probs(
        &out.reshape([-1, k]),
        Some(m),
        options.temperature,
        options.top_p,
    );
    let draws = sample_rows(&probs, u);
    // Higher is revealed first; unmasked positions rank last (they are not candidates).
    let score = match options.order {
        UnmaskOrder::Confidence => probs
            .gather(1, &draws.unsqueeze(1), false)
            .reshape([b, len]),
        _ => -Tensor::arange(len, (Kind::Double, device))
            .unsqueeze(0)
            .expand([b, len], false),
    };
    let score = score.where_self(&is_masked, &score.full_like(f64::NEG_INFINITY));
    let order = score.argsort(-1, true);
    let rank = Tensor::zeros([b, len], (Kind::Int64, device)).scatter(
        -1,
        &order,
        &Tensor::arange(len, (Kind::Int64, device))
            .unsqueeze(0)
            .expand([b, len], true),
    );
    let masked_now = is_masked.sum_dim_intlist(-1, false, Kind::Double);
    let reveal = (masked_now - remaining).clamp_min(0.0);
    let chosen = rank
        .to_kind(Kind::Double)
        .lt_tensor(&reveal.unsqueeze(-1))
        .logical_and(&is_masked);
    draws.reshape([b, len]).where_self(&chosen, x)
}

/// The cached ancestral sampler of masked diffusion (MDLM's "ddpm_cache") over a span `given`
/// `[B, n]`: positions where `fixed` is true keep their tokens, the others start as [MASK] and
/// are unmasked over `options.steps` steps from t = 1 to 0. `logits(x, t)` gives `[B, n, K]`
/// for the current span at time t. From t to s a masked token becomes token k with probability
/// p(k) (alpha_s - alpha_t) / (1 - alpha_t) and stays masked with (1 - alpha_s) / (1 - alpha_t);
/// unmasked tokens never change, so when a step changes nothing the next step reuses the model
/// output (exact when the model ignores t).
pub(crate) fn ancestral(
    schedule: &MaskSchedule,
    mask_id: i64,
    given: &Tensor,
    fixed: &Tensor,
    options: &SampleOptions,
    logits: &mut dyn FnMut(&Tensor, f64) -> Result<Tensor>,
    on_step: &mut dyn FnMut(usize),
) -> Result<CategoricalSample> {
    options.validate()?;
    let device = given.device();
    let (b, len) = (given.size()[0], given.size()[1]);
    let m = mask_id;
    let fixed = fixed.to_device(device);
    let given = given.to_kind(Kind::Int64);
    let mut x = given.where_self(&fixed, &given.full_like(m));
    let n = options.steps;
    // The ordered samplers' per-sequence masked count at the start.
    let start_masked = x.eq(m).sum_dim_intlist(-1, false, Kind::Double);
    let mut cache: Option<Tensor> = None;
    let mut calls = 0;
    for i in 0..n {
        let t = 1.0 - i as f64 / n as f64;
        let s = 1.0 - (i + 1) as f64 / n as f64;
        // Nothing left to reveal: with the cache on, the remaining steps would only call the
        // model to change nothing.
        // (The step's uniforms are still drawn, so the random stream does not depend on it.)
        if options.cache && x.eq(m).any().int64_value(&[]) == 0 {
            let _ = Tensor::rand([b * len], (Kind::Double, device));
            on_step(i + 1);
            continue;
        }
        let out = match cache.take() {
            Some(out) if options.cache => out,
            _ => {
                calls += 1;
                tch::no_grad(|| logits(&x, t))?
            }
        };
        let k = out.size()[2];
        // One uniform per position every step, used or not, so the random stream does not
        // depend on how many tokens are masked or on the cache.
        let u = Tensor::rand([b * len], (Kind::Double, device));
        let masked = flat_true(&x.eq(m));
        let next = if options.order != UnmaskOrder::Random {
            let remaining = if i + 1 == n {
                start_masked.zeros_like()
            } else {
                (&start_masked * (schedule.one_minus_alpha(s) / schedule.one_minus_alpha(1.0)))
                    .round()
            };
            reveal_ordered(&x, &out, m, &remaining, &u, options)
        } else if masked.numel() > 0 {
            let rows = out.reshape([-1, k]).index_select(0, &masked);
            let p_x0 = filtered_probs(&rows, Some(m), options.temperature, options.top_p);
            // The last step unmasks everything (alpha_0 = 1; for schedules with alpha_0 < 1
            // this is MDLM's final noise removal).
            let stay = if i + 1 == n {
                0.0
            } else {
                schedule.one_minus_alpha(s) / schedule.one_minus_alpha(t)
            };
            let probs = (p_x0 * (1.0 - stay)).index_fill(
                1,
                &Tensor::from_slice(&[m]).to_device(device),
                stay,
            );
            let draws = sample_rows(&probs, &u.index_select(0, &masked));
            x.reshape([-1])
                .index_copy(0, &masked, &draws)
                .reshape([b, len])
        } else {
            x.shallow_clone()
        };
        if next.equal(&x) {
            cache = Some(out);
        }
        x = next;
        on_step(i + 1);
    }
    Ok(CategoricalSample {
        tokens: x,
        model_calls: calls,
    })
}
