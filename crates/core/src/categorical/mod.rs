//! Categorical (discrete-state) diffusion over token sequences, beside the Gaussian code rather
//! than inside it: [`d3pm`] (Austin et al. 2021, discrete time, uniform and absorbing transitions,
//! hybrid loss, the full T-term bound) and [`mdlm`] (Sahoo et al. 2024, masked diffusion in
//! continuous time, SUBS parameterisation, the continuous-time ELBO, the cached ancestral sampler
//! and semi-autoregressive generation), [`bd3lm`] (Arriola et al. 2025, block diffusion: masked
//! diffusion within blocks, autoregressive over them) and [`masked`] (what the two masked processes
//! share: the time and exact-count bound estimators, the training losses, the ancestral sampler and
//! its ordered variants, [`UnmaskOrder`]).
//!
//! Conventions shared by both:
//! - Data are token ids `[B, L]` (i64) in `0..V`, where `V` is the data vocabulary. Absorbing
//!   processes (D3PM absorbing, MDLM) add one state, the [MASK] id, which is `V` itself, so their
//!   x_t values lie in `0..=V` and there are `K = V + 1` states; the uniform process has `K = V`.
//! - The network ([`TokenDenoiser`]) returns logits `[B, L, K]` over all `K` states, the [MASK]
//!   column included for absorbing processes (so one embedding/output table serves x_t and the
//!   prediction). Its [MASK] logit is ignored: the losses and samplers force it to -inf, as MDLM's
//!   SUBS does, because x_0 is never [MASK].
//! - Schedules are f64 on the CPU; losses keep the model's float kind (f32 at least) so gradients
//!   flow, while likelihood evaluation and sampling run in f64. Categorical draws use the inverse
//!   CDF in f64: float32 Gumbel noise truncates low-probability tokens and flatters generative
//!   perplexity (Zheng et al. 2024, arXiv 2409.02908).
//! - Every draw comes from libtorch's generator, and every sampling step draws one uniform per
//!   position whether or not it is used, so runs that differ only in caching give the same tokens.

pub mod bd3lm;
pub mod d3pm;
pub mod masked;
pub mod mdlm;

use crate::{Error, Result};
use std::f64::consts::LN_2;
use tch::{Device, Kind, Tensor};

/// A network over token sequences: `x_t` `[B, L]` (i64, values in `0..K`) and time conditioning
/// `cond` `[B]` (f32) give logits `[B, L, K]` over all `K` states (see the module doc for `K`).
///
/// What `cond` holds depends on the process:
/// - MDLM: the total noise sigma(t) = -ln alpha_t of [`mdlm::MaskSchedule`], as MDLM's reference
///   code passes it. MDLM's default network ignores it (masked diffusion needs no time input, since
///   the fraction of [MASK] tokens reveals it), and the cached sampler is exact only then.
/// - D3PM: the integer step t in `1..=T` as f32 (1-based, the paper's notation; t = 1 is the
///   decoder step).
///
/// Logits are unnormalised; the [MASK] column (absorbing processes) is ignored.
pub trait TokenDenoiser {
    fn logits(&self, x_t: &Tensor, cond: &Tensor) -> Tensor;
}

/// A token denoiser from a closure, for tests, examples and wrapping models.
pub struct FnTokenDenoiser<F: Fn(&Tensor, &Tensor) -> Tensor> {
    pub f: F,
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> FnTokenDenoiser<F> {
    pub fn new(f: F) -> Self {
        FnTokenDenoiser { f }
    }
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> TokenDenoiser for FnTokenDenoiser<F> {
    fn logits(&self, x_t: &Tensor, cond: &Tensor) -> Tensor {
        (self.f)(x_t, cond)
    }
}

/// Settings shared by the categorical samplers.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Number of reverse steps (model calls without caching). MDLM takes any number; D3PM at most T.
    pub steps: usize,
    /// Divides the logits of p(x_0 | x_t) before anything else; must be > 0.
    pub temperature: f64,
    /// Nucleus filtering of p(x_0 | x_t): keep the most likely tokens whose probabilities sum to at
    /// least `top_p` (always the most likely one), renormalised. In (0, 1]; 1 disables it.
    pub top_p: f64,
    /// MDLM only: when a step changed no token in the whole batch, reuse the previous model output
    /// instead of calling the model again (exact when the model ignores `cond`).
    pub cache: bool,
    /// MDLM and BD3-LM: which masked positions a step reveals (D3PM takes only the default).
    pub order: UnmaskOrder,
}

/// Which masked positions a step of the masked-diffusion sampler reveals.
///
/// `Random` is MDLM's ancestral sampler: from t to s every masked position is revealed with the
/// schedule's probability, independently, so the text is a sample of the model. The other two
/// reveal, per sequence, as many positions as the schedule expects (the still-masked count goes
/// from `M` to `round(M (1 - alpha_s) / (1 - alpha_1))` for the `M` masked at the start), and
/// choose which: `Confidence` the positions whose drawn token is the most probable (LLaDA's
/// "low-confidence remasking", Nie et al. 2025, after MaskGIT), `LeftToRight` the leftmost. Each
/// draw still comes from the (filtered) model distribution at that position; only the order
/// changes. With at least as many steps as masked tokens they reveal one token per call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnmaskOrder {
    #[default]
    Random,
    Confidence,
    LeftToRight,
}

