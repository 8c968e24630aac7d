//! The feature classifier and the Fréchet distance: pytorch-fid 0.3.0 golden values
//! (`tests/golden/make_fid_golden.py`), the distance's algebra, a learning test on the committed
//! MNIST subset, and the classifier directory round trip.

use diffuse_image::classifier::{
    accuracy, load_classifier_dir, load_reference_stats, save_classifier_dir, train_classifier,
    Classifier, ClassifierConfig, ClassifierInfo, ClassifierTrainConfig,
};
use diffuse_image::data::ImageDataset;
use diffuse_image::fid::{
    classifier_features, classifier_logits_and_features, frechet_distance, quality_report,
    FeatureStats, FidReport, QualityInputs,
};
use diffuse_tensor::{manual_seed, Error};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

fn golden() -> Value {
    serde_json::from_str(include_str!("../golden/fid.json")).unwrap()
}

fn tensor(values: &Value, shape: &[i64]) -> Tensor {
    let v: Vec<f64> = values
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn frechet_distance_matches_pytorch_fid() {
    let g = golden();
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let d = case["d"].as_i64().unwrap();
        let a = tensor(&case["a"], &[-1, d]);
        let b = tensor(&case["b"], &[-1, d]);
        let sa = FeatureStats::from_features(&a);
        let sb = FeatureStats::from_features(&b.to_kind(Kind::Float));
        assert_eq!(sa.count, a.size()[0]);
        assert!(max_abs_diff(&sa.mean, &tensor(&case["mean_a"], &[d])) < 1e-12);
        assert!(max_abs_diff(&sa.cov, &tensor(&case["cov_a"], &[d, d])) < 1e-12);
        let got = frechet_distance(&sa, &sb);
        // The f32 copy of `b` rounds its 4-decimal values, hence 1e-6 rather than f64 precision.
        for key in ["fid", "fid_eigh"] {
            let want = case[key].as_f64().unwrap();
            let rel = (got - want).abs() / want.abs();
            assert!(
                rel < 1e-6,
                "{name}: {got} vs {key} {want} (relative {rel:e})"
            );
        }
        // In f64 throughout, the same method as numpy's eigh-based value: only rounding differs, and
        // the square roots of a singular product's zero eigenvalues magnify it to ~1e-9.
        let exact = frechet_distance(&sa, &FeatureStats::from_features(&b));
        let want = case["fid_eigh"].as_f64().unwrap();
        assert!(
            (exact - want).abs() / want < 1e-8,
            "{name}: {exact} vs {want}"
        );
    }
}

/// Features [N, D] with a random full covariance, drawn under the rng lock.
fn random_features(n: i64, d: i64, seed: u64) -> Tensor {
    let _guard = crate::rng_lock();
    manual_seed(seed);
    let mix = Tensor::randn([d, d], (Kind::Double, Device::Cpu)) / (d as f64).sqrt();
    Tensor::randn([n, d], (Kind::Double, Device::Cpu)).matmul(&mix)
}

#[test]
fn frechet_distance_algebra() {
    let d = 128;
    let a = random_features(2000, d, 1);
    let b = random_features(1500, d, 2) * 1.3 + 0.2;
    let sa = FeatureStats::from_features(&a);
    let sb = FeatureStats::from_features(&b);

    // The covariance term cancels traces of this size; its rounding (magnified by square roots of
    // the smallest eigenvalues, and different with libtorch's thread count) is measured against it.
    let scale = sa.cov.trace().double_value(&[]) * 2.0;
    assert!(frechet_distance(&sa, &sa) < 1e-10 * scale);
    let ab = frechet_distance(&sa, &sb);
    let ba = frechet_distance(&sb, &sa);
    assert!(ab > 1.0);
    assert!((ab - ba).abs() / ab < 1e-10, "{ab} vs {ba}");

    // Equal covariances: the distance is exactly the squared mean shift.
    let shift = Tensor::linspace(-0.5, 0.5, d, (Kind::Double, Device::Cpu));
    let shifted = FeatureStats::from_features(&(&a + shift.unsqueeze(0)));
    let want = shift.square().sum(Kind::Double).double_value(&[]);
    let got = frechet_distance(&sa, &shifted);
    assert!((got - want).abs() < 1e-10 * scale, "{got} vs {want}");

    // One-dimensional Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    let one = |mean: f64, var: f64| FeatureStats {
        mean: Tensor::from_slice(&[mean]),
        cov: Tensor::from_slice(&[var]).view([1, 1]),
        count: 10,
    };
    let got = frechet_distance(&one(1.0, 4.0), &one(-2.0, 9.0));
    assert!((got - (9.0 + 1.0)).abs() < 1e-12, "{got}");
}

