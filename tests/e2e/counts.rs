//! The count commands end to end on the committed negative-binomial fixture: train a count model
//! a few steps, resume exactly, sample CSV and .npy tables (with columns given), evaluate the
//! earth mover's distance and bits/dim; count diffusion on images (`--process poisson`); one-line
//! errors for bad count data and flags. Tables are parsed by hand here.

use diffuse_e2e::{assert_user_error, diffuse, path_str as s, read_safetensors, repo_root};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    repo_root().join("data/fixtures/counts/nbinom-mixture.csv")
}

fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    train_args_steps(data, out, "6", extra)
}

fn train_args_steps<'a>(
    data: &'a str,
    out: &'a str,
    steps: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "counts",
        "--data",
        data,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "64",
        "--hidden",
        "32",
        "--blocks",
        "1",
        "--num-train-timesteps",
        "50",
        "--checkpoint-every",
        "3",
        "--sample-every",
        "3",
        "--sample-num",
        "50",
        "--sample-steps",
        "5",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
        "--seed",
        "4",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

/// (header, rows) of a CSV file of integers.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<i64>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let rows = lines
        .map(|l| {
            l.split(',')
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .unwrap_or_else(|_| panic!("{v:?} in {l}"))
                })
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn count_models_train_resume_sample_and_evaluate_on_the_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture();
    let run = tmp.path().join("run");
    let r = diffuse(&train_args(s(&data), s(&run), &[]), None);
    assert!(r.success(), "train failed: {}", r.stderr);
    for file in [
        "run.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step-000000003.png",
        "samples/step-000000006.png",
        "model/config.json",
        "model/model.safetensors",
        "model/diffuse.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing after training");
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model/diffuse.json")).unwrap())
            .unwrap();
    assert_eq!(info["columns"], serde_json::json!(["a", "b", "c"]));
    // The data mean of the fixture's training rows (all columns) is about 8.9.
    let mean = info["process"]["signal_mean"].as_f64().unwrap();
    assert!((7.0..11.0).contains(&mean), "{mean}");

    // Interrupted and resumed: the same weights, bit for bit.
    let run2 = tmp.path().join("run2");
    let r = diffuse(
        &train_args(s(&data), s(&run2), &["--stop-after", "3"]),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(r.stdout.contains("continue with --resume"), "{}", r.stdout);
    let r = diffuse(
        &[
            "train",
            "counts",
            "--out",
            s(&run2),
            "--resume",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "resume failed: {}", r.stderr);
    let (a, b) = (
        read_safetensors(&run.join("model/model.safetensors")),
        read_safetensors(&run2.join("model/model.safetensors")),
    );
    for (name, tensor) in &a {
        assert!(b[name] == *tensor, "{name} differs after resume");
    }

    // Sample a CSV table with histograms, and an .npy one.
    let model = run.join("model");
    let csv = tmp.path().join("out.csv");
    let hist = tmp.path().join("hist.png");
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&model),
            "--num",
            "40",
            "--steps",
            "10",
            "--out",
            s(&csv),
            "--histogram",
            s(&hist),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let (header, rows) = read_csv(&csv);
    assert_eq!(header, ["a", "b", "c"]);
    assert_eq!(rows.len(), 40);
    assert!(rows
        .iter()
        .all(|r| r.len() == 3 && r.iter().all(|&v| v >= 0)));
    assert!(hist.is_file());
    let npy = tmp.path().join("out.npy");
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&run),
            "--num",
            "7",
            "--steps",
            "5",
            "--sampler",
            "blackout",
            "--out",
            s(&npy),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(
        header.contains("'<i8'") && header.contains("(7, 3)"),
        "{header}"
    );

    // Columns given: every row keeps them exactly.
    let given = tmp.path().join("given.csv");
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&model),
            "--num",
            "30",
            "--steps",
            "10",
            "--given",
            "a=3,c=0",
            "--out",
            s(&given),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let (_, rows) = read_csv(&given);
    assert!(rows.iter().all(|r| r[0] == 3 && r[2] == 0), "{rows:?}");

    // Training from the .npy copy of the fixture: no header, so the columns are c0, c1, c2.
    let npy_run = tmp.path().join("npy-run");
    let npy_data = repo_root().join("data/fixtures/counts/nbinom-mixture.npy");
    let r = diffuse(&train_args_steps(s(&npy_data), s(&npy_run), "2", &[]), None);
    assert!(r.success(), "{}", r.stderr);
    let from_npy = tmp.path().join("from-npy.csv");
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&npy_run),
            "--num",
            "5",
            "--steps",
            "5",
            "--out",
            s(&from_npy),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(read_csv(&from_npy).0, ["c0", "c1", "c2"]);

    // Evaluation: EMD against the held-out rows, with its bounds, and bits/dim.
    let r = diffuse(
        &[
            "eval",
            "counts",
            "--model",
            s(&model),
            "--metric",
            "emd,bpd",
            "--num",
            "200",
            "--steps",
            "10",
            "--limit",
            "16",
            "--json",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let emd = &report["emd"];
    assert_eq!(emd["columns"].as_array().unwrap().len(), 3);
    assert!(emd["mean_emd"].as_f64().unwrap() > 0.0);
    assert!(emd["train_floor"].as_f64().unwrap() > 0.0);
    assert!(emd["poisson_baseline"].as_f64().unwrap() > 0.0);
    assert_eq!(report["held_out_rows"], 120);
    let bpd = report["bpd"]["value"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0, "{bpd}");
}

#[test]
fn count_diffusion_on_images_trains_samples_inpaints_and_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_root().join("data/fixtures/mnist-subset");
    let run = tmp.path().join("run");
    let r = diffuse(
        &[
            "train",
            "image",
            "--data",
            s(&data),
            "--out",
            s(&run),
            "--process",
            "poisson",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--block-out-channels",
            "16,32",
            "--norm-num-groups",
            "8",
            "--attention-levels",
            "none",
            "--num-train-timesteps",
            "40",
            "--sample-every",
            "0",
            "--sample-num",
            "4",
            "--sample-steps",
            "4",
            "--log-every",
            "1",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "train failed: {}", r.stderr);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model/diffuse.json")).unwrap())
            .unwrap();
    assert_eq!(info["process"]["thinning"], "binomial");
    let model = run.join("model");
    let grid = tmp.path().join("grid.png");
    let r = diffuse(
        &[
            "sample",
            "image",
            "--model",
            s(&model),
            "--num",
            "4",
            "--steps",
            "8",
            "--out",
            s(&grid),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(grid.is_file());
    // A Gaussian sampler on a count model is refused in one line.
    let r = diffuse(
        &[
            "sample",
            "image",
            "--model",
            s(&model),
            "--sampler",
            "ddim",
            "--out",
            s(&grid),
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--sampler", "jump", "blackout"]);
    // Inpainting keeps the known half exactly (a 28x28 picture, left half known).
    let picture = tmp.path().join("digit.png");
    let mask = tmp.path().join("mask.png");
    let digit =
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]));
    digit.save(&picture).unwrap();
    image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 14 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let out = tmp.path().join("filled.png");
    let r = diffuse(
        &[
            "inpaint",
            "image",
            "--model",
            s(&model),
            "--image",
            s(&picture),
            "--mask",
            s(&mask),
            "--steps",
            "8",
            "--sampler",
            "blackout",
            "--out",
            s(&out),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let filled = image::open(&out).unwrap().to_luma8();
    for y in 0..28 {
        for x in 0..14 {
            assert_eq!(filled.get_pixel(x, y), digit.get_pixel(x, y), "({x}, {y})");
        }
    }
    let r = diffuse(
        &[
            "eval",
            "image",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--metric",
            "bpd",
            "--limit",
            "4",
            "--batch-size",
            "4",
            "--json",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let bpd = report["bpd"]["value"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0, "{bpd}");
    assert!(report["bpd"]["protocol"]
        .as_str()
        .unwrap()
        .contains("binomial thinning"));
}

#[test]
fn bad_count_data_and_flags_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            "negative.csv",
            "a,b\n1,2\n3,-4\n",
            vec!["negative.csv:3", "-4 is negative"],
        ),
        (
            "fraction.csv",
            "a,b\n1,2.5\n",
            vec!["fraction.csv:2", "2.5 is not a whole number"],
        ),
        (
            "ragged.csv",
            "1,2,3\n4,5\n",
            vec!["ragged.csv:2", "2 values, expected 3"],
        ),
    ];
    for (name, text, needles) in cases {
        let path = write(name, text);
        let out = tmp.path().join(format!("run-{name}"));
        let r = diffuse(&train_args(s(&path), s(&out), &[]), None);
        assert_user_error(&r, &needles);
        assert!(!out.join("model").exists());
    }
    let good = fixture();
    for (extra, needles) in [
        (vec!["--thinning", "gamma"], vec!["--thinning", "gamma"]),
        (vec!["--lambda", "3"], vec!["--lambda", "poisson"]),
        (
            vec!["--jump-prediction", "v"],
            vec!["--jump-prediction", "x0, eps, deaths"],
        ),
        (
            vec!["--thinning", "poisson", "--jump-prediction", "deaths"],
            vec!["deaths", "binomial"],
        ),
        (vec!["--held-out", "1.5"], vec!["--held-out"]),
        (vec!["--logsnr-end", "12"], vec!["--logsnr-end"]),
    ] {
        let out = tmp.path().join("run-flags");
        let r = diffuse(&train_args(s(&good), s(&out), &extra), None);
        assert_user_error(&r, &needles);
    }
    // Sampling flags, checked before any work.
    let run = tmp.path().join("tiny");
    let r = diffuse(&train_args_steps(s(&good), s(&run), "1", &[]), None);
    assert!(r.success(), "{}", r.stderr);
    let model = run.join("model");
    for (extra, needles) in [
        (
            vec!["--out", "x.parquet"],
            vec!["--out", ".csv, .tsv or .npy"],
        ),
        (
            vec!["--out", "x.csv", "--given", "z=3"],
            vec!["--given", "no column 'z'"],
        ),
        (
            vec!["--out", "x.csv", "--given", "a=1.5"],
            vec!["--given", "whole"],
        ),
        (
            vec!["--out", "x.csv", "--given", "a=1,b=2,c=3"],
            vec!["--given", "nothing to generate"],
        ),
        (
            vec!["--out", "x.csv", "--steps", "51"],
            vec!["--steps", "1..=50"],
        ),
        (
            vec!["--out", "x.csv", "--sampler", "ddim"],
            vec!["--sampler", "jump, blackout"],
        ),
    ] {
        let mut args = vec!["sample", "counts", "--model", s(&model), "--device", "cpu"];
        args.extend_from_slice(&extra);
        let r = diffuse(&args, Some(tmp.path()));
        assert_user_error(&r, &needles);
    }
    let r = diffuse(
        &[
            "eval",
            "counts",
            "--model",
            s(&model),
            "--metric",
            "fid",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--metric", "emd or bpd"]);
}

#[test]
fn refused_runs_leave_out_reusable_and_runs_work_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // The training table is given relative to the working directory.
    std::fs::copy(fixture(), tmp.path().join("table.csv")).unwrap();
    let run = tmp.path().join("run");
    // A refused setting writes nothing, so the same --out works at once.
    for bad in [["--lr", "nan"], ["--grad-accum", "0"]] {
        let r = diffuse(&train_args("table.csv", s(&run), &bad), Some(tmp.path()));
        assert_user_error(&r, &[bad[0]]);
        assert!(!run.exists(), "{} left {}", bad[0], run.display());
    }
    let r = diffuse(
        &train_args("table.csv", s(&run), &["--stop-after", "3"]),
        Some(tmp.path()),
    );
    assert!(r.success(), "{}", r.stderr);
    // Resumed and used from elsewhere: the run recorded where its table is.
    let elsewhere = tempfile::tempdir().unwrap();
    let r = diffuse(
        &[
            "train",
            "counts",
            "--out",
            s(&run),
            "--resume",
            "--device",
            "cpu",
        ],
        Some(elsewhere.path()),
    );
    assert!(r.success(), "resume from elsewhere: {}", r.stderr);
    // A user's file is not replaced when the command fails; --given columns come out exactly.
    let keep = elsewhere.path().join("keep.csv");
    std::fs::write(&keep, "user data\n").unwrap();
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&run),
            "--num",
            "4",
            "--steps",
            "5",
            "--out",
            s(&keep),
            "--histogram",
            s(&elsewhere.path().join("h.png")),
            "--data",
            s(&elsewhere.path().join("missing.csv")),
            "--device",
            "cpu",
        ],
        Some(elsewhere.path()),
    );
    assert_user_error(&r, &["--data", "missing.csv"]);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "user data\n");
    let out = elsewhere.path().join("given.csv");
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&run),
            "--num",
            "4",
            "--steps",
            "5",
            "--out",
            s(&out),
            "--given",
            "0=16777217",
            "--histogram",
            s(&elsewhere.path().join("h.png")),
            "--device",
            "cpu",
        ],
        Some(elsewhere.path()),
    );
    assert!(r.success(), "{}", r.stderr);
    let (_, rows) = read_csv(&out);
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|row| row[0] == 16777217), "{rows:?}");
    assert!(elsewhere.path().join("h.png").is_file());
    let r = diffuse(
        &[
            "sample",
            "counts",
            "--model",
            s(&run),
            "--out",
            s(&out),
            "--given",
            "0=1e30",
        ],
        None,
    );
    assert_user_error(&r, &["--given", "2^53"]);
}

