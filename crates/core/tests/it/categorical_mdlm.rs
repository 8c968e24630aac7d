//! MDLM: schedules against their closed forms, the NLL bound of a small known language under its
//! exact denoiser equals the language's entropy, the cache reproduces uncached sampling with fewer
//! calls, infilling, nucleus filtering, the ordered (confidence, left-to-right) samplers and bad
//! input.

use diffuse_core::categorical::mdlm::{MaskSchedule, Mdlm, MdlmConfig};
use diffuse_core::categorical::{bits_per_char, FnTokenDenoiser, SampleOptions, UnmaskOrder};
use diffuse_core::Error;
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

#[test]
fn schedules_match_their_closed_forms() {
    let schedules = [
        MaskSchedule::LogLinear { eps: 1e-3 },
        MaskSchedule::Linear {
            sigma_min: 0.0,
            sigma_max: 10.0,
        },
        MaskSchedule::Cosine { eps: 1e-3 },
    ];
    for s in schedules {
        assert!((s.alpha(0.0) - 1.0).abs() < 1e-15, "{s:?}");
        for t in [0.01, 0.3, 0.7, 0.99] {
            let h = 1e-6;
            let numeric = (s.alpha(t + h) - s.alpha(t - h)) / (2.0 * h);
            assert!(
                (s.alpha_derivative(t) - numeric).abs() < 1e-6,
                "{s:?} t={t}"
            );
            assert!((s.sigma(t) + s.alpha(t).ln()).abs() < 1e-12);
            assert!((s.weight(t) + s.alpha_derivative(t) / (1.0 - s.alpha(t))).abs() < 1e-6);
        }
    }
    let ll = MaskSchedule::default();
    assert_eq!(ll, MaskSchedule::LogLinear { eps: 1e-3 });
    assert!((ll.alpha(1.0) - 1e-3).abs() < 1e-15);
    // Log-linear: the ELBO weight is 1/t.
    assert!((ll.weight(0.25) - 4.0).abs() < 1e-12);
}

#[test]
fn antithetic_times_cover_every_stratum() {
    let _rng = crate::rng_lock();
    tch::manual_seed(1);
    let m = Mdlm::new(MdlmConfig::new(4)).unwrap();
    let t = m.sample_t(8);
    for (i, t) in t.iter().enumerate() {
        let u = (t - 1e-3) / (1.0 - 1e-3);
        assert!(
            u >= i as f64 / 8.0 - 1e-12 && u < (i + 1) as f64 / 8.0,
            "{t}"
        );
    }
}

/// A small language: these sequences with these probabilities.
const LANGUAGE: [[i64; 4]; 5] = [
    [0, 1, 2, 0],
    [0, 1, 1, 2],
    [2, 1, 0, 0],
    [1, 1, 1, 1],
    [0, 2, 2, 0],
];
const PROBS: [f64; 5] = [0.4, 0.2, 0.2, 0.1, 0.1];

/// The exact SUBS denoiser: the posterior over the language given the unmasked tokens, then each
/// masked position's marginal.
fn exact_logits(x_t: &Tensor) -> Tensor {
    let (v, mask) = (3, 3);
    let lang = Tensor::from_slice2(&LANGUAGE); // [N, L]
    let probs = Tensor::from_slice(&PROBS);
    let x = x_t.unsqueeze(1); // [B, 1, L]
    let agrees = x.eq(mask).logical_or(&x.eq_tensor(&lang.unsqueeze(0))); // [B, N, L]
    let consistent = agrees.all_dim(-1, false).to_kind(Kind::Double); // [B, N]
    let w = consistent * probs.unsqueeze(0);
    let w = &w / w.sum_dim_intlist(-1, true, Kind::Double);
    let onehot = lang.one_hot(v + 1).to_kind(Kind::Double); // [N, L, K]
    let marg = w
        .matmul(&onehot.reshape([5, -1]))
        .reshape([x_t.size()[0], 4, v + 1]);
    (marg + 1e-300).log().to_kind(Kind::Float)
}

