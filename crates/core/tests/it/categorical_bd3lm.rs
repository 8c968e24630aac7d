//! BD3-LM and the masked-diffusion estimators: under the exact conditional denoiser of a small
//! known language the block bound is the language's entropy (exactly, with blocks of one token and
//! the count estimator), block sampling draws the language's sequences at their probabilities
//! (prompts kept, past the window), the time and count estimators agree in expectation, the count
//! estimator masks exactly k tokens with every k once per block over B stratified passes, the
//! clipped range and the masked cross-entropy loss do what they say, and bad input is refused.

use diffuse_core::categorical::bd3lm::{Bd3lm, Bd3lmConfig, BlockContext, BlockDenoiser};
use diffuse_core::categorical::masked::{BoundEstimator, TrainingLoss};
use diffuse_core::categorical::mdlm::{Mdlm, MdlmConfig};
use diffuse_core::categorical::{FnTokenDenoiser, SampleOptions};
use diffuse_core::{Error, Result};
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// A small language of length 4 over 3 tokens ([MASK] = 3).
const LANGUAGE: [[i64; 4]; 6] = [
    [0, 1, 2, 0],
    [0, 1, 1, 2],
    [2, 1, 0, 0],
    [1, 1, 1, 1],
    [0, 2, 2, 0],
    [0, 1, 2, 1],
];
const PROBS: [f64; 6] = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1];
const V: i64 = 3;
const MASK: i64 = 3;

fn entropy_per_token() -> f64 {
    -PROBS.iter().map(|p| p * p.ln()).sum::<f64>() / 4.0
}

/// The exact conditionals: p(x at the positions of `block` | the clean tokens before them and
/// the block's unmasked tokens), per position, as log-probabilities `[rows, n, K]`.
fn exact_block_logits(prefix: &Tensor, block: &Tensor, start: i64) -> Tensor {
    let rows = block.size()[0];
    let n = block.size()[1];
    let p = prefix.size()[1] as usize;
    let mut out = vec![f64::NEG_INFINITY; (rows * n * (V + 1)) as usize];
    let prefixes: Vec<i64> = Vec::try_from(prefix.reshape([-1])).unwrap();
    let blocks: Vec<i64> = Vec::try_from(block.reshape([-1])).unwrap();
    for r in 0..rows {
        let pre = &prefixes[r as usize * p..(r as usize + 1) * p];
        let blk = &blocks[(r * n) as usize..((r + 1) * n) as usize];
        let mut weights = [0.0; 6];
        for (s, seq) in LANGUAGE.iter().enumerate() {
            let agrees_prefix = pre.iter().enumerate().all(|(i, &x)| seq[i] == x);
            let agrees_block = blk
                .iter()
                .enumerate()
                .all(|(j, &x)| x == MASK || seq[start as usize + j] == x);
            if agrees_prefix && agrees_block {
                weights[s] = PROBS[s];
            }
        }
        let total: f64 = weights.iter().sum();
        for j in 0..n as usize {
            let mut marg = [0.0; 3];
            for (s, seq) in LANGUAGE.iter().enumerate() {
                marg[seq[start as usize + j] as usize] += weights[s] / total.max(1e-300);
            }
            for (k, m) in marg.iter().enumerate() {
                out[((r * n + j as i64) * (V + 1)) as usize + k] = (m + 1e-300).ln();
            }
        }
    }
    Tensor::from_slice(&out).reshape([rows, n, V + 1])
}

/// BD3-LM's exact denoiser of the language, and a probe of what it was shown.
struct Exact {
    seen: RefCell<Vec<Tensor>>,
}

impl Exact {
    fn new() -> Self {
        Exact {
            seen: RefCell::new(Vec::new()),
        }
    }
}

impl BlockDenoiser for Exact {
    fn two_stream_logits(&self, x_t: &Tensor, x0: &Tensor, block_size: i64) -> Result<Tensor> {
        self.seen.borrow_mut().push(x_t.shallow_clone());
        let len = x_t.size()[1];
        let parts: Vec<Tensor> = (0..len / block_size)
            .map(|b| {
                let start = b * block_size;
                exact_block_logits(
                    &x0.narrow(1, 0, start),
                    &x_t.narrow(1, start, block_size),
                    start,
                )
            })
            .collect();
        Ok(Tensor::cat(&parts, 1))
    }

