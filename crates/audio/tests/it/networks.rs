//! The audio networks: parity with their PyTorch twins (fixtures from
//! `tests/golden/make_network_golden.py`, real fractional timesteps, one length the wrapper
//! pads, class labels, the position channel and attention levels), any length in and the same
//! length out, the zero-initialised output, time and class conditioning, what the position
//! channel does to translation equivariance, dropout, the bundled model still loading, and
//! `config.json` round trips and errors.

use crate::rng_lock;
use diffuse_audio::diffwave::DiffWaveConfig;
use diffuse_audio::network::{parameter_count, AudioNetwork, AudioNetworkConfig};
use diffuse_audio::unet1d::UNet1dConfig;
use diffuse_tensor::weights::{load_tensors, load_var_store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/networks")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn check_parity(name: &str) {
    let dir = fixture_dir(name);
    let config = AudioNetworkConfig::from_json_file(&dir.join("config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let net = AudioNetwork::new(&vs.root(), &config).unwrap();
    let (report, _) = load_var_store(&vs, &dir.join("model.safetensors"), true).unwrap();
    assert!(report.is_clean());
    let io = load_tensors(&dir.join("io.safetensors")).unwrap();
    let count: i64 = io.metadata["num_parameters"].parse().unwrap();
    assert_eq!(parameter_count(&vs), count, "{name}: parameter count");
    let io: BTreeMap<String, Tensor> = io.tensors.into_iter().collect();
    let labels = io.get("labels");
    assert_eq!(
        labels.is_some(),
        config.num_classes().is_some(),
        "{name}: labels"
    );
    let out = tch::no_grad(|| net.forward_t(&io["x"], &io["t"], labels, false));
    let diff = max_abs_diff(&out, &io["out"]);
    println!(
        "{name}: {count} parameters, x {:?}, t {:?}: max |diffuse - torch| = {diff:.3e}",
        io["x"].size(),
        Vec::<f32>::try_from(&io["t"]).unwrap()
    );
    assert!(diff <= TOLERANCE, "{name}: max abs diff {diff}");
}

#[test]
fn parity_diffwave() {
    check_parity("diffwave");
}

#[test]
fn parity_unet1d_attention_padded_length() {
    check_parity("unet1d_attention");
}

#[test]
fn parity_unet1d_without_attention() {
    check_parity("unet1d_plain");
}

#[test]
fn parity_unet1d_classes_position_and_attention_levels() {
    check_parity("unet1d_classes_position_attnlevels");
}

#[test]
fn parity_diffwave_classes_and_position() {
    check_parity("diffwave_classes");
}

fn small_diffwave() -> AudioNetworkConfig {
    AudioNetworkConfig::DiffWave(DiffWaveConfig {
        in_channels: 1,
        out_channels: 1,
        residual_channels: 8,
        residual_layers: 4,
        dilation_cycle: 2,
        time_embed_dim: 16,
        ..Default::default()
    })
}

fn small_unet(attention: bool) -> AudioNetworkConfig {
    AudioNetworkConfig::Unet1d(UNet1dConfig {
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 16, 16],
        down_factors: vec![4, 2],
        layers_per_block: 1,
        attention,
        attention_head_dim: 8,
        norm_num_groups: 4,
        dropout: 0.2,
        time_embed_dim: 16,
        ..Default::default()
    })
}

/// A network whose every weight is random (a fresh one has a zero output layer, so its output
/// is zero and depends on nothing).
fn random_network(cfg: &AudioNetworkConfig, seed: i64) -> (VarStore, AudioNetwork) {
    let _guard = rng_lock();
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let net = AudioNetwork::new(&vs.root(), cfg).unwrap();
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            let noise = Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.3;
            var.copy_(&noise);
        }
    });
    (vs, net)
}

fn audio(seed: i64, batch: i64, channels: i64, len: i64) -> Tensor {
    let _guard = rng_lock();
    tch::manual_seed(seed);
    Tensor::randn([batch, channels, len], (Kind::Float, Device::Cpu)) * 0.5
}

