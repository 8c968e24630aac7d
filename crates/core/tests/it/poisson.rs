//! Count diffusion: schedules, forward marginals against their closed forms (Monte Carlo, within
//! 5 standard errors), the exact posterior steps, the binomial-to-Poisson KL against a direct
//! sum, the losses, the samplers with an oracle and the earth mover's distance.

use diffuse_core::poisson::emd::{marginal_emd, wasserstein1};
use diffuse_core::poisson::likelihood::{binomial_poisson_kl, bits_per_dim, nll_bound};
use diffuse_core::poisson::sample::{inpaint, reverse_step, sample};
use diffuse_core::poisson::schedule::{alphas, sampling_timesteps, solve_beta_end};
use diffuse_core::poisson::{
    poisson_kl, AlphaSchedule, FnCountDenoiser, JumpConfig, JumpPrediction, JumpProcess,
    JumpSampler, Thinning,
};
use tch::{Device, Kind, Tensor};

fn process(thinning: Thinning, prediction: JumpPrediction, mean: f64) -> JumpProcess {
    JumpProcess::new(JumpConfig {
        thinning,
        num_train_timesteps: 100,
        prediction,
        signal_mean: mean,
        scale: 10.0,
        ..Default::default()
    })
    .unwrap()
}

fn mean_var(x: &Tensor) -> (f64, f64) {
    let x = x.to_kind(Kind::Double);
    (
        x.mean(Kind::Double).double_value(&[]),
        x.var(true).double_value(&[]),
    )
}

/// |observed - expected| within 5 standard errors of a mean of `n` draws with variance `var`.
fn assert_close_mean(observed: f64, expected: f64, var: f64, n: f64, what: &str) {
    let se = (var / n).sqrt().max(1e-12);
    assert!(
        (observed - expected).abs() <= 5.0 * se,
        "{what}: {observed} vs {expected} (5 se = {})",
        5.0 * se
    );
}

/// The sample variance of n draws has standard error about var * sqrt(2 / (n - 1)) (plus the
/// excess kurtosis, small for these counts); allow 6 of them.
fn assert_close_var(observed: f64, expected: f64, n: f64, what: &str) {
    let se = expected * (2.0 / (n - 1.0)).sqrt() * 1.5;
    assert!(
        (observed - expected).abs() <= 6.0 * se + 1e-12,
        "{what}: {observed} vs {expected}"
    );
}

#[test]
fn schedules_hit_their_log_snr_endpoints_and_fall_monotonically() {
    for schedule in [
        AlphaSchedule::BetaLinear,
        AlphaSchedule::LogLinear,
        AlphaSchedule::Cosine,
    ] {
        for thinning in [Thinning::Binomial, Thinning::Poisson] {
            let p = JumpProcess::new(JumpConfig {
                thinning,
                alpha_schedule: schedule,
                signal_mean: 33.3,
                ..Default::default()
            })
            .unwrap();
            let a = p.alphas();
            assert_eq!(a.len(), 1001);
            assert_eq!(a[0], 1.0);
            assert!(
                a.windows(2).all(|w| w[1] < w[0]),
                "{schedule:?} not decreasing"
            );
            let lambda = p.lambda();
            match thinning {
                Thinning::Binomial => assert_eq!(lambda, 1.0),
                // log(lambda m) = logsnr_start = 10.
                Thinning::Poisson => assert!(((lambda * 33.3).ln() - 10.0).abs() < 1e-12),
            }
            // log(lambda alpha_T m) = logsnr_end = -12.
            let end = (lambda * a[1000] * 33.3).ln();
            assert!((end + 12.0).abs() < 1e-9, "{schedule:?}: log-SNR end {end}");
        }
    }
    // The bisection's beta_end reproduces alpha_T through the exact product.
    let beta_end = solve_beta_end(1000, 1e-3, 1e-7).unwrap();
    let a = alphas(AlphaSchedule::BetaLinear, 1000, 1e-7, 1e-3).unwrap();
    assert!((a[1000].ln() - 1e-7f64.ln()).abs() < 1e-9);
    assert!(beta_end > 1e-3 && beta_end < 1.0, "{beta_end}");
    assert!(alphas(AlphaSchedule::Cosine, 10, 1.5, 0.0).is_err());
    assert!(solve_beta_end(10, 0.9, 0.9).is_err());
}

