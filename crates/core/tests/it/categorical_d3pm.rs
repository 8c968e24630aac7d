//! D3PM against brute force: q(x_t | x_0), the true and model posteriors (one-step and
//! multi-step) from explicit products of K x K transition matrices; the bound's terms computed in
//! slices equal those of the whole batch; the full bound under the exact denoiser of i.i.d. tokens
//! equals their entropy; sampler options and bad input.

use diffuse_core::categorical::d3pm::{BetaSchedule, D3pm, D3pmConfig, ModelPosterior, Transition};
use diffuse_core::categorical::{FnTokenDenoiser, SampleOptions};
use diffuse_core::Error;
use tch::{Device, Kind, Tensor};

type Matrix = Vec<Vec<f64>>;

fn identity(k: usize) -> Matrix {
    (0..k)
        .map(|i| (0..k).map(|j| (i == j) as u8 as f64).collect())
        .collect()
}

fn matmul(a: &Matrix, b: &Matrix) -> Matrix {
    let k = a.len();
    (0..k)
        .map(|i| {
            (0..k)
                .map(|j| (0..k).map(|l| a[i][l] * b[l][j]).sum())
                .collect()
        })
        .collect()
}

/// Q_t = (1 - beta) I + beta 1 e^T, row-stochastic.
fn one_step(d: &D3pm, t: usize) -> Matrix {
    let k = d.num_states() as usize;
    let beta = d.betas()[t - 1];
    let e: Vec<f64> = match d.mask_id() {
        None => vec![1.0 / k as f64; k],
        Some(m) => (0..k).map(|j| (j == m as usize) as u8 as f64).collect(),
    };
    (0..k)
        .map(|i| {
            (0..k)
                .map(|j| (1.0 - beta) * (i == j) as u8 as f64 + beta * e[j])
                .collect()
        })
        .collect()
}

/// Q_{s+1} ... Q_t.
fn product(d: &D3pm, s: usize, t: usize) -> Matrix {
    let mut m = identity(d.num_states() as usize);
    for r in s + 1..=t {
        m = matmul(&m, &one_step(d, r));
    }
    m
}

fn processes() -> Vec<D3pm> {
    let v = 4;
    let t = 8;
    let mut out = Vec::new();
    for (transition, schedule) in [
        (Transition::Uniform, BetaSchedule::Cosine),
        (
            Transition::Uniform,
            BetaSchedule::Linear {
                start: 0.02,
                end: 0.3,
            },
        ),
        (Transition::Absorbing, BetaSchedule::MutualInformation),
        (Transition::Absorbing, BetaSchedule::Cosine),
    ] {
        for model_posterior in [ModelPosterior::Mixture, ModelPosterior::Product] {
            out.push(
                D3pm::new(D3pmConfig {
                    transition,
                    schedule,
                    num_timesteps: t,
                    vocab_size: v,
                    hybrid_lambda: 0.01,
                    model_posterior,
                })
                .unwrap(),
            );
        }
    }
    out
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let k = t.size()[2];
    Vec::<Vec<f64>>::try_from(t.to_kind(Kind::Double).reshape([-1, k])).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < tol, "{what}: got {got:?}, want {want:?}");
    }
}

