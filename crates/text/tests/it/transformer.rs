//! The transformer: parity with its PyTorch twin (fixtures from
//! `tests/golden/make_transformer_golden.py`), shapes, the causal mask, bidirectional attention,
//! length and id errors, dropout and the adaLN-Zero start.

use crate::rng_lock;
use diffuse_tensor::weights::{load_tensors, load_var_store};
use diffuse_text::transformer::parameter_count;
use diffuse_text::{Positions, TextTransformer, TransformerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/transformer")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn check_parity(name: &str) {
    let dir = fixture_dir(name);
    let config = TransformerConfig::from_json_file(&dir.join("config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = TextTransformer::new(&vs.root(), &config).unwrap();
    let (report, _) = load_var_store(&vs, &dir.join("model.safetensors"), true).unwrap();
    assert!(report.is_clean());
    let io = load_tensors(&dir.join("io.safetensors")).unwrap();
    let count: i64 = io.metadata["num_parameters"].parse().unwrap();
    assert_eq!(parameter_count(&vs), count, "{name}: parameter count");
    let io: BTreeMap<String, Tensor> = io.tensors.into_iter().collect();
    let tokens = &io["tokens"];
    let mut cases = vec![("logits", io.get("cond"))];
    if io.contains_key("logits_no_cond") {
        cases.push(("logits_no_cond", None));
    }
    for (key, cond) in cases {
        let out = tch::no_grad(|| model.f_forward_t(tokens, cond, false)).unwrap();
        let diff = max_abs_diff(&out, &io[key]);
        println!("{name} {key}: max |diffuse - torch| = {diff:.3e}");
        assert!(diff <= TOLERANCE, "{name} {key}: max abs diff {diff}");
    }
}

#[test]
fn parity_bidirectional_rotary_with_mask_id() {
    check_parity("rotary");
}

#[test]
fn parity_bidirectional_learned_positions() {
    check_parity("learned");
}

#[test]
fn parity_causal() {
    check_parity("causal");
}

fn small(causal: bool, positions: Positions) -> TransformerConfig {
    TransformerConfig {
        vocab_size: 20,
        output_vocab_size: 19,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        mlp_ratio: 2.0,
        max_seq_len: 12,
        positions,
        dropout: 0.2,
        causal,
        cond_dim: 16,
        time_conditioning: true,
    }
}

/// A model whose every weight is random (a fresh one has zero modulations and head, so its
/// logits are all zero and depend on nothing).
fn random_model(cfg: &TransformerConfig, seed: i64) -> (VarStore, TextTransformer) {
    let _guard = rng_lock();
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let model = TextTransformer::new(&vs.root(), cfg).unwrap();
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            let noise = Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.3;
            var.copy_(&noise);
        }
    });
    (vs, model)
}

fn tokens(seed: i64, batch: i64, len: i64, vocab: i64) -> Tensor {
    let _guard = rng_lock();
    tch::manual_seed(seed);
    Tensor::randint(vocab, [batch, len], (Kind::Int64, Device::Cpu))
}

#[test]
fn output_shapes() {
    for positions in [Positions::Rotary, Positions::Learned] {
        let cfg = small(false, positions);
        let (_vs, model) = random_model(&cfg, 1);
        let x = tokens(2, 3, 7, cfg.vocab_size);
        let t = Tensor::from_slice(&[0.1f32, 50.0, 900.0]);
        let out = model.forward_t(&x, Some(&t), false);
        assert_eq!(out.size(), [3, 7, 19]);
        assert_eq!(out.kind(), Kind::Float);
        // A scalar noise level is the same level for every row; none means 0.
        let scalar = model.forward_t(&x, Some(&Tensor::from(50.0f32)), false);
        let same = model.forward_t(&x, Some(&Tensor::from_slice(&[50.0f32; 3])), false);
        assert!(max_abs_diff(&scalar, &same) < 1e-6);
        let none = model.forward_t(&x, None, false);
        let zero = model.forward_t(
            &x,
            Some(&Tensor::zeros([3], (Kind::Float, Device::Cpu))),
            false,
        );
        assert!(max_abs_diff(&none, &zero) < 1e-6);
        // The noise level matters.
        assert!(max_abs_diff(&none, &same) > 1e-3);
        // The full length and length 1 work too.
        let full = tokens(3, 2, 12, cfg.vocab_size);
        assert_eq!(model.forward_t(&full, None, false).size(), [2, 12, 19]);
        let one = tokens(3, 2, 1, cfg.vocab_size);
        assert_eq!(model.forward_t(&one, None, false).size(), [2, 1, 19]);
    }
}

/// Logits of `x` and of `x` with the token at `position` changed.
fn logits_before_after(model: &TextTransformer, vocab: i64, position: i64) -> (Tensor, Tensor) {
    let x = tokens(5, 2, 10, vocab);
    let changed = x.copy();
    let old = changed.int64_value(&[0, position]);
    let _ = changed.get(0).get(position).fill_((old + 1) % vocab);
    let _ = changed.get(1).get(position).fill_((old + 3) % vocab);
    let a = model.forward_t(&x, None, false);
    let b = model.forward_t(&changed, None, false);
    (a, b)
}

#[test]
fn causal_mask_hides_the_future() {
    for positions in [Positions::Rotary, Positions::Learned] {
        let cfg = small(true, positions);
        let (_vs, model) = random_model(&cfg, 11);
        let (a, b) = logits_before_after(&model, cfg.vocab_size, 6);
        let past = max_abs_diff(&a.narrow(1, 0, 6), &b.narrow(1, 0, 6));
        assert!(past < 1e-6, "{positions:?}: earlier logits moved by {past}");
        let now = max_abs_diff(&a.narrow(1, 6, 4), &b.narrow(1, 6, 4));
        assert!(
            now > 1e-3,
            "{positions:?}: later logits did not move ({now})"
        );
    }
}

