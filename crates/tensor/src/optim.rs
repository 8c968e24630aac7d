//! AdamW whose whole state (moments and step count) is saved and restored, so a resumed run
//! continues bit for bit. The update is PyTorch's single-tensor AdamW (the one it runs on the
//! CPU), op for op, so the same gradients give the same parameters as `torch.optim.AdamW`.

use crate::ffi;
use crate::weights::{load_tensors, save_tensors, Metadata};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::Tensor;

/// AdamW hyper-parameters; defaults are `torch.optim.AdamW`'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps >= 0.0
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "invalid AdamW settings: lr {} (>= 0), betas ({}, {}) (in [0, 1)), eps {} (>= 0), weight decay {} (>= 0)",
                self.lr, self.beta1, self.beta2, self.eps, self.weight_decay
            )))
        }
    }
}

struct ParamState {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over the trainable variables of a var store.
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    params: Vec<ParamState>,
}

impl AdamW {
    /// An optimiser for every trainable variable of `vs` (sorted by name, so state files are stable).
    pub fn new(vs: &VarStore, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let mut params: Vec<ParamState> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, param)| ParamState {
                exp_avg: param.zeros_like().detach(),
                exp_avg_sq: param.zeros_like().detach(),
                name,
                param,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(AdamW {
            config,
            step: 0,
            params,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Every moment tensor (exp_avg, exp_avg_sq per parameter, in a fixed order), for copying
    /// the state between processes.
    pub fn state_tensors(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .flat_map(|p| [p.exp_avg.shallow_clone(), p.exp_avg_sq.shallow_clone()])
            .collect()
    }

    /// Set the number of steps taken (with [`AdamW::state_tensors`], to copy a state).
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// The trainable tensors this optimiser updates.
    pub fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|p| &p.param)
    }

    /// Clear every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.param.zero_grad();
        }
    }

    /// One update at learning rate `lr` (the schedule's value for this step). Parameters without
    /// a gradient are left alone, as PyTorch does.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = &self.config;
        // PyTorch keeps the step as a float tensor and reads it back as a Python float.
        let step = self.step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(step);
        let bias_correction2 = 1.0 - c.beta2.powf(step);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.param.grad();
                if !grad.defined() {
                    continue;
                }
                if c.weight_decay != 0.0 {
                    let _ = p.param.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = p.exp_avg.lerp_(&grad, 1.0 - c.beta1);
                let _ = p.exp_avg_sq.g_mul_scalar_(c.beta2);
                ffi::addcmul_(&mut p.exp_avg_sq, &grad, &grad, 1.0 - c.beta2);
                let mut denom = p.exp_avg_sq.sqrt() / bias_correction2_sqrt;
                let _ = denom.g_add_scalar_(c.eps);
                ffi::addcdiv_(&mut p.param, &p.exp_avg, &denom, -step_size);
            }
        });
    }

    /// Save moments and step count; names are the parameters' with `.exp_avg` / `.exp_avg_sq`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(self.params.len() * 2);
        for p in &self.params {
            tensors.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            tensors.push((
                format!("{}.exp_avg_sq", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
        }
        let mut metadata = Metadata::new();
        metadata.insert("optimizer".into(), "adamw".into());
        metadata.insert("step".into(), self.step.to_string());
        metadata.insert(
            "config".into(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        save_tensors(path, &tensors, Some(metadata))
    }

    /// Restore a state saved by [`AdamW::save`] for the same parameters (all of them, same shapes).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let loaded = load_tensors(path)?;
        let step = loaded
            .metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .filter(|_| loaded.metadata.get("optimizer").map(String::as_str) == Some("adamw"))
            .ok_or_else(|| {
                Error::format(
                    path,
                    "not an AdamW state file (metadata lacks optimizer=adamw and step)",
                )
            })?;
        let mut by_name: HashMap<String, Tensor> = loaded.tensors.into_iter().collect();
        let mut problems = Vec::new();
        let mut updates = Vec::new();
        for (index, p) in self.params.iter().enumerate() {
            for (suffix, which) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
                let key = format!("{}.{suffix}", p.name);
                match by_name.remove(&key) {
                    None => problems.push(format!("missing {key} {:?}", p.param.size())),
                    Some(t) if t.size() != p.param.size() => problems.push(format!(
                        "{key} has shape {:?}, expected {:?}",
                        t.size(),
                        p.param.size()
                    )),
                    Some(t) => updates.push((index, which, t)),
                }
            }
        }
        for (name, t) in by_name {
            problems.push(format!("unexpected {name} {:?}", t.size()));
        }
        if !problems.is_empty() {
            problems.sort();
            return Err(Error::Mismatch {
                path: path.to_path_buf(),
                report: problems.join(", "),
            });
        }
        tch::no_grad(|| {
            for (index, which, t) in updates {
                let p = &mut self.params[index];
                let dst = if which == 0 {
                    &mut p.exp_avg
                } else {
                    &mut p.exp_avg_sq
                };
                dst.copy_(&t.to_kind(dst.kind()).to_device(dst.device()));
            }
        });
        self.step = step;
        Ok(())
    }
}