#[test]
fn sampling_timesteps_are_even_and_start_at_t() {
    assert_eq!(
        sampling_timesteps(10, 10).unwrap(),
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        sampling_timesteps(1000, 4).unwrap(),
        vec![1000, 750, 500, 250]
    );
    assert!(sampling_timesteps(10, 0).is_err());
    assert!(sampling_timesteps(10, 11).is_err());
}

#[test]
fn forward_marginals_match_their_closed_forms() {
    let _rng = crate::rng_lock();
    tch::manual_seed(0);
    let n = 200_000i64;
    for (thinning, lambda) in [(Thinning::Binomial, 1.0), (Thinning::Poisson, 3.5)] {
        let p = JumpProcess::new(JumpConfig {
            thinning,
            num_train_timesteps: 50,
            lambda: Some(lambda),
            signal_mean: 7.0,
            ..Default::default()
        })
        .unwrap();
        for (x0, t) in [(7.0, 1usize), (7.0, 20), (40.0, 35), (3.0, 30)] {
            let data = Tensor::full([n, 1], x0, (Kind::Float, Device::Cpu));
            let z = p.q_sample(&data, &vec![t; n as usize]);
            let a = p.alphas()[t];
            let (mean, var) = mean_var(&z);
            let (m, v) = match thinning {
                Thinning::Binomial => (a * x0, a * (1.0 - a) * x0),
                Thinning::Poisson => (lambda * a * x0, lambda * a * x0),
            };
            let what = format!("{thinning:?} x0={x0} t={t}");
            assert_close_mean(mean, m, v, n as f64, &what);
            assert_close_var(var, v, n as f64, &what);
            // Counts are whole numbers and never exceed x_0 under binomial thinning.
            let zf = z.to_kind(Kind::Double);
            assert!((&zf - zf.round()).abs().max().double_value(&[]) == 0.0);
            if thinning == Thinning::Binomial {
                assert!(zf.max().double_value(&[]) <= x0);
            }
        }
    }
}

#[test]
fn the_exact_posterior_step_carries_q_t_to_q_s() {
    let _rng = crate::rng_lock();
    // z_t ~ q(z_t | x_0), then one reverse step with the true x_0 to s: z_s ~ q(z_s | x_0).
    tch::manual_seed(1);
    let n = 200_000i64;
    for (thinning, sampler) in [
        (Thinning::Binomial, JumpSampler::Blackout),
        (Thinning::Poisson, JumpSampler::Thickening),
    ] {
        let p = JumpProcess::new(JumpConfig {
            thinning,
            num_train_timesteps: 40,
            lambda: Some(2.0),
            signal_mean: 12.0,
            ..Default::default()
        })
        .unwrap();
        let x0 = Tensor::full([n, 1], 12.0, (Kind::Float, Device::Cpu));
        for (t, s) in [(40usize, 0usize), (30, 10), (5, 4)] {
            let z_t = p.q_sample(&x0, &vec![t; n as usize]);
            let z_s = reverse_step(&p, sampler, &z_t, &x0, t, s);
            let a = p.alphas()[s];
            let (m, v) = match thinning {
                Thinning::Binomial => (a * 12.0, a * (1.0 - a) * 12.0),
                Thinning::Poisson => (2.0 * a * 12.0, 2.0 * a * 12.0),
            };
            let (mean, var) = mean_var(&z_s);
            let what = format!("{thinning:?} {t}->{s}");
            assert_close_mean(mean, m, v.max(1e-9), n as f64, &what);
            if v > 0.0 {
                assert_close_var(var, v, n as f64, &what);
            } else {
                assert_eq!(var, 0.0, "{what}: z_0 must equal x_0");
            }
            // Thickening never removes counts.
            assert!(z_s.ge_tensor(&z_t).all().int64_value(&[]) == 1);
        }
    }
}

/// log Binomial(k; n, r) by the formula, for the direct sum.
fn log_binom(k: u32, n: u32, r: f64) -> f64 {
    let lg = |x: f64| Tensor::from_slice(&[x]).lgamma().double_value(&[0]);
    let (kf, nf) = (k as f64, n as f64);
    let mut out = lg(nf + 1.0) - lg(kf + 1.0) - lg(nf - kf + 1.0);
    if k > 0 {
        out += kf * r.ln();
    }
    if k < n {
        out += (nf - kf) * (1.0 - r).ln();
    }
    out
}

