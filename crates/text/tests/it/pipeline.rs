//! Sampling and evaluating through `TextPipeline` with small untrained models: tokenizers with
//! gaps in their ids, tiny temperatures, flags that do not apply, run directories, D3PM
//! bounds that do not depend on the batch size, and the training previews' estimate of the
//! bound, unbiased over its seeds.

use crate::rng_lock;
use diffuse_text::pipeline::{TextModelInfo, TextPipeline, TextSampleOptions, UnmaskOrder};
use diffuse_text::process::{EstimateShare, ProcessConfig, ProcessKind, SamplingLogits};
use diffuse_text::train::check_tokenizer_for_process;
use diffuse_text::{Positions, TextModel, TextTokenizer, TransformerConfig};
use tch::{Device, Kind, Tensor};

const TEXT: &str = "the quick brown fox\njumps over the lazy dog\n";

/// A character tokenizer of TEXT whose ids are 0, 3, 6, ...: two ids in three name no token.
fn gapped_tokenizer() -> TextTokenizer {
    let plain = TextTokenizer::char_level([TEXT]).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&plain.to_json_string().unwrap()).unwrap();
    for id in json["model"]["vocab"].as_object_mut().unwrap().values_mut() {
        *id = (id.as_u64().unwrap() * 3).into();
    }
    TextTokenizer::from_json_str(&json.to_string()).unwrap()
}

/// A character tokenizer of TEXT whose ids start at 1 (id 0 names no token).
fn shifted_tokenizer() -> TextTokenizer {
    let plain = TextTokenizer::char_level([TEXT]).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&plain.to_json_string().unwrap()).unwrap();
    for id in json["model"]["vocab"].as_object_mut().unwrap().values_mut() {
        *id = (id.as_u64().unwrap() + 1).into();
    }
    TextTokenizer::from_json_str(&json.to_string()).unwrap()
}

/// An untrained pipeline (random weights) of `kind` with `tokenizer`.
fn pipeline(kind: ProcessKind, tokenizer: TextTokenizer, seed: i64) -> TextPipeline {
    let (input, output) = kind.vocab_sizes(tokenizer.vocab_size() as i64);
    let config = TransformerConfig {
        vocab_size: input,
        output_vocab_size: output,
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        mlp_ratio: 2.0,
        max_seq_len: 32,
        positions: Positions::Rotary,
        dropout: 0.0,
        causal: kind == ProcessKind::Autoregressive,
        cond_dim: 8,
        // BD3-LM's network has no adaLN; MDLM's keeps the old layout (modulations fed no time).
        time_conditioning: kind != ProcessKind::Bd3lm,
    };
    let mut process = ProcessConfig::new(kind);
    process.d3pm_timesteps = 10;
    let info = TextModelInfo {
        process,
        seq_len: 32,
        dataset: None,
        steps: None,
        chars_per_token: None,
        val_fraction: None,
    };
    let _guard = rng_lock();
    tch::manual_seed(seed);
    let model = TextModel::new(
        &config,
        tokenizer,
        Some(serde_json::to_value(&info).unwrap()),
        Device::Cpu,
    )
    .unwrap();
    // Random weights everywhere: the output layer starts at zero, which would make every
    // logit equal (uniform draws, no argmax).
    tch::no_grad(|| {
        for (_, mut var) in model.vs.variables() {
            var.copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.3));
        }
    });
    TextPipeline::new(model, info).unwrap()
}

const KINDS: [ProcessKind; 5] = [
    ProcessKind::Mdlm,
    ProcessKind::Bd3lm,
    ProcessKind::D3pmAbsorbing,
    ProcessKind::D3pmUniform,
    ProcessKind::Autoregressive,
];

fn tokens(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

#[test]
fn a_tokenizer_with_gaps_never_samples_unused_ids() {
    let tokenizer = gapped_tokenizer();
    assert!(tokenizer.unused_ids().len() > tokenizer.vocab_size() / 2);
    for kind in KINDS {
        let p = pipeline(kind, tokenizer.clone(), 5);
        let options = TextSampleOptions {
            num: 4,
            length: Some(24),
            seed: Some(1),
            ..Default::default()
        };
        let _guard = rng_lock();
        let s = p.sample(&options, |_, _| {}).unwrap();
        for (row, text) in tokens(&s.tokens).iter().zip(&s.texts) {
            assert!(
                row.iter().all(|id| id % 3 == 0),
                "{kind:?} drew an unused id: {row:?}"
            );
            assert_eq!(text.chars().count(), 24, "{kind:?}: {text:?}");
        }
    }
}

#[test]
fn training_d3pm_uniform_on_a_tokenizer_with_gaps_is_refused() {
    let gapped = gapped_tokenizer();
    let err = check_tokenizer_for_process(&ProcessConfig::new(ProcessKind::D3pmUniform), &gapped)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--tokenizer") && err.contains("d3pm-uniform"),
        "{err}"
    );
    for kind in [
        ProcessKind::Mdlm,
        ProcessKind::D3pmAbsorbing,
        ProcessKind::Autoregressive,
    ] {
        check_tokenizer_for_process(&ProcessConfig::new(kind), &gapped).unwrap();
    }
    let plain = TextTokenizer::char_level([TEXT]).unwrap();
    check_tokenizer_for_process(&ProcessConfig::new(ProcessKind::D3pmUniform), &plain).unwrap();
}