/// The orders' names, as [`UnmaskOrder::parse`] reads them.
pub const UNMASK_ORDER_NAMES: [&str; 3] = ["random", "confidence", "left-to-right"];

impl UnmaskOrder {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "random" => Ok(UnmaskOrder::Random),
            "confidence" => Ok(UnmaskOrder::Confidence),
            "left-to-right" => Ok(UnmaskOrder::LeftToRight),
            other => Err(Error::InvalidArgument(format!(
                "unknown unmasking order {other:?} (expected one of: {})",
                UNMASK_ORDER_NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UnmaskOrder::Random => "random",
            UnmaskOrder::Confidence => "confidence",
            UnmaskOrder::LeftToRight => "left-to-right",
        }
    }
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            steps: 128,
            temperature: 1.0,
            top_p: 1.0,
            cache: true,
            order: UnmaskOrder::Random,
        }
    }
}

impl SampleOptions {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::InvalidArgument("steps must be at least 1".into()));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "temperature must be a finite number > 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "top_p must lie in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// What a sampler produced.
#[derive(Debug)]
pub struct CategoricalSample {
    /// Token ids `[B, L]` (i64), all in `0..V` (no [MASK] left).
    pub tokens: Tensor,
    /// How many times the model was called (fewer than the steps when the cache was used).
    pub model_calls: usize,
}

/// A likelihood bound on held-out data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NllEstimate {
    /// Upper bound on the negative log-likelihood, nats per token.
    pub nats_per_token: f64,
    /// The same in bits per token.
    pub bits_per_token: f64,
    /// exp(nats per token): the perplexity bound.
    pub perplexity: f64,
    /// Standard error of `nats_per_token` over sequences (Monte Carlo and data), nats.
    pub std_error: f64,
    /// Tokens scored.
    pub tokens: usize,
}

impl NllEstimate {
    pub fn from_per_sequence(nats_per_token_each: &[f64], tokens: usize) -> Self {
        let n = nats_per_token_each.len().max(1) as f64;
        let mean = nats_per_token_each.iter().sum::<f64>() / n;
        let var = nats_per_token_each
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0).max(1.0);
        NllEstimate {
            nats_per_token: mean,
            bits_per_token: mean / LN_2,
            perplexity: mean.exp(),
            std_error: (var / n).sqrt(),
            tokens,
        }
    }

    /// Bits per character, given the tokenizer's average characters per token on this data.
    pub fn bits_per_char(&self, chars_per_token: f64) -> Result<f64> {
        bits_per_char(self.bits_per_token, chars_per_token)
    }
}

/// Nats to bits.
pub fn nats_to_bits(nats: f64) -> f64 {
    nats / LN_2
}

/// Bits per token to bits per character: a token covers `chars_per_token` characters on average,
/// so its bits spread over them (text8-style BPC from a subword model's bound).
pub fn bits_per_char(bits_per_token: f64, chars_per_token: f64) -> Result<f64> {
    if !(chars_per_token > 0.0 && chars_per_token.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "characters per token must be a finite number > 0, got {chars_per_token}"
        )));
    }
    Ok(bits_per_token / chars_per_token)
}

/// The model's logits must be `[B, L, k]` for `x` `[B, L]`.
pub(crate) fn check_logits(logits: &Tensor, x: &Tensor, k: i64) -> Result<()> {
    let s = logits.size();
    let xs = x.size();
    if s.len() != 3 || s[0] != xs[0] || s[1] != xs[1] || s[2] != k {
        return Err(Error::InvalidArgument(format!(
            "the token denoiser returned logits of shape {s:?}, expected [{}, {}, {k}] \
             (the number of states: the data vocabulary, plus one for [MASK] in absorbing processes)",
            xs[0], xs[1]
        )));
    }
    Ok(())
}

/// Token data must be a 2-D integer tensor with values in `0..v`.
pub(crate) fn check_tokens(x: &Tensor, v: i64, what: &str) -> Result<()> {
    if x.dim() != 2 {
        return Err(Error::InvalidArgument(format!(
            "{what} must be [batch, length], got shape {:?}",
            x.size()
        )));
    }
    if !matches!(
        x.kind(),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    ) {
        return Err(Error::InvalidArgument(format!(
            "{what} must hold integer token ids, got {:?}",
            x.kind()
        )));
    }
    if x.numel() > 0 {
        let lo = x.min().int64_value(&[]);
        let hi = x.max().int64_value(&[]);
        if lo < 0 || hi >= v {
            return Err(Error::InvalidArgument(format!(
                "{what} must lie in 0..{v} (the data vocabulary), found values in {lo}..={hi}"
            )));
        }
    }
    Ok(())
}

