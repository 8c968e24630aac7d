//! Exponential moving average of model variables, with diffusers' `EMAModel` decay rules
//! (including its warmup), so an EMA trained here behaves like one trained with diffusers.

use crate::weights::{load_tensors, save_tensors, Metadata};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::VarStore;
use tch::Tensor;

/// EMA settings; field names and defaults are those of diffusers' `EMAModel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmaConfig {
    /// Upper bound of the decay.
    pub decay: f64,
    /// Lower bound of the decay.
    pub min_decay: f64,
    /// Steps before averaging starts (the average just copies the weights until then).
    pub update_after_step: u64,
    /// Warm the decay up as `1 - (1 + step / inv_gamma)^-power` instead of `(1 + step) / (10 + step)`.
    pub use_ema_warmup: bool,
    pub inv_gamma: f64,
    pub power: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            decay: 0.9999,
            min_decay: 0.0,
            update_after_step: 0,
            use_ema_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

impl EmaConfig {
    /// The decay used at optimisation step `optimization_step` (1-based, as diffusers counts).
    pub fn decay_at(&self, optimization_step: u64) -> f64 {
        let step = optimization_step.saturating_sub(self.update_after_step + 1);
        if step == 0 {
            return 0.0;
        }
        let step = step as f64;
        let value = if self.use_ema_warmup {
            1.0 - (1.0 + step / self.inv_gamma).powf(-self.power)
        } else {
            (1.0 + step) / (10.0 + step)
        };
        value.min(self.decay).max(self.min_decay)
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.decay)
            || !(0.0..=1.0).contains(&self.min_decay)
            || self.min_decay > self.decay
        {
            return Err(Error::InvalidArgument(format!(
                "EMA decay must satisfy 0 <= min_decay <= decay <= 1, got min_decay {} and decay {}",
                self.min_decay, self.decay
            )));
        }
        if self.inv_gamma <= 0.0 || self.power <= 0.0 {
            return Err(Error::InvalidArgument(
                "EMA inv_gamma and power must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Shadow copies of every variable of a var store. Trainable variables are averaged; buffers
/// (non-trainable variables) are copied, as diffusers does for parameters without gradients.
pub struct Ema {
    config: EmaConfig,
    optimization_step: u64,
    shadow: Vec<(String, Tensor, bool)>,
}

impl Ema {
    /// Start an average at the store's current values.
    pub fn new(vs: &VarStore, config: EmaConfig) -> Result<Self> {
        config.validate()?;
        let mut shadow: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| {
                let trainable = t.requires_grad();
                (name, t.detach().copy(), trainable)
            })
            .collect();
        shadow.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ema {
            config,
            optimization_step: 0,
            shadow,
        })
    }

    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// Number of updates so far.
    pub fn optimization_step(&self) -> u64 {
        self.optimization_step
    }

    /// The decay the next update will use.
    pub fn next_decay(&self) -> f64 {
        self.config.decay_at(self.optimization_step + 1)
    }

    /// Fold the store's current values into the average (call once per optimiser step).
    /// Returns the decay used.
    pub fn update(&mut self, vs: &VarStore) -> f64 {
        self.optimization_step += 1;
        let decay = self.config.decay_at(self.optimization_step);
        let one_minus_decay = 1.0 - decay;
        let variables = vs.variables();
        tch::no_grad(|| {
            for (name, shadow, trainable) in &mut self.shadow {
                let current = &variables[name.as_str()];
                if *trainable {
                    // diffusers: s_param.sub_(one_minus_decay * (s_param - param))
                    let delta = (&*shadow - current) * one_minus_decay;
                    let _ = shadow.g_sub_(&delta);
                } else {
                    shadow.copy_(current);
                }
            }
        });
        decay
    }

    /// Copy the averaged values into a var store with the same variables (e.g. to sample from EMA weights).
    pub fn copy_to(&self, vs: &VarStore) {
        let variables = vs.variables();
        tch::no_grad(|| {
            for (name, shadow, _) in &self.shadow {
                let mut var = variables[name.as_str()].shallow_clone();
                var.copy_(shadow);
            }
        });
    }

    /// Set the number of updates so far (when the average is copied from another process).
    pub fn set_optimization_step(&mut self, step: u64) {
        self.optimization_step = step;
    }

    /// The averaged tensors by name.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .map(|(n, t, _)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// Save the average as an ordinary weights file (loadable as the model itself), with the
    /// step count and config in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut metadata = Metadata::new();
        metadata.insert(
            "ema_optimization_step".into(),
            self.optimization_step.to_string(),
        );
        metadata.insert(
            "ema_config".into(),
            serde_json::to_string(&self.config).expect("EMA config serialises"),
        );
        save_tensors(path, &self.tensors(), Some(metadata))
    }

    /// Restore an average saved by [`Ema::save`]; names and shapes must match this one exactly.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let loaded = load_tensors(path)?;
        let step = loaded
            .metadata
            .get("ema_optimization_step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::format(
                    path,
                    "not an EMA file: no ema_optimization_step in its metadata",
                )
            })?;
        let mut by_name: std::collections::HashMap<String, Tensor> =
            loaded.tensors.into_iter().collect();
        let mut problems = Vec::new();
        for (name, shadow, _) in &self.shadow {
            match by_name.get(name) {
                None => problems.push(format!("missing {name}")),
                Some(t) if t.size() != shadow.size() => problems.push(format!(
                    "{name} has shape {:?}, expected {:?}",
                    t.size(),
                    shadow.size()
                )),
                Some(_) => {}
            }
        }
        for name in by_name.keys() {
            if !self.shadow.iter().any(|(n, _, _)| n == name) {
                problems.push(format!("unexpected {name}"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Mismatch {
                path: path.to_path_buf(),
                report: problems.join(", "),
            });
        }
        tch::no_grad(|| {
            for (name, shadow, _) in &mut self.shadow {
                let t = by_name.remove(name.as_str()).expect("checked above");
                shadow.copy_(&t.to_kind(shadow.kind()).to_device(shadow.device()));
            }
        });
        self.optimization_step = step;
        Ok(())
    }
}
