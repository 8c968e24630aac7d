//! D3PM (Austin et al. 2021, "Structured Denoising Diffusion Models in Discrete State-Spaces"):
//! discrete-time categorical diffusion with uniform or absorbing ([MASK]) transitions.
//!
//! One step is Q_t = (1 - beta_t) I + beta_t 1 e^T, row-stochastic (q(x_t | x_{t-1}) =
//! Q_t[x_{t-1}, x_t]), where e is uniform over the K states (uniform) or the point mass on [MASK]
//! (absorbing). Both families are closed under products, so Qbar_{t|s} = Q_{s+1} ... Q_t is
//! (abar_t / abar_s) I + (1 - abar_t / abar_s) 1 e^T with abar_t = prod (1 - beta): q(x_t | x_0),
//! the posteriors and multi-step jumps are all computed from these scalars, never from K x K
//! matrices. Schedules follow the reference code: `jsd` beta_t = 1 / (T - t + 1) (the
//! mutual-information schedule, for absorbing: abar_t = 1 - t/T), `cosine` (Hoogeboom et al. 2021:
//! abar(t) = cos((t/T + 0.008)/1.008 pi/2), no square, betas capped at 0.999; for uniform) and
//! `linear`.
//!
//! The network predicts x_0 (x0-parameterisation). The model's reverse step is
//! p(x_{t-1} | x_t) = sum_{x_0} q(x_{t-1} | x_t, x_0) p~(x_0 | x_t) ([`ModelPosterior::Mixture`],
//! the default), which is the true reverse step when p~ is the true posterior of x_0, so the
//! bound's KL terms and the auxiliary cross-entropy agree on their optimum.
//! [`ModelPosterior::Product`] is the reference code's p ∝ q(x_t | x_{t-1}) sum q(x_{t-1} | x_0) p~;
//! the two coincide for absorbing transitions. For absorbing transitions an unmasked x_t is x_0
//! (the true posterior is a point mass), so p~ copies it there ("carry-over", as MDLM's SUBS), where
//! the reference code asks the network to learn the copy.
//!
//! Steps are 1-based as in the paper: t = 1..=T, x_0 is data, t = 1 is the decoder step
//! L_0 = -log p~(x_0 | x_1), and the prior term is KL(q(x_T | x_0) || p(x_T)) with p(x_T) uniform
//! (uniform) or all [MASK] (absorbing; finite only when abar_T is 0 or tiny: log-probabilities are
//! floored at 1e-30).

use super::{
    check_infill, check_logits, check_tokens, cond_tensor, filtered_probs, sample_rows,
    subs_log_probs, CategoricalSample, NllEstimate, SampleOptions, TokenDenoiser, UnmaskOrder,
};
use crate::{Error, Result};
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// Probabilities below this are treated as this inside logarithms (KL terms, prior).
const FLOOR: f64 = 1e-30;

/// The most f64 values one slice of [`D3pm::bound_terms`] holds per `[positions, K]` temporary.
/// A KL term makes about a dozen such temporaries: a whole `[32, 128, K]` batch in f64 is 134 MB
/// each at K = 4,097 and 1.6 GB at K = 50,257, while 2^21 values (16 MiB) keep the term's peak
/// near 200 MiB at any vocabulary; slices of a small vocabulary's batch are the whole batch.
pub const BOUND_CHUNK_ELEMENTS: i64 = 1 << 21;

/// Which noise the forward process adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Each step resamples a token uniformly over the vocabulary with probability beta_t.
    Uniform,
    /// Each step replaces a token with [MASK] (id V) with probability beta_t; [MASK] stays.
    Absorbing,
}

/// The beta schedule over t = 1..=T.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BetaSchedule {
    /// beta_t = 1 / (T - t + 1) (Sohl-Dickstein et al. 2015; `jsd` in the reference code): for
    /// absorbing transitions abar_t = 1 - t/T and every token is [MASK] at T.
    MutualInformation,
    /// abar(t) = cos((t/T + 0.008) / 1.008 pi/2), beta_t = min(1 - abar(t)/abar(t-1), 0.999)
    /// (Hoogeboom et al. 2021, as the reference code has it: cosine, not squared).
    Cosine,
    /// beta_t evenly spaced from `start` to `end`.
    Linear { start: f64, end: f64 },
}

