//! The text commands end to end on the committed corpus fixture (a few sonnets and a Hamlet
//! scene): train every process a few steps, resume exactly, sample, continue a prompt, fill
//! gaps, evaluate bits/char, train a BPE tokenizer, preview D3PM's bound from a share of its
//! terms; one-line errors for bad input.

use diffuse_e2e::{assert_user_error, diffuse, path_str as s, read_safetensors, repo_root};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    repo_root().join("crates/text/tests/fixtures/corpus")
}

/// A tiny model (2 layers of width 32, context 32) so each command takes a second or two; D3PM
/// processes get 20 steps (the flag is refused for the others).
/// A safetensors file as `read_safetensors` gives it: name -> (dtype, shape, bytes).
type SafeTensors = std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

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
    if process.starts_with("d3pm") {
        args.extend_from_slice(&["--d3pm-timesteps", "20"]);
    }
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

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    json(&text)
}

/// A copy of the fixture corpus's .txt files in `dir`.
fn copy_corpus(dir: &Path) {
    std::fs::create_dir_all(dir.join("more")).unwrap();
    for file in ["sonnets.txt", "more/hamlet.txt"] {
        std::fs::copy(corpus().join(file), dir.join(file)).unwrap();
    }
}

#[test]
fn relative_data_is_recorded_absolute_so_runs_resume_and_evaluate_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    copy_corpus(&work.join("corpus"));
    let r = diffuse(
        &train_args("corpus", "run", "mdlm", &["--stop-after", "3"]),
        Some(&work),
    );
    assert!(r.success(), "{}", r.stderr);
    let run = work.join("run");
    let data = read_json(&run.join("run.json"))["data"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(Path::new(&data).is_absolute(), "{data}");
    assert!(Path::new(&data).join("sonnets.txt").is_file(), "{data}");

    // Resumed from another directory: the recorded corpus is found.
    let r = diffuse(
        &[
            "train",
            "text",
            "--out",
            "../work/run",
            "--resume",
            "--device",
            "cpu",
        ],
        Some(&elsewhere),
    );
    assert!(r.success(), "resume from elsewhere: {}", r.stderr);
    // Evaluated from another directory without --data: the model names its corpus.
    let r = diffuse(
        &[
            "eval",
            "text",
            "--model",
            "../work/run/model",
            "--json",
            "--device",
            "cpu",
        ],
        Some(&elsewhere),
    );
    assert!(r.success(), "eval from elsewhere: {}", r.stderr);
    let report = json(&r.stdout);
    assert_eq!(report["data"], data.as_str());
    assert!(report["bits_per_char"].as_f64().unwrap().is_finite());

    // The corpus moves: --data with --resume points the run at its new place (relative to
    // where the command runs), recorded absolute again; the other settings stay the run's.
    std::fs::rename(work.join("corpus"), tmp.path().join("moved")).unwrap();
    let r = diffuse(
        &[
            "train",
            "text",
            "--out",
            "../work/run",
            "--resume",
            "--device",
            "cpu",
        ],
        Some(&elsewhere),
    );
    assert_user_error(&r, &["corpus", "no such file or folder"]);
    let r = diffuse(
        &[
            "train",
            "text",
            "--out",
            "../work/run",
            "--resume",
            "--data",
            "../moved",
            "--steps",
            "8",
            "--device",
            "cpu",
        ],
        Some(&elsewhere),
    );
    assert!(r.success(), "resume with --data: {}", r.stderr);
    let config = read_json(&run.join("run.json"));
    let moved = config["data"].as_str().unwrap();
    assert!(
        Path::new(moved).is_absolute() && Path::new(moved).join("sonnets.txt").is_file(),
        "{moved}"
    );
    assert_eq!(config["seq_len"], 32);
    assert_eq!(config["model"]["hidden_size"], 32);
    assert_eq!(config["train"]["steps"], 8);
}