#[test]
fn bidirectional_attends_both_ways() {
    let cfg = small(false, Positions::Rotary);
    let (_vs, model) = random_model(&cfg, 12);
    let (a, b) = logits_before_after(&model, cfg.vocab_size, 6);
    for p in [0, 5, 9] {
        let d = max_abs_diff(&a.narrow(1, p, 1), &b.narrow(1, p, 1));
        assert!(d > 1e-3, "position {p} did not see position 6 ({d})");
    }
}

#[test]
fn too_long_sequences_and_bad_ids_are_errors() {
    let cfg = small(false, Positions::Learned);
    let (_vs, model) = random_model(&cfg, 13);
    let long = tokens(6, 1, 13, cfg.vocab_size);
    let err = model
        .f_forward_t(&long, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sequence length 13") && err.contains("max_seq_len"),
        "{err}"
    );
    let bad = Tensor::from_slice(&[1i64, 20, 3]).view([1, 3]);
    let err = model
        .f_forward_t(&bad, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("token ids must be in [0, 20)"), "{err}");
    let flat = Tensor::from_slice(&[1i64, 2, 3]);
    let err = model
        .f_forward_t(&flat, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[batch, length]"), "{err}");
    let x = tokens(6, 2, 4, cfg.vocab_size);
    let err = model
        .f_forward_t(&x, Some(&Tensor::from_slice(&[1.0f32; 3])), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("conditioning must be [batch]"), "{err}");

    let causal_cfg = small(true, Positions::Rotary);
    let (_vs, causal) = random_model(&causal_cfg, 14);
    let err = causal
        .f_forward_t(&x, Some(&Tensor::from_slice(&[1.0f32; 2])), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("causal model takes no time conditioning"),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "max_seq_len")]
fn forward_t_panics_on_too_long_sequences() {
    let cfg = small(true, Positions::Rotary);
    let (_vs, model) = random_model(&cfg, 15);
    let _ = model.forward_t(&tokens(6, 1, 20, cfg.vocab_size), None, false);
}

#[test]
fn dropout_only_in_training() {
    let cfg = small(false, Positions::Rotary);
    let (_vs, model) = random_model(&cfg, 16);
    let x = tokens(7, 2, 8, cfg.vocab_size);
    let eval_a = model.forward_t(&x, None, false);
    let eval_b = model.forward_t(&x, None, false);
    assert!(eval_a.equal(&eval_b));
    let train = {
        let _guard = rng_lock();
        model.forward_t(&x, None, true)
    };
    assert!(max_abs_diff(&eval_a, &train) > 1e-4);
}

#[test]
fn fresh_models_predict_uniformly_and_train() {
    let cfg = small(false, Positions::Rotary);
    let vs = VarStore::new(Device::Cpu);
    let model = TextTransformer::new(&vs.root(), &cfg).unwrap();
    let x = tokens(8, 2, 8, cfg.vocab_size);
    let out = model.forward_t(&x, Some(&Tensor::from(3.0f32)), true);
    assert_eq!(out.abs().max().double_value(&[]), 0.0);
    // Gradients reach the head (and, through it, everything after a step).
    let loss = out
        .view([-1, cfg.output_vocab_size])
        .cross_entropy_for_logits(&x.view([-1]).clamp_max(cfg.output_vocab_size - 1));
    loss.backward();
    let head = &vs.variables()["head.weight"];
    assert!(head.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn invalid_configs_are_named() {
    let mut cfg = small(false, Positions::Rotary);
    cfg.num_heads = 5;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("not divisible by num_heads 5"), "{err}");
    let mut cfg = small(false, Positions::Rotary);
    cfg.num_heads = 32; // head width 1: rotary needs pairs
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("even head width"), "{err}");
    let mut cfg = small(false, Positions::Rotary);
    cfg.vocab_size = 0;
    let err = TextTransformer::new(&VarStore::new(Device::Cpu).root(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab_size must be positive"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"vocab_size": 3, "hidden": 8}"#).unwrap();
    let err = TransformerConfig::from_json_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("hidden"),
        "{err}"
    );
}

#[test]
fn config_json_round_trips() {
    let cfg = small(true, Positions::Learned);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    cfg.to_json_file(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"positions\": \"learned\""), "{text}");
    assert_eq!(TransformerConfig::from_json_file(&path).unwrap(), cfg);
}

/// On CUDA the network computes what it computes on the CPU (skipped without a GPU).
#[test]
fn cuda_matches_cpu() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device; skipping");
        return;
    }
    for (causal, positions) in [(false, Positions::Rotary), (true, Positions::Learned)] {
        let cfg = small(causal, positions);
        let (mut vs, model) = random_model(&cfg, 21);
        let x = tokens(22, 3, 12, cfg.vocab_size);
        let cond = (!causal).then(|| Tensor::from_slice(&[1.0f32, 10.0, 100.0]));
        let cpu = tch::no_grad(|| model.forward_t(&x, cond.as_ref(), false));
        vs.set_device(Device::Cuda(0));
        let gpu =
            tch::no_grad(|| model.forward_t(&x.to_device(Device::Cuda(0)), cond.as_ref(), false));
        let diff = max_abs_diff(&cpu, &gpu.to_device(Device::Cpu));
        assert!(diff < 1e-3, "causal {causal}: max |cpu - cuda| = {diff}");
    }
}