#[test]
fn any_length_works_and_keeps_its_length() {
    for cfg in [small_diffwave(), small_unet(true), small_unet(false)] {
        let (_vs, net) = random_network(&cfg, 1);
        for len in [1, 7, 8, 31, 33, 64, 101] {
            let x = audio(2, 2, 1, len);
            let t = Tensor::from_slice(&[3.5f32, 150.0]);
            let out = tch::no_grad(|| net.forward_t(&x, &t, None, false));
            assert_eq!(out.size(), [2, 1, len], "{} length {len}", cfg.name());
            assert_eq!(out.kind(), Kind::Float);
            assert!(
                out.isfinite().all().int64_value(&[]) == 1,
                "{} length {len}",
                cfg.name()
            );
        }
    }
}

#[test]
fn padding_is_zeros_at_the_end() {
    // For an odd length the wrapper's output is the network's output on the zero-padded input,
    // cropped: the same as padding by hand to the multiple.
    let cfg = small_unet(true);
    let (_vs, net) = random_network(&cfg, 3);
    assert_eq!(cfg.length_multiple(), 8);
    let x = audio(4, 1, 1, 21);
    let t = Tensor::from_slice(&[10.0f32]);
    let out = tch::no_grad(|| net.forward_t(&x, &t, None, false));
    let padded = tch::no_grad(|| net.forward_t(&x.constant_pad_nd([0, 3]), &t, None, false));
    assert!(max_abs_diff(&out, &padded.narrow(2, 0, 21)) < 1e-6);
}

#[test]
fn output_channels_follow_the_config() {
    for mut cfg in [small_diffwave(), small_unet(true)] {
        cfg.set_channels(2, 4);
        assert_eq!((cfg.in_channels(), cfg.out_channels()), (2, 4));
        let (_vs, net) = random_network(&cfg, 5);
        let out =
            tch::no_grad(|| net.forward_t(&audio(6, 3, 2, 40), &Tensor::from(7.0f32), None, false));
        assert_eq!(out.size(), [3, 4, 40], "{}", cfg.name());
    }
}

#[test]
fn fresh_networks_output_zero_and_train() {
    for cfg in [small_diffwave(), small_unet(true)] {
        let vs = VarStore::new(Device::Cpu);
        let net = AudioNetwork::new(&vs.root(), &cfg).unwrap();
        let x = audio(7, 2, 1, 48);
        // Training mode draws dropout masks from the global generator.
        let out = {
            let _guard = rng_lock();
            net.forward_t(&x, &Tensor::from_slice(&[5.0f32, 120.0]), None, true)
        };
        assert_eq!(out.abs().max().double_value(&[]), 0.0, "{}", cfg.name());
        // Gradients reach the zero-initialised output layer.
        let loss = (out - &x).square().mean(Kind::Float);
        loss.backward();
        let grad: f64 = vs
            .trainable_variables()
            .iter()
            .map(|v| {
                let g = v.grad();
                if g.defined() {
                    g.abs().sum(Kind::Float).double_value(&[])
                } else {
                    0.0
                }
            })
            .sum();
        assert!(grad > 0.0, "{}: no gradient", cfg.name());
    }
}

#[test]
fn time_conditioning_changes_the_output() {
    for cfg in [small_diffwave(), small_unet(false)] {
        let (_vs, net) = random_network(&cfg, 8);
        let x = audio(9, 1, 1, 32);
        let at =
            |t: f32| tch::no_grad(|| net.forward_t(&x, &Tensor::from_slice(&[t]), None, false));
        let (a, b, c) = (at(10.0), at(10.5), at(150.0));
        assert!(max_abs_diff(&a, &b) > 1e-4, "{}: t 10 vs 10.5", cfg.name());
        assert!(max_abs_diff(&a, &c) > 1e-3, "{}: t 10 vs 150", cfg.name());
        // A scalar timestep is the same timestep for every example.
        let x2 = Tensor::cat(&[&x, &x], 0);
        let scalar = tch::no_grad(|| net.forward_t(&x2, &Tensor::from(10.0f32), None, false));
        assert!(max_abs_diff(&scalar.narrow(0, 1, 1), &a) < 1e-6);
        // Integer timesteps mean the same as float ones.
        let int = tch::no_grad(|| net.forward_t(&x, &Tensor::from_slice(&[150i64]), None, false));
        assert!(max_abs_diff(&int, &c) < 1e-6);
    }
}

#[test]
fn dropout_only_in_training() {
    let cfg = small_unet(true);
    let (_vs, net) = random_network(&cfg, 10);
    let x = audio(11, 2, 1, 32);
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    let a = net.forward_t(&x, &t, None, false);
    let b = net.forward_t(&x, &t, None, false);
    assert!(a.equal(&b));
    let train = {
        let _guard = rng_lock();
        net.forward_t(&x, &t, None, true)
    };
    assert!(max_abs_diff(&a, &train) > 1e-4);
}