impl BetaSchedule {
    /// The paper's choice for each transition: mutual information for absorbing, cosine for uniform.
    pub fn default_for(transition: Transition) -> Self {
        match transition {
            Transition::Absorbing => BetaSchedule::MutualInformation,
            Transition::Uniform => BetaSchedule::Cosine,
        }
    }

    /// beta_1..beta_T.
    pub fn betas(self, num_timesteps: usize) -> Vec<f64> {
        let n = num_timesteps;
        match self {
            BetaSchedule::MutualInformation => (1..=n).map(|t| 1.0 / (n - t + 1) as f64).collect(),
            BetaSchedule::Cosine => {
                let abar = |t: usize| ((t as f64 / n as f64 + 0.008) / 1.008 * PI / 2.0).cos();
                (1..=n)
                    .map(|t| (1.0 - abar(t) / abar(t - 1)).min(0.999))
                    .collect()
            }
            BetaSchedule::Linear { start, end } => (0..n)
                .map(|i| {
                    if n == 1 {
                        start
                    } else {
                        start + (end - start) * i as f64 / (n - 1) as f64
                    }
                })
                .collect(),
        }
    }
}

/// How p(x_{t-1} | x_t) is formed from the network's p~(x_0 | x_t) (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelPosterior {
    /// sum_{x_0} q(x_{t-1} | x_t, x_0) p~(x_0 | x_t).
    #[default]
    Mixture,
    /// ∝ q(x_t | x_{t-1}) sum_{x_0} q(x_{t-1} | x_0) p~(x_0 | x_t), as the reference code.
    Product,
}

/// A D3PM process.
#[derive(Clone, Debug, PartialEq)]
pub struct D3pmConfig {
    pub transition: Transition,
    pub schedule: BetaSchedule,
    /// T, the number of steps.
    pub num_timesteps: usize,
    /// V, the data vocabulary (tokens 0..V); absorbing adds [MASK] = V.
    pub vocab_size: i64,
    /// lambda of the hybrid loss L_vlb + lambda CE(x_0) (0.01 in the paper for text).
    pub hybrid_lambda: f64,
    pub model_posterior: ModelPosterior,
}

impl D3pmConfig {
    /// Absorbing transitions with the mutual-information schedule (the paper's text setting).
    pub fn absorbing(vocab_size: i64, num_timesteps: usize) -> Self {
        D3pmConfig {
            transition: Transition::Absorbing,
            schedule: BetaSchedule::MutualInformation,
            num_timesteps,
            vocab_size,
            hybrid_lambda: 0.01,
            model_posterior: ModelPosterior::Mixture,
        }
    }

    /// Uniform transitions with the cosine schedule.
    pub fn uniform(vocab_size: i64, num_timesteps: usize) -> Self {
        D3pmConfig {
            transition: Transition::Uniform,
            schedule: BetaSchedule::Cosine,
            ..D3pmConfig::absorbing(vocab_size, num_timesteps)
        }
    }
}

/// The hybrid loss of one batch.
#[derive(Debug)]
pub struct D3pmLoss {
    /// L_{t-1} + lambda CE(x_0 | x_t) at a uniformly drawn t, nats per token (scalar, with
    /// gradients): what to minimise, as the reference code.
    pub loss: Tensor,
    /// An unbiased estimate of the full bound, prior + T L_{t-1}, nats per token (detached).
    pub vlb: Tensor,
    /// The auxiliary cross-entropy -log p~(x_0 | x_t), nats per token (detached).
    pub ce: Tensor,
}

