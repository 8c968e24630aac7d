//! The text commands end to end on the committed corpus fixture (a few sonnets and a Hamlet
//! scene): train every process a few steps, resume exactly, sample, continue a prompt, fill
//! gaps, evaluate bits/char, train a BPE tokenizer; one-line errors for bad input.

use diffuse_e2e::{assert_user_error, diffuse, read_safetensors, repo_root};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    repo_root().join("crates/text/tests/fixtures/corpus")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A tiny model (2 layers of width 32, context 32) so each command takes a second or two.
fn train_args<'a>(
    data: &'a str,
    out: &'a str,
    process: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "text",
        "--data",
        data,
        "--out",
        out,
        "--process",
        process,
        "--d3pm-timesteps",
        "20",
        "--steps",
        "6",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--hidden-size",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--warmup-steps",
        "2",
        "--checkpoint-every",
        "3",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--sample-num",
        "2",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn sample(model: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "sample",
        "text",
        "--model",
        s(model),
        "--num",
        "2",
        "--seed",
        "1",
        "--json",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let r = diffuse(&args, None);
    assert!(r.success(), "sample {extra:?}: {}", r.stderr);
    json(&r.stdout)
}

#[test]
fn mdlm_trains_resumes_samples_infills_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let run = tmp.path().join("run");
    let r = diffuse(&train_args(s(&data), s(&run), "mdlm", &[]), None);
    assert!(r.success(), "train failed: {}", r.stderr);
    for file in [
        "run.json",
        "tokenizer.json",
        "metrics.jsonl",
        "validation.jsonl",
        "loss.png",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/diffuse.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing after training");
    }

    // Interrupted at step 3 and resumed: the same weights as the uninterrupted run.
    let run2 = tmp.path().join("run2");
    let r = diffuse(
        &train_args(s(&data), s(&run2), "mdlm", &["--stop-after", "3"]),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(r.stdout.contains("continue with --resume"), "{}", r.stdout);
    let r = diffuse(
        &[
            "train",
            "text",
            "--out",
            s(&run2),
            "--resume",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "resume failed: {}", r.stderr);
    let weights = "model/model.safetensors";
    let (a, b) = (
        read_safetensors(&run.join(weights)),
        read_safetensors(&run2.join(weights)),
    );
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(b[name] == *tensor, "{name} differs after resume");
    }

    let model = run.join("model");
    // Unconditional, seeded: the same seed gives the same text.
    let first = sample(&model, &["--length", "24", "--steps", "12"]);
    let texts = first["samples"].as_array().unwrap();
    assert_eq!(texts.len(), 2);
    assert!(texts
        .iter()
        .all(|t| t.as_str().unwrap().chars().count() == 24));
    let again = sample(&model, &["--length", "24", "--steps", "12"]);
    assert_eq!(first["samples"], again["samples"]);
    // The cache saves model calls and changes nothing.
    let uncached = sample(&model, &["--length", "24", "--steps", "48", "--no-cache"]);
    let cached = sample(&model, &["--length", "24", "--steps", "48"]);
    assert_eq!(uncached["samples"], cached["samples"]);
    assert_eq!(uncached["model_calls"], 48);
    assert!(cached["model_calls"].as_u64().unwrap() < 48, "{cached}");

    // A prompt is kept; past the 32-token context MDLM goes on semi-autoregressively.
    let prompted = sample(&model, &["--prompt", "Shall I", "--length", "40"]);
    for t in prompted["samples"].as_array().unwrap() {
        let t = t.as_str().unwrap();
        assert!(t.starts_with("Shall I"), "{t}");
        assert_eq!(t.chars().count(), 40);
    }
    // Gaps are filled, the rest kept.
    let filled = sample(&model, &["--infill", "Shall I ____ thee to a ____"]);
    for t in filled["samples"].as_array().unwrap() {
        let t: Vec<char> = t.as_str().unwrap().chars().collect();
        assert_eq!(t.len(), 27);
        let t: String = t.into_iter().collect();
        assert!(
            t.starts_with("Shall I ") && t[12..].starts_with(" thee to a "),
            "{t}"
        );
    }

    // Bits per character: an upper bound, finite, below log2 of the vocabulary plus slack.
    let r = diffuse(
        &[
            "eval",
            "text",
            "--model",
            s(&model),
            "--json",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let report = json(&r.stdout);
    let bpc = report["bits_per_char"].as_f64().unwrap();
    assert!(
        bpc.is_finite() && bpc > 0.0 && bpc < 10.0,
        "bits/char {bpc}"
    );
    assert_eq!(report["kind"], "upper bound");
}

#[test]
fn every_process_and_a_bpe_tokenizer_train_sample_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let tokenizer = tmp.path().join("bpe.json");
    let r = diffuse(
        &[
            "train-tokenizer",
            "--data",
            s(&data),
            "--kind",
            "bpe",
            "--vocab-size",
            "300",
            "--out",
            s(&tokenizer),
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(tokenizer.is_file());
    for (process, extra) in [
        ("d3pm-absorbing", vec![]),
        ("d3pm-uniform", vec![]),
        ("autoregressive", vec![]),
        ("mdlm", vec!["--tokenizer", s(&tokenizer)]),
    ] {
        let run = tmp.path().join(process);
        let r = diffuse(&train_args(s(&data), s(&run), process, &extra), None);
        assert!(r.success(), "{process}: {}", r.stderr);
        let model = run.join("model");
        let out = sample(&model, &["--length", "16"]);
        assert_eq!(out["samples"].as_array().unwrap().len(), 2, "{process}");
        let r = diffuse(
            &[
                "eval",
                "text",
                "--model",
                s(&model),
                "--json",
                "--device",
                "cpu",
            ],
            None,
        );
        assert!(r.success(), "{process}: {}", r.stderr);
        let report = json(&r.stdout);
        let bpc = report["bits_per_char"].as_f64().unwrap();
        assert!(bpc.is_finite() && bpc > 0.0, "{process}: bits/char {bpc}");
        let kind = if process == "autoregressive" {
            "exact"
        } else {
            "upper bound"
        };
        assert_eq!(report["kind"], kind, "{process}");
    }
    // The autoregressive baseline continues a prompt too.
    let out = sample(
        &tmp.path().join("autoregressive/model"),
        &["--prompt", "Shall", "--length", "12"],
    );
    for t in out["samples"].as_array().unwrap() {
        assert!(t.as_str().unwrap().starts_with("Shall"), "{t}");
    }
}

#[test]
fn bad_text_inputs_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    // A corpus that is not UTF-8; an empty corpus.
    let latin1 = tmp.path().join("latin1");
    std::fs::create_dir(&latin1).unwrap();
    std::fs::write(latin1.join("a.txt"), b"caf\xe9 au lait\n").unwrap();
    let out = tmp.path().join("run");
    let r = diffuse(&train_args(s(&latin1), s(&out), "mdlm", &[]), None);
    assert_user_error(&r, &["a.txt", "UTF-8"]);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("a.txt"), b"").unwrap();
    let r = diffuse(&train_args(s(&empty), s(&out), "mdlm", &[]), None);
    assert_user_error(&r, &["empty"]);
    assert!(!out.join("model").exists());

    // A small D3PM model: a length beyond its context; characters its tokenizer lacks;
    // an --infill template longer than --length.
    let run = tmp.path().join("d3pm");
    let r = diffuse(
        &train_args(s(&corpus()), s(&run), "d3pm-absorbing", &[]),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let model = run.join("model");
    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "text", "--model", s(&model), "--device", "cpu"];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    assert_user_error(&sample(&["--length", "64"]), &["--length", "context"]);
    assert_user_error(&sample(&["--prompt", "Жизнь"]), &["--prompt", "U+0416"]);
    assert_user_error(
        &sample(&["--infill", "Shall I ____ thee", "--length", "8"]),
        &["--infill", "longer than --length"],
    );
    assert_user_error(&sample(&["--steps", "100"]), &["--steps", "20"]);
    assert_user_error(
        &diffuse(
            &[
                "train",
                "text",
                "--data",
                s(&corpus()),
                "--out",
                s(&tmp.path().join("x")),
                "--process",
                "gpt",
            ],
            None,
        ),
        &["--process", "gpt"],
    );
}