#[test]
fn default_configs_are_valid_and_sized_as_documented() {
    let diffwave = AudioNetworkConfig::default();
    assert_eq!(diffwave.name(), "diffwave");
    assert_eq!(diffwave.length_multiple(), 1);
    let unet = AudioNetworkConfig::Unet1d(UNet1dConfig::default());
    assert_eq!(unet.length_multiple(), 64);
    for cfg in [diffwave, unet] {
        let vs = VarStore::new(Device::Cpu);
        AudioNetwork::new(&vs.root(), &cfg).unwrap();
        println!(
            "default {}: {} parameters",
            cfg.name(),
            parameter_count(&vs)
        );
    }
    let DiffWaveConfig {
        residual_layers,
        dilation_cycle,
        ..
    } = DiffWaveConfig::default();
    assert_eq!((residual_layers, dilation_cycle), (20, 10));
    // Two cycles of 1 + 2 + ... + 512 samples each side.
    assert_eq!(DiffWaveConfig::default().receptive_radius(), 2 * 1023);
}

#[test]
fn config_json_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [small_diffwave(), small_unet(true)] {
        let path = dir.path().join(format!("{}.json", cfg.name()));
        cfg.to_json_file(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("\"type\": \"{}\"", cfg.name())),
            "{text}"
        );
        assert_eq!(AudioNetworkConfig::from_json_file(&path).unwrap(), cfg);
    }
    // Fields left out take the defaults.
    let path = dir.path().join("short.json");
    std::fs::write(&path, r#"{"type": "unet1d", "attention": false}"#).unwrap();
    let cfg = AudioNetworkConfig::from_json_file(&path).unwrap();
    let expected = UNet1dConfig {
        attention: false,
        ..Default::default()
    };
    assert_eq!(cfg, AudioNetworkConfig::Unet1d(expected));
}