    fn context(&self, prefix: &Tensor, _block_size: i64) -> Result<Box<dyn BlockContext + '_>> {
        Ok(Box::new(ExactContext {
            prefix: prefix.shallow_clone(),
        }))
    }
}

struct ExactContext {
    prefix: Tensor,
}

impl BlockContext for ExactContext {
    fn len(&self) -> i64 {
        self.prefix.size()[1]
    }

    fn logits(&self, block: &Tensor) -> Result<Tensor> {
        Ok(exact_block_logits(&self.prefix, block, self.len()))
    }

    fn push(&mut self, block: &Tensor) -> Result<()> {
        self.prefix = Tensor::cat(&[&self.prefix, block], 1);
        Ok(())
    }
}

fn language_data(n: i64) -> Tensor {
    let idx = Tensor::multinomial(&Tensor::from_slice(&PROBS), n, true);
    Tensor::from_slice2(&LANGUAGE).index_select(0, &idx)
}

fn bd3lm(block: i64, estimator: BoundEstimator) -> Bd3lm {
    Bd3lm::new(Bd3lmConfig {
        estimator,
        ..Bd3lmConfig::new(V, block)
    })
    .unwrap()
}

#[test]
fn with_blocks_of_one_token_and_counts_the_bound_is_exactly_the_entropy() {
    let _rng = crate::rng_lock();
    tch::manual_seed(1);
    let data = language_data(4000);
    // The empirical entropy of this very sample: -mean log p(x) / 4.
    let probs = Tensor::from_slice(&PROBS);
    let want: f64 = {
        let lang = Tensor::from_slice2(&LANGUAGE);
        let matches = data
            .unsqueeze(1)
            .eq_tensor(&lang.unsqueeze(0))
            .all_dim(-1, false)
            .to_kind(Kind::Double);
        let p = matches.matmul(&probs.unsqueeze(1)).squeeze_dim(1);
        -p.log().mean(Kind::Double).double_value(&[]) / 4.0
    };
    let est = bd3lm(1, BoundEstimator::ExactCount)
        .nll(&Exact::new(), &data, 1000, 1, |_, _| {})
        .unwrap();
    assert!(
        (est.nats_per_token - want).abs() < 1e-9,
        "bound {} vs the sample's exact NLL {want}",
        est.nats_per_token
    );
}

#[test]
fn under_the_exact_denoiser_every_block_size_and_estimator_gives_the_entropy() {
    let _rng = crate::rng_lock();
    tch::manual_seed(2);
    let h = entropy_per_token();
    for block in [1, 2, 4] {
        for estimator in [BoundEstimator::ContinuousTime, BoundEstimator::ExactCount] {
            let data = language_data(3000);
            let est = bd3lm(block, estimator)
                .nll(&Exact::new(), &data, 4096, 4, |_, _| {})
                .unwrap();
            assert!(
                (est.nats_per_token - h).abs() < (4.0 * est.std_error).max(0.01 * h),
                "block {block} {estimator:?}: bound {} (se {}), entropy {h}",
                est.nats_per_token,
                est.std_error
            );
        }
    }
}

#[test]
fn the_count_estimator_scores_every_count_once_per_block_over_b_passes() {
    let _rng = crate::rng_lock();
    tch::manual_seed(3);
    let model = Exact::new();
    let data = language_data(5);
    bd3lm(2, BoundEstimator::ExactCount)
        .nll(&model, &data, 1000, 2, |_, _| {})
        .unwrap();
    let x_t = model.seen.borrow()[0].shallow_clone(); // [5 * 2 passes, 4]
    let counts =
        x_t.eq(MASK)
            .reshape([5, 2, 2, 2])
            .sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64); // [seq, pass, block]
    for s in 0..5 {
        for b in 0..2 {
            let mut ks = [
                counts.int64_value(&[s, 0, b]),
                counts.int64_value(&[s, 1, b]),
            ];
            ks.sort();
            assert_eq!(ks, [1, 2], "sequence {s} block {b}");
        }
    }
}