#[test]
fn a_tiny_temperature_samples_the_argmax() {
    // Ids from 1: id 0 names no token, so no correct sample holds it.
    let tokenizer = shifted_tokenizer();
    for kind in KINDS {
        let p = pipeline(kind, tokenizer.clone(), 7);
        let run = |temperature: f64, seed: u64| {
            let options = TextSampleOptions {
                num: 3,
                length: Some(16),
                temperature,
                seed: Some(seed),
                ..Default::default()
            };
            let _guard = rng_lock();
            p.sample(&options, |_, _| {}).unwrap()
        };
        // 1e-320 overflowed the division (inf - inf = NaN), and a NaN row draws id 0.
        let tiny = run(1e-320, 1);
        for (row, text) in tokens(&tiny.tokens).iter().zip(&tiny.texts) {
            assert!(!row.contains(&0), "{kind:?}: {row:?}");
            assert_eq!(text.chars().count(), 16, "{kind:?}: {text:?}");
        }
        if kind == ProcessKind::Autoregressive {
            // Greedy decoding leaves nothing to chance.
            assert_eq!(tokens(&tiny.tokens), tokens(&run(1e-320, 2).tokens));
        }
    }
}

#[test]
fn tempered_logits_reach_the_argmax_in_the_limit_and_forbid_ids() {
    let logits = Tensor::from_slice(&[1.5f32, 2.0, -3.0, 2.5, 0.0]).view([1, 5]);
    for temperature in [1e-320, 1e-300, 1e-30] {
        let adjust = SamplingLogits::new(&[3], 5, temperature, Device::Cpu).unwrap();
        let probs = adjust.apply(&logits).softmax(-1, Kind::Double);
        let probs = Vec::<f64>::try_from(probs.view([-1])).unwrap();
        // Id 3 (the largest logit) is forbidden, so all the mass goes to id 1.
        assert_eq!(probs, [0.0, 1.0, 0.0, 0.0, 0.0], "{temperature}");
    }
    // A moderate temperature is the plain softmax of logits / T.
    let adjust = SamplingLogits::new(&[], 5, 0.5, Device::Cpu).unwrap();
    let got = adjust.apply(&logits).softmax(-1, Kind::Double);
    let want = (logits.to_kind(Kind::Double) / 0.5).softmax(-1, Kind::Double);
    assert!(got.allclose(&want, 1e-12, 1e-12, false));
    assert!(SamplingLogits::new(&[0, 1], 2, 1.0, Device::Cpu).is_err());
    assert!(SamplingLogits::new(&[], 2, 0.0, Device::Cpu).is_err());
}

#[test]
fn steps_on_an_autoregressive_model_are_refused() {
    let p = pipeline(
        ProcessKind::Autoregressive,
        TextTokenizer::char_level([TEXT]).unwrap(),
        1,
    );
    let options = TextSampleOptions {
        num: 1,
        length: Some(8),
        steps: Some(4),
        ..Default::default()
    };
    let err = p.sample(&options, |_, _| {}).unwrap_err().to_string();
    assert!(
        err.starts_with("--steps:") && err.contains("one model call per token"),
        "{err}"
    );
}

#[test]
fn an_unmasking_order_is_refused_where_nothing_is_masked() {
    for kind in [ProcessKind::Autoregressive, ProcessKind::D3pmAbsorbing] {
        let p = pipeline(kind, TextTokenizer::char_level([TEXT]).unwrap(), 1);
        let options = TextSampleOptions {
            num: 1,
            length: Some(8),
            order: Some(UnmaskOrder::LeftToRight),
            ..Default::default()
        };
        let err = p.sample(&options, |_, _| {}).unwrap_err().to_string();
        assert!(
            err.starts_with("--order:") && err.contains("masked processes"),
            "{kind:?}: {err}"
        );
    }
}

