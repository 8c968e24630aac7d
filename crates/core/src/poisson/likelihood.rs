//! The variational bound of a count-diffusion model with binomial thinning, where z_0 = x_0 and
//! the bound is a bound on -log p(x_0) of the integer data itself:
//!
//! -log p(x_0) <= KL(q(z_T | x_0) || p(z_T)) + sum_{t=1..T} E_q KL(q(z_{t-1} | z_t, x_0) || p(z_{t-1} | z_t))
//!
//! with q(z_T | x_0) = Binomial(x_0, alpha_T), the prior p(z_T) = Poisson(alpha_T m), the true
//! step back z_{t-1} - z_t ~ Binomial(x_0 - z_t, r_t), r_t = (alpha_{t-1} - alpha_t) / (1 - alpha_t),
//! and the model's step the thickening sampler's Poisson(r_t (x_0_hat - z_t)). At t = 1, r_1 = 1
//! and the term is the decoder's -log p(x_0 | z_1). Every term is a KL from a binomial to a
//! Poisson, computed exactly ([`binomial_poisson_kl`]); the sum over t is the full T-term bound
//! with a fresh z_t per term, as the Gaussian bound in [`crate::vlb`] does. Poisson thinning has
//! no such bound on x_0 (its step 0 is Poisson(lambda x_0), not x_0), so it is refused.

use super::process::{JumpProcess, Thinning};
use super::{as_float, CountDenoiser, MIN_RATE};
use crate::{Error, Result};
use std::f64::consts::LN_2;
use tch::{Device, Kind, Tensor};

/// Elements per chunk times window size of the binomial sums (bounds memory).
const GRID_BUDGET: i64 = 1 << 22;

/// Standard deviations either side of the mean that a binomial sum covers: the mass beyond
/// 12 sd is below 1e-30 (Chernoff), far under f64's resolution of the result.
const WINDOW_SDS: f64 = 12.0;

/// The widest window summed term by term; wider spreads (sd above ~85, so the mean is above
/// ~7000) use the moment expansion, whose first omitted term is then below 1e-12.
const MAX_WINDOW: i64 = 2048;

/// E[lgamma(J + 1)] for J ~ Binomial(n, q), elementwise: summed over the support within
/// [`WINDOW_SDS`] standard deviations of the mean (exact to f64 rounding), or, for spreads too
/// wide for that, the expansion lgamma(m + 1) + sum_k mu_k psi^(k-1)(m + 1) / k! over the
/// central moments mu_2..mu_4 (m = nq), so bounds of counts in the billions stay cheap.
fn expected_lgamma(n: &Tensor, q: &Tensor) -> Tensor {
    let n = n.to_kind(Kind::Double).flatten(0, -1);
    let q = q.to_kind(Kind::Double).flatten(0, -1);
    let mut out = Tensor::zeros_like(&n);
    // Degenerate cases need no sum: J = n when q = 1, J = 0 when q = 0 or n = 0.
    let sure = q.ge(1.0);
    let _ = out.masked_scatter_(&sure, &(n.masked_select(&sure) + 1.0).lgamma());
    let random = q.gt(0.0).logical_and(&q.lt(1.0)).logical_and(&n.gt(0.0));
    let mean: Tensor = &n * &q;
    let var: Tensor = &mean * (1.0 - &q);
    let width = (var.sqrt() * (2.0 * WINDOW_SDS)).ceil() + 3.0;
    let wide = random.logical_and(&width.gt(MAX_WINDOW as f64));
    let narrow = random.logical_and(&wide.logical_not());

    let idx = wide.nonzero().squeeze_dim(1);
    if idx.size()[0] > 0 {
        let m = mean.index_select(0, &idx) + 1.0;
        let v = var.index_select(0, &idx);
        let qw = q.index_select(0, &idx);
        // Central moments of the binomial: mu3 = v (1 - 2q), mu4 = 3 v^2 + v (1 - 6 q (1 - q)).
        let mu3 = &v * (1.0 - &qw * 2.0);
        let mu4 = &v * &v * 3.0 + &v * (1.0 - &qw * (1.0 - &qw) * 6.0);
        let values = m.lgamma()
            + &v * m.polygamma(1) / 2.0
            + mu3 * m.polygamma(2) / 6.0
            + mu4 * m.polygamma(3) / 24.0;
        out = out.index_copy(0, &idx, &values);
    }

    let idx = narrow.nonzero().squeeze_dim(1);
    let count = idx.size()[0];
    if count == 0 {
        return out;
    }
    let nr = n.index_select(0, &idx);
    let qr = q.index_select(0, &idx);
    let sd = var.index_select(0, &idx).sqrt();
    // Each row sums j = lo .. lo + window - 1, clipped to its support 0..=n.
    let lo = (mean.index_select(0, &idx) - &sd * WINDOW_SDS - 1.0)
        .floor()
        .clamp_min(0.0);
    let window = (width.index_select(0, &idx).max().double_value(&[]) as i64)
        .min(nr.max().double_value(&[]) as i64 + 1)
        .max(1);
    let chunk = (GRID_BUDGET / window).max(1);
    let offsets = Tensor::arange(window, (Kind::Double, n.device())).unsqueeze(0);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < count {
        let len = chunk.min(count - start);
        let nc = nr.narrow(0, start, len).unsqueeze(1);
        let qc = qr.narrow(0, start, len).unsqueeze(1);
        let j = lo.narrow(0, start, len).unsqueeze(1) + &offsets;
        let valid = j.le_tensor(&nc);
        let j = j.minimum(&nc);
        let rest = (&nc - &j).clamp_min(0.0);
        let log_pmf = (&nc + 1.0).lgamma() - (&j + 1.0).lgamma() - (&rest + 1.0).lgamma()
            + j.special_xlogy(&qc)
            + rest.special_xlogy(&(1.0 - &qc));
        let w = log_pmf.exp() * valid.to_kind(Kind::Double);
        // Normalised and centred on lgamma(mean + 1): the lgamma terms of log_pmf carry
        // rounding of order 1e-16 of lgamma(n + 1), common to every weight; dividing by the
        // weights' sum cancels it, and centring keeps it from scaling the large lgamma values.
        let mc = (&nc * &qc + 1.0).lgamma();
        let centred = (&j + 1.0).lgamma() - &mc;
        let total = w.sum_dim_intlist(1, false, Kind::Double);
        let mean_centred = (&w * centred).sum_dim_intlist(1, false, Kind::Double) / total;
        parts.push(mean_centred + mc.squeeze_dim(1));
        start += len;
    }
    let values = Tensor::cat(&parts, 0);
    out.index_copy(0, &idx, &values)
}