#[test]
fn time_and_count_estimators_agree_in_expectation() {
    let _rng = crate::rng_lock();
    tch::manual_seed(4);
    // A fixed, imperfect network that ignores the time: its bound is well above the entropy.
    let w = Tensor::randn([16, 4 * 4], (Kind::Float, Device::Cpu));
    let model = FnTokenDenoiser::new(move |x: &Tensor, _c: &Tensor| {
        let b = x.size()[0];
        x.one_hot(4)
            .to_kind(Kind::Float)
            .reshape([b, -1])
            .matmul(&w)
            .reshape([b, 4, 4])
    });
    let data = language_data(2000);
    let run = |estimator| {
        Mdlm::new(MdlmConfig {
            estimator,
            ..MdlmConfig::new(V)
        })
        .unwrap()
        .nll(&model, &data, 4096, 8, |_, _| {})
        .unwrap()
    };
    let time = run(BoundEstimator::ContinuousTime);
    let count = run(BoundEstimator::ExactCount);
    let se = (time.std_error.powi(2) + count.std_error.powi(2)).sqrt();
    // The time form leaves out t < eps and masks with probability 1 - eps at t = 1: O(eps).
    assert!(
        (time.nats_per_token - count.nats_per_token).abs() < 4.0 * se + 2e-3 * time.nats_per_token,
        "time {} (se {}) vs count {} (se {})",
        time.nats_per_token,
        time.std_error,
        count.nats_per_token,
        count.std_error
    );
    // Both scored the same sequences: the count form's spread comes from the subsets alone.
    assert!(count.std_error < time.std_error, "{count:?} vs {time:?}");
}

#[test]
fn the_clipped_range_bounds_the_masked_counts_and_masked_ce_is_unweighted() {
    let _rng = crate::rng_lock();
    tch::manual_seed(5);
    let data = language_data(64).repeat([1, 2]); // [64, 8]: two blocks of 4
    let p = Bd3lm::new(Bd3lmConfig {
        estimator: BoundEstimator::ExactCount,
        mask_rate_range: Some((0.3, 0.8)),
        ..Bd3lmConfig::new(V, 4)
    })
    .unwrap();
    let probe = Uniform {
        seen: RefCell::new(Vec::new()),
    };
    let _ = p.loss(&probe, &data).unwrap();
    let x_t = probe.seen.borrow()[0].shallow_clone();
    let counts =
        x_t.eq(MASK)
            .reshape([64, 2, 4])
            .sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64);
    // 0.3 * 4 = 1.2 and 0.8 * 4 = 3.2: two or three of each block's four tokens.
    assert_eq!(counts.min().int64_value(&[]), 2);
    assert_eq!(counts.max().int64_value(&[]), 3);

    // A denoiser uniform over the 3 tokens: every masked token costs ln 3, so the masked
    // cross-entropy is ln 3 whatever was masked, and the bound (weight B / k) is ln 3 per token.
    for (loss, estimator) in [
        (
            TrainingLoss::MaskedCrossEntropy,
            BoundEstimator::ContinuousTime,
        ),
        (TrainingLoss::MaskedCrossEntropy, BoundEstimator::ExactCount),
        (TrainingLoss::Elbo, BoundEstimator::ExactCount),
    ] {
        let p = Bd3lm::new(Bd3lmConfig {
            loss,
            estimator,
            ..Bd3lmConfig::new(V, 4)
        })
        .unwrap();
        let value = p.loss(&probe, &data).unwrap().double_value(&[]);
        assert!(
            (value - 3f64.ln()).abs() < 1e-6,
            "{loss:?} {estimator:?}: {value}"
        );
    }
}

