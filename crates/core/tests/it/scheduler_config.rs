//! scheduler_config.json: diffusers' defaults load as diffuse's defaults, what diffuse writes uses
//! only keys diffusers knows, old and foreign configs load, and bad ones are refused clearly.

use diffuse_core::samplers::ddpm::{DdpmConfig, VarianceType};
use diffuse_core::scheduler_config::{SchedulerConfig, SUPPORTED};
use serde_json::Value;

fn diffusers_defaults() -> Vec<Value> {
    let text = diffuse_core::scheduler_config::quote_non_finite(include_str!(
        "../golden/scheduler_configs.json"
    ));
    let g: Value = serde_json::from_str(&text).unwrap();
    g["configs"].as_array().unwrap().clone()
}

#[test]
fn diffusers_default_configs_load_as_our_defaults_and_round_trip() {
    let mut seen = 0;
    for reference in diffusers_defaults() {
        let class = reference["_class_name"].as_str().unwrap();
        if !SUPPORTED.contains(&class) {
            continue;
        }
        seen += 1;
        let parsed = SchedulerConfig::from_json(&reference.to_string(), class).unwrap();
        let ours = SchedulerConfig::from_json(&format!("{{\"_class_name\": \"{class}\"}}"), class)
            .unwrap();
        assert_eq!(
            parsed, ours,
            "{class}: diffusers' defaults differ from diffuse's"
        );
        let written = parsed.to_json();
        for key in written
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "_diffusers_version")
        {
            assert!(
                reference.get(key).is_some(),
                "{class}: diffuse writes '{key}', which diffusers does not know"
            );
        }
        let back = SchedulerConfig::from_json(&written.to_string(), class).unwrap();
        assert_eq!(back, parsed, "{class}: write then read changed the config");
        let mut sampler = parsed.build().unwrap();
        sampler.set_timesteps(10).unwrap();
        assert_eq!(
            sampler.timesteps().len(),
            if class == "HeunDiscreteScheduler" {
                19
            } else {
                10
            }
        );
    }
    assert_eq!(seen, SUPPORTED.len());
}

#[test]
fn an_old_config_with_foreign_keys_loads_with_defaults_for_the_rest() {
    // google/ddpm-cifar10-32's scheduler_config.json, written by diffusers 0.1.
    let text = r#"{"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
        "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": true, "num_train_timesteps": 1000,
        "trained_betas": null, "variance_type": "fixed_small", "tensor_format": "pt"}"#;
    let SchedulerConfig::Ddpm(config) =
        SchedulerConfig::from_json(text, "scheduler_config.json").unwrap()
    else {
        panic!("not DDPM");
    };
    assert_eq!(
        config,
        DdpmConfig {
            variance_type: VarianceType::FixedSmall,
            ..Default::default()
        }
    );
}

#[test]
fn bad_configs_are_one_clear_error() {
    let err = |text: &str| {
        SchedulerConfig::from_json(text, "model/scheduler/scheduler_config.json")
            .unwrap_err()
            .to_string()
    };
    let e = err(r#"{"_class_name": "LCMScheduler"}"#);
    assert!(
        e.contains("unknown scheduler \"_class_name\": \"LCMScheduler\"")
            && e.contains("DDIMScheduler"),
        "{e}"
    );
    assert!(
        e.starts_with("model/scheduler/scheduler_config.json"),
        "{e}"
    );
    assert!(err(r#"{"beta_start": 0.1}"#).contains("no \"_class_name\""));
    assert!(err("{not json").contains("not valid JSON"));
    let e = err(r#"{"_class_name": "DDPMScheduler", "variance_type": "fixed_tiny"}"#);
    assert!(e.contains("fixed_tiny"), "{e}");
    let e = err(r#"{"_class_name": "EulerDiscreteScheduler", "use_beta_sigmas": true}"#);
    assert!(e.contains("use_beta_sigmas = true is not supported"), "{e}");
    let e = err(r#"{"_class_name": "DDIMScheduler", "prediction_type": "flow"}"#);
    assert!(e.contains("flow"), "{e}");
}

#[test]
fn configs_save_atomically_and_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    let config = SchedulerConfig::Ddpm(DdpmConfig {
        variance_type: VarianceType::LearnedRange,
        ..Default::default()
    });
    config.save(&path).unwrap();
    assert_eq!(SchedulerConfig::load(&path).unwrap(), config);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"_class_name\": \"DDPMScheduler\"")
            && text.contains("\"variance_type\": \"learned_range\"")
    );
}

#[test]
fn python_non_finite_numbers_are_quoted_outside_strings_only() {
    use diffuse_core::scheduler_config::quote_non_finite;
    let text = r#"{"a": -Infinity, "b": "NaN is fine \" -Infinity", "c": [Infinity, NaN]}"#;
    let fixed = quote_non_finite(text);
    let v: Value = serde_json::from_str(&fixed).unwrap();
    assert_eq!(v["a"], "-Infinity");
    assert_eq!(v["b"], "NaN is fine \" -Infinity");
    assert_eq!(v["c"][0], "Infinity");
    assert_eq!(v["c"][1], "NaN");
}