#[test]
fn binomial_to_poisson_kl_equals_the_direct_sum() {
    let cases = [
        (0u32, 0.3, 0.5),
        (1, 0.5, 0.5),
        (7, 0.2, 1.3),
        (40, 0.05, 2.0),
        (255, 0.7, 180.0),
        (12, 1.0, 12.0),
        (12, 1.0, 3.0),
        (9, 0.0, 0.25),
    ];
    for (n, r, mu) in cases {
        let mut direct = 0.0;
        for k in 0..=n {
            if (r == 0.0 && k > 0) || (r == 1.0 && k < n) {
                continue;
            }
            let lb = log_binom(k, n, r);
            let lp = k as f64 * f64::ln(mu)
                - mu
                - Tensor::from_slice(&[k as f64 + 1.0])
                    .lgamma()
                    .double_value(&[0]);
            direct += lb.exp() * (lb - lp);
        }
        let kl = binomial_poisson_kl(
            &Tensor::from_slice(&[n as f64]),
            &Tensor::from_slice(&[r]),
            &Tensor::from_slice(&[mu]),
        )
        .double_value(&[0]);
        assert!(
            (kl - direct).abs() < 1e-9 * direct.abs().max(1.0),
            "n={n} r={r} mu={mu}: {kl} vs {direct}"
        );
        assert!(kl >= -1e-12);
    }
}

#[test]
fn binomial_to_poisson_kl_of_large_counts_matches_the_full_sum() {
    // Windowed sums (sd ~ 65) and the moment expansion (sd ~ 490 and ~ 2200) against the sum
    // over the whole support, computed here in one vectorised pass.
    for (n, r, mu) in [
        (20_000i64, 0.3f64, 6_000.0f64),
        (1_000_000, 0.4, 4.1e5),
        (20_000_000, 0.5, 1.0e7),
    ] {
        let k = Tensor::arange(n + 1, (Kind::Double, tch::Device::Cpu));
        let nf = n as f64;
        let lb = Tensor::from_slice(&[nf + 1.0]).lgamma()
            - (&k + 1.0).lgamma()
            - (-&k + nf + 1.0).lgamma()
            + &k * r.ln()
            + (-&k + nf) * (1.0 - r).ln();
        let lp = &k * mu.ln() - mu - (&k + 1.0).lgamma();
        let direct = (lb.exp() * (&lb - lp)).sum(Kind::Double).double_value(&[]);
        let kl = binomial_poisson_kl(
            &Tensor::from_slice(&[nf]),
            &Tensor::from_slice(&[r]),
            &Tensor::from_slice(&[mu]),
        )
        .double_value(&[0]);
        // lgamma(n + 1) ~ n log n: f64 leaves ~1e-16 of it in the difference.
        let tolerance = 1e-9 * direct.abs().max(1.0) + 4e-16 * nf * nf.ln();
        assert!(
            (kl - direct).abs() < tolerance,
            "n={n} r={r} mu={mu}: {kl} vs {direct}"
        );
    }
}

#[test]
fn poisson_kl_is_zero_at_the_truth_and_positive_elsewhere() {
    let a = Tensor::from_slice(&[0.0, 0.5, 3.0, 100.0]);
    assert!(poisson_kl(&a, &a).abs().max().double_value(&[]) < 1e-9);
    let b = Tensor::from_slice(&[0.2, 0.7, 2.0, 90.0]);
    let kl = poisson_kl(&a, &b);
    assert!(kl.min().double_value(&[]) > 0.0);
    // KL(Poisson(0) || Poisson(0.2)) = 0.2.
    assert!((kl.double_value(&[0]) - 0.2).abs() < 1e-12);
}

/// A network that knows the data is the constant `c`: its output means x_0 = c under
/// [`JumpPrediction::X0`] with Poisson thinning (softplus^-1(c / scale)).
fn oracle(c: f64, scale: f64) -> FnCountDenoiser<impl Fn(&Tensor, &Tensor) -> Tensor> {
    let logit = ((c / scale).exp() - 1.0).ln();
    FnCountDenoiser {
        f: move |x: &Tensor, _t: &Tensor| x.full_like(logit),
    }
}

#[test]
fn the_loss_vanishes_for_a_perfect_prediction_and_grows_with_error() {
    let _rng = crate::rng_lock();
    tch::manual_seed(2);
    let p = process(Thinning::Poisson, JumpPrediction::X0, 5.0);
    let x0 = Tensor::full([256, 4], 5.0, (Kind::Float, Device::Cpu));
    let perfect = p.loss(&oracle(5.0, 10.0), &x0).double_value(&[]);
    let wrong = p.loss(&oracle(8.0, 10.0), &x0).double_value(&[]);
    assert!(perfect.abs() < 1e-4, "{perfect}");
    assert!(wrong > 0.01, "{wrong}");
    // Gradients reach the network's output.
    let w = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let model = FnCountDenoiser {
        f: |x: &Tensor, _t: &Tensor| x * 0.0 + &w,
    };
    p.loss(&model, &x0).backward();
    assert!(w.grad().abs().double_value(&[0]) > 0.0);
}

