//! Posterior, KL and decoder likelihood: checked against their closed forms and by Monte Carlo.

use diffuse_core::likelihood::{discretized_gaussian_log_likelihood, normal_kl};
use diffuse_core::schedule::{
    spaced_timesteps, BetaScheduleConfig, NoiseSchedule, TimestepSpacing,
};
use tch::{Device, Kind, Tensor};

fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(&BetaScheduleConfig::default()).unwrap()
}

#[test]
fn single_step_posterior_matches_ho_et_al() {
    let s = schedule();
    for t in [1usize, 10, 500, 999] {
        let p = s.posterior(t as f64, Some((t - 1) as f64));
        let (abar, abar_prev, beta) = (
            s.alphas_cumprod()[t],
            s.alphas_cumprod()[t - 1],
            s.betas()[t],
        );
        // Ho et al. 2020, eq. 7.
        assert!((p.coef_x0 - abar_prev.sqrt() * beta / (1.0 - abar)).abs() < 1e-12);
        assert!((p.coef_xt - (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar)).abs() < 1e-12);
        assert!((p.variance / ((1.0 - abar_prev) / (1.0 - abar) * beta) - 1.0).abs() < 1e-9);
        assert!((p.beta / beta - 1.0).abs() < 1e-9);
    }
    // To the data: the posterior is the point x_0 (variance clamped, not zero).
    let last = s.posterior(0.0, None);
    assert_eq!(last.variance, 1e-20);
    assert!((last.coef_x0 - 1.0).abs() < 1e-12 && last.coef_xt.abs() < 1e-12);
}

#[test]
fn strided_posterior_steps_keep_the_forward_marginals() {
    let _rng = crate::rng_lock();
    // x_t ~ q(x_t | x0), then x_s ~ q(x_s | x_t, x0): x_s must be distributed as q(x_s | x0).
    let s = schedule();
    let steps = spaced_timesteps(1000, 10, TimestepSpacing::Trailing, 0).unwrap();
    tch::manual_seed(11);
    let n = 200_000;
    let x0 = 1.5;
    for pair in steps.windows(2) {
        let (t, prev) = (pair[0], pair[1]);
        let (abar_t, abar_s) = (s.alpha_bar(t), s.alpha_bar(prev));
        let x_t = Tensor::randn([n], (Kind::Double, Device::Cpu)) * (1.0 - abar_t).sqrt()
            + x0 * abar_t.sqrt();
        let p = s.posterior(t, Some(prev));
        let x_s = &x_t * p.coef_xt
            + x0 * p.coef_x0
            + Tensor::randn([n], (Kind::Double, Device::Cpu)) * p.variance.sqrt();
        let mean = x_s.mean(Kind::Double).double_value(&[]);
        let var = x_s.var(true).double_value(&[]);
        let se = ((1.0 - abar_s) / n as f64).sqrt();
        assert!(
            (mean - x0 * abar_s.sqrt()).abs() < 5.0 * se,
            "t={t}->{prev}: mean {mean}"
        );
        assert!(
            (var / (1.0 - abar_s) - 1.0).abs() < 0.02,
            "t={t}->{prev}: variance {var}"
        );
    }
}

#[test]
fn normal_kl_matches_closed_forms() {
    let t = |v: f64| Tensor::from(v);
    assert!(
        normal_kl(&t(0.3), &t(-1.0), &t(0.3), &t(-1.0))
            .double_value(&[])
            .abs()
            < 1e-12
    );
    // KL(N(1,1) || N(0,1)) = 1/2; KL(N(0,1) || N(0,4)) = 0.5 (ln 4 + 1/4 - 1).
    assert!((normal_kl(&t(1.0), &t(0.0), &t(0.0), &t(0.0)).double_value(&[]) - 0.5).abs() < 1e-12);
    let want = 0.5 * (4f64.ln() + 0.25 - 1.0);
    assert!(
        (normal_kl(&t(0.0), &t(0.0), &t(0.0), &t(4f64.ln())).double_value(&[]) - want).abs()
            < 1e-12
    );
}

#[test]
fn discretised_decoder_is_a_distribution_over_the_256_levels() {
    let levels = Tensor::arange(256, (Kind::Double, Device::Cpu)) * (2.0 / 255.0) - 1.0;
    for (mean, log_scale) in [(0.0, -1.0), (0.7, -3.0), (-0.99, -0.5), (0.2, -6.0)] {
        let lp = discretized_gaussian_log_likelihood(
            &levels,
            &Tensor::from(mean),
            &Tensor::from(log_scale),
        );
        let total = lp.exp().sum(Kind::Double).double_value(&[]);
        // The tanh CDF approximation is within 1e-3 of the true CDF.
        assert!(
            (total - 1.0).abs() < 2e-3,
            "mean {mean}, log scale {log_scale}: mass {total}"
        );
    }
    // A narrow Gaussian on a level puts nearly all mass on that level.
    let x = Tensor::from(2.0 * 100.0 / 255.0 - 1.0);
    let lp = discretized_gaussian_log_likelihood(&x, &x, &Tensor::from(-8.0)).double_value(&[]);
    assert!(lp > -1e-6, "{lp}");
}