/// A D3PM process with its schedule tables.
#[derive(Clone, Debug)]
pub struct D3pm {
    config: D3pmConfig,
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl D3pm {
    pub fn new(config: D3pmConfig) -> Result<Self> {
        if config.num_timesteps == 0 {
            return Err(Error::InvalidArgument(
                "D3PM needs at least one timestep".into(),
            ));
        }
        let min_vocab = match config.transition {
            Transition::Uniform => 2,
            Transition::Absorbing => 1,
        };
        if config.vocab_size < min_vocab {
            return Err(Error::InvalidArgument(format!(
                "vocab_size must be at least {min_vocab}, got {}",
                config.vocab_size
            )));
        }
        if !(config.hybrid_lambda >= 0.0 && config.hybrid_lambda.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "hybrid_lambda must be a finite number >= 0, got {}",
                config.hybrid_lambda
            )));
        }
        let betas = config.schedule.betas(config.num_timesteps);
        if betas.iter().any(|b| !(0.0..=1.0).contains(b)) {
            return Err(Error::InvalidArgument(
                "every beta must lie in [0, 1]".into(),
            ));
        }
        let mut alpha_bars = Vec::with_capacity(betas.len() + 1);
        alpha_bars.push(1.0);
        for b in &betas {
            let last = *alpha_bars.last().expect("non-empty");
            alpha_bars.push(last * (1.0 - b));
        }
        Ok(D3pm {
            config,
            betas,
            alpha_bars,
        })
    }

    pub fn config(&self) -> &D3pmConfig {
        &self.config
    }

    /// T.
    pub fn num_timesteps(&self) -> usize {
        self.config.num_timesteps
    }

    /// K: the vocabulary, plus one for [MASK] with absorbing transitions.
    pub fn num_states(&self) -> i64 {
        match self.config.transition {
            Transition::Uniform => self.config.vocab_size,
            Transition::Absorbing => self.config.vocab_size + 1,
        }
    }

    /// The [MASK] id (= V) for absorbing transitions.
    pub fn mask_id(&self) -> Option<i64> {
        match self.config.transition {
            Transition::Uniform => None,
            Transition::Absorbing => Some(self.config.vocab_size),
        }
    }

    /// beta_t at index t - 1 (t = 1..=T).
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// abar_t at index t (t = 0..=T; abar_0 = 1).
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bars
    }

    fn check_t(&self, t: usize, what: &str) -> Result<()> {
        if t > self.config.num_timesteps {
            return Err(Error::InvalidArgument(format!(
                "{what} {t} is beyond this process's T = {}",
                self.config.num_timesteps
            )));
        }
        Ok(())
    }

    /// `[B, 1, 1]` per-example coefficients.
    fn coef(values: &[f64], kind: Kind, device: Device) -> Tensor {
        Tensor::from_slice(values)
            .to_kind(kind)
            .to_device(device)
            .reshape([-1, 1, 1])
    }

    /// The stationary distribution e of the transition as `[K]`.
    fn stationary(&self, kind: Kind, device: Device) -> Tensor {
        let k = self.num_states();
        match self.mask_id() {
            None => Tensor::full([k], 1.0 / k as f64, (kind, device)),
            Some(m) => Tensor::zeros([k], (kind, device)).index_fill(
                0,
                &Tensor::from_slice(&[m]).to_device(device),
                1.0,
            ),
        }
    }

    /// q(x_t | x_0) `[B, L, K]` (f64) for tokens `x0` `[B, L]`: abar_t onehot(x_0) + (1 - abar_t) e.
    pub fn q_probs(&self, x0: &Tensor, t: usize) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        self.check_t(t, "t")?;
        let a = self.alpha_bars[t];
        let onehot = x0
            .to_kind(Kind::Int64)
            .one_hot(self.num_states())
            .to_kind(Kind::Double);
        Ok(onehot * a + self.stationary(Kind::Double, x0.device()) * (1.0 - a))
    }

    /// A draw of x_t ~ q(x_t | x_0) `[B, L]`, with its own t for each example (t = 0: x_0 itself).
    pub fn q_sample(&self, x0: &Tensor, t: &[usize]) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        if t.len() as i64 != x0.size()[0] {
            return Err(Error::InvalidArgument(format!(
                "{} timesteps for a batch of {}",
                t.len(),
                x0.size()[0]
            )));
        }
        for &t in t {
            self.check_t(t, "t")?;
        }
        Ok(self.noise(x0, t))
    }

    /// x_t ~ q(x_t | x_0): keep each token with probability abar_t, else draw from e.
    fn noise(&self, x0: &Tensor, t: &[usize]) -> Tensor {
        let device = x0.device();
        let x0 = x0.to_kind(Kind::Int64);
        let abar: Vec<f64> = t.iter().map(|&t| self.alpha_bars[t]).collect();
        let keep = Tensor::rand(x0.size(), (Kind::Double, device))
            .lt_tensor(&Tensor::from_slice(&abar).to_device(device).unsqueeze(1));
        let replacement = match self.mask_id() {
            None => Tensor::randint(self.num_states(), x0.size(), (Kind::Int64, device)),
            Some(m) => x0.full_like(m),
        };
        x0.where_self(&keep, &replacement)
    }

    /// p~(x_0 | x_t) `[B, L, K]` from the network's logits, in the logits' float kind (at least
    /// f32): softmax with the [MASK] column at 0 and, for absorbing transitions, carry-over of
    /// unmasked tokens.
    pub fn x0_probs(&self, logits: &Tensor, x_t: &Tensor) -> Result<Tensor> {
        check_logits(logits, x_t, self.num_states())?;
        Ok(self.x0_log_probs(logits, x_t).exp())
    }

    fn work_kind(logits: &Tensor) -> Kind {
        match logits.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        }
    }

    fn x0_log_probs(&self, logits: &Tensor, x_t: &Tensor) -> Tensor {
        let kind = Self::work_kind(logits);
        match self.mask_id() {
            None => logits.to_kind(kind).log_softmax(-1, kind),
            Some(m) => subs_log_probs(logits, x_t, m, kind),
        }
    }

    /// The distribution of x_s given x_t and a distribution `w` over x_0 (`[B, L, K]`), for
    /// 0 <= s < t, with per-example `abar_t`, `abar_s` (`[B, 1, 1]`). `mixture` reweights w by
    /// 1 / q(x_t | x_0) so that the result is sum_{x_0} q(x_s | x_t, x_0) w(x_0).
    fn posterior_from(
        &self,
        x_t: &Tensor,
        w: &Tensor,
        abar_t: &Tensor,
        abar_s: &Tensor,
        mixture: bool,
    ) -> Tensor {
        let kind = w.kind();
        let device = w.device();
        let k = self.num_states();
        let x_t = x_t.to_kind(Kind::Int64);
        let onehot = x_t.one_hot(k).to_kind(kind);
        let a_ts = abar_t / abar_s.clamp_min(FLOOR);
        let e = self.stationary(kind, device);
        let w_sum = w.sum_dim_intlist(-1, true, kind);
        match self.mask_id() {
            None => {
                let kf = k as f64;
                // q(x_t | x_s = j), as a function of j.
                let fact1 = &onehot * &a_ts + (1.0 - &a_ts) / kf;
                let w = if mixture {
                    w / (&onehot * abar_t + (1.0 - abar_t) / kf)
                } else {
                    w.shallow_clone()
                };
                let w_sum = if mixture {
                    w.sum_dim_intlist(-1, true, kind)
                } else {
                    w_sum
                };
                // sum_{x_0} w(x_0) q(x_s = j | x_0).
                let fact2 = &w * abar_s + (1.0 - abar_s) / kf * w_sum;
                let post: Tensor = fact1 * fact2;
                &post / post.sum_dim_intlist(-1, true, kind).clamp_min(FLOOR)
            }
            Some(m) => {
                let is_mask = x_t.eq(m).unsqueeze(-1);
                // x_t = [MASK]: q(x_t | x_s = j) is 1 - a_ts for tokens and 1 for [MASK].
                let fact1 = (1.0 - &e) * (1.0 - &a_ts) + &e;
                let fact2 = w * abar_s + &e * (1.0 - abar_s) * w_sum;
                let post: Tensor = fact1 * fact2;
                let post = &post / post.sum_dim_intlist(-1, true, kind).clamp_min(FLOOR);
                // An unmasked x_t is x_0 and stays put.
                post.where_self(&is_mask, &onehot)
            }
        }
    }

    fn check_pair(&self, t: usize, s: usize) -> Result<()> {
        self.check_t(t, "t")?;
        if s >= t {
            return Err(Error::InvalidArgument(format!(
                "the posterior needs s < t, got s = {s}, t = {t}"
            )));
        }
        Ok(())
    }

    /// The true posterior q(x_s | x_t, x_0) `[B, L, K]` (f64) for tokens `x_t`, `x0` and
    /// 0 <= s < t <= T (s = t - 1: the one-step posterior; smaller s: a multi-step jump).
    pub fn q_posterior(&self, x_t: &Tensor, x0: &Tensor, t: usize, s: usize) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        check_tokens(x_t, self.num_states(), "x_t")?;
        self.check_pair(t, s)?;
        let b = x0.size()[0] as usize;
        let device = x0.device();
        let w = x0
            .to_kind(Kind::Int64)
            .one_hot(self.num_states())
            .to_kind(Kind::Double);
        let at = Self::coef(&vec![self.alpha_bars[t]; b], Kind::Double, device);
        let as_ = Self::coef(&vec![self.alpha_bars[s]; b], Kind::Double, device);
        Ok(self.posterior_from(x_t, &w, &at, &as_, true))
    }

    /// The model's p(x_s | x_t) `[B, L, K]` from p~(x_0 | x_t) `p_x0` `[B, L, K]` (probabilities,
    /// e.g. from [`D3pm::x0_probs`]), in `p_x0`'s kind. At s = 0 this is p~ itself (with
    /// carry-over of unmasked tokens for absorbing transitions).
    pub fn model_posterior(
        &self,
        x_t: &Tensor,
        p_x0: &Tensor,
        t: usize,
        s: usize,
    ) -> Result<Tensor> {
        check_tokens(x_t, self.num_states(), "x_t")?;
        check_logits(p_x0, x_t, self.num_states())?;
        self.check_pair(t, s)?;
        if s == 0 && !self.mixture() {
            // The reference code decodes with p~ itself at t = 1.
            return Ok(p_x0.shallow_clone());
        }
        let b = x_t.size()[0] as usize;
        let (kind, device) = (p_x0.kind(), p_x0.device());
        let at = Self::coef(&vec![self.alpha_bars[t]; b], kind, device);
        let as_ = Self::coef(&vec![self.alpha_bars[s]; b], kind, device);
        Ok(self.posterior_from(x_t, p_x0, &at, &as_, self.mixture()))
    }

    fn mixture(&self) -> bool {
        self.config.model_posterior == ModelPosterior::Mixture
    }

    /// The prior term KL(q(x_T | x_0) || p(x_T)) summed over a sequence of `len` tokens, nats.
    /// The same for every x_0, since both transitions treat all tokens alike.
    pub fn prior_nats(&self, len: i64) -> f64 {
        let a = self.alpha_bars[self.config.num_timesteps];
        let k = self.num_states() as f64;
        let xlogy = |p: f64, q: f64| {
            if p <= 0.0 {
                0.0
            } else {
                p * (p / q.max(FLOOR)).ln()
            }
        };
        let per_token = match self.config.transition {
            Transition::Uniform => {
                let on = a + (1.0 - a) / k;
                let off = (1.0 - a) / k;
                xlogy(on, 1.0 / k) + (k - 1.0) * xlogy(off, 1.0 / k)
            }
            Transition::Absorbing => xlogy(a, 0.0) + xlogy(1.0 - a, 1.0),
        };
        per_token * len as f64
    }

    /// Per-example bound terms `[B]` (nats, summed over positions) at per-example steps `t`
    /// (1..=T) for `x_t` drawn from q: L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for
    /// t >= 2 and -log p~(x_0 | x_1) at t = 1; also the cross-entropy -log p~(x_0 | x_t) `[B]`.
    fn terms(
        &self,
        logits: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        check_logits(logits, x_t, self.num_states())?;
        let kind = Self::work_kind(logits);
        let device = logits.device();
        let x0 = x0.to_kind(Kind::Int64);
        let log_p = self.x0_log_probs(logits, x_t);
        let ce = -log_p
            .gather(-1, &x0.unsqueeze(-1), false)
            .squeeze_dim(-1)
            .sum_dim_intlist(-1, false, kind);
        let at: Vec<f64> = t.iter().map(|&t| self.alpha_bars[t]).collect();
        let as_: Vec<f64> = t.iter().map(|&t| self.alpha_bars[t.max(1) - 1]).collect();
        let at = Self::coef(&at, kind, device);
        let as_ = Self::coef(&as_, kind, device);
        let q = self.posterior_from(
            x_t,
            &x0.one_hot(self.num_states()).to_kind(kind),
            &at,
            &as_,
            true,
        );
        let p = self.posterior_from(x_t, &log_p.exp(), &at, &as_, self.mixture());
        let kl = (&q * (q.clamp_min(FLOOR).log() - p.clamp_min(FLOOR).log())).sum_dim_intlist(
            [-1, -2].as_slice(),
            false,
            kind,
        );
        let is_decoder: Vec<f64> = t.iter().map(|&t| (t == 1) as u8 as f64).collect();
        let is_decoder = Tensor::from_slice(&is_decoder)
            .to_kind(kind)
            .to_device(device);
        let term = &ce * &is_decoder + kl * (1.0 - is_decoder);
        Ok((term, ce))
    }

    /// The bound's term of each sequence `[B]` (f64 nats, summed over its positions) at its step
    /// `t[b]` (1..=T), for `x_t` drawn from q(x_t | x_0) and the network's `logits` `[B, L, K]` at
    /// x_t: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t >= 2 and the decoder term
    /// -log p~(x_0 | x_1) at t = 1. Computed in f64 over slices of at most
    /// [`BOUND_CHUNK_ELEMENTS`] values, so memory stays bounded for large vocabularies.
    pub fn bound_terms(
        &self,
        logits: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &[usize],
    ) -> Result<Tensor> {
        self.bound_terms_chunked(logits, x0, x_t, t, BOUND_CHUNK_ELEMENTS)
    }

    /// [`D3pm::bound_terms`] over slices of at most `max_elements` f64 values (at least one
    /// position each). Every position's term is independent of the others, so the slicing does
    /// not change the result (tested).
    pub fn bound_terms_chunked(
        &self,
        logits: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        t: &[usize],
        max_elements: i64,
    ) -> Result<Tensor> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        check_tokens(x_t, self.num_states(), "x_t")?;
        check_logits(logits, x_t, self.num_states())?;
        if x0.size() != x_t.size() {
            return Err(Error::InvalidArgument(format!(
                "x0 {:?} and x_t {:?} must have the same shape",
                x0.size(),
                x_t.size()
            )));
        }
        let (b, len, k) = (x0.size()[0], x0.size()[1], self.num_states());
        if t.len() as i64 != b || t.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "the bound needs one t in 1..={} per sequence",
                self.num_timesteps()
            )));
        }
        for &t in t {
            self.check_t(t, "t")?;
        }
        let device = logits.device();
        let cells = b * len;
        if cells == 0 {
            return Ok(Tensor::zeros([b], (Kind::Double, device)));
        }
        // Positions as examples of length 1: `terms` then works on any slice of them, and only
        // the slice is ever in f64 (the network's logits stay in their own kind).
        let logits = logits.reshape([cells, 1, k]);
        let x0 = x0.to_kind(Kind::Int64).reshape([cells, 1]);
        let x_t = x_t.to_kind(Kind::Int64).reshape([cells, 1]);
        let chunk = (max_elements / k).max(1);
        let mut parts = Vec::with_capacity(((cells + chunk - 1) / chunk) as usize);
        for start in (0..cells).step_by(chunk as usize) {
            let c = chunk.min(cells - start);
            let ts: Vec<usize> = (start..start + c).map(|i| t[(i / len) as usize]).collect();
            let (term, _) = self.terms(
                &logits.narrow(0, start, c).to_kind(Kind::Double),
                &x0.narrow(0, start, c),
                &x_t.narrow(0, start, c),
                &ts,
            )?;
            parts.push(term);
        }
        Ok(Tensor::cat(&parts, 0)
            .reshape([b, len])
            .sum_dim_intlist(-1, false, Kind::Double))
    }

    /// The hybrid loss on tokens `x0` `[B, L]` at t drawn uniformly from 1..=T per example.
    pub fn loss(&self, model: &dyn TokenDenoiser, x0: &Tensor) -> Result<D3pmLoss> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        let b = x0.size()[0];
        let t: Vec<usize> = Vec::<i64>::try_from(Tensor::randint_low(
            1,
            self.num_timesteps() as i64 + 1,
            [b],
            (Kind::Int64, Device::Cpu),
        ))
        .map_err(Error::Torch)?
        .into_iter()
        .map(|t| t as usize)
        .collect();
        self.loss_at(model, x0, &t)
    }

    /// The hybrid loss at the given per-example steps `t` (1..=T).
    pub fn loss_at(&self, model: &dyn TokenDenoiser, x0: &Tensor, t: &[usize]) -> Result<D3pmLoss> {
        check_tokens(x0, self.config.vocab_size, "x0")?;
        if t.len() as i64 != x0.size()[0] || t.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "the loss needs one t in 1..={} per example",
                self.num_timesteps()
            )));
        }
        for &t in t {
            self.check_t(t, "t")?;
        }
        let x_t = self.noise(x0, t);
        let cond: Vec<f64> = t.iter().map(|&t| t as f64).collect();
        let logits = model.logits(&x_t, &cond_tensor(&cond, x0.device()));
        let (term, ce) = self.terms(&logits, x0, &x_t, t)?;
        let tokens = x0.numel() as f64;
        let loss = (&term + &ce * self.config.hybrid_lambda).sum(term.kind()) / tokens;
        let len = x0.size()[1];
        let vlb = (term.detach() * self.num_timesteps() as f64 + self.prior_nats(len))
            .sum(term.kind())
            / tokens;
        Ok(D3pmLoss {
            loss,
            vlb,
            ce: ce.detach().sum(term.kind()) / tokens,
        })
    }

    /// The full bound on held-out tokens `data` `[N, L]`: for each batch of `batch_size`
    /// sequences, the prior term plus all T terms, each at a fresh x_t ~ q(x_t | x_0) (one Monte
    /// Carlo sample per term, T model calls per batch). Computed in f64. `on_progress(done, total)`
    /// counts model calls.
    pub fn nll_bound(
        &self,
        model: &dyn TokenDenoiser,
        data: &Tensor,
        batch_size: i64,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<NllEstimate> {
        check_tokens(data, self.config.vocab_size, "data")?;
        if batch_size < 1 {
            return Err(Error::InvalidArgument(
                "batch_size must be at least 1".into(),
            ));
        }
        let (n, len) = (data.size()[0], data.size()[1]);
        let big_t = self.num_timesteps();
        let batches = (n + batch_size - 1) / batch_size;
        let total = batches as usize * big_t;
        let mut per_seq = Vec::with_capacity(n as usize);
        let mut done = 0;
        for start in (0..n).step_by(batch_size as usize) {
            let x0 = data
                .narrow(0, start, batch_size.min(n - start))
                .to_kind(Kind::Int64);
            let b = x0.size()[0] as usize;
            let mut sum = Tensor::full(
                [b as i64],
                self.prior_nats(len),
                (Kind::Double, x0.device()),
            );
            for t in 1..=big_t {
                let ts = vec![t; b];
                let x_t = self.noise(&x0, &ts);
                let logits = tch::no_grad(|| {
                    model.logits(&x_t, &cond_tensor(&vec![t as f64; b], x0.device()))
                });
                let term = self.bound_terms(&logits, &x0, &x_t, &ts)?;
                sum += term;
                done += 1;
                on_progress(done, total);
            }
            per_seq.extend(Vec::<f64>::try_from(sum / len as f64).map_err(Error::Torch)?);
        }
        Ok(NllEstimate::from_per_sequence(&per_seq, (n * len) as usize))
    }

    /// Ancestral sampling of `batch` sequences of `len` tokens from the prior.
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
        let fixed = Tensor::zeros([batch, len], (Kind::Bool, device));
        let tokens = Tensor::zeros([batch, len], (Kind::Int64, device));
        self.run(model, &tokens, &fixed, options, on_step)
    }

    /// Infilling: positions where `fixed` `[B, L]` (bool) is true keep their tokens from `tokens`
    /// `[B, L]` exactly; the rest are generated. Absorbing transitions show the given tokens to the
    /// model throughout (they are never masked); uniform transitions replace them at every step by
    /// a fresh draw of q(x_s | x_0) so the model sees them at its noise level (as inpainting does).
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

    fn run(
        &self,
        model: &dyn TokenDenoiser,
        given: &Tensor,
        fixed: &Tensor,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<CategoricalSample> {
        options.validate()?;
        if options.order != UnmaskOrder::Random {
            return Err(Error::InvalidArgument(format!(
                "the {} unmasking order is for the masked processes (MDLM, BD3-LM): D3PM samples \
                 every position at every step",
                options.order.name()
            )));
        }
        let big_t = self.num_timesteps();
        let n = options.steps;
        if n > big_t {
            return Err(Error::InvalidArgument(format!(
                "{n} steps asked of a D3PM with T = {big_t}: at most T steps"
            )));
        }
        let device = given.device();
        let (b, len) = (given.size()[0], given.size()[1]);
        let k = self.num_states();
        let fixed = fixed.to_device(device);
        let given = given.to_kind(Kind::Int64);
        // Only the fixed positions' tokens are used; zero the placeholders so they are valid ids.
        let given = given.where_self(&fixed, &given.zeros_like());
        // Evenly spaced steps T = tau_N > ... > tau_0 = 0 (distinct since N <= T).
        let tau: Vec<usize> = (0..=n)
            .map(|i| ((i * big_t) as f64 / n as f64).round() as usize)
            .collect();
        let mut x = match self.mask_id() {
            Some(m) => given.full_like(m).where_self(&fixed.logical_not(), &given),
            None => {
                let noisy = self.noise(&given, &vec![big_t; b as usize]);
                let prior = Tensor::randint(k, [b, len], (Kind::Int64, device));
                noisy.where_self(&fixed, &prior)
            }
        };
        for i in (1..=n).rev() {
            let (t, s) = (tau[i], tau[i - 1]);
            let cond = cond_tensor(&vec![t as f64; b as usize], device);
            let logits = tch::no_grad(|| model.logits(&x, &cond));
            check_logits(&logits, &x, k)?;
            let mut p_x0 = filtered_probs(
                &logits.reshape([-1, k]),
                self.mask_id(),
                options.temperature,
                options.top_p,
            )
            .reshape([b, len, k]);
            let probs = if s == 0 {
                if let Some(m) = self.mask_id() {
                    let onehot = x.one_hot(k).to_kind(Kind::Double);
                    p_x0 = p_x0.where_self(&x.eq(m).unsqueeze(-1), &onehot);
                }
                p_x0
            } else {
                let at = Self::coef(&vec![self.alpha_bars[t]; b as usize], Kind::Double, device);
                let as_ = Self::coef(&vec![self.alpha_bars[s]; b as usize], Kind::Double, device);
                self.posterior_from(&x, &p_x0, &at, &as_, self.mixture())
            };
            let u = Tensor::rand([b * len], (Kind::Double, device));
            let next = sample_rows(&probs.reshape([-1, k]), &u).reshape([b, len]);
            x = match self.mask_id() {
                Some(_) => given.where_self(&fixed, &next),
                None => {
                    let renoised = self.noise(&given, &vec![s; b as usize]);
                    renoised.where_self(&fixed, &next)
                }
            };
            on_step(n - i + 1, n);
        }
        Ok(CategoricalSample {
            tokens: x,
            model_calls: n,
        })
    }
}