/// A denoiser uniform over the 3 tokens (every masked token costs ln 3) that keeps what it
/// was shown: the masked cross-entropy is ln 3 whatever was masked, and the count bound
/// (weight B / k on k masked tokens) is ln 3 per token.
struct Uniform {
    seen: RefCell<Vec<Tensor>>,
}

impl BlockDenoiser for Uniform {
    fn two_stream_logits(&self, x_t: &Tensor, _x0: &Tensor, _b: i64) -> Result<Tensor> {
        self.seen.borrow_mut().push(x_t.shallow_clone());
        Ok(Tensor::zeros(
            [x_t.size()[0], x_t.size()[1], V + 1],
            (Kind::Float, Device::Cpu),
        ))
    }

    fn context(&self, _p: &Tensor, _b: i64) -> Result<Box<dyn BlockContext + '_>> {
        unreachable!("not sampled")
    }
}

#[test]
fn block_sampling_draws_the_language_at_its_probabilities() {
    let _rng = crate::rng_lock();
    tch::manual_seed(6);
    let model = Exact::new();
    // One token per block is exact at any number of steps; a larger block unmasks its tokens
    // from independent marginals, exact only when no two unmask in the same step, so it gets
    // many steps (the cache skips the calls of the steps that change nothing).
    for (block, steps, cache, n, outside) in [
        (1, 1, true, 3000, 0.0),
        (1, 3, false, 3000, 0.0),
        (2, 300, true, 1000, 0.01),
        (4, 300, true, 1000, 0.02),
    ] {
        let options = SampleOptions {
            steps,
            cache,
            ..Default::default()
        };
        let mut progress = 0;
        let out = bd3lm(block, BoundEstimator::ContinuousTime)
            .sample(
                &model,
                n,
                4,
                4,
                None,
                Device::Cpu,
                &options,
                |done, total| {
                    assert_eq!(total, (4 / block as usize) * steps);
                    progress = done;
                },
            )
            .unwrap();
        assert_eq!(progress, (4 / block as usize) * steps);
        let lang = Tensor::from_slice2(&LANGUAGE);
        let matches = out
            .tokens
            .unsqueeze(1)
            .eq_tensor(&lang.unsqueeze(0))
            .all_dim(-1, false)
            .to_kind(Kind::Double)
            .sum_dim_intlist([0i64].as_slice(), false, Kind::Double);
        let freq: Vec<f64> = Vec::try_from(matches / n as f64).unwrap();
        let inside = freq.iter().sum::<f64>();
        assert!(
            1.0 - inside <= outside + 1e-12,
            "block {block}: {:.4} of the samples are outside the language",
            1.0 - inside
        );
        for (f, p) in freq.iter().zip(PROBS) {
            // 4.5 binomial standard errors, and what left the language.
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (f - p).abs() < 4.5 * se + outside,
                "block {block}: {freq:?} vs {PROBS:?}"
            );
        }
    }
}

#[test]
fn the_cache_gives_the_same_samples_with_fewer_calls() {
    let _rng = crate::rng_lock();
    let model = Exact::new();
    let p = bd3lm(2, BoundEstimator::ContinuousTime);
    let run = |cache| {
        tch::manual_seed(12);
        let options = SampleOptions {
            steps: 20,
            cache,
            ..Default::default()
        };
        p.sample(&model, 8, 4, 4, None, Device::Cpu, &options, |_, _| {})
            .unwrap()
    };
    let (with, without) = (run(true), run(false));
    assert!(with.tokens.equal(&without.tokens));
    // 2 blocks x 20 steps and one context push without the cache; with it, only the steps that
    // follow a change in some row (at most 8 rows x 2 tokens of a block).
    assert_eq!(without.model_calls, 2 * 20 + 1);
    assert!(
        with.model_calls < without.model_calls,
        "{}",
        with.model_calls
    );
}