#[test]
fn a_local_folder_wins_over_the_corpus_of_the_same_name() {
    // A folder called shakespeare here: it is what --data shakespeare reads, not the bundled
    // corpus (whether or not that is downloaded).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("shakespeare")).unwrap();
    std::fs::write(tmp.path().join("shakespeare/mine.txt"), "abba baab\n").unwrap();
    let r = diffuse(
        &[
            "train-tokenizer",
            "--data",
            "shakespeare",
            "--kind",
            "char",
            "--out",
            "tok.json",
        ],
        Some(tmp.path()),
    );
    assert!(r.success(), "{}", r.stderr);
    let vocab = read_json(&tmp.path().join("tok.json"))["model"]["vocab"].clone();
    let mut tokens: Vec<&str> = vocab
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    tokens.sort();
    assert_eq!(tokens, ["\n", " ", "a", "b"]);
}

/// Give `flag`, already among `args`, the value `value` (a flag may appear only once).
fn set_flag<'a>(args: &mut [&'a str], flag: &str, value: &'a str) {
    let i = args.iter().position(|a| *a == flag).expect("flag present");
    args[i + 1] = value;
}

/// The `"step"`s of a JSONL file.
fn logged_steps(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| json(l)["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn validation_records_after_the_resumed_step_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let resume = |run: &Path| {
        let r = diffuse(
            &[
                "train",
                "text",
                "--out",
                s(run),
                "--resume",
                "--device",
                "cpu",
            ],
            None,
        );
        assert!(r.success(), "resume: {}", r.stderr);
    };
    // Stopped at step 5 with its last checkpoint at step 3: the estimate of step 4 is redone.
    let run = tmp.path().join("run");
    let mut args = train_args(s(&data), s(&run), "mdlm", &["--stop-after", "5"]);
    set_flag(&mut args, "--sample-every", "2");
    let r = diffuse(&args, None);
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(logged_steps(&run.join("validation.jsonl")), [2, 4]);
    resume(&run);
    assert_eq!(logged_steps(&run.join("validation.jsonl")), [2, 4, 6]);

    // Stopped before its first checkpoint: the run starts again and so does its log.
    let run = tmp.path().join("early");
    let mut args = train_args(s(&data), s(&run), "mdlm", &["--stop-after", "2"]);
    set_flag(&mut args, "--sample-every", "2");
    set_flag(&mut args, "--checkpoint-every", "100");
    let r = diffuse(&args, None);
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(logged_steps(&run.join("validation.jsonl")), [2]);
    resume(&run);
    assert_eq!(logged_steps(&run.join("validation.jsonl")), [2, 4, 6]);
}

#[test]
fn a_d3pm_preview_scores_a_stratified_share_of_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let run = tmp.path().join("d3pm");
    // The default T = 1000 (the full bound would be 1000 model calls per batch) and 5 steps:
    // one preview, at the end.
    let mut args = train_args(s(&data), s(&run), "d3pm-absorbing", &[]);
    set_flag(&mut args, "--d3pm-timesteps", "1000");
    set_flag(&mut args, "--steps", "5");
    let r = diffuse(&args, None);
    assert!(r.success(), "{}", r.stderr);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("validation.jsonl"))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let record = &lines[0];
    assert_eq!(record["step"], 5, "{record}");
    // 8 of the 1000 terms per sequence (the decoder and one of each of 7 strata), on at most
    // 16 held-out sequences.
    assert_eq!(record["terms"], 8, "{record}");
    assert_eq!(record["timesteps"], 1000, "{record}");
    let (n, all) = (
        record["sequences"].as_u64().unwrap(),
        record["held_out_sequences"].as_u64().unwrap(),
    );
    assert!((1..=16).contains(&n) && n <= all, "{record}");
    let estimate = record["estimate"].as_str().unwrap();
    assert!(
        estimate.contains("stratified") && estimate.contains("eval text"),
        "{estimate}"
    );
    let bpc = record["bits_per_char"].as_f64().unwrap();
    assert!(bpc.is_finite() && bpc > 0.0, "{record}");
}

