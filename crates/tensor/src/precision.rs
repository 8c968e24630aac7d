//! Numeric precision of training and sampling: f32 everywhere, or bf16/f16 autocast on CUDA.

use crate::{ffi, Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind};

/// The precision a run computes in. Weights, optimizer state and EMA always stay in f32;
/// the reduced precisions only change the dtype inside autocast regions (as `torch.autocast`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "no" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            _ => Err(Error::InvalidArgument(format!(
                "unknown precision '{s}': expected f32, bf16 or f16"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl Precision {
    /// The tch kind autocast computes in.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }

    /// Reduced precision is a CUDA feature here; asking for it on the CPU is a user error rather
    /// than a silent f32 run that the user believes is bf16.
    pub fn check_device(self, device: Device) -> Result<()> {
        if self != Precision::F32 && !device.is_cuda() {
            return Err(Error::InvalidArgument(format!(
                "precision {self} needs a CUDA device; on the CPU use f32"
            )));
        }
        Ok(())
    }

    /// Run `f` under autocast in this precision on `device` (a no-op for f32 or the CPU).
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        if self == Precision::F32 || !device.is_cuda() {
            return f();
        }
        assert!(
            ffi::set_cuda_autocast_kind(self.kind()),
            "libtorch refused autocast dtype {self}"
        );
        tch::autocast(true, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("FP32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("int8".parse::<Precision>().is_err());
    }

    #[test]
    fn reduced_precision_on_cpu_is_refused() {
        assert!(Precision::Bf16.check_device(Device::Cpu).is_err());
        assert!(Precision::F32.check_device(Device::Cpu).is_ok());
    }

    #[test]
    fn cuda_autocast_dtype_round_trips_through_the_shim() {
        // The CUDA autocast dtype is plain global state in libtorch: settable without a GPU.
        assert!(ffi::set_cuda_autocast_kind(Kind::BFloat16));
        assert_eq!(ffi::cuda_autocast_kind(), Some(Kind::BFloat16));
        assert!(ffi::set_cuda_autocast_kind(Kind::Half));
        assert_eq!(ffi::cuda_autocast_kind(), Some(Kind::Half));
    }
}
