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

/// Elements per chunk times support size of the exact binomial expectations (bounds memory).
const GRID_BUDGET: i64 = 1 << 22;

/// E[lgamma(J + 1)] for J ~ Binomial(n, q), elementwise, exactly (a sum over the support).
fn expected_lgamma(n: &Tensor, q: &Tensor) -> Tensor {
    let n = n.to_kind(Kind::Double).flatten(0, -1);
    let q = q.to_kind(Kind::Double).flatten(0, -1);
    let mut out = Tensor::zeros_like(&n);
    // Degenerate cases need no sum: J = n when q = 1, J = 0 when q = 0 or n = 0.
    let sure = q.ge(1.0);
    let _ = out.masked_scatter_(&sure, &(n.masked_select(&sure) + 1.0).lgamma());
    let random = q.gt(0.0).logical_and(&q.lt(1.0)).logical_and(&n.gt(0.0));
    let idx = random.nonzero().squeeze_dim(1);
    let count = idx.size()[0];
    if count == 0 {
        return out;
    }
    let nr = n.index_select(0, &idx);
    let qr = q.index_select(0, &idx);
    let n_max = nr.max().double_value(&[]) as i64;
    let chunk = (GRID_BUDGET / (n_max + 1)).max(1);
    let j = Tensor::arange(n_max + 1, (Kind::Double, n.device())).unsqueeze(0);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < count {
        let len = chunk.min(count - start);
        let nc = nr.narrow(0, start, len).unsqueeze(1);
        let qc = qr.narrow(0, start, len).unsqueeze(1);
        let valid = j.le_tensor(&nc);
        let rest = (&nc - &j).clamp_min(0.0);
        let log_pmf = (&nc + 1.0).lgamma() - (&j + 1.0).lgamma() - (&rest + 1.0).lgamma()
            + j.special_xlogy(&qc)
            + rest.special_xlogy(&(1.0 - &qc));
        let w = log_pmf.exp() * valid.to_kind(Kind::Double);
        parts.push((w * (&j + 1.0).lgamma()).sum_dim_intlist(1, false, Kind::Double));
        start += len;
    }
    let values = Tensor::cat(&parts, 0);
    out.index_copy(0, &idx, &values)
}

/// KL(Binomial(n, r) || Poisson(mu)) elementwise in nats (f64), for whole n >= 0, r in [0, 1],
/// mu >= 0 (floored at [`MIN_RATE`]): -H(Binomial) - E[k log mu - mu - lgamma(k + 1)], with the
/// binomial's entropy and E[lgamma(k + 1)] summed exactly over its support.
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