#[test]
fn an_oracle_generates_the_constant_it_knows() {
    let _rng = crate::rng_lock();
    tch::manual_seed(3);
    // Poisson thinning: z_0 / lambda ~ Poisson(lambda c) / lambda, mean c, variance c / lambda.
    let p = process(Thinning::Poisson, JumpPrediction::X0, 6.0);
    let out = sample(
        &p,
        &oracle(6.0, 10.0),
        &[20_000, 1],
        25,
        JumpSampler::Thickening,
        Device::Cpu,
        |_, _| {},
    )
    .unwrap();
    let (mean, var) = mean_var(&out);
    assert_close_mean(mean, 6.0, 6.0 / p.lambda(), 20_000.0, "poisson oracle mean");
    assert_close_var(var, 6.0 / p.lambda(), 20_000.0, "poisson oracle variance");
    // Binomial thinning, deaths parameterisation: the oracle predicts c - z_t deaths
    // (softplus^-1((c - z) / scale) from the clamped input is not available, so it reads z back
    // from the input: input = z / (alpha scale)). With the binomial bridge, every run ends at c.
    let p = JumpProcess::new(JumpConfig {
        thinning: Thinning::Binomial,
        num_train_timesteps: 50,
        prediction: JumpPrediction::Deaths,
        signal_mean: 9.0,
        scale: 1.0,
        input_clip: 1e9,
        ..Default::default()
    })
    .unwrap();
    let alphas = p.alphas().to_vec();
    let model = FnCountDenoiser {
        f: move |input: &Tensor, t: &Tensor| {
            let t = t.int64_value(&[0]) as usize + 1;
            let z: Tensor = (input * alphas[t]).round();
            let deaths = (-&z + 9.0).clamp_min(1e-6);
            (deaths.exp() - 1.0).clamp_min(1e-30).log()
        },
    };
    for steps in [50, 7] {
        let out = sample(
            &p,
            &model,
            &[500, 1],
            steps,
            JumpSampler::Blackout,
            Device::Cpu,
            |_, _| {},
        )
        .unwrap();
        let off = (out - 9.0).abs().max().double_value(&[]);
        assert!(
            off < 1e-3,
            "blackout oracle in {steps} steps ends {off} away from 9"
        );
    }
}

#[test]
fn inpainting_keeps_the_known_counts_exactly() {
    let _rng = crate::rng_lock();
    tch::manual_seed(4);
    let p = JumpProcess::new(JumpConfig {
        thinning: Thinning::Binomial,
        num_train_timesteps: 30,
        signal_mean: 4.0,
        scale: 4.0,
        ..Default::default()
    })
    .unwrap();
    let model = FnCountDenoiser {
        f: |x: &Tensor, _t: &Tensor| x.zeros_like(),
    };
    let known = Tensor::from_slice(&[3.0f32, 0.0, 17.0, 5.0, 2.0, 8.0]).reshape([2, 3]);
    let mask = Tensor::from_slice(&[1.0f32, 1.0, 0.0]).reshape([1, 3]);
    for sampler in [JumpSampler::Thickening, JumpSampler::Blackout] {
        let out = inpaint(&p, &model, &known, &mask, 30, sampler, |_, _| {}).unwrap();
        let kept = out.narrow(1, 0, 2);
        assert!(kept.equal(&known.narrow(1, 0, 2)), "{sampler:?}: {kept}");
        assert!(out.narrow(1, 2, 1).min().double_value(&[]) >= 0.0);
    }
    // Non-integer known data under binomial thinning is refused.
    let bad = Tensor::from_slice(&[0.5f32, 1.0, 2.0]).reshape([1, 3]);
    assert!(inpaint(
        &p,
        &model,
        &bad,
        &mask,
        30,
        JumpSampler::Thickening,
        |_, _| {}
    )
    .is_err());
}