#[test]
fn a_training_run_directory_loads_its_model() {
    let p = pipeline(
        ProcessKind::Mdlm,
        TextTokenizer::char_level([TEXT]).unwrap(),
        2,
    );
    let run = tempfile::tempdir().unwrap();
    p.save(&run.path().join("model")).unwrap();
    // What else a run directory holds: its own tokenizer.json and run.json.
    p.model
        .tokenizer
        .save(&run.path().join("tokenizer.json"))
        .unwrap();
    std::fs::write(run.path().join("run.json"), "{}").unwrap();
    let loaded = TextPipeline::load(run.path(), Device::Cpu).unwrap();
    assert_eq!(loaded.info, p.info);
    let missing = TextPipeline::load(&run.path().join("nothing"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("no such model directory"), "{missing}");
}

#[test]
fn d3pm_bounds_do_not_depend_on_the_batch_size() {
    let tokenizer = TextTokenizer::char_level([TEXT]).unwrap();
    let ids = tokenizer.encode(&TEXT[..40]).unwrap();
    // Five sequences of eight tokens.
    let data =
        diffuse_text::TokenSequences::from_stream(&ids, 8, tokenizer.stats(&TEXT[..40]).unwrap());
    for kind in [
        ProcessKind::D3pmAbsorbing,
        ProcessKind::D3pmUniform,
        ProcessKind::Mdlm,
    ] {
        let p = pipeline(kind, tokenizer.clone(), 3);
        let bpc = |batch: usize| {
            let _guard = rng_lock();
            tch::manual_seed(1);
            p.evaluate(&data, batch, 2, |_, _| {})
                .unwrap()
                .bits_per_char
        };
        let one = bpc(1);
        assert!(one.is_finite(), "{kind:?}");
        for batch in [2, 3, 32] {
            let other = bpc(batch);
            assert!(
                (one - other).abs() < 1e-6 * one.abs(),
                "{kind:?}: {one} at batch 1, {other} at batch {batch}"
            );
        }
    }
}

#[test]
fn d3pm_bounds_still_follow_the_seed() {
    let tokenizer = TextTokenizer::char_level([TEXT]).unwrap();
    let ids = tokenizer.encode(&TEXT[..40]).unwrap();
    let data =
        diffuse_text::TokenSequences::from_stream(&ids, 8, tokenizer.stats(&TEXT[..40]).unwrap());
    let p = pipeline(ProcessKind::D3pmUniform, tokenizer, 3);
    let bpc = |seed: i64| {
        let _guard = rng_lock();
        tch::manual_seed(seed);
        p.evaluate(&data, 4, 1, |_, _| {}).unwrap().bits_per_char
    };
    assert_eq!(bpc(1), bpc(1));
    assert_ne!(bpc(1), bpc(2));
}

#[test]
fn the_preview_estimate_is_unbiased_for_the_full_bound() {
    let text = TEXT.repeat(3);
    let tokenizer = TextTokenizer::char_level([text.as_str()]).unwrap();
    let ids = tokenizer.encode(&text).unwrap();
    // Sixteen sequences of eight tokens.
    let data = diffuse_text::TokenSequences::from_stream(&ids, 8, tokenizer.stats(&text).unwrap());
    assert_eq!(data.len(), 16);
    for kind in [ProcessKind::D3pmAbsorbing, ProcessKind::D3pmUniform] {
        // T = 10.
        let p = pipeline(kind, tokenizer.clone(), 3);
        let _guard = rng_lock();
        // The generator sets the noise: the same for the full bound and every estimate, so the
        // estimates' mean over their seeds is exactly the full bound's value.
        tch::manual_seed(1);
        let full = p.evaluate(&data, 4, 1, |_, _| {}).unwrap().bits_per_char;
        let estimate = |sequences: usize, terms: usize, seed: u64, batch: usize| {
            tch::manual_seed(1);
            let share = EstimateShare {
                sequences,
                terms,
                seed,
            };
            p.estimate(&data, &share, batch, |_, _| {}).unwrap()
        };

        // Every sequence and every term: the full bound itself.
        let all = estimate(100, 100, 0, 4);
        assert!((all.bits_per_char - full).abs() < 1e-9 * full, "{kind:?}");
        assert_eq!(
            (all.sequences, all.terms, all.timesteps),
            (16, Some(10), Some(10))
        );

        // 3 of the 10 terms (the decoder and one of each of two strata of sizes 4 and 5, so the
        // weights differ) on 5 of the 16 sequences.
        let first = estimate(5, 3, 0, 8);
        assert_eq!((first.sequences, first.terms), (5, Some(3)), "{kind:?}");
        assert!(first.estimate.contains("stratified"), "{}", first.estimate);
        let draws: Vec<f64> = (0..200)
            .map(|seed| estimate(5, 3, seed, 8).bits_per_char)
            .collect();
        let n = draws.len() as f64;
        let mean = draws.iter().sum::<f64>() / n;
        let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let se = sd / n.sqrt();
        // The seed does change the estimate (which terms and sequences it scores).
        assert!(sd > 1e-2 * full, "{kind:?}: the draws hardly vary ({sd})");
        assert!(
            (mean - full).abs() < 4.0 * se,
            "{kind:?}: mean of 200 estimates {mean} (se {se}), full bound {full}"
        );

        // Deterministic, and independent of the batch size.
        let again = estimate(5, 3, 0, 1);
        assert!(
            (again.bits_per_char - first.bits_per_char).abs() < 1e-6 * full,
            "{kind:?}: {} at batch 1, {} at batch 8",
            again.bits_per_char,
            first.bits_per_char
        );
    }
}