#[test]
fn prompts_are_kept_and_sampling_slides_past_the_window() {
    let _rng = crate::rng_lock();
    tch::manual_seed(7);
    // A deterministic chain: each token is the one before it plus 1 (mod 3), which a block can
    // only get right at its first position if its context ends with the token just before it.
    struct Chain {
        longest: RefCell<i64>,
    }
    struct Ctx<'a> {
        prefix: Tensor,
        longest: &'a RefCell<i64>,
    }
    impl BlockDenoiser for Chain {
        fn two_stream_logits(&self, _x: &Tensor, _x0: &Tensor, _b: i64) -> Result<Tensor> {
            unreachable!()
        }
        fn context(&self, prefix: &Tensor, _b: i64) -> Result<Box<dyn BlockContext + '_>> {
            Ok(Box::new(Ctx {
                prefix: prefix.shallow_clone(),
                longest: &self.longest,
            }))
        }
    }
    impl BlockContext for Ctx<'_> {
        fn len(&self) -> i64 {
            self.prefix.size()[1]
        }
        fn logits(&self, block: &Tensor) -> Result<Tensor> {
            let (rows, n) = (block.size()[0], block.size()[1]);
            let mut longest = self.longest.borrow_mut();
            *longest = (*longest).max(self.len() + n);
            let last = self.prefix.select(1, self.len() - 1); // [rows]
            let offsets = Tensor::arange_start(1, n + 1, (Kind::Int64, Device::Cpu));
            let next = (last.unsqueeze(1) + offsets.unsqueeze(0)).remainder(3);
            Ok(next
                .one_hot(V + 1)
                .to_kind(Kind::Float)
                .reshape([rows, n, V + 1])
                * 30.0)
        }
        fn push(&mut self, block: &Tensor) -> Result<()> {
            self.prefix = Tensor::cat(&[&self.prefix, block], 1);
            Ok(())
        }
    }
    let model = Chain {
        longest: RefCell::new(0),
    };
    let p = bd3lm(4, BoundEstimator::ContinuousTime);
    // Six tokens: a whole block of context, then two fixed positions of the next block.
    let prompt = Tensor::from_slice2(&[[2i64, 1, 0, 0, 1, 2], [2, 1, 0, 0, 1, 2]]);
    let out = p
        .sample(
            &model,
            2,
            37,
            12,
            Some(&prompt),
            Device::Cpu,
            &SampleOptions {
                steps: 4,
                ..Default::default()
            },
            |_, _| {},
        )
        .unwrap();
    assert_eq!(out.tokens.size(), [2, 37]);
    assert!(out.tokens.narrow(1, 0, 6).equal(&prompt));
    let rest = out.tokens.narrow(1, 4, 33);
    let before = out.tokens.narrow(1, 3, 33);
    assert!(
        rest.equal(&(before + 1).remainder(3)),
        "the chain broke: a block did not see the block before it\n{}",
        out.tokens
    );
    assert_eq!(*model.longest.borrow(), 12, "attended past the window");
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T>, what: &str) {
    match r {
        Err(Error::InvalidArgument(msg)) => assert!(!msg.is_empty()),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_input_is_an_invalid_argument() {
    is_invalid(Bd3lm::new(Bd3lmConfig::new(V, 0)), "block size 0");
    is_invalid(
        Bd3lm::new(Bd3lmConfig {
            mask_rate_range: Some((0.8, 0.3)),
            ..Bd3lmConfig::new(V, 2)
        }),
        "reversed range",
    );
    let p = bd3lm(3, BoundEstimator::ContinuousTime);
    let model = Exact::new();
    is_invalid(
        p.nll(&model, &language_data(4), 8, 1, |_, _| {}),
        "length 4 is not whole blocks of 3",
    );
    is_invalid(p.loss(&model, &language_data(4)), "loss on partial blocks");
    let options = SampleOptions::default();
    is_invalid(
        p.sample(&model, 2, 4, 4, None, Device::Cpu, &options, |_, _| {}),
        "window not whole blocks",
    );
    let prompt = Tensor::zeros([2, 5], (Kind::Int64, Device::Cpu));
    is_invalid(
        p.sample(
            &model,
            2,
            4,
            6,
            Some(&prompt),
            Device::Cpu,
            &options,
            |_, _| {},
        ),
        "prompt longer than the length",
    );
}