#[test]
fn config_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let error_for = |text: &str| {
        std::fs::write(&path, text).unwrap();
        AudioNetworkConfig::from_json_file(&path)
            .unwrap_err()
            .to_string()
    };
    let err = error_for(r#"{"type": "wavenet", "in_channels": 1}"#);
    assert!(
        err.contains("config.json") && err.contains("wavenet") && err.contains("diffwave"),
        "{err}"
    );
    let err = error_for(r#"{"in_channels": 1}"#);
    assert!(err.contains("config.json") && err.contains("type"), "{err}");
    let err = error_for(r#"{"type": "diffwave", "residual_chanels": 64}"#);
    assert!(err.contains("residual_chanels"), "{err}");
    let err = error_for("{not json");
    assert!(err.contains("config.json"), "{err}");
    let err = error_for(r#"{"type": "unet1d", "down_factors": [4, 4]}"#);
    assert!(
        err.contains("config.json") && err.contains("down_factors"),
        "{err}"
    );
    let err = error_for(r#"{"type": "unet1d", "norm_num_groups": 5}"#);
    assert!(err.contains("norm_num_groups 5"), "{err}");
    let err = error_for(r#"{"type": "diffwave", "residual_layers": 0}"#);
    assert!(err.contains("residual_layers must be positive"), "{err}");
    let missing = AudioNetworkConfig::from_json_file(&dir.path().join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("absent.json"), "{missing}");
    // Building validates too.
    let bad = UNet1dConfig {
        down_factors: vec![4, 1, 4],
        ..Default::default()
    };
    let err = AudioNetwork::new(
        &VarStore::new(Device::Cpu).root(),
        &AudioNetworkConfig::Unet1d(bad),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("down factor must be in 2..=64, got 1"),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "channels")]
fn wrong_channel_count_panics() {
    let cfg = small_diffwave();
    let (_vs, net) = random_network(&cfg, 12);
    let _ = net.forward_t(&audio(13, 1, 2, 16), &Tensor::from(1.0f32), None, false);
}

/// On CUDA the networks compute what they compute on the CPU (skipped without a GPU).
#[test]
fn cuda_matches_cpu() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device");
        return;
    }
    for cfg in [small_diffwave(), small_unet(true)] {
        let (mut vs, net) = random_network(&cfg, 14);
        let x = audio(15, 2, 1, 45);
        let t = Tensor::from_slice(&[0.5f32, 180.25]);
        let cpu = tch::no_grad(|| net.forward_t(&x, &t, None, false));
        vs.set_device(Device::Cuda(0));
        let gpu = tch::no_grad(|| net.forward_t(&x.to_device(Device::Cuda(0)), &t, None, false));
        let diff = max_abs_diff(&cpu, &gpu.to_device(Device::Cpu));
        assert!(diff < 1e-3, "{}: max |cpu - cuda| = {diff}", cfg.name());
    }
}

fn names(vs: &VarStore) -> Vec<String> {
    vs.variables().into_keys().collect()
}

fn conditional(mut cfg: AudioNetworkConfig, classes: i64) -> AudioNetworkConfig {
    cfg.set_classes(classes);
    cfg
}

#[test]
fn class_labels_change_the_output_and_none_means_the_null_class() {
    for cfg in [
        conditional(small_diffwave(), 3),
        conditional(small_unet(true), 3),
    ] {
        let name = cfg.name();
        assert_eq!((cfg.num_classes(), cfg.null_class()), (Some(3), Some(3)));
        let (vs, net) = random_network(&cfg, 20);
        let table = vs.variables()["class_embedding.weight"].shallow_clone();
        let embed_dim = match &cfg {
            AudioNetworkConfig::DiffWave(c) => c.time_embed_dim,
            AudioNetworkConfig::Unet1d(c) => c.time_embed_dim,
        };
        // Three classes and the null row.
        assert_eq!(table.size(), [4, embed_dim], "{name}");
        let x = audio(21, 2, 1, 48);
        let t = Tensor::from_slice(&[12.0f32, 90.0]);
        let with = |labels: Option<&Tensor>| tch::no_grad(|| net.forward_t(&x, &t, labels, false));
        let a = with(Some(&Tensor::from_slice(&[0i64, 1])));
        let b = with(Some(&Tensor::from_slice(&[2i64, 2])));
        let null = with(Some(&Tensor::from_slice(&[3i64, 3])));
        assert!(max_abs_diff(&a, &b) > 1e-3, "{name}: classes 0, 1 vs 2, 2");
        assert!(
            max_abs_diff(&a, &null) > 1e-3,
            "{name}: a class vs the null class"
        );
        // No labels is the null class; one label is that label for every example; any integer
        // kind does.
        assert!(with(None).equal(&null), "{name}: None vs the null class");
        assert!(
            with(Some(&Tensor::from(2i64))).equal(&b),
            "{name}: scalar label"
        );
        assert!(
            with(Some(&Tensor::from_slice(&[2i32]))).equal(&b),
            "{name}: [1] i32"
        );
        // Each example reads its own label.
        let first = tch::no_grad(|| {
            net.forward_t(
                &x.narrow(0, 0, 1),
                &t.narrow(0, 0, 1),
                Some(&Tensor::from_slice(&[0i64])),
                false,
            )
        });
        assert!(max_abs_diff(&first, &a.narrow(0, 0, 1)) < 1e-5, "{name}");
    }
}

#[test]
fn the_null_class_is_a_trained_row() {
    // Unconditional training steps (no labels) reach the null row and only it.
    for cfg in [
        conditional(small_diffwave(), 2),
        conditional(small_unet(false), 2),
    ] {
        let (vs, net) = random_network(&cfg, 22);
        let x = audio(23, 2, 1, 32);
        // Training mode draws dropout masks from the global generator.
        let out = {
            let _guard = rng_lock();
            net.forward_t(&x, &Tensor::from_slice(&[4.0f32, 60.0]), None, true)
        };
        out.square().mean(Kind::Float).backward();
        let grad = vs.variables()["class_embedding.weight"].grad();
        let per_row: Vec<f64> = (0..3)
            .map(|r| grad.get(r).abs().sum(Kind::Float).double_value(&[]))
            .collect();
        assert!(
            per_row[0] == 0.0 && per_row[1] == 0.0 && per_row[2] > 0.0,
            "{}: gradient per row {per_row:?}",
            cfg.name()
        );
    }
}

#[test]
fn an_unconditional_network_has_no_class_embedding_and_no_position_input() {
    for cfg in [small_diffwave(), small_unet(true)] {
        assert_eq!((cfg.num_classes(), cfg.null_class()), (None, None));
        assert_eq!(cfg.position_frames(), None);
        let vs = VarStore::new(Device::Cpu);
        AudioNetwork::new(&vs.root(), &cfg).unwrap();
        let names = names(&vs);
        assert!(
            !names.iter().any(|n| n.starts_with("class_embedding")),
            "{}: {names:?}",
            cfg.name()
        );
        let first = match cfg {
            AudioNetworkConfig::DiffWave(_) => "input_projection.weight",
            AudioNetworkConfig::Unet1d(_) => "conv_in.weight",
        };
        assert_eq!(vs.variables()[first].size()[1], 1, "{}", cfg.name());
        // With the position channel the first layer reads one channel more.
        let mut with_position = cfg.clone();
        with_position.set_position_channel(Some(64));
        assert_eq!(with_position.position_frames(), Some(64));
        let vs = VarStore::new(Device::Cpu);
        AudioNetwork::new(&vs.root(), &with_position).unwrap();
        assert_eq!(vs.variables()[first].size()[1], 2, "{}", cfg.name());
    }
}

#[test]
#[should_panic(expected = "not class-conditional")]
fn labels_for_an_unconditional_network_panic() {
    let (_vs, net) = random_network(&small_unet(false), 24);
    let _ = net.forward_t(
        &audio(25, 1, 1, 16),
        &Tensor::from(1.0f32),
        Some(&Tensor::from_slice(&[0i64])),
        false,
    );
}

#[test]
#[should_panic(expected = "class labels must be in 0..=3")]
fn out_of_range_labels_panic() {
    let (_vs, net) = random_network(&conditional(small_diffwave(), 3), 26);
    let _ = net.forward_t(
        &audio(27, 2, 1, 16),
        &Tensor::from(1.0f32),
        Some(&Tensor::from_slice(&[0i64, 4])),
        false,
    );
}

#[test]
#[should_panic(expected = "class labels must be integers")]
fn float_labels_panic() {
    let (_vs, net) = random_network(&conditional(small_unet(false), 3), 28);
    let _ = net.forward_t(
        &audio(29, 1, 1, 16),
        &Tensor::from(1.0f32),
        Some(&Tensor::from_slice(&[1.0f32])),
        false,
    );
}

/// A fixed pseudo-random pattern in (-1, 1): frac(sin(12.9898 i) 43758.5453) for i = offset,
/// offset + 1, ... (made without libtorch's generator).
fn pattern(n: i64, offset: f64) -> Tensor {
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) + offset) * 12.9898)
        .sin()
        .multiply_scalar(43758.5453)
        .frac()
        .to_kind(Kind::Float)
}