#[test]
fn schedules_match_their_closed_forms() {
    let d = D3pm::new(D3pmConfig::absorbing(5, 10)).unwrap();
    // Mutual information: abar_t = 1 - t/T, everything masked at T.
    for (t, a) in d.alpha_bars().iter().enumerate() {
        assert!((a - (1.0 - t as f64 / 10.0)).abs() < 1e-12);
    }
    let u = D3pm::new(D3pmConfig::uniform(5, 1000)).unwrap();
    let abar = |t: f64| ((t / 1000.0 + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
    assert!((u.alpha_bars()[500] - abar(500.0) / abar(0.0)).abs() < 1e-12);
    assert!(u.betas().iter().all(|&b| b <= 0.999));
}

#[test]
fn marginals_and_posteriors_match_explicit_matrix_products() {
    for d in processes() {
        let (v, k) = (d.config().vocab_size, d.num_states());
        let x0 = Tensor::arange(v, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        for t in 1..=d.num_timesteps() {
            let qbar_t = product(&d, 0, t);
            let got = rows(&d.q_probs(&x0, t).unwrap());
            for x in 0..v as usize {
                assert_close(&got[x], &qbar_t[x], 1e-12, &format!("q(x_{t} | x_0 = {x})"));
            }
            for s in 0..t {
                let qbar_s = product(&d, 0, s);
                let q_ts = product(&d, s, t);
                // Every reachable (x_0, x_t) pair, one per position.
                let pairs: Vec<(i64, i64)> = (0..v)
                    .flat_map(|a| (0..k).map(move |b| (a, b)))
                    .filter(|&(a, b)| qbar_t[a as usize][b as usize] > 1e-12)
                    .collect();
                let x0s =
                    Tensor::from_slice(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()).unsqueeze(0);
                let xts =
                    Tensor::from_slice(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()).unsqueeze(0);
                let got = rows(&d.q_posterior(&xts, &x0s, t, s).unwrap());
                let brute = |a: usize, b: usize| -> Vec<f64> {
                    let un: Vec<f64> = (0..k as usize)
                        .map(|j| q_ts[j][b] * qbar_s[a][j] / qbar_t[a][b])
                        .collect();
                    let z: f64 = un.iter().sum();
                    un.iter().map(|u| u / z).collect()
                };
                for (i, &(a, b)) in pairs.iter().enumerate() {
                    let want = brute(a as usize, b as usize);
                    assert_close(
                        &got[i],
                        &want,
                        1e-9,
                        &format!("q(x_{s} | x_{t}={b}, x_0={a})"),
                    );
                }

                // The model posterior from an arbitrary p~(x_0 | x_t) (zero on [MASK]).
                let p =
                    Tensor::rand([1, pairs.len() as i64, k], (Kind::Double, Device::Cpu)) + 0.05;
                if let Some(m) = d.mask_id() {
                    let _ = p.narrow(2, m, 1).fill_(0.0);
                }
                let p = &p / p.sum_dim_intlist(-1, true, Kind::Double);
                let pr = rows(&p);
                let got = rows(&d.model_posterior(&xts, &p, t, s).unwrap());
                for (i, &(_, b)) in pairs.iter().enumerate() {
                    let b = b as usize;
                    let consistent: Vec<usize> =
                        (0..v as usize).filter(|&a| qbar_t[a][b] > 1e-12).collect();
                    let want: Vec<f64> = match d.config().model_posterior {
                        ModelPosterior::Mixture => {
                            let z: f64 = consistent.iter().map(|&a| pr[i][a]).sum();
                            (0..k as usize)
                                .map(|j| {
                                    consistent
                                        .iter()
                                        .map(|&a| pr[i][a] * brute(a, b)[j])
                                        .sum::<f64>()
                                        / z
                                })
                                .collect()
                        }
                        ModelPosterior::Product if s == 0 => {
                            if d.mask_id().is_some_and(|m| b != m as usize) {
                                continue;
                            }
                            pr[i].clone()
                        }
                        ModelPosterior::Product => {
                            let un: Vec<f64> = (0..k as usize)
                                .map(|j| {
                                    q_ts[j][b]
                                        * (0..v as usize)
                                            .map(|a| pr[i][a] * qbar_s[a][j])
                                            .sum::<f64>()
                                })
                                .collect();
                            let z: f64 = un.iter().sum();
                            un.iter().map(|u| u / z).collect()
                        }
                    };
                    assert_close(&got[i], &want, 1e-9, &format!("p(x_{s} | x_{t}={b})"));
                }
            }
        }
    }
}

const MARGINAL: [f64; 3] = [0.5, 0.3, 0.2];

fn entropy() -> f64 {
    -MARGINAL.iter().map(|p| p * p.ln()).sum::<f64>()
}

/// The exact p(x_0 | x_t) of i.i.d. tokens with [`MARGINAL`]: p(x_0) q(x_t | x_0), normalised;
/// the absorbing case is the marginal itself at masked positions.
fn exact_denoiser(d: &D3pm, x_t: &Tensor, cond: &Tensor) -> Tensor {
    let k = d.num_states();
    let t = cond.double_value(&[0]).round() as usize;
    let abar = d.alpha_bars()[t];
    let mut prior = MARGINAL.to_vec();
    prior.resize(k as usize, 0.0);
    let log_prior = Tensor::from_slice(&prior).log().view([1, 1, k]);
    match d.mask_id() {
        Some(_) => log_prior.expand([x_t.size()[0], x_t.size()[1], k], false),
        None => {
            let like = x_t.one_hot(k).to_kind(Kind::Double) * abar + (1.0 - abar) / k as f64;
            log_prior + like.log()
        }
    }
}

#[test]
fn full_bound_of_iid_tokens_under_the_exact_denoiser_is_their_entropy() {
    let _rng = crate::rng_lock();
    tch::manual_seed(5);
    for config in [D3pmConfig::absorbing(3, 40), D3pmConfig::uniform(3, 40)] {
        let d = D3pm::new(config).unwrap();
        let model = FnTokenDenoiser::new(|x: &Tensor, c: &Tensor| exact_denoiser(&d, x, c));
        let n = 2000;
        let data = Tensor::multinomial(&Tensor::from_slice(&MARGINAL), n * 4, true).reshape([n, 4]);
        let mut calls = 0;
        let est = d
            .nll_bound(&model, &data, 1000, |done, _| calls = done)
            .unwrap();
        assert_eq!(calls, 2 * 40);
        let h = entropy();
        assert!(
            (est.nats_per_token - h).abs() < (4.0 * est.std_error).max(0.01 * h),
            "{:?}: bound {} nats/token (se {}), entropy {h}",
            d.config().transition,
            est.nats_per_token,
            est.std_error
        );
        assert!((est.bits_per_token - est.nats_per_token / std::f64::consts::LN_2).abs() < 1e-12);
    }
}

#[test]
fn bound_terms_in_slices_equal_the_terms_of_the_whole_batch() {
    let _rng = crate::rng_lock();
    tch::manual_seed(8);
    for d in processes() {
        let (v, k) = (d.config().vocab_size, d.num_states());
        let (b, len) = (3, 6);
        let t = [1, 4, d.num_timesteps()];
        let x0 = Tensor::randint(v, [b, len], (Kind::Int64, Device::Cpu));
        let x_t = d.q_sample(&x0, &t).unwrap();
        let logits = Tensor::randn([b, len, k], (Kind::Float, Device::Cpu)) * 2.0;
        // Unsliced, from the public posteriors, one sequence at a time (each has its own t).
        let want: Vec<f64> = (0..b)
            .map(|i| {
                let (x0, x_t, logits) = (
                    x0.narrow(0, i, 1),
                    x_t.narrow(0, i, 1),
                    logits.narrow(0, i, 1).to_kind(Kind::Double),
                );
                let p_x0 = d.x0_probs(&logits, &x_t).unwrap();
                let ti = t[i as usize];
                let term = if ti == 1 {
                    -p_x0
                        .gather(-1, &x0.unsqueeze(-1), false)
                        .clamp_min(1e-30)
                        .log()
                        .sum(Kind::Double)
                } else {
                    let q = d.q_posterior(&x_t, &x0, ti, ti - 1).unwrap();
                    let p = d.model_posterior(&x_t, &p_x0, ti, ti - 1).unwrap();
                    (&q * (q.clamp_min(1e-30).log() - p.clamp_min(1e-30).log())).sum(Kind::Double)
                };
                term.double_value(&[])
            })
            .collect();
        // One position per slice, a few per slice, everything in one.
        for max_elements in [1, 5 * k, 1 << 30] {
            let got = d
                .bound_terms_chunked(&logits, &x0, &x_t, &t, max_elements)
                .unwrap();
            assert_eq!(got.kind(), Kind::Double);
            let got = Vec::<f64>::try_from(got).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                    "{:?} {:?}, slices of {max_elements}: got {got:?}, want {want:?}",
                    d.config().transition,
                    d.config().model_posterior,
                );
            }
        }
        // A small vocabulary's batch is one slice by default.
        let default = d.bound_terms(&logits, &x0, &x_t, &t).unwrap();
        let whole = d
            .bound_terms_chunked(&logits, &x0, &x_t, &t, 1 << 30)
            .unwrap();
        assert!(default.equal(&whole));
    }
}

#[test]
fn hybrid_loss_is_finite_and_its_bound_estimate_is_unbiased_in_scale() {
    let _rng = crate::rng_lock();
    tch::manual_seed(6);
    let d = D3pm::new(D3pmConfig::absorbing(3, 40)).unwrap();
    let model = FnTokenDenoiser::new(|x: &Tensor, c: &Tensor| exact_denoiser(&d, x, c));
    let x0 = Tensor::multinomial(&Tensor::from_slice(&MARGINAL), 4000, true).reshape([1000, 4]);
    let loss = d.loss(&model, &x0).unwrap();
    let (l, vlb, ce) = (
        loss.loss.double_value(&[]),
        loss.vlb.double_value(&[]),
        loss.ce.double_value(&[]),
    );
    assert!(l.is_finite() && vlb.is_finite() && ce.is_finite());
    // T L_{t-1} at uniform t estimates the whole bound (the entropy here) within noise.
    assert!((vlb - entropy()).abs() < 0.15, "vlb estimate {vlb}");
    // Cross-entropy of masked tokens (about half of them) against the marginal.
    assert!(ce > 0.2 * entropy() && ce < 0.8 * entropy(), "ce {ce}");
}

#[test]
fn tiny_top_p_samples_the_argmax_and_infilling_keeps_fixed_tokens() {
    let _rng = crate::rng_lock();
    tch::manual_seed(7);
    for config in [D3pmConfig::absorbing(5, 20), D3pmConfig::uniform(5, 20)] {
        let d = D3pm::new(config).unwrap();
        let k = d.num_states();
        // Position l prefers token (l mod 5) strongly, but every token has some mass.
        let model = FnTokenDenoiser::new(move |x: &Tensor, _c: &Tensor| {
            let len = x.size()[1];
            let best = Tensor::arange(len, (Kind::Int64, Device::Cpu)).remainder(5);
            (best.one_hot(k).to_kind(Kind::Float) * 2.0)
                .unsqueeze(0)
                .expand([x.size()[0], len, k], false)
        });
        let options = SampleOptions {
            steps: 20,
            top_p: 1e-6,
            ..Default::default()
        };
        let out = d
            .sample(&model, 16, 7, Device::Cpu, &options, |_, _| {})
            .unwrap();
        let want = Tensor::arange(7, (Kind::Int64, Device::Cpu))
            .remainder(5)
            .unsqueeze(0)
            .expand([16, 7], false);
        assert!(out.tokens.equal(&want), "{:?}", d.config().transition);
        assert_eq!(out.model_calls, 20);

        // Infilling with plain sampling: the given tokens survive exactly.
        let tokens = Tensor::full([16, 7], 4, (Kind::Int64, Device::Cpu));
        let fixed = Tensor::from_slice(&[true, true, false, false, true, false, true])
            .unsqueeze(0)
            .expand([16, 7], false)
            .contiguous();
        let mut seen = Vec::new();
        let out = d
            .infill(
                &model,
                &tokens,
                &fixed,
                &SampleOptions {
                    steps: 10,
                    ..Default::default()
                },
                |done, total| seen.push((done, total)),
            )
            .unwrap();
        assert_eq!(seen.last(), Some(&(10, 10)));
        assert!(
            out.tokens
                .masked_select(&fixed)
                .eq(4)
                .all()
                .int64_value(&[])
                == 1
        );
        assert!(
            out.tokens.lt(5).all().int64_value(&[]) == 1,
            "no [MASK] left"
        );
    }
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::InvalidArgument(msg)) => assert!(!msg.is_empty()),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_input_is_an_invalid_argument() {
    let d = D3pm::new(D3pmConfig::absorbing(5, 10)).unwrap();
    let good = FnTokenDenoiser::new(|x: &Tensor, _c: &Tensor| {
        Tensor::zeros([x.size()[0], x.size()[1], 6], (Kind::Float, Device::Cpu))
    });
    // Logits over the data vocabulary only: the absorbing model must include [MASK].
    let narrow = FnTokenDenoiser::new(|x: &Tensor, _c: &Tensor| {
        Tensor::zeros([x.size()[0], x.size()[1], 5], (Kind::Float, Device::Cpu))
    });
    let opts = |steps, temperature, top_p| SampleOptions {
        steps,
        temperature,
        top_p,
        cache: true,
        ..Default::default()
    };
    let dev = Device::Cpu;
    is_invalid(
        d.sample(&narrow, 2, 3, dev, &opts(5, 1.0, 1.0), |_, _| {}),
        "vocab mismatch",
    );
    is_invalid(
        d.sample(&good, 2, 3, dev, &opts(11, 1.0, 1.0), |_, _| {}),
        "steps > T",
    );
    is_invalid(
        d.sample(&good, 2, 3, dev, &opts(0, 1.0, 1.0), |_, _| {}),
        "0 steps",
    );
    let confidence = SampleOptions {
        steps: 5,
        order: diffuse_core::categorical::UnmaskOrder::Confidence,
        ..Default::default()
    };
    is_invalid(
        d.sample(&good, 2, 3, dev, &confidence, |_, _| {}),
        "an unmasking order",
    );
    is_invalid(
        d.sample(&good, 2, 3, dev, &opts(5, 0.0, 1.0), |_, _| {}),
        "temperature 0",
    );
    is_invalid(
        d.sample(&good, 2, 3, dev, &opts(5, -1.0, 1.0), |_, _| {}),
        "temperature < 0",
    );
    is_invalid(
        d.sample(&good, 2, 3, dev, &opts(5, 1.0, 0.0), |_, _| {}),
        "top_p 0",
    );
    is_invalid(
        d.sample(&good, 2, 3, dev, &opts(5, 1.0, 1.5), |_, _| {}),
        "top_p > 1",
    );
    let tokens = Tensor::zeros([2, 3], (Kind::Int64, dev));
    let wrong = Tensor::zeros([2, 4], (Kind::Bool, dev));
    is_invalid(
        d.infill(&good, &tokens, &wrong, &opts(5, 1.0, 1.0), |_, _| {}),
        "infill mask shape",
    );
    let x0 = Tensor::zeros([2, 3], (Kind::Int64, dev));
    is_invalid(d.loss(&narrow, &x0), "loss with vocab mismatch");
    is_invalid(
        d.loss(&good, &x0.full_like(5)),
        "tokens beyond the vocabulary",
    );
    is_invalid(d.q_probs(&x0, 11), "t beyond T");
    is_invalid(d.q_posterior(&x0, &x0, 3, 3), "s = t");
    is_invalid(D3pm::new(D3pmConfig::absorbing(5, 0)), "T = 0");
}
