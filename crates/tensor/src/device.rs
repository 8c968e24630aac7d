//! Device selection: `auto | cpu | cuda | cuda:N`, checked against what this machine has.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;
use tch::{Cuda, Device};

/// A device as the user names it, before it is checked against the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first CUDA device if there is one, else the CPU.
    Auto,
    Cpu,
    /// `cuda` is `Cuda(0)`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::Device(format!(
                "unknown device '{s}': expected auto, cpu, cuda or cuda:N (N a device index)"
            ))
        };
        match text.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let index = text.strip_prefix("cuda:").ok_or_else(bad)?;
                index.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The tch device this names on this machine; asking for a CUDA device that is not there
    /// is an error rather than a silent fall-back to the CPU.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(Device::cuda_if_available()),
            DeviceSpec::Cuda(index) => {
                let count = cuda_device_count();
                if count == 0 {
                    Err(Error::Device(format!(
                        "device '{self}' was asked for, but this machine has no CUDA device usable by libtorch (use --device cpu or auto)"
                    )))
                } else if index >= count {
                    Err(Error::Device(format!(
                        "device '{self}' was asked for, but this machine has {count} CUDA device(s): cuda:0..cuda:{}",
                        count - 1
                    )))
                } else {
                    Ok(Device::Cuda(index))
                }
            }
        }
    }
}

/// Parse and resolve in one go: the usual path from a `--device` flag to a tch device.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceSpec>()?.resolve()
}

/// Number of CUDA devices libtorch can use (0 when CUDA is not linked or no GPU is present).
pub fn cuda_device_count() -> usize {
    if Cuda::is_available() {
        usize::try_from(Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

/// A short human name for a device, e.g. `cpu` or `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
    }

    #[test]
    fn rejects_unknown_strings_with_the_accepted_forms() {
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", "", "mps0"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn cpu_and_auto_always_resolve() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        let auto = parse_device("auto").unwrap();
        assert_eq!(auto.is_cuda(), cuda_device_count() > 0);
    }

    #[test]
    fn cuda_beyond_the_machine_is_an_error() {
        let count = cuda_device_count();
        let err = parse_device(&format!("cuda:{count}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CUDA device"), "{err}");
    }
}