/// A network whose every weight comes from [`pattern`] (variables in name order) and so is the
/// same on every run: the global generator gives no such promise while tests that build
/// networks without `rng_lock` draw from it on other threads.
fn patterned_network(cfg: &AudioNetworkConfig) -> (VarStore, AudioNetwork) {
    let vs = VarStore::new(Device::Cpu);
    let net = AudioNetwork::new(&vs.root(), cfg).unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (k, (_, mut var)) in vars.into_iter().enumerate() {
            let values = pattern(var.numel() as i64, k as f64 * 1000.0) * 0.5;
            var.copy_(&values.view(var.size().as_slice()));
        }
    });
    (vs, net)
}

/// max |forward(shift(x)) - shift(forward(x))| over the middle half of the clip, relative to the
/// largest output there. The input is silent except for a burst in the middle that the shift
/// keeps far from both ends, so the shifted input is a permutation of the original's frames that
/// moves only silence across the clip's ends: convolutions away from the ends, GroupNorm's
/// statistics (sums over the same values) and attention without positions (the same keys and
/// values) then all commute with the shift, up to float summation order.
fn shift_error(net: &AudioNetwork, len: i64, shift: i64) -> f64 {
    let burst = pattern(len / 8, 0.5).view([1, 1, len / 8]) * 0.5;
    let x = Tensor::zeros([1, 1, len], (Kind::Float, Device::Cpu));
    x.narrow(2, len / 2 - len / 16, len / 8).copy_(&burst);
    let shifted = x.roll([shift], [2]);
    let t = Tensor::from_slice(&[30.0f32]);
    let out = tch::no_grad(|| net.forward_t(&x, &t, None, false));
    let out_shifted = tch::no_grad(|| net.forward_t(&shifted, &t, None, false));
    let (lo, n) = (len / 4, len / 2);
    let expected = out.narrow(2, lo - shift, n);
    let got = out_shifted.narrow(2, lo, n);
    let scale = expected.abs().max().double_value(&[]);
    assert!(scale > 1e-3, "the output is {scale} in the middle");
    max_abs_diff(&got, &expected) / scale
}