/// An infilling request: `fixed` `[B, L]` bool marks positions whose tokens in `tokens` are given.
pub(crate) fn check_infill(tokens: &Tensor, fixed: &Tensor, v: i64) -> Result<()> {
    if fixed.kind() != Kind::Bool {
        return Err(Error::InvalidArgument(format!(
            "the infill mask must be a bool tensor, got {:?}",
            fixed.kind()
        )));
    }
    if tokens.dim() != 2 || fixed.size() != tokens.size() {
        return Err(Error::InvalidArgument(format!(
            "the infill mask has shape {:?} but the tokens have shape {:?}; both must be the same \
             [batch, length]",
            fixed.size(),
            tokens.size()
        )));
    }
    // Only the given positions need real tokens; the others are placeholders.
    let given = tokens.masked_select(&fixed.to_device(tokens.device()));
    check_tokens(&given.reshape([1, -1]), v, "the fixed tokens")
}

/// p(x_0 | x_t) rows in f64 after temperature and nucleus filtering. `logits` `[M, K]`;
/// `forbid` (when set) is a state that must get probability 0 (the [MASK] id).
pub fn filtered_probs(
    logits: &Tensor,
    forbid: Option<i64>,
    temperature: f64,
    top_p: f64,
) -> Tensor {
    // Never in place: `to_kind` may return the caller's tensor (the cached model output).
    let l = logits.to_kind(Kind::Double);
    let mut l = if temperature != 1.0 {
        l / temperature
    } else {
        l
    };
    if let Some(m) = forbid {
        let idx = Tensor::from_slice(&[m]).to_device(l.device());
        l = l.index_fill(-1, &idx, f64::NEG_INFINITY);
    }
    let probs = l.softmax(-1, Kind::Double);
    if top_p >= 1.0 {
        return probs;
    }
    let (sorted, idx) = probs.sort(-1, true);
    // Keep a token while the mass before it is below top_p: the most likely is always kept.
    let before = sorted.cumsum(-1, Kind::Double) - &sorted;
    let kept = &sorted * before.lt(top_p).to_kind(Kind::Double);
    let out = probs.zeros_like().scatter(-1, &idx, &kept);
    &out / out.sum_dim_intlist(-1, true, Kind::Double)
}

/// One draw per row of `probs` `[M, K]` (f64, rows need not be normalised) by the inverse CDF
/// with the uniforms `u` `[M]` (f64): the index of the first cumulative mass above u * total.
pub fn sample_rows(probs: &Tensor, u: &Tensor) -> Tensor {
    let k = probs.size()[1];
    let cdf = probs.to_kind(Kind::Double).cumsum(-1, Kind::Double);
    let total = cdf.narrow(-1, k - 1, 1);
    let target = u.to_kind(Kind::Double).unsqueeze(-1) * total;
    cdf.le_tensor(&target)
        .sum_dim_intlist(-1, false, Kind::Int64)
        .clamp_max(k - 1)
}

/// `[B]` time conditioning as the model expects it.
pub(crate) fn cond_tensor(values: &[f64], device: Device) -> Tensor {
    Tensor::from_slice(values)
        .to_kind(Kind::Float)
        .to_device(device)
}

/// Flat indices of the true entries of a `[B, L]` bool tensor.
pub(crate) fn flat_true(mask: &Tensor) -> Tensor {
    mask.reshape([-1]).nonzero().squeeze_dim(-1)
}

/// log p~(x_0 | x_t) `[B, L, K]` for an absorbing process (MDLM's SUBS parameterisation): the
/// [MASK] logit is -inf (zero masking probability: x_0 is never [MASK]), and unmasked positions
/// carry their token over (log-probability 0 on x_t, -inf elsewhere), since there x_t = x_0.
pub(crate) fn subs_log_probs(logits: &Tensor, x_t: &Tensor, mask_id: i64, kind: Kind) -> Tensor {
    let k = logits.size()[2];
    let device = logits.device();
    let forbid = Tensor::zeros([k], (kind, device)).index_fill(
        0,
        &Tensor::from_slice(&[mask_id]).to_device(device),
        f64::NEG_INFINITY,
    );
    let lp = (logits.to_kind(kind) + forbid).log_softmax(-1, kind);
    let x_t = x_t.to_kind(Kind::Int64);
    let copy = x_t.one_hot(k).to_kind(kind).log();
    lp.where_self(&x_t.eq(mask_id).unsqueeze(-1), &copy)
}
