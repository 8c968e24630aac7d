//! What the network predicts (diffusers' `prediction_type`) and the conversions between them.
//!
//! With x_t = alpha_t x_0 + sigma_t eps (alpha_t^2 + sigma_t^2 = 1 for variance-preserving schedules):
//! - `epsilon`: the noise eps (Ho et al. 2020);
//! - `sample`: the clean x_0;
//! - `v_prediction`: v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, eq. 9), which stays well posed at
//!   zero terminal SNR where recovering x_0 from eps divides by alpha_t = 0.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tch::Tensor;

/// The parameterisation of a denoiser's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    #[default]
    Epsilon,
    Sample,
    VPrediction,
}

impl FromStr for PredictionType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "epsilon" | "eps" => Ok(PredictionType::Epsilon),
            "sample" | "x0" => Ok(PredictionType::Sample),
            "v_prediction" | "v" => Ok(PredictionType::VPrediction),
            _ => Err(Error::InvalidArgument(format!(
                "unknown prediction type '{s}': expected epsilon, sample or v_prediction"
            ))),
        }
    }
}

impl PredictionType {
    /// The regression target for training: what the network should output for `x0` noised with
    /// `noise` at scales `alpha`, `sigma` (tensors broadcastable against `x0`).
    pub fn target(self, x0: &Tensor, noise: &Tensor, alpha: &Tensor, sigma: &Tensor) -> Tensor {
        match self {
            PredictionType::Epsilon => noise.shallow_clone(),
            PredictionType::Sample => x0.shallow_clone(),
            PredictionType::VPrediction => alpha * noise - sigma * x0,
        }
    }

    /// The clean sample implied by a model output at `x_t`.
    pub fn to_x0(self, output: &Tensor, x_t: &Tensor, alpha: &Tensor, sigma: &Tensor) -> Tensor {
        match self {
            PredictionType::Epsilon => (x_t - sigma * output) / alpha,
            PredictionType::Sample => output.shallow_clone(),
            // alpha x_t - sigma v = alpha^2 x0 + sigma^2 x0 = x0 (variance preserving).
            PredictionType::VPrediction => alpha * x_t - sigma * output,
        }
    }

    /// The noise implied by a model output at `x_t`.
    pub fn to_eps(self, output: &Tensor, x_t: &Tensor, alpha: &Tensor, sigma: &Tensor) -> Tensor {
        match self {
            PredictionType::Epsilon => output.shallow_clone(),
            PredictionType::Sample => (x_t - alpha * output) / sigma,
            PredictionType::VPrediction => sigma * x_t + alpha * output,
        }
    }

    /// Express a model output in another parameterisation at the same `x_t`.
    pub fn convert(
        self,
        to: PredictionType,
        output: &Tensor,
        x_t: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Tensor {
        if self == to {
            return output.shallow_clone();
        }
        let x0 = self.to_x0(output, x_t, alpha, sigma);
        let eps = self.to_eps(output, x_t, alpha, sigma);
        to.target(&x0, &eps, alpha, sigma)
    }
}