#[test]
fn the_position_channel_breaks_translation_equivariance() {
    // 1024 frames, a 128-frame burst at 448..576, shifted by 64 (a multiple of the UNet's
    // length multiple 8, so strided downsampling sees the same phases); the silence each side,
    // 384 frames and more, is wider than either network's reach from the clip's ends.
    let (len, shift) = (1024, 64);
    for cfg in [small_diffwave(), small_unet(true)] {
        let (_vs, net) = patterned_network(&cfg);
        let error = shift_error(&net, len, shift);
        println!(
            "{} without positions: relative shift error {error:.2e}",
            cfg.name()
        );
        // Float summation order alone: 0 for DiffWave, about 1e-6 for the UNet.
        assert!(error < 1e-5, "{}: {error}", cfg.name());
        let mut with_position = cfg.clone();
        // Positions scaled to 64 frames, so the shift moves them by 1. With other pattern
        // offsets the PyTorch twin's error is 5e-3 to 0.2 (DiffWave) and 3e-2 to 0.3 (UNet).
        with_position.set_position_channel(Some(len / 16));
        let (_vs, net) = patterned_network(&with_position);
        let error = shift_error(&net, len, shift);
        println!(
            "{} with positions: relative shift error {error:.2e}",
            cfg.name()
        );
        assert!(error > 1e-3, "{}: {error}", cfg.name());
    }
}

#[test]
fn the_position_channel_is_made_on_the_padded_length() {
    // The wrapper pads 21 frames to 24; positions run over all 24, so the cropped output equals
    // the network's own on the hand-padded input (positions 0..24 / 16 either way).
    let mut cfg = small_unet(true);
    cfg.set_position_channel(Some(16));
    let (_vs, net) = random_network(&cfg, 32);
    let x = audio(33, 1, 1, 21);
    let t = Tensor::from_slice(&[10.0f32]);
    let out = tch::no_grad(|| net.forward_t(&x, &t, None, false));
    let padded = tch::no_grad(|| net.forward_t(&x.constant_pad_nd([0, 3]), &t, None, false));
    assert!(max_abs_diff(&out, &padded.narrow(2, 0, 21)) < 1e-6);
    let channel = diffuse_audio::network::position_channel(2, 24, 16, Kind::Float, Device::Cpu);
    assert_eq!(channel.size(), [2, 1, 24]);
    assert_eq!(channel.double_value(&[1, 0, 8]), 0.5);
    assert_eq!(channel.double_value(&[0, 0, 23]), 23.0 / 16.0);
}

#[test]
fn attention_levels_add_attention_after_every_resnet_of_their_levels() {
    let cfg = UNet1dConfig {
        block_out_channels: vec![8, 8, 16, 16, 16],
        down_factors: vec![4, 4, 4, 4],
        layers_per_block: 2,
        attention_head_dim: 8,
        norm_num_groups: 4,
        time_embed_dim: 16,
        attention_levels: vec![false, false, false, true, true],
        ..Default::default()
    };
    assert_eq!(cfg.length_multiple(), 256);
    let cfg = AudioNetworkConfig::Unet1d(cfg);
    assert_eq!(cfg.length_multiple(), 256);
    let vs = VarStore::new(Device::Cpu);
    let net = AudioNetwork::new(&vs.root(), &cfg).unwrap();
    let mut attentions: Vec<String> = names(&vs)
        .into_iter()
        .filter(|n| n.ends_with("to_q.weight"))
        .collect();
    attentions.sort();
    // Levels 3 and 4 down (2 resnets each), up blocks 0 and 1 (3 each), and the middle.
    let expected: Vec<String> = [
        "down_blocks.3.attentions.0",
        "down_blocks.3.attentions.1",
        "down_blocks.4.attentions.0",
        "down_blocks.4.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.0.attentions.2",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
    ]
    .iter()
    .map(|p| format!("{p}.to_q.weight"))
    .collect();
    assert_eq!(attentions, expected);
    // 300 frames are padded to 512 inside and cropped back.
    let out =
        tch::no_grad(|| net.forward_t(&audio(34, 1, 1, 300), &Tensor::from(5.0f32), None, false));
    assert_eq!(out.size(), [1, 1, 300]);
}

