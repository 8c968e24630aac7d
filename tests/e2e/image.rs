//! The image commands end to end: train on the committed MNIST subset, resume exactly, sample,
//! inpaint, edit, evaluate; seeded parity with diffusers' pipelines; one-line errors for bad input.

use diffuse_e2e::{
    assert_user_error, diffuse, path_str as s, read_f32, read_safetensors, repo_root,
};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("data").join("fixtures").join(name)
}

/// A tiny run on the MNIST subset: 50-step schedule so sampling and the bound stay fast.
fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "image",
        "--data",
        data,
        "--out",
        out,
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--block-out-channels",
        "16,32",
        "--layers-per-block",
        "1",
        "--norm-num-groups",
        "8",
        "--attention-levels",
        "1",
        "--attention-head-dim",
        "8",
        "--num-train-timesteps",
        "50",
        "--checkpoint-every",
        "3",
        "--sample-every",
        "3",
        "--sample-num",
        "4",
        "--sample-steps",
        "2",
        "--log-every",
        "1",
        "--warmup-steps",
        "2",
        "--lr-schedule",
        "cosine",
        "--ema-decay",
        "0.99",
        "--hflip",
        "--seed",
        "3",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn train_resume_sample_inpaint_edit_and_eval_on_the_mnist_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("mnist-subset");
    let run = tmp.path().join("run");
    let r = diffuse(&train_args(s(&data), s(&run), &[]), None);
    assert!(r.success(), "train failed: {}", r.stderr);
    // The closing line's hint runs as shown, with the fast default sampler.
    let hint = r
        .stdout
        .split("sample it with `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no sampling hint in: {}", r.stdout));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[..3], ["diffuse", "sample", "image"], "{hint}");
    let h = diffuse(&words[1..], Some(tmp.path()));
    assert!(h.success(), "`{hint}`: {}", h.stderr);
    assert!(h.stdout.contains("dpm++2m, 20 steps"), "{}", h.stdout);
    assert!(tmp.path().join("grid.png").is_file());
    for file in [
        "run.json",
        "metrics.jsonl",
        "loss.png",
        "samples/step-000000003.png",
        "samples/step-000000006.png",
        "model/model_index.json",
        "model/unet/config.json",
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/scheduler/scheduler_config.json",
        "checkpoints/step-000000006/trainer.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing after training");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "{metrics}");

    // Interrupted after 3 steps and resumed: the same final weights, bit for bit.
    let run2 = tmp.path().join("run2");
    let r = diffuse(
        &train_args(s(&data), s(&run2), &["--stop-after", "3"]),
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert!(r.stdout.contains("continue with --resume"), "{}", r.stdout);
    assert!(!run2.join("model").exists());
    let r = diffuse(
        &[
            "train",
            "image",
            "--out",
            s(&run2),
            "--resume",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "resume failed: {}", r.stderr);
    let weights = "model/unet/diffusion_pytorch_model.safetensors";
    let (a, b) = (
        read_safetensors(&run.join(weights)),
        read_safetensors(&run2.join(weights)),
    );
    assert_eq!(a.len(), b.len());
    for (name, tensor) in &a {
        assert!(b[name] == *tensor, "{name} differs after resume");
    }
    let metrics2 = std::fs::read_to_string(run2.join("metrics.jsonl")).unwrap();
    let losses = |m: &str| -> Vec<f64> {
        m.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(losses(&metrics), losses(&metrics2));

    // Sample: grid (PNG and JPEG), one file per image, raw floats.
    let model = run.join("model");
    let grid = tmp.path().join("grid.png");
    let raw = tmp.path().join("raw.safetensors");
    let dir = tmp.path().join("imgs");
    let r = diffuse(
        &[
            "sample",
            "image",
            "--model",
            s(&model),
            "--num",
            "4",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--out",
            s(&grid),
            "--out-dir",
            s(&dir),
            "--raw",
            s(&raw),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let (w, h) = png_size(&grid);
    assert!(w >= 56 && h >= 56, "grid {w}x{h}");
    let (shape, values) = read_f32(&raw, "samples");
    assert_eq!(shape, vec![4, 1, 28, 28]);
    assert!(values
        .iter()
        .all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    assert_eq!(png_size(&dir.join("sample-00000.png")), (28, 28));
    let jpeg = tmp.path().join("grid.JPG");
    let r = diffuse(
        &[
            "sample",
            "image",
            "--model",
            s(&run),
            "--num",
            "2",
            "--sampler",
            "dpm++2m",
            "--steps",
            "4",
            "--out",
            s(&jpeg),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(
        &std::fs::read(&jpeg).unwrap()[..2],
        &[0xff, 0xd8],
        "not a JPEG"
    );

    // Inpaint the left half of a sample back, plain and with RePaint; SDEdit it.
    let picture = dir.join("sample-00001.png");
    let mask = tmp.path().join("mask.png");
    image::GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 14 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let out = tmp.path().join("inpainted.png");
    let raw_inpaint = tmp.path().join("inpainted.safetensors");
    for extra in [&[][..], &["--resample", "2", "--jump", "2"][..]] {
        let mut args = vec![
            "inpaint",
            "image",
            "--model",
            s(&model),
            "--image",
            s(&picture),
            "--mask",
            s(&mask),
            "--sampler",
            "ddim",
            "--steps",
            "4",
            "--out",
            s(&out),
            "--raw",
            s(&raw_inpaint),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let r = diffuse(&args, None);
        assert!(r.success(), "{}", r.stderr);
        assert_eq!(png_size(&out), (28, 28));
        // The kept half equals the input image (to 8-bit rounding).
        let (_, got) = read_f32(&raw_inpaint, "samples");
        let input = image::open(&picture).unwrap().to_luma8();
        for y in 0..28 {
            for x in 0..14 {
                let want = input.get_pixel(x, y)[0] as f32 / 127.5 - 1.0;
                let v = got[(y * 28 + x) as usize];
                assert!((v - want).abs() < 1e-4, "pixel ({x},{y}) {v} vs {want}");
            }
        }
    }
    let edited = tmp.path().join("edited.png");
    let r = diffuse(
        &[
            "inpaint",
            "image",
            "--model",
            s(&model),
            "--from",
            s(&picture),
            "--strength",
            "0.5",
            "--sampler",
            "ddim",
            "--steps",
            "4",
            "--out",
            s(&edited),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    assert_eq!(png_size(&edited), (28, 28));

    // Bits/dim on two test images from the full 50-term bound.
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
            "2",
            "--batch-size",
            "2",
            "--json",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let bpd = report["bpd"]["value"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0 && bpd < 16.0, "bits/dim {bpd}");
    assert_eq!(report["bpd"]["images"], 2);

    // The classifier-feature Fréchet distance: a classifier trained on the subset, then the
    // model's samples against the subset's test-split statistics, reported with its protocol.
    let classifier = dir.join("classifier");
    let r = diffuse(
        &[
            "train",
            "classifier",
            "--data",
            s(&data),
            "--out",
            s(&classifier),
            "--steps",
            "30",
            "--batch-size",
            "32",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    for file in [
        "config.json",
        "model.safetensors",
        "info.json",
        "reference_stats.safetensors",
    ] {
        assert!(classifier.join(file).is_file(), "classifier lacks {file}");
    }
    // A second `train classifier` into the same --out is refused and leaves the classifier
    // as it was (it once replaced the bundled one).
    let weights = std::fs::read(classifier.join("model.safetensors")).unwrap();
    let r = diffuse(
        &[
            "train",
            "classifier",
            "--data",
            s(&data),
            "--out",
            s(&classifier),
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(
        &r,
        &["--out", "holds a classifier", "refusing to overwrite"],
    );
    assert_eq!(
        std::fs::read(classifier.join("model.safetensors")).unwrap(),
        weights,
        "a refused run changed the classifier"
    );
    let fid = || {
        let r = diffuse(
            &[
                "eval",
                "image",
                "--model",
                s(&model),
                "--data",
                s(&data),
                "--metric",
                "fid",
                "--classifier",
                s(&classifier),
                "--num",
                "16",
                "--batch-size",
                "8",
                "--sampler",
                "ddim",
                "--steps",
                "4",
                "--seed",
                "3",
                "--json",
                "--device",
                "cpu",
            ],
            None,
        );
        assert!(r.success(), "{}", r.stderr);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["fid"].clone()
    };
    let first = fid();
    let value = first["value"].as_f64().unwrap();
    assert!(value.is_finite() && value > 0.0, "Fréchet distance {value}");
    assert_eq!(first["samples"], 16);
    assert_eq!(first["reference_count"], 128);
    assert_eq!(first["reference_split"], "test");
    let sampling = first["sampling"].as_str().unwrap();
    assert!(
        sampling.contains("ddim") && sampling.contains("4 steps") && sampling.contains("seed 3"),
        "{sampling}"
    );
    // Seeded: the same command gives the same number.
    assert_eq!(fid()["value"].as_f64().unwrap(), value);
    // The distance between its floor (16 real train images against the same reference) and its
    // bound (16 noise images), precision and recall beside the real images' own, the class mix.
    let floor = first["floor"].as_f64().unwrap();
    assert!(floor.is_finite() && floor > 0.0, "floor {floor}");
    assert_eq!(first["floor_images"], 16);
    assert_eq!(first["floor_held_out"], true);
    let ratio = first["ratio"].as_f64().unwrap();
    assert!(
        (ratio - value / floor).abs() <= 1e-12 * ratio.abs(),
        "{first}"
    );
    let noise = first["noise_bound"].as_f64().unwrap();
    assert!(
        noise > floor,
        "noise bound {noise} not above the floor {floor}"
    );
    for key in ["precision_recall", "real_precision_recall"] {
        let pr = &first[key];
        for figure in ["precision", "recall"] {
            let v = pr[figure].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key}.{figure} {v}");
        }
        assert_eq!(pr["neighbours"], 3);
        assert_eq!(pr["real"], 16);
        assert_eq!(pr["generated"], 16);
    }
    for key in ["generated_mix", "test_mix"] {
        let mix: Vec<f64> = first[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(mix.len(), 10, "{key}");
        assert!(
            (mix.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{key} {mix:?}"
        );
    }
    assert_eq!(first["test_images"], 128);
    assert!(first["conditional"].is_null(), "{first}");
    // As text, with the pictures: the class histogram only (no classes were asked for).
    let plots = tmp.path().join("plots");
    let eval_fid = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "image",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--metric",
            "fid",
            "--classifier",
            s(&classifier),
            "--batch-size",
            "8",
            "--sampler",
            "ddim",
            "--steps",
            "4",
            "--seed",
            "3",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    let r = eval_fid(&["--num", "16", "--plots", s(&plots)]);
    assert!(r.success(), "{}", r.stderr);
    for needle in [
        "Fréchet distance",
        "floor",
        "16 real train images",
        "ratio",
        "bound",
        "precision",
        "recall",
        "(real: ",
        "Kynkäänniemi",
    ] {
        assert!(r.stdout.contains(needle), "no {needle:?} in: {}", r.stdout);
    }
    assert!(plots.join("classes.png").is_file());
    assert!(!plots.join("confusion.png").exists());
    // Classes for a model without them; the report's flags without the report; too few images.
    for (extra, needles) in [
        (
            &["--num", "16", "--classes", "3"][..],
            &["--classes", "not class-conditioned"][..],
        ),
        (&["--num", "3"], &["--num", "at least 4"]),
    ] {
        assert_user_error(&eval_fid(extra), needles);
    }
    for flag in ["--classes", "--plots"] {
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
                flag,
                "3",
                "--device",
                "cpu",
            ],
            None,
        );
        assert_user_error(&r, &[flag, "only for --metric fid"]);
    }
}

/// A class-conditional model asked for every class in turn (and for some), judged by a classifier
/// trained on the same subset: the share of images put in the requested class per class, beside
/// the classifier's own on test images, and one clear line for classes it does not have.
#[test]
fn eval_fid_reports_a_class_conditional_model_per_requested_class() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("mnist-subset");
    let run = tmp.path().join("run");
    let r = diffuse(
        &train_args(s(&data), s(&run), &["--class-conditional"]),
        None,
    );
    assert!(r.success(), "train failed: {}", r.stderr);
    let model = run.join("model");
    let classifier = tmp.path().join("classifier");
    let r = diffuse(
        &[
            "train",
            "classifier",
            "--data",
            s(&data),
            "--out",
            s(&classifier),
            "--steps",
            "30",
            "--batch-size",
            "32",
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "{}", r.stderr);
    let plots = tmp.path().join("plots");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "image",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--metric",
            "fid",
            "--classifier",
            s(&classifier),
            "--batch-size",
            "10",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--seed",
            "1",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    // Every class, two images each, guided.
    let r = eval(&[
        "--num",
        "20",
        "--guidance",
        "2",
        "--json",
        "--plots",
        s(&plots),
    ]);
    assert!(r.success(), "{}", r.stderr);
    let report = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["fid"].clone();
    let c = &report["conditional"];
    let per_class = c["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 10, "{c}");
    let mut mean = 0.0;
    for (i, p) in per_class.iter().enumerate() {
        assert_eq!(p["class"], i.to_string());
        assert_eq!(p["clips"], 2);
        let a = p["accuracy"].as_f64().unwrap();
        assert!([0.0, 0.5, 1.0].contains(&a), "{p}");
        mean += a / 10.0;
    }
    assert!((c["mean_accuracy"].as_f64().unwrap() - mean).abs() < 1e-12);
    let confusion = c["confusion"].as_array().unwrap();
    for (i, row) in confusion.iter().enumerate() {
        let row: Vec<u64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(row.len(), 10);
        assert_eq!(row.iter().sum::<u64>(), 2, "row {i}");
        assert_eq!(
            row[i] as f64 / 2.0,
            per_class[i]["accuracy"].as_f64().unwrap()
        );
    }
    assert!((c["chance"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    // The classifier's own share on the test images of each class (every class has some).
    let real = c["real_mean_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&real), "{c}");
    let tested: u64 = c["real_per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["clips"].as_u64().unwrap())
        .sum();
    assert_eq!(tested, 128);
    assert_eq!(report["requested_classes"].as_array().unwrap().len(), 10);
    assert_eq!(report["guidance"], 2.0);
    assert!(plots.join("confusion.png").is_file() && plots.join("classes.png").is_file());
    // Some classes, shared out evenly; as text.
    let r = eval(&["--num", "9", "--classes", "3,7"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stdout.contains("in the requested class:") && r.stdout.contains("chance 10.0%"),
        "{}",
        r.stdout
    );
    let r = eval(&["--num", "9", "--classes", "3,7", "--json"]);
    let report = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["fid"].clone();
    let clips: Vec<(String, u64)> = report["conditional"]["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["class"].as_str().unwrap().to_string(),
                p["clips"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(clips, [("3".to_string(), 5), ("7".to_string(), 4)]);
    // Mistakes: one line each, nothing written.
    let nothing = tmp.path().join("nothing");
    for (extra, needles) in [
        (&["--classes", "12"][..], &["--classes", "out of range"][..]),
        (&["--classes", "seven"], &["--classes", "'seven'"]),
        (&["--classes", ","], &["--classes", "names no class"]),
        (
            &["--class", "3", "--classes", "4"],
            &["--classes", "either --class or --classes"],
        ),
        (&["--num", "5"], &["--num", "10 requested classes"]),
    ] {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--plots", s(&nothing)]);
        assert_user_error(&eval(&args), needles);
        assert!(!nothing.exists(), "{extra:?} wrote its pictures");
    }
}

/// diffusers' `DDPMPipeline` / `DDIMPipeline` with `generator=torch.manual_seed(S)` on the
/// committed pipeline (written by diffusers itself, `data/fixtures/make_pipeline_fixture.py`).
#[test]
fn seeded_sampling_reproduces_diffusers_pipelines() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("ddpm-tiny-golden.json")).unwrap())
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("ddpm-tiny");
    for case in golden["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let raw = tmp.path().join(format!("{name}.safetensors"));
        let steps = case["steps"].to_string();
        let seed = case["seed"].to_string();
        let num = case["num"].to_string();
        let mut args = vec![
            "sample",
            "image",
            "--model",
            s(&model),
            "--sampler",
            case["sampler"].as_str().unwrap(),
            "--steps",
            &steps,
            "--seed",
            &seed,
            "--num",
            &num,
            "--raw",
            s(&raw),
            "--device",
            "cpu",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>();
        if let Some(eta) = case["eta"].as_f64() {
            args.extend(["--eta".to_owned(), eta.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = diffuse(&refs, None);
        assert!(r.success(), "{name}: {}", r.stderr);
        let (shape, got) = read_f32(&raw, "samples");
        let want: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // diffusers returns [B, H, W, C] in [0, 1]; diffuse [B, C, H, W] in [-1, 1] (C = 1 here).
        assert_eq!(shape.iter().product::<usize>(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| ((*g as f64 / 2.0 + 0.5).clamp(0.0, 1.0) - w).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-3, "{name}: max |diffuse - diffusers| = {worst}");
    }
}

#[test]
fn bad_image_inputs_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("ddpm-tiny");
    let out = tmp.path().join("out.png");
    let mask16 = tmp.path().join("mask16.png");
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 255 } else { 0 }]))
        .save(&mask16)
        .unwrap();
    let inpaint = |image: &Path, mask: &Path| {
        diffuse(
            &[
                "inpaint",
                "image",
                "--model",
                s(&model),
                "--image",
                s(image),
                "--mask",
                s(mask),
                "--steps",
                "2",
                "--out",
                s(&out),
                "--device",
                "cpu",
            ],
            None,
        )
    };
    // Wrong size and wrong channel count.
    let big = tmp.path().join("big.png");
    image::GrayImage::new(20, 20).save(&big).unwrap();
    assert_user_error(&inpaint(&big, &mask16), &["--image", "20x20", "16x16"]);
    let rgb = tmp.path().join("rgb.png");
    image::RgbImage::new(16, 16).save(&rgb).unwrap();
    assert_user_error(&inpaint(&rgb, &mask16), &["--image", "RGB", "grayscale"]);
    // Corrupt PNG.
    let corrupt = tmp.path().join("corrupt.png");
    let mut bytes = std::fs::read(&mask16).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    assert_user_error(&inpaint(&corrupt, &mask16), &["corrupt.png"]);
    // Mask of another size; mask not binary.
    let good = tmp.path().join("good.png");
    image::GrayImage::new(16, 16).save(&good).unwrap();
    let mask20 = tmp.path().join("mask20.png");
    image::GrayImage::new(20, 20).save(&mask20).unwrap();
    assert_user_error(&inpaint(&good, &mask20), &["--mask", "20x20"]);
    let grey = tmp.path().join("grey.png");
    image::GrayImage::from_pixel(16, 16, image::Luma([128]))
        .save(&grey)
        .unwrap();
    assert_user_error(&inpaint(&good, &grey), &["grey.png", "binary"]);
    assert!(!out.exists(), "a failed command wrote its output");

    // --metric fid with a directory that holds no classifier.
    let r = diffuse(
        &[
            "eval",
            "image",
            "--model",
            s(&model),
            "--data",
            s(&fixture("mnist-subset")),
            "--metric",
            "fid",
            "--classifier",
            s(tmp.path()),
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--classifier", "not a classifier directory"]);

    // A model directory missing a file; a config with an unknown block type.
    let broken = tmp.path().join("broken");
    copy_dir(&model, &broken);
    std::fs::remove_file(broken.join("scheduler/scheduler_config.json")).unwrap();
    let sample = |m: &Path, out: &Path| {
        diffuse(
            &[
                "sample",
                "image",
                "--model",
                s(m),
                "--num",
                "1",
                "--steps",
                "2",
                "--out",
                s(out),
                "--device",
                "cpu",
            ],
            None,
        )
    };
    assert_user_error(
        &sample(&broken, &out),
        &["scheduler/scheduler_config.json", "missing"],
    );
    let odd = tmp.path().join("odd");
    copy_dir(&model, &odd);
    let config_path = odd.join("unet/config.json");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("AttnDownBlock2D", "CrossAttnDownBlock2D");
    std::fs::write(&config_path, text).unwrap();
    assert_user_error(&sample(&odd, &out), &["CrossAttnDownBlock2D"]);
    // An output format chosen by an unknown extension; nothing written.
    let gif = tmp.path().join("grid.gif");
    assert_user_error(&sample(&model, &gif), &["--out", ".png"]);
    assert!(!gif.exists() && !out.exists());
    // Unknown sampler; guidance on an unconditional model.
    let r = diffuse(
        &[
            "sample",
            "image",
            "--model",
            s(&model),
            "--sampler",
            "plms",
            "--out",
            s(&out),
        ],
        None,
    );
    assert_user_error(&r, &["--sampler", "plms"]);
    // Training into a directory that holds something, without --resume.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let data = fixture("mnist-subset");
    let r = diffuse(&train_args(s(&data), s(&busy), &[]), None);
    assert_user_error(&r, &["--out", "--resume"]);
    assert_eq!(
        std::fs::read_to_string(busy.join("notes.txt")).unwrap(),
        "mine"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn sizes_outputs_and_sampler_steps_are_checked_before_the_work() {
    let tmp = tempfile::tempdir().unwrap();
    // A folder of 30x30 pictures and a UNet that halves twice: one line with a size that works,
    // and no run directory left behind.
    let pictures = tmp.path().join("pictures");
    std::fs::create_dir(&pictures).unwrap();
    for i in 0..4 {
        image::GrayImage::from_fn(30, 30, |x, y| image::Luma([((x * 7 + y * i) % 256) as u8]))
            .save(pictures.join(format!("{i}.png")))
            .unwrap();
    }
    let run = tmp.path().join("run");
    let r = diffuse(
        &[
            "train",
            "image",
            "--data",
            s(&pictures),
            "--out",
            s(&run),
            "--steps",
            "2",
            "--block-out-channels",
            "16,32,32",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(
        &r,
        &["--resolution", "30x30", "multiples of 4", "--resolution 32"],
    );
    assert!(!run.exists(), "a refused run left {}", run.display());

    let model = fixture("ddpm-tiny");
    let raw = tmp.path().join("raw.safetensors");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "image",
            "--model",
            s(&model),
            "--num",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        diffuse(&args, None)
    };
    // Checked before sampling, so nothing is written.
    let grid = tmp.path().join("grid.png");
    let r = sample(&["--out", s(&grid), "--nrow", "0", "--raw", s(&raw)]);
    assert_user_error(&r, &["--nrow"]);
    assert!(!raw.exists() && !grid.exists());
    let a_file = tmp.path().join("a-file");
    std::fs::write(&a_file, "mine").unwrap();
    let r = sample(&["--out", s(&a_file.join("grid.png")), "--raw", s(&raw)]);
    assert_user_error(&r, &["--out"]);
    assert!(!raw.exists());
    let r = sample(&["--out-dir", s(&a_file), "--raw", s(&raw)]);
    assert_user_error(&r, &["--out-dir", "is a file"]);
    assert!(!raw.exists());
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "mine");
    let r = sample(&["--out", s(&grid), "--guidance-rescale", "5"]);
    assert_user_error(&r, &["--guidance-rescale", "[0, 1]"]);
    // Missing folders of an output are made.
    let nested = tmp.path().join("new/folder/grid.png");
    let r = sample(&["--out", s(&nested)]);
    assert!(r.success(), "{}", r.stderr);
    assert!(nested.is_file());

    // Heun takes two model calls per step: SDEdit starts, and RePaint jumps back, at whole steps.
    let picture = tmp.path().join("picture.png");
    image::GrayImage::from_fn(16, 16, |x, y| image::Luma([((x * 16 + y) % 256) as u8]))
        .save(&picture)
        .unwrap();
    let edited = tmp.path().join("edited.png");
    for strength in ["0.1", "0.5", "0.75"] {
        let r = diffuse(
            &[
                "inpaint",
                "image",
                "--model",
                s(&model),
                "--from",
                s(&picture),
                "--strength",
                strength,
                "--sampler",
                "heun",
                "--steps",
                "6",
                "--out",
                s(&edited),
                "--device",
                "cpu",
            ],
            None,
        );
        assert!(r.success(), "heun SDEdit at {strength}: {}", r.stderr);
    }
    let mask = tmp.path().join("mask.png");
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
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
            "--sampler",
            "heun",
            "--steps",
            "6",
            "--resample",
            "2",
            "--jump",
            "2",
            "--out",
            s(&edited),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(r.success(), "heun RePaint: {}", r.stderr);
}

#[test]
fn flags_of_the_other_process_and_class_embeddings_without_labels_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("mnist-subset");
    let run = tmp.path().join("run");
    let r = diffuse(
        &train_args(s(&data), s(&run), &["--thinning", "poisson"]),
        None,
    );
    assert_user_error(&r, &["--thinning", "--process gaussian"]);
    let r = diffuse(
        &train_args(
            s(&data),
            s(&run),
            &["--process", "poisson", "--prediction-type", "v_prediction"],
        ),
        None,
    );
    assert_user_error(&r, &["--prediction-type", "--process poisson"]);
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("ddpm-tiny/unet/config.json")).unwrap(),
    )
    .unwrap();
    config["num_class_embeds"] = 5.into();
    let path = tmp.path().join("classes.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let r = diffuse(
        &train_args(s(&data), s(&run), &["--unet-config", s(&path)]),
        None,
    );
    assert_user_error(&r, &["--unet-config", "--class-conditional"]);
    std::fs::write(&path, "[1, 2]").unwrap();
    let r = diffuse(
        &train_args(s(&data), s(&run), &["--unet-config", s(&path)]),
        None,
    );
    assert_user_error(&r, &["--unet-config", "JSON object"]);
    assert!(!run.exists());
}

/// Sample `model` with `extra` flags into `dir`, returning the run and the raw samples' values.
fn sample_raw(
    model: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> (diffuse_e2e::Run, Vec<f32>) {
    let grid = dir.join(format!("{name}.png"));
    let raw = dir.join(format!("{name}.safetensors"));
    let mut args = vec![
        "sample",
        "image",
        "--model",
        s(model),
        "--num",
        "2",
        "--seed",
        "7",
        "--out",
        s(&grid),
        "--raw",
        s(&raw),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    let r = diffuse(&args, None);
    assert!(r.success(), "{name}: {}", r.stderr);
    let values = read_f32(&raw, "samples").1;
    (r, values)
}

/// The default is fast (DPM-Solver++ 2M in 20 steps), says so, and is exactly what naming it
/// gives; `--sampler model` is the model's own saved scheduler, as diffusers' DDPMPipeline
/// samples it (the old default), step for step.
#[test]
fn the_default_sampler_is_dpm_solver_in_20_steps_and_model_is_the_saved_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("ddpm-tiny");
    let (r, default) = sample_raw(&model, tmp.path(), "default", &[]);
    assert!(r.stdout.contains("dpm++2m, 20 steps"), "{}", r.stdout);
    let (_, named) = sample_raw(
        &model,
        tmp.path(),
        "named",
        &["--sampler", "dpm++2m", "--steps", "20"],
    );
    assert_eq!(default, named, "the default is not dpm++2m in 20 steps");
    // Named without --steps, the DPM-Solver++ samplers take 20 steps too.
    let (r, _) = sample_raw(&model, tmp.path(), "dpm3", &["--sampler", "dpm++3m"]);
    assert!(r.stdout.contains("dpm++3m, 20 steps"), "{}", r.stdout);

    // The saved DDPMScheduler reproduces diffusers' DDPMPipeline (25 steps, seed 7).
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("ddpm-tiny-golden.json")).unwrap())
            .unwrap();
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ddpm")
        .unwrap();
    assert_eq!(
        (case["seed"].as_u64(), case["num"].as_u64()),
        (Some(7), Some(2))
    );
    let (r, saved) = sample_raw(
        &model,
        tmp.path(),
        "model",
        &["--sampler", "model", "--steps", "25"],
    );
    assert!(
        r.stdout.contains("model (DDPMScheduler), 25 steps"),
        "{}",
        r.stdout
    );
    let worst = saved
        .iter()
        .zip(case["values"].as_array().unwrap())
        .map(|(g, w)| ((*g as f64 / 2.0 + 0.5).clamp(0.0, 1.0) - w.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-3, "max |diffuse - diffusers| = {worst}");
    // On a DDPM model, `model` and `ddpm` are the same sampler, bit for bit.
    let (_, ddpm) = sample_raw(
        &model,
        tmp.path(),
        "ddpm",
        &["--sampler", "ddpm", "--steps", "25"],
    );
    assert_eq!(saved, ddpm);
}

/// Samplers of other kinds of model are refused by name, before anything is written, and each
/// command's help lists only its own samplers.
#[test]
fn samplers_that_do_not_fit_the_model_are_refused_and_not_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("ddpm-tiny");
    let out = tmp.path().join("out.png");
    let picture = tmp.path().join("picture.png");
    image::GrayImage::new(16, 16).save(&picture).unwrap();
    let data = fixture("mnist-subset");
    for (sampler, needles) in [
        ("diffwave-fast", &["audio", "dpm++2m"][..]),
        ("jump", &["count", "dpm++2m"][..]),
        ("blackout", &["count", "dpm++2m"][..]),
    ] {
        let commands: [Vec<&str>; 3] = [
            vec!["sample", "image", "--out", s(&out)],
            vec![
                "inpaint",
                "image",
                "--from",
                s(&picture),
                "--strength",
                "0.5",
                "--out",
                s(&out),
            ],
            vec![
                "eval",
                "image",
                "--metric",
                "fid",
                "--data",
                s(&data),
                "--num",
                "2",
            ],
        ];
        for mut args in commands {
            args.extend_from_slice(&[
                "--model",
                s(&model),
                "--sampler",
                sampler,
                "--device",
                "cpu",
            ]);
            let r = diffuse(&args, None);
            let mut want = vec!["--sampler", sampler];
            want.extend_from_slice(needles);
            assert_user_error(&r, &want);
            assert!(!out.exists(), "{args:?} wrote its output");
        }
    }
    // The help of --sampler: from the flag to the next one.
    let help = |args: &[&str]| {
        let r = diffuse(args, None);
        assert!(r.success(), "{}", r.stderr);
        let from = r
            .stdout
            .find("--sampler <SAMPLER>")
            .expect("a --sampler flag");
        let text = &r.stdout[from..];
        let to = text.find("--steps <STEPS>").expect("a --steps flag");
        text[..to].to_owned()
    };
    for verb in ["sample", "inpaint", "eval"] {
        let text = help(&[verb, "image", "--help"]);
        assert!(
            !text.contains("diffwave-fast"),
            "{verb} image --help: {text}"
        );
        for name in ["dpm++2m", "ddpm", "model", "jump", "blackout"] {
            assert!(
                text.contains(name),
                "{verb} image --help lacks {name}: {text}"
            );
        }
        let text = help(&[verb, "audio", "--help"]);
        assert!(
            !text.contains("jump") && !text.contains("blackout"),
            "{verb} audio --help: {text}"
        );
        assert!(
            text.contains("diffwave-fast"),
            "{verb} audio --help: {text}"
        );
    }
    // Audio refuses the count samplers by name too.
    let r = diffuse(
        &[
            "sample",
            "audio",
            "--model",
            s(&repo_root().join("data/models/drums")),
            "--sampler",
            "jump",
            "--out",
            s(&tmp.path().join("clip.wav")),
            "--device",
            "cpu",
        ],
        None,
    );
    assert_user_error(&r, &["--sampler", "jump", "count", "audio"]);
    assert!(!tmp.path().join("clip.wav").exists());
}

/// A model of another modality given to a command is named as such, with the command for it.
#[test]
fn a_model_of_another_kind_is_named_with_the_command_that_fits_it() {
    let tmp = tempfile::tempdir().unwrap();
    let models = repo_root().join("data/models");
    let (mnist, drums, text) = (
        models.join("mnist"),
        models.join("drums"),
        models.join("shakespeare"),
    );
    let classifier = models.join("mnist-classifier");
    // A count model directory, as `train counts` lays it out.
    let counts = tmp.path().join("counts");
    std::fs::create_dir(&counts).unwrap();
    std::fs::write(counts.join("config.json"), r#"{"dim": 2}"#).unwrap();
    std::fs::write(counts.join("diffuse.json"), r#"{"columns": ["a", "b"]}"#).unwrap();
    let out = tmp.path().join("out.png");
    let picture = tmp.path().join("picture.png");
    image::GrayImage::new(28, 28).save(&picture).unwrap();
    let wav = tmp.path().join("out.wav");
    let table = tmp.path().join("rows.csv");
    let cases: Vec<(Vec<&str>, &Path, [&str; 2])> = vec![
        (
            vec!["sample", "image", "--out", s(&out)],
            &text,
            ["a text model", "`diffuse sample text`"],
        ),
        (
            vec!["sample", "image", "--out", s(&out)],
            &drums,
            ["an audio model", "`diffuse sample audio`"],
        ),
        (
            vec!["sample", "image", "--out", s(&out)],
            &counts,
            ["a count model", "`diffuse sample counts`"],
        ),
        (
            vec!["sample", "image", "--out", s(&out)],
            &classifier,
            ["image classifier", "--classifier"],
        ),
        (
            vec![
                "inpaint",
                "image",
                "--from",
                s(&picture),
                "--strength",
                "0.5",
                "--out",
                s(&out),
            ],
            &text,
            ["a text model", "`diffuse sample text --infill`"],
        ),
        (
            vec!["eval", "image", "--metric", "bpd"],
            &drums,
            ["an audio model", "`diffuse eval audio`"],
        ),
        (
            vec!["sample", "audio", "--out", s(&wav)],
            &mnist,
            ["an image model", "`diffuse sample image`"],
        ),
        (
            vec!["eval", "audio"],
            &text,
            ["a text model", "`diffuse eval text`"],
        ),
        (
            vec!["sample", "text"],
            &mnist,
            ["an image model", "`diffuse sample image`"],
        ),
        (
            vec!["eval", "text"],
            &counts,
            ["a count model", "`diffuse eval counts`"],
        ),
        (
            vec!["sample", "counts", "--out", s(&table)],
            &drums,
            ["an audio model", "`diffuse sample audio`"],
        ),
        (
            vec!["eval", "counts"],
            &mnist,
            ["an image model", "`diffuse eval image`"],
        ),
    ];
    for (mut args, model, needles) in cases {
        args.extend_from_slice(&["--model", s(model), "--device", "cpu"]);
        let r = diffuse(&args, None);
        assert_user_error(
            &r,
            &["--model", s(model), "this is", needles[0], needles[1]],
        );
        for file in [&out, &wav, &table] {
            assert!(!file.exists(), "{args:?} wrote {}", file.display());
        }
    }
}
