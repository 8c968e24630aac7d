//! Learning-rate schedules with warmup, as diffusers' `get_scheduler` defines them.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use std::str::FromStr;

/// The shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduleKind {
    /// The base rate throughout (warmup is ignored, as in diffusers).
    Constant,
    /// Linear warmup, then the base rate.
    #[default]
    ConstantWithWarmup,
    /// Linear warmup, then linear decay to 0 at the last step.
    Linear,
    /// Linear warmup, then half a cosine down to 0 at the last step.
    Cosine,
}

impl FromStr for LrScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "constant" => Ok(Self::Constant),
            "constant_with_warmup" => Ok(Self::ConstantWithWarmup),
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            _ => Err(Error::InvalidArgument(format!(
                "unknown learning-rate schedule '{s}': expected constant, constant_with_warmup, linear or cosine"
            ))),
        }
    }
}

/// A learning-rate schedule over a run of `total_steps` optimiser steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: LrScheduleKind,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// The multiplier of the base rate for the optimiser step with 0-based index `step`
    /// (diffusers' `lr_lambda(current_step)`; note a warmup makes the first step's rate 0, as there).
    pub fn factor(&self, step: u64) -> f64 {
        let step_f = step as f64;
        let warmup = self.warmup_steps as f64;
        if self.kind != LrScheduleKind::Constant && step < self.warmup_steps {
            return step_f / warmup.max(1.0);
        }
        let after = (self.total_steps.saturating_sub(self.warmup_steps)) as f64;
        match self.kind {
            LrScheduleKind::Constant | LrScheduleKind::ConstantWithWarmup => 1.0,
            LrScheduleKind::Linear => {
                (0.0f64).max((self.total_steps as f64 - step_f) / after.max(1.0))
            }
            LrScheduleKind::Cosine => {
                let progress = (step_f - warmup) / after.max(1.0);
                (0.0f64).max(0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos()))
            }
        }
    }

    /// The rate for step `step` given the base rate.
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.factor(step)
    }
}