#[test]
fn the_bundled_drum_model_loads_strictly_and_old_configs_still_read() {
    // The bundled model: the recipe's class-conditional UNet1d, every weight in place.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/models/drums");
    let config = AudioNetworkConfig::from_json_file(&dir.join("config.json")).unwrap();
    assert_eq!(config.num_classes(), Some(6));
    assert_eq!(config.position_frames(), None);
    let vs = VarStore::new(Device::Cpu);
    AudioNetwork::new(&vs.root(), &config).unwrap();
    let (report, _) = load_var_store(&vs, &dir.join("model.safetensors"), true).unwrap();
    assert!(report.is_clean());
    // The config of the model bundled before (2026-11), written before class embeddings,
    // position channels and attention levels: it reads as an unconditional UNet without them,
    // and written back it has none of the new fields.
    let old = r#"{"type": "unet1d", "in_channels": 1, "out_channels": 1,
        "block_out_channels": [16, 32, 64, 128], "down_factors": [4, 4, 4],
        "layers_per_block": 2, "attention": true, "attention_head_dim": 32,
        "norm_num_groups": 8, "dropout": 0.0, "time_embed_dim": 128}"#;
    let config: AudioNetworkConfig = serde_json::from_str(old).unwrap();
    assert_eq!(config.num_classes(), None);
    assert_eq!(config.position_frames(), None);
    let vs = VarStore::new(Device::Cpu);
    AudioNetwork::new(&vs.root(), &config).unwrap();
    let text = serde_json::to_string(&config).unwrap();
    for field in [
        "num_class_embeds",
        "position_channel",
        "position_frames",
        "attention_levels",
    ] {
        assert!(!text.contains(field), "{text}");
    }
}

#[test]
fn conditioning_fields_round_trip_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut unet = small_unet(true);
    unet.set_classes(6);
    unet.set_position_channel(Some(8192));
    if let AudioNetworkConfig::Unet1d(c) = &mut unet {
        c.attention_levels = vec![false, true, true];
    }
    let mut diffwave = small_diffwave();
    diffwave.set_classes(2);
    diffwave.set_position_channel(Some(100));
    for cfg in [unet, diffwave] {
        let path = dir.path().join(format!("{}.json", cfg.name()));
        cfg.to_json_file(&path).unwrap();
        assert_eq!(AudioNetworkConfig::from_json_file(&path).unwrap(), cfg);
    }
    let path = dir.path().join("config.json");
    let error_for = |text: &str| {
        std::fs::write(&path, text).unwrap();
        AudioNetworkConfig::from_json_file(&path)
            .unwrap_err()
            .to_string()
    };
    let err = error_for(r#"{"type": "unet1d", "num_class_embeds": 1}"#);
    assert!(
        err.contains("config.json")
            && err.contains("num_class_embeds")
            && err.contains("at least 2"),
        "{err}"
    );
    let err = error_for(r#"{"type": "diffwave", "num_class_embeds": 0}"#);
    assert!(err.contains("at least 2, got 0"), "{err}");
    let err = error_for(r#"{"type": "unet1d", "position_channel": true}"#);
    assert!(
        err.contains("position_channel needs position_frames"),
        "{err}"
    );
    let err = error_for(r#"{"type": "diffwave", "position_channel": true, "position_frames": 0}"#);
    assert!(
        err.contains("position_frames must be positive, got 0"),
        "{err}"
    );
    let err = error_for(r#"{"type": "unet1d", "position_frames": 8000}"#);
    assert!(err.contains("position_channel is off"), "{err}");
    let err = error_for(r#"{"type": "unet1d", "attention_levels": [true, false]}"#);
    assert!(
        err.contains("attention_levels needs one entry per level (4)"),
        "{err}"
    );
    // The middle block's 48 channels take heads of 16; level 0's 40 do not.
    let err = error_for(
        r#"{"type": "unet1d", "block_out_channels": [40, 48], "down_factors": [4],
            "attention_head_dim": 16, "attention_levels": [true, false]}"#,
    );
    assert!(
        err.contains("divide the 40 channels of level 0 (attention_levels)"),
        "{err}"
    );
}