#[test]
fn feature_stats_round_trip_and_reject_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let stats = FeatureStats::from_features(&random_features(50, 6, 3));
    let path = dir.path().join("stats.safetensors");
    stats.save(&path, None).unwrap();
    let (back, metadata) = FeatureStats::load(&path).unwrap();
    assert_eq!(back.count, 50);
    assert_eq!(metadata["format"], "diffuse-feature-stats");
    assert!(back.mean.equal(&stats.mean) && back.cov.equal(&stats.cov));

    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    assert!(matches!(
        FeatureStats::load(&bad),
        Err(Error::Format { .. })
    ));
}

#[test]
fn classifier_config_is_validated_and_resizes_inputs() {
    let vs = nn::VarStore::new(Device::Cpu);
    for bad in [
        ClassifierConfig {
            channels: vec![],
            ..Default::default()
        },
        ClassifierConfig {
            channels: vec![12, 20],
            ..Default::default()
        },
        ClassifierConfig {
            dropout: 1.0,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            Classifier::new(&vs.root(), &bad),
            Err(Error::InvalidArgument(_))
        ));
    }
    let cfg: ClassifierConfig = serde_json::from_str(r#"{"channels": [8, 16]}"#).unwrap();
    assert_eq!(cfg.feature_dim, ClassifierConfig::default().feature_dim);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = {
        let _guard = crate::rng_lock();
        manual_seed(0);
        Classifier::new(&vs.root(), &cfg).unwrap()
    };
    let xs = Tensor::zeros([3, 1, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(model.forward_t(&xs, false).size(), [3, 10]);
    assert_eq!(model.features(&xs).size(), [3, cfg.feature_dim]);
}

/// Root of the workspace (the test runs in crates/image).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A split ("train" or "t10k") of the committed MNIST subset: images [N, 1, 28, 28] u8 and
/// labels [N] i64.
fn mnist_subset(split: &str) -> (Tensor, Tensor) {
    let dir = workspace_root().join("data/fixtures/mnist-subset");
    let images = dir.join(format!("{split}-images-idx3-ubyte"));
    let labels = dir.join(format!("{split}-labels-idx1-ubyte"));
    let data = ImageDataset::from_idx(&images, Some(&labels)).unwrap();
    (
        data.pixels().shallow_clone(),
        data.labels().unwrap().shallow_clone(),
    )
}

#[test]
fn classifier_learns_mnist_and_round_trips() {
    // 256 training and 128 held-out (test-split) digits.
    let (train_x, train_y) = mnist_subset("train");
    let (test_x, test_y) = mnist_subset("t10k");
    let (n, held_out) = (train_x.size()[0], test_x.size()[0]);

    let cfg = ClassifierConfig {
        channels: vec![8, 16, 32],
        feature_dim: 32,
        ..Default::default()
    };
    let train_cfg = ClassifierTrainConfig {
        steps: 200,
        batch_size: 32,
        lr: 1e-2,
        warmup_steps: 20,
        ..Default::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let (model, loss) = {
        let _guard = crate::rng_lock();
        manual_seed(7);
        let model = Classifier::new(&vs.root(), &cfg).unwrap();
        let loss = train_classifier(&model, &vs, &train_x, &train_y, &train_cfg).unwrap();
        (model, loss)
    };
    let acc = accuracy(&model, &test_x, &test_y, 50);
    assert!(loss < 1.0, "final training loss {loss}");
    assert!(acc > 0.7, "held-out accuracy {acc} (chance is 0.1)");

    // Features of real held-out digits are closer to the training digits' than noise is.
    let unit = |x: &Tensor| x.to_kind(Kind::Float) / 127.5 - 1.0;
    let reference = FeatureStats::from_features(&classifier_features(&model, &unit(&train_x), 64));
    let held = FeatureStats::from_features(&classifier_features(&model, &test_x, 64));
    let noise = {
        let _guard = crate::rng_lock();
        manual_seed(3);
        Tensor::rand([held_out, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
    };
    let noise = FeatureStats::from_features(&classifier_features(&model, &noise, 64));
    let (fid_real, fid_noise) = (
        frechet_distance(&reference, &held),
        frechet_distance(&reference, &noise),
    );
    println!(
        "loss {loss:.4}, held-out accuracy {acc:.4}, FID real {fid_real:.4}, noise {fid_noise:.4}"
    );
    assert!(
        fid_real * 5.0 < fid_noise,
        "real {fid_real}, noise {fid_noise}"
    );

    let dir = tempfile::tempdir().unwrap();
    let info = ClassifierInfo {
        dataset: "mnist-subset".into(),
        train_images: n,
        train: train_cfg,
        train_loss: loss,
        test_images: held_out,
        test_accuracy: acc,
        ..Default::default()
    };
    save_classifier_dir(dir.path(), &model, &vs, &info, Some(&reference)).unwrap();
    let (loaded, _loaded_vs, loaded_info) = load_classifier_dir(dir.path(), Device::Cpu).unwrap();
    assert_eq!(loaded_info, info);
    assert_eq!(loaded.config(), model.config());
    let xs = unit(&test_x.narrow(0, 0, 16));
    assert!(loaded
        .forward_t(&xs, false)
        .equal(&model.forward_t(&xs, false)));
    let stats = load_reference_stats(dir.path()).unwrap().unwrap();
    assert!(stats.mean.equal(&reference.mean) && stats.cov.equal(&reference.cov));
    assert_eq!(stats.count, n);

    let report = FidReport::new(fid_real, &held, &stats, loaded.config(), &loaded_info);
    assert_eq!(report.samples, held_out);
    assert!(report.protocol.contains("Heusel et al. 2017"));
    assert!(report.summary().contains("mnist-subset"));

    // A directory with a wrong-shaped weight names it.
    let other = ClassifierConfig {
        feature_dim: 48,
        ..cfg.clone()
    };
    diffuse_tensor::atomic::write_json_atomic(&dir.path().join("config.json"), &other).unwrap();
    let Err(err) = load_classifier_dir(dir.path(), Device::Cpu) else {
        panic!("a classifier with the wrong feature width loaded");
    };
    let err = err.to_string();
    assert!(
        err.contains("feature.weight") && err.contains("head.weight"),
        "{err}"
    );
    assert!(load_reference_stats(&dir.path().join("absent"))
        .unwrap()
        .is_none());
}

/// The quality report's exact identities: generated images that are the training images
/// themselves sit at their own floor (ratio 1, the same precision and recall as the real ones),
/// noise sits above it, and images asked for classes are counted as the classifier sees them.
#[test]
fn the_quality_report_puts_training_images_at_their_floor() {
    let (train_x, _) = mnist_subset("train");
    let (test_x, test_y) = mnist_subset("t10k");
    let cfg = ClassifierConfig {
        channels: vec![8, 16],
        feature_dim: 16,
        ..Default::default()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = {
        let _guard = crate::rng_lock();
        manual_seed(5);
        Classifier::new(&vs.root(), &cfg).unwrap()
    };
    let info = ClassifierInfo {
        dataset: "mnist-subset".into(),
        test_accuracy: 0.5,
        ..Default::default()
    };
    let reference = FeatureStats::from_features(&classifier_features(&model, &test_x, 64));
    let names: Vec<String> = (0..10).map(|c| c.to_string()).collect();
    // All 256 training images, as floats: the floor set is the same images in another order.
    let generated = train_x.to_kind(Kind::Float) / 127.5 - 1.0;
    let predicted = classifier_logits_and_features(&model, &generated, 64)
        .0
        .argmax(-1, false);
    let inputs = QualityInputs {
        generated: &generated,
        requested: Some(&predicted),
        reference: &reference,
        reference_data: ("mnist-subset", "test"),
        train: &train_x,
        train_held_out: true,
        test: &test_x,
        test_labels: Some(&test_y),
        class_names: &names,
        seed: 3,
        batch_size: 64,
    };
    let report = {
        let _guard = crate::rng_lock();
        quality_report(&model, &info, &inputs).unwrap()
    };
    assert_eq!(report.floor_images, 256);
    // The same images in another order: only the summation order of the statistics differs.
    assert!((report.ratio - 1.0).abs() < 1e-6, "{}", report.ratio);
    assert_eq!(report.precision_recall, report.real_precision_recall);
    assert_eq!(report.precision_recall.real, 128);
    assert!(report.noise_bound > report.floor, "{report:?}");
    // Every image was "asked for" the class the classifier puts it in: all shares are 1.
    let c = report.conditional.as_ref().unwrap();
    assert_eq!(c.mean_accuracy, 1.0);
    assert!(c.per_class.iter().all(|p| p.accuracy == Some(1.0)));
    let asked: u64 = c.per_class.iter().map(|p| p.clips).sum();
    assert_eq!(asked, 256);
    assert!((report.generated_mix.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(report.test_images, 128);
    assert!(
        report.summary().contains("ratio 1.0x"),
        "{}",
        report.summary()
    );
    // Seeded: the same inputs give the same report.
    let again = {
        let _guard = crate::rng_lock();
        quality_report(&model, &info, &inputs).unwrap()
    };
    assert_eq!(again, report);
    // Too few images, and names that are not the classifier's, are errors.
    let few = generated.narrow(0, 0, 3);
    let bad = [
        quality_report(
            &model,
            &info,
            &QualityInputs {
                generated: &few,
                requested: None,
                ..inputs
            },
        ),
        quality_report(
            &model,
            &info,
            &QualityInputs {
                class_names: &names[..9],
                ..inputs
            },
        ),
    ];
    for r in bad {
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
}