/// KL(Binomial(n, r) || Poisson(mu)) elementwise in nats (f64), for whole n >= 0, r in [0, 1],
/// mu >= 0 (floored at [`MIN_RATE`]): -H(Binomial) - E[k log mu - mu - lgamma(k + 1)], with the
/// binomial's entropy and E[lgamma(k + 1)] summed over its support (see `expected_lgamma`).
pub fn binomial_poisson_kl(n: &Tensor, r: &Tensor, mu: &Tensor) -> Tensor {
    let shape = mu.size();
    let n = n.to_kind(Kind::Double).expand(&shape, false).contiguous();
    let r = r.to_kind(Kind::Double).expand(&shape, false).contiguous();
    let mu = mu.to_kind(Kind::Double).clamp_min(MIN_RATE);
    // sum_k b_k (log b_k + lgamma(k+1)) = lgamma(n+1) + n r log r + n (1-r) log(1-r)
    //                                      - E[lgamma(n - k + 1)], with n - k ~ Binomial(n, 1 - r).
    let one_minus: Tensor = 1.0 - &r;
    let g = (&n + 1.0).lgamma() + &n * (r.special_xlogy(&r) + one_minus.special_xlogy(&one_minus))
        - expected_lgamma(&n, &one_minus).reshape(&shape);
    g - &n * &r * mu.log() + mu
}

fn require_binomial(process: &JumpProcess) -> Result<()> {
    if process.thinning() != Thinning::Binomial {
        return Err(Error::InvalidArgument(
            "bits/dim is defined for count models with binomial thinning (where step 0 is the \
             data); this model uses Poisson thinning"
                .into(),
        ));
    }
    Ok(())
}

fn per_example_sum(x: &Tensor) -> Tensor {
    x.flatten(1, -1).sum_dim_intlist(1, false, Kind::Double)
}

/// The prior term KL(Binomial(x_0, alpha_T) || Poisson(alpha_T m)) per example, in nats.
pub fn prior_nats(process: &JumpProcess, x0: &Tensor) -> Tensor {
    let alpha_t = process.alphas()[process.timesteps()];
    let x0 = as_float(x0).to_kind(Kind::Double);
    let mu = x0.full_like(alpha_t * process.config().signal_mean);
    per_example_sum(&binomial_poisson_kl(&x0, &x0.full_like(alpha_t), &mu))
}

/// The term of step t (1..=T) per example, in nats, at a fresh z_t ~ q(z_t | x_0).
pub fn term_nats(
    process: &JumpProcess,
    model: &dyn CountDenoiser,
    x0: &Tensor,
    t: usize,
) -> Tensor {
    let batch = x0.size()[0] as usize;
    let ts = vec![t; batch];
    let ss = vec![t - 1; batch];
    let x0 = as_float(x0);
    let z_t = process.q_sample(&x0, &ts);
    let x0_hat = tch::no_grad(|| process.estimate_x0(model, &z_t, t));
    let (at, as_) = (process.alphas()[t], process.alphas()[t - 1]);
    let r = (as_ - at) / (1.0 - at);
    let mu_hat = process.thickening_rate(&x0_hat, &z_t, &ts, &ss);
    let n = (&x0 - &z_t).round();
    per_example_sum(&binomial_poisson_kl(&n, &n.full_like(r), &mu_hat))
}

/// The full bound per example in nats: the prior and all T terms. `on_term(done)` after each.
pub fn nll_bound(
    process: &JumpProcess,
    model: &dyn CountDenoiser,
    x0: &Tensor,
    mut on_term: impl FnMut(usize),
) -> Result<Tensor> {
    require_binomial(process)?;
    process.check_data(x0)?;
    let mut total = prior_nats(process, x0);
    for (done, t) in (1..=process.timesteps()).rev().enumerate() {
        total += term_nats(process, model, x0, t);
        on_term(done + 1);
    }
    Ok(total.to_device(Device::Cpu))
}

/// [`nll_bound`] in bits per dimension (per element of one example).
pub fn bits_per_dim(
    process: &JumpProcess,
    model: &dyn CountDenoiser,
    x0: &Tensor,
    on_term: impl FnMut(usize),
) -> Result<Tensor> {
    let dims = (x0.numel() as i64 / x0.size()[0].max(1)) as f64;
    Ok(nll_bound(process, model, x0, on_term)? / (dims * LN_2))
}