#[test]
fn the_bound_is_small_for_an_oracle_and_refused_for_poisson_thinning() {
    let _rng = crate::rng_lock();
    tch::manual_seed(5);
    // Constant data c = 6: the true NLL is 0. The oracle model (x_0_hat = c exactly) pays only
    // for Poisson steps standing in for binomial ones and for the prior.
    let p = JumpProcess::new(JumpConfig {
        thinning: Thinning::Binomial,
        num_train_timesteps: 200,
        prediction: JumpPrediction::Deaths,
        signal_mean: 6.0,
        scale: 1.0,
        input_clip: 1e9,
        ..Default::default()
    })
    .unwrap();
    let alphas = p.alphas().to_vec();
    let exact = FnCountDenoiser {
        f: move |input: &Tensor, t: &Tensor| {
            let t = t.int64_value(&[0]) as usize + 1;
            let z: Tensor = (input * alphas[t]).round();
            let deaths = (-&z + 6.0).clamp_min(1e-6);
            (deaths.exp() - 1.0).clamp_min(1e-30).log()
        },
    };
    let x0 = Tensor::full([64, 3], 6.0, (Kind::Float, Device::Cpu));
    let bpd = bits_per_dim(&p, &exact, &x0, |_| {}).unwrap();
    let mean = bpd.mean(Kind::Double).double_value(&[]);
    assert!(mean > 0.0 && mean < 1.5, "oracle bound {mean} bits/dim");
    // A model that predicts twice the truth pays more.
    let alphas = p.alphas().to_vec();
    let wrong = FnCountDenoiser {
        f: move |input: &Tensor, t: &Tensor| {
            let t = t.int64_value(&[0]) as usize + 1;
            let z: Tensor = (input * alphas[t]).round();
            let deaths = (-&z + 12.0).clamp_min(1e-6);
            (deaths.exp() - 1.0).clamp_min(1e-30).log()
        },
    };
    let worse = bits_per_dim(&p, &wrong, &x0, |_| {})
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(worse > mean + 0.5, "{worse} vs {mean}");
    let poisson = process(Thinning::Poisson, JumpPrediction::X0, 6.0);
    assert!(nll_bound(&poisson, &exact, &x0, |_| {}).is_err());
}

#[test]
fn earth_movers_distance_matches_known_values() {
    assert_eq!(
        wasserstein1(&[1.0, 2.0, 3.0], &[101.0, 102.0, 103.0]),
        100.0
    );
    assert!((wasserstein1(&[1.0, 2.0, 3.0], &[1.0, 4.0, 9.0]) - 8.0 / 3.0).abs() < 1e-12);
    assert_eq!(wasserstein1(&[0.0, 0.0, 5.0], &[5.0, 0.0, 0.0]), 0.0);
    // Different sizes: {0, 1} vs {0, 0, 0, 3}: integral of |F - G| = 0.25 * 1 + 0.25 * 2 = 0.75.
    assert!((wasserstein1(&[0.0, 1.0], &[0.0, 0.0, 0.0, 3.0]) - 0.75).abs() < 1e-12);
    let a = Tensor::from_slice(&[0.0f32, 10.0, 1.0, 10.0]).reshape([2, 2]);
    let b = Tensor::from_slice(&[0.0f32, 12.0, 1.0, 12.0, 0.0, 12.0]).reshape([3, 2]);
    let emd = marginal_emd(&a, &b);
    assert!((emd[0] - 1.0 / 6.0).abs() < 1e-12, "{emd:?}");
    assert!((emd[1] - 2.0).abs() < 1e-12, "{emd:?}");
}

#[test]
fn bad_configurations_are_refused_with_the_flag_named() {
    let err = |c: JumpConfig| JumpProcess::new(c).unwrap_err().to_string();
    assert!(err(JumpConfig {
        thinning: Thinning::Poisson,
        prediction: JumpPrediction::Deaths,
        ..Default::default()
    })
    .contains("deaths"));
    assert!(err(JumpConfig {
        scale: 0.0,
        ..Default::default()
    })
    .contains("--scale"));
    assert!(err(JumpConfig {
        logsnr_end: 5.0,
        ..Default::default()
    })
    .contains("--logsnr-end"));
    assert!(err(JumpConfig {
        num_train_timesteps: 0,
        ..Default::default()
    })
    .contains("--num-train-timesteps"));
    let p = process(Thinning::Binomial, JumpPrediction::X0, 1.0);
    assert!(p.check_data(&Tensor::from_slice(&[1.0f32, -1.0])).is_err());
    assert!(p.check_data(&Tensor::from_slice(&[1.0f32, 0.5])).is_err());
    assert!(p
        .check_data(&Tensor::from_slice(&[1.0f32, f32::NAN]))
        .is_err());
    assert!(JumpSampler::Blackout
        .check(&process(Thinning::Poisson, JumpPrediction::X0, 1.0))
        .is_err());
}