#[test]
fn nll_bound_under_the_exact_denoiser_is_the_language_entropy() {
    let _rng = crate::rng_lock();
    tch::manual_seed(2);
    let h = -PROBS.iter().map(|p| p * p.ln()).sum::<f64>() / 4.0;
    for schedule in [
        MaskSchedule::LogLinear { eps: 1e-3 },
        MaskSchedule::Cosine { eps: 1e-3 },
    ] {
        let m = Mdlm::new(MdlmConfig {
            schedule,
            ..MdlmConfig::new(3)
        })
        .unwrap();
        let model = FnTokenDenoiser::new(|x: &Tensor, _c: &Tensor| exact_logits(x));
        let idx = Tensor::multinomial(&Tensor::from_slice(&PROBS), 3000, true);
        let data = Tensor::from_slice2(&LANGUAGE).index_select(0, &idx);
        let mut calls = (0, 0);
        let est = m
            .nll(&model, &data, 4096, 4, |done, total| calls = (done, total))
            .unwrap();
        assert_eq!(calls, (3, 3));
        // The continuous-time ELBO with exact conditionals is the any-order autoregressive NLL,
        // which is exact; only the eps-sized ends of the time integral differ.
        assert!(
            (est.nats_per_token - h).abs() < (4.0 * est.std_error).max(0.01 * h),
            "{schedule:?}: bound {} (se {}), entropy {h}",
            est.nats_per_token,
            est.std_error
        );
        let bpc = est.bits_per_char(2.0).unwrap();
        assert!((bpc - est.bits_per_token / 2.0).abs() < 1e-12);
    }
}

#[test]
fn loss_is_the_weighted_masked_cross_entropy() {
    let _rng = crate::rng_lock();
    tch::manual_seed(3);
    let m = Mdlm::new(MdlmConfig::new(3)).unwrap();
    // A denoiser that is uniform over the 3 tokens: every masked token costs ln 3; with the
    // log-linear schedule the expected number masked at t is (1 - eps) t L and the weight 1/t.
    let model = FnTokenDenoiser::new(|x: &Tensor, _c: &Tensor| {
        Tensor::zeros([x.size()[0], x.size()[1], 4], (Kind::Float, Device::Cpu))
    });
    let x0 = Tensor::zeros([4000, 8], (Kind::Int64, Device::Cpu));
    let loss = m
        .loss_at(&model, &x0, &vec![0.5; 4000])
        .unwrap()
        .double_value(&[]);
    let want = (1.0 - 1e-3) * 3f64.ln();
    assert!((loss - want).abs() < 0.02, "loss {loss}, want {want}");
}

/// A fixed network that ignores the time: logits from a random linear map of the one-hot input.
fn frozen_model(k: i64, len: i64) -> impl Fn(&Tensor, &Tensor) -> Tensor {
    let w = Tensor::randn([len * k, len * k], (Kind::Float, Device::Cpu));
    move |x: &Tensor, _c: &Tensor| {
        let b = x.size()[0];
        x.one_hot(k)
            .to_kind(Kind::Float)
            .reshape([b, -1])
            .matmul(&w)
            .reshape([b, len, k])
    }
}

#[test]
fn the_cache_gives_the_same_samples_with_fewer_calls() {
    let _rng = crate::rng_lock();
    tch::manual_seed(4);
    let m = Mdlm::new(MdlmConfig::new(5)).unwrap();
    let model = FnTokenDenoiser::new(frozen_model(6, 8));
    let run = |cache: bool, steps: usize| {
        tch::manual_seed(11);
        let options = SampleOptions {
            steps,
            cache,
            ..Default::default()
        };
        let mut progress = Vec::new();
        let out = m
            .sample(&model, 4, 8, Device::Cpu, &options, |d, t| {
                progress.push((d, t))
            })
            .unwrap();
        assert_eq!(progress.len(), steps);
        assert_eq!(progress.last(), Some(&(steps, steps)));
        out
    };
    for steps in [3, 100] {
        let with = run(true, steps);
        let without = run(false, steps);
        assert!(with.tokens.equal(&without.tokens), "steps {steps}");
        assert_eq!(without.model_calls, steps);
        assert!(
            with.tokens.lt(5).all().int64_value(&[]) == 1,
            "no [MASK] left"
        );
        if steps == 100 {
            // 32 tokens over 100 steps: most steps change nothing.
            assert!(with.model_calls < 40, "{} calls", with.model_calls);
        }
    }
}

