//! The audio networks: parity with their PyTorch twins (fixtures from
//! `tests/golden/make_network_golden.py`, real fractional timesteps, one length the wrapper
//! pads), any length in and the same length out, the zero-initialised output, time
//! conditioning, dropout, and `config.json` round trips and errors.

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
    let out = tch::no_grad(|| net.forward_t(&io["x"], &io["t"], false));
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

fn small_diffwave() -> AudioNetworkConfig {
    AudioNetworkConfig::DiffWave(DiffWaveConfig {
        in_channels: 1,
        out_channels: 1,
        residual_channels: 8,
        residual_layers: 4,
        dilation_cycle: 2,
        time_embed_dim: 16,
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
            let out = tch::no_grad(|| net.forward_t(&x, &t, false));
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
    let out = tch::no_grad(|| net.forward_t(&x, &t, false));
    let padded = tch::no_grad(|| net.forward_t(&x.constant_pad_nd([0, 3]), &t, false));
    assert!(max_abs_diff(&out, &padded.narrow(2, 0, 21)) < 1e-6);
}

#[test]
fn output_channels_follow_the_config() {
    for mut cfg in [small_diffwave(), small_unet(true)] {
        cfg.set_channels(2, 4);
        assert_eq!((cfg.in_channels(), cfg.out_channels()), (2, 4));
        let (_vs, net) = random_network(&cfg, 5);
        let out = tch::no_grad(|| net.forward_t(&audio(6, 3, 2, 40), &Tensor::from(7.0f32), false));
        assert_eq!(out.size(), [3, 4, 40], "{}", cfg.name());
    }
}

#[test]
fn fresh_networks_output_zero_and_train() {
    for cfg in [small_diffwave(), small_unet(true)] {
        let vs = VarStore::new(Device::Cpu);
        let net = AudioNetwork::new(&vs.root(), &cfg).unwrap();
        let x = audio(7, 2, 1, 48);
        let out = net.forward_t(&x, &Tensor::from_slice(&[5.0f32, 120.0]), true);
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
        let at = |t: f32| tch::no_grad(|| net.forward_t(&x, &Tensor::from_slice(&[t]), false));
        let (a, b, c) = (at(10.0), at(10.5), at(150.0));
        assert!(max_abs_diff(&a, &b) > 1e-4, "{}: t 10 vs 10.5", cfg.name());
        assert!(max_abs_diff(&a, &c) > 1e-3, "{}: t 10 vs 150", cfg.name());
        // A scalar timestep is the same timestep for every example.
        let x2 = Tensor::cat(&[&x, &x], 0);
        let scalar = tch::no_grad(|| net.forward_t(&x2, &Tensor::from(10.0f32), false));
        assert!(max_abs_diff(&scalar.narrow(0, 1, 1), &a) < 1e-6);
        // Integer timesteps mean the same as float ones.
        let int = tch::no_grad(|| net.forward_t(&x, &Tensor::from_slice(&[150i64]), false));
        assert!(max_abs_diff(&int, &c) < 1e-6);
    }
}

#[test]
fn dropout_only_in_training() {
    let cfg = small_unet(true);
    let (_vs, net) = random_network(&cfg, 10);
    let x = audio(11, 2, 1, 32);
    let t = Tensor::from_slice(&[1.0f32, 2.0]);
    let a = net.forward_t(&x, &t, false);
    let b = net.forward_t(&x, &t, false);
    assert!(a.equal(&b));
    let train = {
        let _guard = rng_lock();
        net.forward_t(&x, &t, true)
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
    let _ = net.forward_t(&audio(13, 1, 2, 16), &Tensor::from(1.0f32), false);
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
        let cpu = tch::no_grad(|| net.forward_t(&x, &t, false));
        vs.set_device(Device::Cuda(0));
        let gpu = tch::no_grad(|| net.forward_t(&x.to_device(Device::Cuda(0)), &t, false));
        let diff = max_abs_diff(&cpu, &gpu.to_device(Device::Cpu));
        assert!(diff < 1e-3, "{}: max |cpu - cuda| = {diff}", cfg.name());
    }
}
