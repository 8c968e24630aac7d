//! diffusers' `scheduler_config.json`, read and written. `_class_name` picks the sampler; keys a
//! sampler does not know are ignored and missing keys take diffusers' defaults, so configs from
//! any diffusers version load.

use crate::samplers::ddim::{DdimConfig, DdimSampler};
use crate::samplers::ddpm::{DdpmConfig, DdpmSampler};
use crate::samplers::dpm_solver::{DpmSolverConfig, DpmSolverSampler};
use crate::samplers::euler::{EulerConfig, EulerSampler};
use crate::samplers::euler_ancestral::{EulerAncestralConfig, EulerAncestralSampler};
use crate::samplers::heun::{HeunConfig, HeunSampler};
use crate::samplers::Sampler;
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// A parsed scheduler config, one variant per supported `_class_name`.
#[derive(Clone, Debug, PartialEq)]
pub enum SchedulerConfig {
    Ddpm(DdpmConfig),
    Ddim(DdimConfig),
    Euler(EulerConfig),
    EulerAncestral(EulerAncestralConfig),
    Heun(HeunConfig),
    DpmSolver(DpmSolverConfig),
}

/// The `_class_name`s this module reads.
pub const SUPPORTED: &[&str] = &[
    "DDPMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
];

/// The diffusers version written into configs diffuse saves (the version its formats follow).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// diffusers options diffuse does not implement, with the value that means "off": a config that
/// turns one on is refused rather than silently sampled differently.
fn unsupported_options(class: &str) -> Vec<(&'static str, Value)> {
    let off = |v: Value| v;
    match class {
        "EulerDiscreteScheduler" => vec![
            ("use_beta_sigmas", off(Value::Bool(false))),
            ("interpolation_type", off(Value::from("linear"))),
            ("timestep_type", off(Value::from("discrete"))),
            ("sigma_min", Value::Null),
            ("sigma_max", Value::Null),
        ],
        "HeunDiscreteScheduler" => vec![("use_beta_sigmas", Value::Bool(false))],
        _ => vec![],
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value, source: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::InvalidArgument(format!("{source}: {e}")))
}

/// Python's json module writes non-finite floats as bare `Infinity`, `-Infinity` and `NaN` (diffusers'
/// DPM-Solver configs hold `"lambda_min_clipped": -Infinity`), which strict JSON parsers refuse.
/// Quote them outside strings so the text parses; fields that may hold them accept those strings.
pub fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        in_string = c == '"';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

impl SchedulerConfig {
    /// Parse a config from JSON text; `source` names it in errors (usually the file path).
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(&quote_non_finite(text))
            .map_err(|e| Error::InvalidArgument(format!("{source}: not valid JSON: {e}")))?;
        let class = value
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{source}: no \"_class_name\" naming the scheduler"))
            })?
            .to_owned();
        for (key, off) in unsupported_options(&class) {
            if let Some(v) = value.get(key) {
                if *v != off {
                    return Err(Error::InvalidArgument(format!(
                        "{source}: {class} option {key} = {v} is not supported by diffuse (only {off})"
                    )));
                }
            }
        }
        Ok(match class.as_str() {
            "DDPMScheduler" => SchedulerConfig::Ddpm(parse(value, source)?),
            "DDIMScheduler" => SchedulerConfig::Ddim(parse(value, source)?),
            "EulerDiscreteScheduler" => SchedulerConfig::Euler(parse(value, source)?),
            "EulerAncestralDiscreteScheduler" => {
                SchedulerConfig::EulerAncestral(parse(value, source)?)
            }
            "HeunDiscreteScheduler" => SchedulerConfig::Heun(parse(value, source)?),
            "DPMSolverMultistepScheduler" => SchedulerConfig::DpmSolver(parse(value, source)?),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{source}: unknown scheduler \"_class_name\": \"{other}\" (supported: {})",
                    SUPPORTED.join(", ")
                )))
            }
        })
    }

    /// Read `scheduler_config.json` (or any file holding one).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// diffusers' class name of this config.
    pub fn class_name(&self) -> &'static str {
        match self {
            SchedulerConfig::Ddpm(_) => "DDPMScheduler",
            SchedulerConfig::Ddim(_) => "DDIMScheduler",
            SchedulerConfig::Euler(_) => "EulerDiscreteScheduler",
            SchedulerConfig::EulerAncestral(_) => "EulerAncestralDiscreteScheduler",
            SchedulerConfig::Heun(_) => "HeunDiscreteScheduler",
            SchedulerConfig::DpmSolver(_) => "DPMSolverMultistepScheduler",
        }
    }

    /// The config as diffusers writes it: every key, plus `_class_name` and `_diffusers_version`.
    pub fn to_json(&self) -> Value {
        let mut value = match self {
            SchedulerConfig::Ddpm(c) => serde_json::to_value(c),
            SchedulerConfig::Ddim(c) => serde_json::to_value(c),
            SchedulerConfig::Euler(c) => serde_json::to_value(c),
            SchedulerConfig::EulerAncestral(c) => serde_json::to_value(c),
            SchedulerConfig::Heun(c) => serde_json::to_value(c),
            SchedulerConfig::DpmSolver(c) => serde_json::to_value(c),
        }
        .expect("scheduler configs serialise");
        let map = value.as_object_mut().expect("configs are objects");
        map.insert("_class_name".into(), Value::from(self.class_name()));
        map.insert("_diffusers_version".into(), Value::from(DIFFUSERS_VERSION));
        value
    }

    /// Write atomically as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        diffuse_tensor::atomic::write_json_atomic(path, &self.to_json())
    }

    /// Build the sampler this config describes.
    pub fn build(&self) -> Result<Box<dyn Sampler>> {
        Ok(match self {
            SchedulerConfig::Ddpm(c) => Box::new(DdpmSampler::new(c.clone())?),
            SchedulerConfig::Ddim(c) => Box::new(DdimSampler::new(c.clone())?),
            SchedulerConfig::Euler(c) => Box::new(EulerSampler::new(c.clone())?),
            SchedulerConfig::EulerAncestral(c) => Box::new(EulerAncestralSampler::new(c.clone())?),
            SchedulerConfig::Heun(c) => Box::new(HeunSampler::new(c.clone())?),
            SchedulerConfig::DpmSolver(c) => Box::new(DpmSolverSampler::new(c.clone())?),
        })
    }
}
