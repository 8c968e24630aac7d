//! UNet2d against diffusers 0.42.1 `UNet2DModel`: outputs, tensor names, shapes and parameter
//! counts from the fixtures of `tests/golden/make_unet_golden.py`, plus config and weight round
//! trips, strict loading, the batch-norm variant and dropout.

use diffuse_image::unet::{
    load_unet_weights, parameter_count, save_unet_weights, NormType, SampleSize, UNet2d,
    UNet2dConfig,
};
use diffuse_tensor::weights::{load_tensors, save_tensors};
use diffuse_tensor::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The four fixtures: plain resnets; attention + scale-shift + label table; Fourier time +
/// timestep class embedding + resnet resampling; learned time + identity labels (old names).
const FIXTURES: &[&str] = &["plain", "attn", "fourier", "learned"];
const TOLERANCE: f64 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/unet")
        .join(name)
}

struct Fixture {
    config: UNet2dConfig,
    vs: VarStore,
    unet: UNet2d,
    io: BTreeMap<String, Tensor>,
    metadata: std::collections::HashMap<String, String>,
}

fn load_fixture(name: &str) -> Fixture {
    let dir = fixture_dir(name);
    let config = UNet2dConfig::from_json_file(&dir.join("config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet2d::new(&vs.root(), &config).unwrap();
    load_unet_weights(&vs, &dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let loaded = load_tensors(&dir.join("io.safetensors")).unwrap();
    Fixture {
        config,
        vs,
        unet,
        io: loaded.tensors.into_iter().collect(),
        metadata: loaded.metadata,
    }
}

/// Forward on every timestep input of a fixture: (key, output).
fn outputs(unet: &UNet2d, io: &BTreeMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let x = &io["x"];
    let labels = io.get("labels");
    ["t_float", "t_int", "t_scalar"]
        .iter()
        .filter_map(|key| {
            let t = io.get(*key)?;
            let out = tch::no_grad(|| unet.forward_t(x, t, labels, false));
            Some((key.to_string(), out))
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn check_parity(name: &str) {
    let f = load_fixture(name);
    assert_eq!(f.metadata["diffusers_version"], "0.42.1");
    let outs = outputs(&f.unet, &f.io);
    assert!(outs.len() >= 2, "{name}: fixture has too few inputs");
    for (key, out) in outs {
        let expected = &f.io[&format!("out{}", &key[1..])];
        let diff = max_abs_diff(&out, expected);
        println!("{name} {key}: max |diffuse - diffusers| = {diff:.3e}");
        assert!(
            diff <= TOLERANCE,
            "{name} {key}: max abs diff {diff} > {TOLERANCE}"
        );
    }
}

#[test]
fn parity_plain_resnet_blocks() {
    check_parity("plain");
}

#[test]
fn parity_attention_scale_shift_class_table() {
    check_parity("attn");
}

#[test]
fn parity_fourier_time_timestep_labels_resnet_resampling() {
    check_parity("fourier");
}

#[test]
fn parity_learned_time_identity_labels_old_attention_names() {
    check_parity("learned");
}

/// The old attention spelling, as the `learned` fixture stores it, in the current one.
fn current_name(name: &str) -> String {
    [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ]
    .iter()
    .fold(name.to_owned(), |n, (old, new)| n.replace(old, new))
}

#[test]
fn tensor_names_shapes_and_parameter_count_equal_diffusers() {
    for name in FIXTURES {
        let f = load_fixture(name);
        let file = load_tensors(&fixture_dir(name).join("diffusion_pytorch_model.safetensors"))
            .unwrap()
            .tensors;
        if *name == "learned" {
            assert!(file.iter().any(|(n, _)| n.contains(".query.")));
        }
        let expected: BTreeMap<String, Vec<i64>> = file
            .iter()
            .map(|(n, t)| (current_name(n), t.size()))
            .collect();
        let ours: BTreeMap<String, Vec<i64>> =
            f.vs.variables()
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect();
        assert_eq!(ours, expected, "{name}: names or shapes differ");
        let count: i64 = f.metadata["num_parameters"].parse().unwrap();
        assert_eq!(parameter_count(&f.vs), count, "{name}: parameter count");
    }
}

/// google/ddpm-cifar10-32's config (REFERENCE.md: 328 tensors, 35,746,307 parameters).
#[test]
fn ddpm_cifar10_architecture_matches_diffusers_counts() {
    let json = r#"{
        "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
        "act_fn": "silu", "attention_head_dim": null, "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": false, "down_block_types": ["DownBlock2D", "AttnDownBlock2D",
        "DownBlock2D", "DownBlock2D"], "downsample_padding": 0, "flip_sin_to_cos": false,
        "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "resolution": 32,
        "sample_size": 32, "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    }"#;
    let config = UNet2dConfig::from_json_str(json).unwrap();
    assert_eq!(config.sample_size_hw(), Some((32, 32)));
    let vs = VarStore::new(Device::Cpu);
    let _unet = UNet2d::new(&vs.root(), &config).unwrap();
    assert_eq!(vs.variables().len(), 328);
    assert_eq!(parameter_count(&vs), 35_746_307);
}

#[test]
fn config_and_weights_round_trip_give_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let f = load_fixture(name);
        let config_path = dir.path().join(format!("{name}.json"));
        let weights_path = dir.path().join(format!("{name}.safetensors"));
        f.config.to_json_file(&config_path).unwrap();
        save_unet_weights(&f.vs, &weights_path).unwrap();

        let config = UNet2dConfig::from_json_file(&config_path).unwrap();
        assert_eq!(config, f.config);
        let vs = VarStore::new(Device::Cpu);
        let unet = UNet2d::new(&vs.root(), &config).unwrap();
        load_unet_weights(&vs, &weights_path).unwrap();
        // Saved in the current spelling, whatever the file we loaded used.
        let saved = load_tensors(&weights_path).unwrap();
        assert!(saved.tensors.iter().all(|(n, _)| !n.contains(".query.")));
        assert_eq!(saved.metadata.get("format").map(String::as_str), Some("pt"));
        for ((key, a), (_, b)) in outputs(&f.unet, &f.io).iter().zip(outputs(&unet, &f.io)) {
            assert!(a.equal(&b), "{name} {key}: outputs changed by a round trip");
        }
    }
}

#[test]
fn written_config_has_every_diffusers_key_and_its_spelling() {
    // diffusers' own config.json (save_pretrained) lists every key UNet2DModel takes.
    let text = std::fs::read_to_string(fixture_dir("fourier").join("config.json")).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
    let config = UNet2dConfig::from_json_str(&text).unwrap();
    assert_eq!(config.sample_size, Some(SampleSize::HeightWidth([16, 24])));
    let ours = config.to_json();
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&ours), keys(&theirs));
    // Same values apart from the version stamp; integers stay integers.
    for (k, v) in theirs.as_object().unwrap() {
        if k != "_diffusers_version" {
            assert_eq!(&ours[k], v, "key {k}");
        }
    }
    assert_eq!(ours["_diffusers_version"], "0.42.1");
    assert_eq!(ours["freq_shift"].to_string(), "0");
    assert!(ours.get("norm_type").is_none());
}

#[test]
fn older_configs_take_defaults_and_unknown_keys_are_ignored() {
    let json = r#"{"_class_name": "UNet2DModel", "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
        "some_future_option": {"x": 1}}"#;
    let config = UNet2dConfig::from_json_str(json).unwrap();
    let defaults = UNet2dConfig::default();
    assert_eq!(config.layers_per_block, defaults.layers_per_block);
    assert_eq!(config.attention_head_dim, Some(8));
    assert_eq!(config.mid_block_type.as_deref(), Some("UNetMidBlock2D"));
    assert_eq!(config.sample_size_hw(), None);
    assert_eq!(config.norm_type, NormType::Group);
    let mut config = config;
    config.set_sample_size(16, 24);
    assert_eq!(config.to_json()["sample_size"], serde_json::json!([16, 24]));
    config.set_sample_size(32, 32);
    assert_eq!(config.to_json()["sample_size"], serde_json::json!(32));
    assert_eq!(config.sample_size_hw(), Some((32, 32)));
}

#[test]
fn missing_and_unexpected_tensors_are_all_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture_dir("plain").join("diffusion_pytorch_model.safetensors");
    let mut tensors = load_tensors(&source).unwrap().tensors;
    tensors.retain(|(n, _)| n != "conv_out.bias" && n != "mid_block.attentions.0.to_k.weight");
    tensors.push((
        "extra.block.weight".into(),
        Tensor::zeros([3, 5], (Kind::Float, Device::Cpu)),
    ));
    let path = dir.path().join("broken.safetensors");
    save_tensors(&path, &tensors, None).unwrap();

    let config = UNet2dConfig::from_json_file(&fixture_dir("plain").join("config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _unet = UNet2d::new(&vs.root(), &config).unwrap();
    let err = load_unet_weights(&vs, &path).unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    let message = err.to_string();
    for needle in [
        "conv_out.bias [1]",
        "mid_block.attentions.0.to_k.weight [8, 8]",
        "extra.block.weight [3, 5]",
        "broken.safetensors",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
}

#[test]
fn unknown_block_type_is_refused_with_the_supported_ones() {
    let config = UNet2dConfig {
        block_out_channels: vec![32, 64],
        down_block_types: vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into()],
        up_block_types: vec!["UpBlock2D".into(), "UpBlock2D".into()],
        ..UNet2dConfig::default()
    };
    let err = config.validate().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    let message = err.to_string();
    assert!(message.contains("\"CrossAttnDownBlock2D\""), "{message}");
    assert!(
        message.contains("AttnDownBlock2D, ResnetDownsampleBlock2D"),
        "{message}"
    );
    let vs = VarStore::new(Device::Cpu);
    assert!(UNet2d::new(&vs.root(), &config).is_err());

    // From a file, the error names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut json = config.to_json();
    json["up_block_types"] = serde_json::json!(["UpBlock2D", "FancyUpBlock"]);
    json["down_block_types"] = serde_json::json!(["DownBlock2D", "DownBlock2D"]);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = UNet2dConfig::from_json_file(&path).unwrap_err();
    assert!(matches!(err, Error::Format { .. }));
    let message = err.to_string();
    assert!(
        message.contains("config.json") && message.contains("\"FancyUpBlock\""),
        "{message}"
    );
    assert!(
        message.contains("UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D"),
        "{message}"
    );
}

#[test]
fn invalid_configs_say_what_is_wrong() {
    let base = || UNet2dConfig {
        block_out_channels: vec![32, 64],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        norm_num_groups: 8,
        ..UNet2dConfig::default()
    };
    base().validate().unwrap();
    let cases: Vec<(UNet2dConfig, &str)> = vec![
        (
            UNet2dConfig {
                block_out_channels: vec![32, 64, 64],
                ..base()
            },
            "same length",
        ),
        (
            UNet2dConfig {
                norm_num_groups: 12,
                ..base()
            },
            "not divisible by norm_num_groups 12",
        ),
        (
            UNet2dConfig {
                time_embedding_type: "rotary".into(),
                ..base()
            },
            "time_embedding_type \"rotary\"",
        ),
        (
            UNet2dConfig {
                time_embedding_type: "learned".into(),
                ..base()
            },
            "num_train_timesteps",
        ),
        (
            UNet2dConfig {
                resnet_time_scale_shift: "spatial".into(),
                ..base()
            },
            "resnet_time_scale_shift \"spatial\"",
        ),
        (
            UNet2dConfig {
                class_embed_type: Some("projection".into()),
                ..base()
            },
            "class_embed_type \"projection\"",
        ),
        (
            UNet2dConfig {
                attention_head_dim: Some(128),
                ..base()
            },
            "attention_head_dim 128",
        ),
    ];
    for (config, needle) in cases {
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
    let bad_json = UNet2dConfig::from_json_str("{\"block_out_channels\": 3}").unwrap_err();
    assert!(
        bad_json.to_string().contains("block_out_channels"),
        "{bad_json}"
    );
    let other_model =
        UNet2dConfig::from_json_str("{\"_class_name\": \"UNet2DConditionModel\"}").unwrap_err();
    assert!(other_model.to_string().contains("UNet2DConditionModel"));
}

fn batch_norm_config() -> UNet2dConfig {
    UNet2dConfig {
        sample_size: Some(SampleSize::Square(8)),
        in_channels: 1,
        out_channels: 1,
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        attention_head_dim: Some(8),
        norm_num_groups: 3, // ignored by batch norm
        norm_type: NormType::Batch,
        ..UNet2dConfig::default()
    }
}

#[test]
fn batch_norm_variant_trains_and_round_trips_running_stats() {
    let _guard = crate::rng_lock();
    tch::manual_seed(7);
    let config = batch_norm_config();
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet2d::new(&vs.root(), &config).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names
        .iter()
        .any(|n| n == "down_blocks.0.resnets.0.norm1.running_mean"));
    assert!(names.iter().any(|n| n == "conv_norm_out.running_var"));
    assert!(names
        .iter()
        .any(|n| n == "up_blocks.0.attentions.0.group_norm.running_mean"));

    let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[10.0f32, 200.0, 450.5, 999.0]);
    let target = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
    let mut opt =
        diffuse_tensor::optim::AdamW::new(&vs, diffuse_tensor::optim::AdamWConfig::default())
            .unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss = (unet.forward_t(&x, &t, None, true) - &target)
            .square()
            .mean(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step(3e-3);
        losses.push(loss.double_value(&[]));
    }
    assert!(losses[7] < losses[0], "loss did not decrease: {losses:?}");
    let stats = vs.variables()["down_blocks.0.resnets.0.norm1.running_var"].shallow_clone();
    assert!(!stats.equal(&Tensor::ones([8], (Kind::Float, Device::Cpu))));

    // Config and every variable, running statistics included, survive a round trip.
    let dir = tempfile::tempdir().unwrap();
    config
        .to_json_file(&dir.path().join("config.json"))
        .unwrap();
    save_unet_weights(&vs, &dir.path().join("w.safetensors")).unwrap();
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(text.contains("\"norm_type\": \"batch\""));
    let config2 = UNet2dConfig::from_json_file(&dir.path().join("config.json")).unwrap();
    assert_eq!(config2, config);
    let vs2 = VarStore::new(Device::Cpu);
    let unet2 = UNet2d::new(&vs2.root(), &config2).unwrap();
    load_unet_weights(&vs2, &dir.path().join("w.safetensors")).unwrap();
    let (a, b) = (vs.variables(), vs2.variables());
    assert_eq!(a.len(), b.len());
    for (name, value) in &a {
        assert!(value.equal(&b[name]), "{name} differs after the round trip");
    }
    let (ya, yb) = tch::no_grad(|| {
        (
            unet.forward_t(&x, &t, None, false),
            unet2.forward_t(&x, &t, None, false),
        )
    });
    assert!(ya.equal(&yb));
}

#[test]
fn dropout_changes_outputs_only_in_train_mode() {
    let _guard = crate::rng_lock();
    tch::manual_seed(3);
    let mut config = batch_norm_config();
    config.norm_type = NormType::Group;
    config.norm_num_groups = 4;
    config.dropout = 0.5;
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet2d::new(&vs.root(), &config).unwrap();
    let x = Tensor::randn([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from(250i64); // a 0-d timestep broadcasts to the batch
    tch::no_grad(|| {
        let eval_a = unet.forward_t(&x, &t, None, false);
        let eval_b = unet.forward_t(&x, &t, None, false);
        assert!(eval_a.equal(&eval_b));
        let train_a = unet.forward_t(&x, &t, None, true);
        let train_b = unet.forward_t(&x, &t, None, true);
        assert!(!train_a.equal(&eval_a));
        assert!(!train_a.equal(&train_b));
    });
}

#[test]
fn zero_dropout_train_mode_equals_eval_mode() {
    let f = load_fixture("plain");
    let (x, t) = (&f.io["x"], &f.io["t_float"]);
    let (a, b) = tch::no_grad(|| {
        (
            f.unet.forward_t(x, t, None, true),
            f.unet.forward_t(x, t, None, false),
        )
    });
    assert!(a.equal(&b));
}

#[test]
#[should_panic(expected = "class_labels are required")]
fn class_conditional_model_without_labels_panics_clearly() {
    let f = load_fixture("attn");
    let _ = f.unet.forward_t(&f.io["x"], &f.io["t_float"], None, false);
}

/// Writes every fixture model and a freshly initialised one, in diffusers' layout with diffuse's
/// outputs, under `$DIFFUSE_UNET_EXPORT`, for `make_unet_golden.py --check-export` (diffusers
/// must load them without complaint and reproduce the outputs). Does nothing without the variable.
#[test]
fn export_for_diffusers_check() {
    let Some(root) = std::env::var_os("DIFFUSE_UNET_EXPORT") else {
        return;
    };
    let root = PathBuf::from(root);
    let write = |name: &str,
                 config: &UNet2dConfig,
                 vs: &VarStore,
                 unet: &UNet2d,
                 io: &BTreeMap<String, Tensor>| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        config.to_json_file(&dir.join("config.json")).unwrap();
        save_unet_weights(vs, &dir.join("diffusion_pytorch_model.safetensors")).unwrap();
        let mut tensors: Vec<(String, Tensor)> = io
            .iter()
            .filter(|(k, _)| !k.starts_with("out"))
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        for (key, out) in outputs(unet, io) {
            tensors.push((format!("out{}", &key[1..]), out));
        }
        save_tensors(&dir.join("io.safetensors"), &tensors, None).unwrap();
    };
    for name in FIXTURES {
        let f = load_fixture(name);
        write(name, &f.config, &f.vs, &f.unet, &f.io);
    }
    let _guard = crate::rng_lock();
    tch::manual_seed(11);
    let config = UNet2dConfig {
        sample_size: Some(SampleSize::HeightWidth([16, 8])),
        block_out_channels: vec![16, 32],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        norm_num_groups: 8,
        num_class_embeds: Some(4),
        freq_shift: 1.0,
        ..UNet2dConfig::default()
    };
    let vs = VarStore::new(Device::Cpu);
    let unet = UNet2d::new(&vs.root(), &config).unwrap();
    let io = BTreeMap::from([
        (
            "x".to_owned(),
            Tensor::randn([2, 3, 16, 8], (Kind::Float, Device::Cpu)),
        ),
        ("t_float".to_owned(), Tensor::from_slice(&[12.5f32, 700.0])),
        ("t_int".to_owned(), Tensor::from_slice(&[3i64, 998])),
        ("labels".to_owned(), Tensor::from_slice(&[1i64, 3])),
    ]);
    write("fresh", &config, &vs, &unet, &io);
}