#[test]
fn infilling_keeps_fixed_tokens_and_tiny_top_p_is_argmax() {
    let _rng = crate::rng_lock();
    tch::manual_seed(5);
    let m = Mdlm::new(MdlmConfig::new(5)).unwrap();
    let model = FnTokenDenoiser::new(frozen_model(6, 8));
    let tokens = Tensor::randint(5, [6, 8], (Kind::Int64, Device::Cpu));
    // A prefix, a suffix and a middle span, one per row pair.
    let mut mask = vec![false; 48];
    for r in 0..6 {
        for l in 0..8 {
            mask[r * 8 + l] = match r / 2 {
                0 => l < 3,
                1 => l >= 5,
                _ => (2..5).contains(&l),
            };
        }
    }
    let fixed = Tensor::from_slice(&mask).reshape([6, 8]);
    let out = m
        .infill(
            &model,
            &tokens,
            &fixed,
            &SampleOptions::default(),
            |_, _| {},
        )
        .unwrap();
    assert!(out
        .tokens
        .masked_select(&fixed)
        .equal(&tokens.masked_select(&fixed)));

    // Greedy decoding: with top_p tiny, every unmasked token is the argmax of the model at the
    // step it was drawn; with one step everything is drawn from the all-[MASK] input.
    let greedy = SampleOptions {
        steps: 1,
        top_p: 1e-9,
        ..Default::default()
    };
    let out = m
        .sample(&model, 3, 8, Device::Cpu, &greedy, |_, _| {})
        .unwrap();
    let all_mask = Tensor::full([3, 8], 5, (Kind::Int64, Device::Cpu));
    let logits = frozen_model_eval(&model, &all_mask);
    let want = logits.narrow(2, 0, 5).argmax(-1, false);
    assert!(out.tokens.equal(&want));
}

/// Context-free logits `[B, len, 6]` (5 tokens + [MASK]): `rows[p]` at position p.
fn fixed_logits(rows: Vec<[f32; 5]>) -> impl Fn(&Tensor, &Tensor) -> Tensor {
    let len = rows.len() as i64;
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain([0.0]))
        .collect();
    let table = Tensor::from_slice(&flat).reshape([1, len, 6]);
    move |x: &Tensor, _c: &Tensor| table.expand([x.size()[0], len, 6], true).copy()
}

#[test]
fn ordered_samplers_reveal_one_token_per_call_in_their_order() {
    let _rng = crate::rng_lock();
    let m = Mdlm::new(MdlmConfig::new(5)).unwrap();
    // Position p draws token p with probability 0.65, 0.93, 0.99, 0.9993: the most confident
    // draws are at the right.
    let rows = (0..4)
        .map(|p| {
            let mut r = [0.0f32; 5];
            r[p] = 2.0 * (p as f32 + 1.0);
            r
        })
        .collect();
    let logits = fixed_logits(rows);
    let seen = RefCell::new(Vec::new());
    let model = FnTokenDenoiser::new(|x: &Tensor, c: &Tensor| {
        seen.borrow_mut().push(x.copy());
        logits(x, c)
    });
    for (order, first) in [(UnmaskOrder::LeftToRight, 0), (UnmaskOrder::Confidence, 3)] {
        tch::manual_seed(3);
        seen.borrow_mut().clear();
        let options = SampleOptions {
            steps: 16,
            order,
            ..Default::default()
        };
        let out = m
            .sample(&model, 256, 4, Device::Cpu, &options, |_, _| {})
            .unwrap();
        // 4 masked tokens over 16 steps: one revealed at each of 4 steps, and the cache skips
        // the model call after each step that revealed nothing.
        let seen = seen.borrow();
        let masked: Vec<Vec<i64>> = seen
            .iter()
            .map(|x| Vec::<i64>::try_from(x.eq(5).sum_dim_intlist(-1, false, Kind::Int64)).unwrap())
            .collect();
        let counts: Vec<i64> = masked.iter().map(|c| c[0]).collect();
        assert_eq!(
            counts,
            [4, 3, 2, 1],
            "{order:?}: masked tokens at each call"
        );
        assert!(
            masked.iter().all(|c| c.iter().all(|&n| n == c[0])),
            "{order:?}"
        );
        assert_eq!(out.model_calls, 4, "{order:?}");
        assert_eq!(out.tokens.eq(5).sum(Kind::Int64).int64_value(&[]), 0);
        // After the first reveal, the revealed position is `first` in (almost) every row.
        let revealed_first = seen[1]
            .select(1, first)
            .ne(5)
            .to_kind(Kind::Double)
            .mean(Kind::Double);
        let share = revealed_first.double_value(&[]);
        let want = if order == UnmaskOrder::LeftToRight {
            1.0
        } else {
            0.95
        };
        assert!(share >= want, "{order:?}: {share}");
    }
}

