//! Learning tests for categorical diffusion: a small MLP over the one-hot of a 6-token sequence
//! learns a toy language (three two-token "words" from a fixed list of four) with MDLM and with
//! D3PM, and its samples must be valid sentences. Sampling each position independently from its
//! marginal would give valid sentences only 1/8 of the time, so passing needs the dependencies.

use diffuse_core::categorical::d3pm::{D3pm, D3pmConfig};
use diffuse_core::categorical::mdlm::{Mdlm, MdlmConfig};
use diffuse_core::categorical::{SampleOptions, TokenDenoiser};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const V: i64 = 6;
const LEN: i64 = 6;
const WORDS: [[i64; 2]; 4] = [[0, 1], [0, 2], [3, 4], [5, 4]];

/// `n` sentences `[n, LEN]`, words uniform and independent.
fn sentences(n: i64) -> Tensor {
    let words = Tensor::from_slice2(&WORDS);
    let idx = Tensor::randint(
        WORDS.len() as i64,
        [n * LEN / 2],
        (Kind::Int64, Device::Cpu),
    );
    words.index_select(0, &idx).reshape([n, LEN])
}

/// The fraction of rows of `x` `[n, L]` (L even) whose every aligned pair is a word.
fn valid_fraction(x: &Tensor) -> f64 {
    let rows = Vec::<Vec<i64>>::try_from(x).unwrap();
    let ok = rows
        .iter()
        .filter(|r| r.chunks(2).all(|w| WORDS.iter().any(|v| v == w)))
        .count();
    ok as f64 / rows.len() as f64
}

/// An MLP from the flattened one-hot of x_t (K = `k` states) and the scaled time to logits.
struct TinyNet {
    net: nn::Sequential,
    k: i64,
    cond_scale: f64,
}

impl TinyNet {
    fn new(vs: &nn::Path, k: i64, cond_scale: f64) -> Self {
        let width = 256;
        let net = nn::seq()
            .add(nn::linear(
                vs / "l1",
                LEN * k + 1,
                width,
                Default::default(),
            ))
            .add_fn(|x| x.relu())
            .add(nn::linear(vs / "l2", width, width, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(vs / "l3", width, LEN * k, Default::default()));
        TinyNet { net, k, cond_scale }
    }
}

impl TokenDenoiser for TinyNet {
    fn logits(&self, x_t: &Tensor, cond: &Tensor) -> Tensor {
        let b = x_t.size()[0];
        let input = Tensor::cat(
            &[
                x_t.one_hot(self.k).to_kind(Kind::Float).reshape([b, -1]),
                (cond / self.cond_scale).unsqueeze(1),
            ],
            1,
        );
        self.net.forward(&input).reshape([b, LEN, self.k])
    }
}

fn train(steps: usize, model: &TinyNet, vs: &nn::VarStore, loss: impl Fn(&Tensor) -> Tensor) {
    let mut opt = nn::Adam::default().build(vs, 2e-3).unwrap();
    for _ in 0..steps {
        let x0 = sentences(128);
        let l = loss(&x0);
        opt.backward_step(&l);
    }
    let _ = model;
}

#[test]
fn mdlm_learns_a_toy_language_and_samples_it() {
    let _rng = crate::rng_lock();
    tch::manual_seed(21);
    let mdlm = Mdlm::new(MdlmConfig::new(V)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TinyNet::new(&vs.root(), mdlm.num_states(), 10.0);
    train(1000, &model, &vs, |x0| mdlm.loss(&model, x0).unwrap());

    let options = SampleOptions {
        steps: 128,
        ..Default::default()
    };
    let out = mdlm
        .sample(&model, 400, LEN, Device::Cpu, &options, |_, _| {})
        .unwrap();
    let valid = valid_fraction(&out.tokens);
    assert!(valid >= 0.9, "MDLM: {valid} of samples valid");
    assert!(out.model_calls <= 128);

    // The bound on held-out sentences sits just above the language's entropy, 3 ln 4 / 6.
    let h = 3.0 * 4f64.ln() / LEN as f64;
    let est = mdlm
        .nll(&model, &sentences(500), 1000, 4, |_, _| {})
        .unwrap();
    assert!(
        est.nats_per_token > h - 4.0 * est.std_error && est.nats_per_token < 1.25 * h,
        "held-out bound {} nats/token, entropy {h}",
        est.nats_per_token
    );

    // Semi-autoregressive: 12 tokens with a 6-token window, 2 new tokens (one word) per block,
    // after a one-word prompt.
    let prompt = Tensor::from_slice(&[3i64, 4])
        .unsqueeze(0)
        .expand([200, 2], false);
    let mut last = (0, 0);
    let out = mdlm
        .sample_semi_autoregressive(
            &model,
            200,
            12,
            LEN,
            2,
            Some(&prompt),
            Device::Cpu,
            &options,
            |d, t| last = (d, t),
        )
        .unwrap();
    assert_eq!(out.tokens.size(), [200, 12]);
    assert!(out.tokens.narrow(1, 0, 2).equal(&prompt));
    // Blocks: 4 tokens after the prompt, then 2, 2, 2.
    assert_eq!(last, (4 * 128, 4 * 128));
    let valid = valid_fraction(&out.tokens);
    assert!(valid >= 0.9, "semi-AR: {valid} of samples valid");

    // Infilling the middle word given the outer ones.
    let given = sentences(200);
    let fixed = Tensor::from_slice(&[true, true, false, false, true, true])
        .unsqueeze(0)
        .expand([200, LEN], false)
        .contiguous();
    let out = mdlm
        .infill(&model, &given, &fixed, &options, |_, _| {})
        .unwrap();
    assert!(out
        .tokens
        .masked_select(&fixed)
        .equal(&given.masked_select(&fixed)));
    let valid = valid_fraction(&out.tokens);
    assert!(valid >= 0.9, "infill: {valid} of samples valid");
}

#[test]
fn d3pm_absorbing_learns_a_toy_language_and_samples_it() {
    let _rng = crate::rng_lock();
    tch::manual_seed(22);
    let t = 128;
    let d3pm = D3pm::new(D3pmConfig::absorbing(V, t)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TinyNet::new(&vs.root(), d3pm.num_states(), t as f64);
    train(600, &model, &vs, |x0| d3pm.loss(&model, x0).unwrap().loss);
    let options = SampleOptions {
        steps: t,
        ..Default::default()
    };
    let out = d3pm
        .sample(&model, 400, LEN, Device::Cpu, &options, |_, _| {})
        .unwrap();
    let valid = valid_fraction(&out.tokens);
    assert!(valid >= 0.9, "D3PM absorbing: {valid} of samples valid");
}

#[test]
fn d3pm_uniform_learns_a_toy_language_and_samples_it() {
    let _rng = crate::rng_lock();
    tch::manual_seed(23);
    let t = 128;
    let d3pm = D3pm::new(D3pmConfig::uniform(V, t)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TinyNet::new(&vs.root(), d3pm.num_states(), t as f64);
    train(600, &model, &vs, |x0| d3pm.loss(&model, x0).unwrap().loss);
    let options = SampleOptions {
        steps: t,
        ..Default::default()
    };
    let out = d3pm
        .sample(&model, 400, LEN, Device::Cpu, &options, |_, _| {})
        .unwrap();
    let valid = valid_fraction(&out.tokens);
    assert!(valid >= 0.9, "D3PM uniform: {valid} of samples valid");
}
