//! The libtorch layer every diffuse crate shares.
//!
//! Parsing a device (`auto | cpu | cuda | cuda:N`) and seeding libtorch the way PyTorch does
//! come first; then what training needs around a model: strict and atomic safetensors I/O
//! ([`weights`]), an EMA with diffusers' decay rules ([`ema`]), an AdamW whose state is saved
//! ([`optim`]), learning-rate schedules ([`lr`]), gradient clipping ([`grad`]), resumable data
//! order ([`data`]), progress bars and JSONL metrics, and the generic loop ([`train`]) that ties
//! them together with checkpoints and bit-for-bit resume. Precision ([`precision`]) covers
//! bf16/f16 autocast on CUDA, and [`dist`] data-parallel training over several processes on
//! libtorch's c10d (Gloo on CPU, NCCL on CUDA).
//!
//! Errors that a user can cause (files, flags, configs) are [`Error`] values; tensor-shape misuse
//! is a programming error and panics, as tch itself does.

pub mod atomic;
pub mod classifier;
pub mod data;
pub mod device;
pub mod dist;
pub mod ema;
mod error;
pub mod ffi;
pub mod frechet;
pub mod grad;
pub mod kid;
pub mod lr;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod progress;
pub mod quality;
pub mod runtime;
pub mod seed;
pub mod train;
pub mod weights;

pub use device::{parse_device, DeviceSpec};
pub use error::{Error, Result};
pub use precision::Precision;
pub use seed::manual_seed;

/// The libtorch version this crate was built against (e.g. `2.11.0+cu130`), if it could be read.
pub const LIBTORCH_VERSION: Option<&str> = option_env!("DIFFUSE_LIBTORCH_VERSION");
/// The tch version pinned by the workspace.
pub const TCH_VERSION: &str = "0.24.0";