#[test]
fn a_tokenizer_with_gaps_in_its_ids_keeps_json_output_clean_and_small_files_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    // A character tokenizer of the corpus with ids 5, 6 and 7 unused.
    let plain = tmp.path().join("plain.json");
    let r = diffuse(
        &[
            "train-tokenizer",
            "--data",
            s(&data),
            "--kind",
            "char",
            "--out",
            s(&plain),
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let mut tokenizer = read_json(&plain);
    for id in tokenizer["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        let n = id.as_u64().unwrap();
        if n >= 5 {
            *id = (n + 3).into();
        }
    }
    let gaps = tmp.path().join("gaps.json");
    std::fs::write(&gaps, tokenizer.to_string()).unwrap();
    let run = tmp.path().join("run");
    let r = diffuse(
        &train_args(s(&data), s(&run), "mdlm", &["--tokenizer", s(&gaps)]),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let model = run.join("model");

    // stdout is the JSON document and nothing else; no sample holds an unused id (decoding
    // would drop it, leaving the sample short of --length).
    for process_model in [model.clone(), {
        let ar = tmp.path().join("ar");
        let r = diffuse(
            &train_args(
                s(&data),
                s(&ar),
                "autoregressive",
                &["--tokenizer", s(&gaps)],
            ),
            None,
        );
        assert!(r.success(), "{}", r.stderr);
        ar.join("model")
    }] {
        let out = sample(&process_model, &["--length", "16"]);
        for text in out["samples"].as_array().unwrap() {
            assert_eq!(text.as_str().unwrap().chars().count(), 16, "{text}");
        }
    }
    // D3PM-uniform would spread its noise over the unused ids: refused before any training.
    let uniform = tmp.path().join("uniform");
    let r = diffuse(
        &train_args(
            s(&data),
            s(&uniform),
            "d3pm-uniform",
            &["--tokenizer", s(&gaps)],
        ),
        None,
    );
    assert_user_error(&r, &["--tokenizer", "gaps", "d3pm-uniform"]);
    assert!(!uniform.join("checkpoints").exists());
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "text",
            "--model",
            s(&model),
            "--json",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    let r = eval(&[]);
    assert!(r.success(), "{}", r.stderr);
    assert!(json(&r.stdout)["bits_per_char"]
        .as_f64()
        .unwrap()
        .is_finite());

    // A file whose training part is far shorter than the context: only the held-out part
    // (36 characters, one sequence of 32) is needed.
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "Shall I compare thee to a summers day?\n\n").unwrap();
    let small_args = ["--data", s(&small), "--val-fraction", "0.9", "--limit", "2"];
    let r = eval(&small_args);
    assert!(r.success(), "{}", r.stderr);
    assert!(json(&r.stdout)["bits_per_char"]
        .as_f64()
        .unwrap()
        .is_finite());
    // Too little held out even so: one line with the count and the need.
    let r = eval(&["--data", s(&small), "--val-fraction", "0.5"]);
    assert_user_error(
        &r,
        &["--data", "held-out split has 20 tokens", "seq_len 32"],
    );
    let r = eval(&["--data", s(&small), "--val-fraction", "1"]);
    assert_user_error(&r, &["--val-fraction", "(0, 1)"]);
}

#[test]
fn nonsense_model_and_process_flags_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let out = tmp.path().join("run");
    for (extra, needles) in [
        (
            vec!["--d3pm-timesteps", "0"],
            vec!["--d3pm-timesteps", "at least 1"],
        ),
        (
            vec!["--hybrid-lambda", "NaN"],
            vec!["--hybrid-lambda", "NaN"],
        ),
        (vec!["--hybrid-lambda=-1"], vec!["--hybrid-lambda", ">= 0"]),
        (vec!["--heads", "0"], vec!["--heads", "at least 1"]),
        (vec!["--layers", "0"], vec!["--layers", "at least 1"]),
        (
            vec!["--hidden-size", "0"],
            vec!["--hidden-size", "at least 1"],
        ),
        (
            vec!["--hidden-size", "30"],
            vec!["--hidden-size", "--heads"],
        ),
        (
            vec!["--hidden-size", "6", "--heads", "2"],
            vec!["--hidden-size", "even"],
        ),
        (vec!["--mlp-ratio", "0"], vec!["--mlp-ratio", "0"]),
        (vec!["--mlp-ratio", "inf"], vec!["--mlp-ratio", "inf"]),
        (vec!["--dropout", "NaN"], vec!["--dropout"]),
        (vec!["--val-fraction", "NaN"], vec!["--val-fraction"]),
        (vec!["--seq-len", "1"], vec!["--seq-len", "at least 2"]),
        (
            vec!["--tokenizer", "bpe", "--vocab-size", "100"],
            vec!["--vocab-size", "256"],
        ),
    ] {
        let mut args = vec![
            "train",
            "text",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--process",
            "d3pm-absorbing",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(&extra);
        let r = diffuse(&args, None);
        assert_user_error(&r, &needles);
        assert!(
            !out.join("run.json").exists(),
            "{extra:?} left a run behind"
        );
    }
}

#[test]
fn flags_that_do_not_apply_are_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let out = tmp.path().join("run");
    for (process, extra, needles) in [
        (
            "mdlm",
            vec!["--d3pm-timesteps", "50"],
            vec!["--d3pm-timesteps", "D3PM"],
        ),
        (
            "mdlm",
            vec!["--hybrid-lambda", "0.5"],
            vec!["--hybrid-lambda", "D3PM"],
        ),
        (
            "autoregressive",
            vec!["--mask-schedule", "cosine"],
            vec!["--mask-schedule", "(mdlm, bd3lm)"],
        ),
        (
            "d3pm-uniform",
            vec!["--mask-schedule", "cosine"],
            vec!["--mask-schedule", "(mdlm, bd3lm)"],
        ),
        (
            "autoregressive",
            vec!["--time-conditioning", "true"],
            vec!["--time-conditioning", "d3pm-absorbing"],
        ),
        (
            "mdlm",
            vec!["--tokenizer", "char", "--vocab-size", "500"],
            vec!["--vocab-size", "--tokenizer bpe"],
        ),
        (
            "mdlm",
            vec!["--tokenizer", "some.json", "--vocab-size", "500"],
            vec!["--vocab-size", "--tokenizer bpe"],
        ),
        (
            "mdlm",
            vec!["--tokenizer", "nonexist.json"],
            vec!["--tokenizer: nonexist.json:"],
        ),
        (
            "mdlm",
            vec!["--seq-len", "32", "--val-fraction", "0.0001"],
            vec!["validation split", "--seq-len", "--val-fraction"],
        ),
    ] {
        let mut args = vec![
            "train",
            "text",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--process",
            process,
            "--device",
            "cpu",
        ];
        args.extend_from_slice(&extra);
        let r = diffuse(&args, None);
        assert_user_error(&r, &needles);
        assert!(
            !out.join("checkpoints").exists(),
            "{extra:?} trained anyway"
        );
    }
}