#[test]
fn left_to_right_keeps_the_marginals_and_confidence_sharpens_them() {
    let _rng = crate::rng_lock();
    let m = Mdlm::new(MdlmConfig::new(5)).unwrap();
    // The same distribution at every position, independent of the context: any order that only
    // chooses *where* to reveal draws each position from it, and the exact (random) sampler too.
    let row = [1.0f32, 0.5, 0.0, -0.5, -1.0];
    let p0 = {
        let e: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
        e[0] / e.iter().sum::<f64>()
    };
    let model = FnTokenDenoiser::new(fixed_logits(vec![row; 4]));
    let share_of_top = |order: UnmaskOrder| {
        tch::manual_seed(9);
        let options = SampleOptions {
            steps: 8,
            order,
            ..Default::default()
        };
        let out = m
            .sample(&model, 4000, 4, Device::Cpu, &options, |_, _| {})
            .unwrap();
        out.tokens
            .eq(0)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    };
    // 16000 draws: the standard error of a share near 0.36 is 0.004.
    for order in [UnmaskOrder::Random, UnmaskOrder::LeftToRight] {
        let share = share_of_top(order);
        assert!(
            (share - p0).abs() < 0.016,
            "{order:?}: {share} against {p0}"
        );
    }
    // Confidence commits the draws of the most likely token first, so it is over-represented.
    let share = share_of_top(UnmaskOrder::Confidence);
    assert!(share > p0 + 0.05, "confidence: {share} against {p0}");
}

fn frozen_model_eval(
    model: &FnTokenDenoiser<impl Fn(&Tensor, &Tensor) -> Tensor>,
    x: &Tensor,
) -> Tensor {
    (model.f)(x, &Tensor::zeros([x.size()[0]], (Kind::Float, Device::Cpu)))
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::InvalidArgument(msg)) => assert!(!msg.is_empty()),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_input_is_an_invalid_argument() {
    let m = Mdlm::new(MdlmConfig::new(5)).unwrap();
    let dev = Device::Cpu;
    let good = FnTokenDenoiser::new(|x: &Tensor, _c: &Tensor| {
        Tensor::zeros([x.size()[0], x.size()[1], 6], (Kind::Float, Device::Cpu))
    });
    let narrow = FnTokenDenoiser::new(|x: &Tensor, _c: &Tensor| {
        Tensor::zeros([x.size()[0], x.size()[1], 5], (Kind::Float, Device::Cpu))
    });
    let opts = |temperature, top_p| SampleOptions {
        steps: 4,
        temperature,
        top_p,
        cache: true,
        ..Default::default()
    };
    is_invalid(
        m.sample(&narrow, 2, 3, dev, &opts(1.0, 1.0), |_, _| {}),
        "vocab mismatch",
    );
    is_invalid(
        m.sample(&good, 2, 3, dev, &opts(0.0, 1.0), |_, _| {}),
        "temperature 0",
    );
    is_invalid(
        m.sample(&good, 2, 3, dev, &opts(f64::NAN, 1.0), |_, _| {}),
        "temperature NaN",
    );
    is_invalid(
        m.sample(&good, 2, 3, dev, &opts(1.0, 0.0), |_, _| {}),
        "top_p 0",
    );
    is_invalid(
        m.sample(&good, 2, 3, dev, &opts(1.0, 1.01), |_, _| {}),
        "top_p > 1",
    );
    let tokens = Tensor::zeros([2, 3], (Kind::Int64, dev));
    is_invalid(
        m.infill(
            &good,
            &tokens,
            &Tensor::zeros([3, 2], (Kind::Bool, dev)),
            &opts(1.0, 1.0),
            |_, _| {},
        ),
        "infill mask shape",
    );
    is_invalid(
        m.infill(
            &good,
            &tokens,
            &Tensor::zeros([2, 3], (Kind::Int64, dev)),
            &opts(1.0, 1.0),
            |_, _| {},
        ),
        "infill mask kind",
    );
    is_invalid(m.loss(&narrow, &tokens), "loss with vocab mismatch");
    is_invalid(m.loss(&good, &tokens.full_like(5)), "[MASK] in the data");
    is_invalid(m.nll(&good, &tokens, 0, 1, |_, _| {}), "batch 0");
    is_invalid(
        m.sample_semi_autoregressive(&good, 2, 10, 4, 5, None, dev, &opts(1.0, 1.0), |_, _| {}),
        "stride > window",
    );
    is_invalid(bits_per_char(1.0, 0.0), "0 characters per token");
    is_invalid(
        Mdlm::new(MdlmConfig {
            schedule: MaskSchedule::LogLinear { eps: 1.0 },
            ..MdlmConfig::new(5)
        }),
        "eps 1",
    );
}