#[test]
fn run_directories_are_locked_resumable_after_a_bad_start_and_say_what_resume_ignores() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture();
    let run = tmp.path().join("run");
    // What a start interrupted at once leaves: a hidden temporary file and no checkpoint.
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    std::fs::write(run.join(".run.json.tmp-123-0"), "{").unwrap();
    // Another command holding the directory's lock is named.
    std::fs::write(run.join(".diffuse.lock"), "").unwrap();
    let held = std::fs::File::open(run.join(".diffuse.lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0);
    let args = train_args(s(&data), s(&run), &["--stop-after", "3"]);
    assert_user_error(&diffuse(&args, None), &["--out", "another diffuse command"]);
    drop(held);
    let r = diffuse(&args, None);
    assert!(
        r.success(),
        "the leftovers blocked a fresh start: {}",
        r.stderr
    );
    // --resume says which typed flags its run.json overrides.
    let r = diffuse(
        &[
            "train",
            "counts",
            "--out",
            s(&run),
            "--resume",
            "--lr",
            "0.5",
            "--hidden",
            "64",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stderr.contains("ignoring --hidden, --lr"),
        "no warning: {}",
        r.stderr
    );
    // Fewer steps than done is refused without touching run.json.
    let before = std::fs::read_to_string(run.join("run.json")).unwrap();
    let r = diffuse(
        &[
            "train",
            "counts",
            "--out",
            s(&run),
            "--resume",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--steps", "2", "6 steps"]);
    assert_eq!(
        std::fs::read_to_string(run.join("run.json")).unwrap(),
        before
    );
}

#[test]
fn resume_without_a_run_says_to_drop_resume() {
    // New-run flags with --resume on a folder that holds no run: the one line says to drop
    // --resume, with no warning that those flags are ignored (they are what the user wants).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bow");
    let r = diffuse(
        &[
            "train",
            "counts",
            "--data",
            s(&fixture()),
            "--out",
            s(&out),
            "--thinning",
            "poisson",
            "--jump-prediction",
            "eps",
            "--resume",
        ],
        None,
    );
    assert_user_error(&r, &["--resume", "holds no run", "drop --resume"]);
    assert!(!out.exists(), "a refused run left {}", out.display());
}