#[test]
fn sample_and_eval_take_run_dirs_check_outputs_first_and_d3pm_eval_ignores_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let run = tmp.path().join("d3pm");
    let r = diffuse(&train_args(s(&data), s(&run), "d3pm-absorbing", &[]), None);
    assert!(r.success(), "{}", r.stderr);

    // The run directory stands for its model/ folder, as with image and audio models.
    let out = sample(&run, &["--length", "16"]);
    assert_eq!(out["samples"].as_array().unwrap().len(), 2);

    // A tiny temperature is greedy decoding, not NaN (which gave id 0 everywhere).
    let out = sample(&run, &["--length", "16", "--temperature", "1e-320"]);
    let samples = out["samples"].as_array().unwrap();
    for text in samples {
        assert_eq!(text.as_str().unwrap().chars().count(), 16, "{text}");
    }
    let first = diffuse(
        &[
            "train-tokenizer",
            "--data",
            s(&data),
            "--kind",
            "char",
            "--out",
            s(&tmp.path().join("made/for/it/tokenizer.json")),
        ],
        None,
    );
    // train-tokenizer makes missing parent folders.
    assert!(first.success(), "{}", first.stderr);
    assert!(tmp.path().join("made/for/it/tokenizer.json").is_file());

    // Outputs are checked before the work.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let sample_out = |out: &Path| {
        diffuse(
            &[
                "sample",
                "text",
                "--model",
                s(&run),
                "--length",
                "8",
                "--device",
                "cpu",
                "--out",
                s(out),
            ],
            None,
        )
    };
    assert_user_error(&sample_out(tmp.path()), &["--out", "folder"]);
    assert_user_error(&sample_out(&file.join("x.txt")), &["--out", "a-file"]);
    let tokenizer_out = |out: &Path| {
        diffuse(
            &[
                "train-tokenizer",
                "--data",
                s(&data),
                "--kind",
                "bpe",
                "--vocab-size",
                "300",
                "--out",
                s(out),
            ],
            None,
        )
    };
    assert_user_error(&tokenizer_out(tmp.path()), &["--out", "folder"]);
    assert_user_error(&tokenizer_out(&file.join("t.json")), &["--out", "a-file"]);

    // D3PM's bound draws each sequence's noise from its own seeded stream.
    let eval = |batch: &str| {
        let r = diffuse(
            &[
                "eval",
                "text",
                "--model",
                s(&run),
                "--limit",
                "6",
                "--seed",
                "1",
                "--batch-size",
                batch,
                "--json",
                "--device",
                "cpu",
            ],
            None,
        );
        assert!(r.success(), "{}", r.stderr);
        json(&r.stdout)["bits_per_char"].as_f64().unwrap()
    };
    let (one, three) = (eval("1"), eval("3"));
    assert!((one - three).abs() < 1e-6 * one.abs(), "{one} vs {three}");

    // Autoregressive models take one model call per token: --steps is refused.
    let ar = tmp.path().join("ar");
    let r = diffuse(&train_args(s(&data), s(&ar), "autoregressive", &[]), None);
    assert!(r.success(), "{}", r.stderr);
    let r = diffuse(
        &[
            "sample",
            "text",
            "--model",
            s(&ar),
            "--steps",
            "5",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--steps", "one model call per token"]);
}

#[test]
fn bd3lm_trains_samples_past_its_context_evaluates_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus();
    let run = tmp.path().join("bd3lm");
    let r = diffuse(
        &train_args(
            s(&data),
            s(&run),
            "bd3lm",
            &["--block-size", "8", "--estimator", "count"],
        ),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let model = run.join("model");
    let info = read_json(&model.join("diffuse.json"));
    assert_eq!(info["process"]["kind"], "bd3lm");
    assert_eq!(info["process"]["block_size"], 8);
    assert_eq!(info["process"]["estimator"], "count");
    // No adaLN weights: the network takes no noise level.
    let config = read_json(&model.join("config.json"));
    assert_eq!(config["time_conditioning"], false);
    let weights = read_safetensors(&model.join("model.safetensors"));
    assert!(
        weights.keys().all(|k| !k.contains("modulation")),
        "{:?}",
        weights.keys()
    );
    // Past the 32-token context, after a prompt that ends inside a block.
    let out = sample(&model, &["--prompt", "Shall I", "--length", "80"]);
    for t in out["samples"].as_array().unwrap() {
        let t = t.as_str().unwrap();
        assert!(t.starts_with("Shall I") && t.chars().count() == 80, "{t:?}");
    }
    // Left to right one token per call by default; the other orders, and two tokens per call.
    let calls = |extra: &[&str]| {
        let mut args = vec!["--length", "64"];
        args.extend_from_slice(extra);
        let out = sample(&model, &args);
        for t in out["samples"].as_array().unwrap() {
            assert_eq!(t.as_str().unwrap().chars().count(), 64, "{extra:?}");
        }
        out["model_calls"].as_u64().unwrap()
    };
    // 8 blocks of 8: a call per token, and one per finished block for the key/value cache.
    assert_eq!(calls(&[]), 64 + 7);
    assert_eq!(calls(&["--order", "left-to-right", "--steps", "4"]), 32 + 7);
    assert_eq!(calls(&["--order", "confidence"]), 64 + 7);
    assert!(calls(&["--order", "random", "--steps", "2"]) <= 16 + 7);

    // Training further from these weights: with a vanishing learning rate the new model is the
    // old one; the network, tokenizer and process come from it.
    let start_from = |init: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "text",
            "--data",
            s(&data),
            "--out",
            s(out),
            "--init",
            s(init),
            "--steps",
            "1",
            "--lr",
            "1e-12",
            "--batch-size",
            "4",
            "--sample-every",
            "0",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let r = diffuse(&args, None);
        assert!(r.success(), "{extra:?}: {}", r.stderr);
        read_safetensors(&out.join("model/model.safetensors"))
    };
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    // Each tensor of `a` agrees with the leading rows of `b`'s tensor of that name, if any.
    let agree = |a: &SafeTensors, b: &SafeTensors| {
        for (name, (_, shape, bytes)) in a {
            let Some((_, shape2, bytes2)) = b.get(name) else {
                continue;
            };
            assert_eq!(shape[1..], shape2[1..], "{name}");
            let (x, y) = (floats(bytes), floats(bytes2));
            assert!(x.len() <= y.len(), "{name}");
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-5, "{name}: {a} against {b}");
            }
        }
    };
    let further = tmp.path().join("further");
    let before = read_safetensors(&model.join("model.safetensors"));
    let after = start_from(&run, &further, &[]);
    let recorded = read_json(&further.join("run.json"));
    assert!(
        Path::new(recorded["init"].as_str().unwrap()).is_absolute(),
        "{recorded}"
    );
    assert_eq!(
        read_json(&further.join("model/diffuse.json"))["process"]["block_size"],
        8
    );
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    agree(&before, &after);

    // Adapting to another process: into an autoregressive model ([MASK]'s rows dropped), and
    // back into BD3-LM with blocks of 4 (the shared ids' rows kept, [MASK]'s from the seed).
    let vocab = before["token_embed.weight"].1[0];
    let ar = tmp.path().join("adapted-ar");
    let ar_weights = start_from(&run, &ar, &["--process", "autoregressive"]);
    let ar_config = read_json(&ar.join("model/config.json"));
    assert_eq!(ar_config["causal"], true);
    assert_eq!(ar_config["vocab_size"], vocab - 1);
    assert_eq!(ar_weights["token_embed.weight"].1[0], vocab - 1);
    agree(&ar_weights, &before);
    let back = tmp.path().join("adapted-bd3lm");
    let back_weights = start_from(&ar, &back, &["--process", "bd3lm", "--block-size", "4"]);
    let info = read_json(&back.join("model/diffuse.json"));
    assert_eq!(info["process"]["kind"], "bd3lm");
    assert_eq!(info["process"]["block_size"], 4);
    assert_eq!(read_json(&back.join("model/config.json"))["causal"], false);
    assert_eq!(back_weights["token_embed.weight"].1[0], vocab);
    agree(&ar_weights, &back_weights);
    let mask_row = |w: &SafeTensors| {
        let (_, shape, bytes) = &w["token_embed.weight"];
        floats(bytes)[(vocab - 1) * shape[1]..].to_vec()
    };
    assert_ne!(mask_row(&back_weights), mask_row(&before));
    // Same process, another block size: every weight carries over.
    agree(
        &before,
        &start_from(
            &run,
            &tmp.path().join("blocks-of-4"),
            &["--block-size", "4"],
        ),
    );
    let bad_init = tmp.path().join("bad-init");
    for (extra, words) in [
        (
            vec!["--init", s(&run), "--hidden-size", "64"],
            vec!["--hidden-size", "--init"],
        ),
        (
            vec!["--init", s(&run), "--seq-len", "64"],
            vec!["--seq-len", "--init"],
        ),
        (
            vec!["--init", s(&run), "--block-size", "3"],
            vec!["--block-size", "3"],
        ),
        (vec!["--init", s(&bad_init)], vec!["--init"]),
    ] {
        let out = tmp.path().join("refused");
        let mut args = vec![
            "train",
            "text",
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(&extra);
        assert_user_error(&diffuse(&args, None), &words);
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }

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
    assert_eq!(report["kind"], "upper bound");
    assert!(
        report["protocol"].as_str().unwrap().contains("blocks of 8"),
        "{report}"
    );
    // The same bound estimated with times: within a few standard errors of the counts' estimate.
    let r = diffuse(
        &[
            "eval",
            "text",
            "--model",
            s(&model),
            "--json",
            "--device",
            "cpu",
            "--estimator",
            "time",
            "--mc-samples",
            "16",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let time = json(&r.stdout);
    let (a, b) = (
        report["bits_per_char"].as_f64().unwrap(),
        time["bits_per_char"].as_f64().unwrap(),
    );
    let se = report["bits_per_char_std_error"].as_f64().unwrap()
        + time["bits_per_char_std_error"].as_f64().unwrap();
    assert!(
        (a - b).abs() < 4.0 * se + 0.01 * a,
        "count {a} vs time {b} (se {se})"
    );

    // Bad input: one line naming the flag, nothing written.
    let sample_err = |extra: &[&str]| {
        let mut args = vec!["sample", "text", "--model", s(&model), "--device", "cpu"];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    assert_user_error(
        &sample_err(&["--infill", "Shall I ____ thee"]),
        &["--infill", "bd3lm"],
    );
    assert_user_error(
        &sample_err(&["--prompt", "Shall I compare thee", "--length", "8"]),
        &["--prompt", "longer than --length"],
    );
    let bad = tmp.path().join("bad");
    for (extra, words) in [
        (vec!["--block-size", "0"], vec!["--block-size", "divide"]),
        (vec!["--block-size", "5"], vec!["--block-size", "divide"]),
        (vec!["--block-size", "64"], vec!["--block-size", "32"]),
        (
            vec!["--time-conditioning", "true"],
            vec!["--time-conditioning", "bd3lm"],
        ),
        (
            vec!["--mask-rate-range", "0.8,0.3"],
            vec!["--mask-rate-range"],
        ),
        (vec!["--estimator", "exact"], vec!["--estimator", "exact"]),
        (vec!["--loss", "mse"], vec!["--loss", "mse"]),
    ] {
        let r = diffuse(&train_args(s(&data), s(&bad), "bd3lm", &extra), None);
        assert_user_error(&r, &words);
        assert!(!bad.exists(), "{extra:?} wrote {}", bad.display());
    }
    let r = diffuse(
        &train_args(s(&data), s(&bad), "mdlm", &["--block-size", "4"]),
        None,
    );
    assert_user_error(&r, &["--block-size", "bd3lm"]);
    let r = diffuse(
        &train_args(
            s(&data),
            s(&bad),
            "autoregressive",
            &["--estimator", "count"],
        ),
        None,
    );
    assert_user_error(&r, &["--estimator", "mdlm, bd3lm"]);
    assert!(!bad.exists());
    // An estimator for a model without one.
    let ar = tmp.path().join("ar");
    assert!(diffuse(&train_args(s(&data), s(&ar), "autoregressive", &[]), None).success());
    let r = diffuse(
        &[
            "eval",
            "text",
            "--model",
            s(&ar.join("model")),
            "--device",
            "cpu",
            "--estimator",
            "count",
        ],
        None,
    );
    assert_user_error(&r, &["--estimator", "autoregressive"]);
    // An unmasking order for a model that masks nothing, and an unknown one.
    let order = |o: &str| {
        diffuse(
            &[
                "sample",
                "text",
                "--model",
                s(&ar.join("model")),
                "--device",
                "cpu",
                "--order",
                o,
            ],
            None,
        )
    };
    assert_user_error(&order("confidence"), &["--order", "autoregressive"]);
    assert_user_error(&order("sideways"), &["--order", "sideways"]);
}
