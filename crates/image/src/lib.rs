//! Images for diffuse: pixels to tensors and back, image datasets (IDX files, folders of
//! PNG/JPEG) and the diffusers-compatible UNet2d. Depends on `diffuse-core`, never on the
//! other modality crates.
//!
//! `unet` is the network (variable names = diffusers' tensor names); `data` loads datasets into
//! memory and serves shuffled batches; `io` reads and writes pictures (grids, masks);
//! `pipeline` is a diffusers pipeline directory (model_index.json, unet/, scheduler/);
//! `classifier` and `fid` give the classifier-feature Fréchet distance; `plot` draws loss curves;
//! `poisson` treats pixels as counts for count-diffusion models (`--process poisson`).
//! Tensor shape misuse panics (as tch does); everything touching files or user input returns
//! [`diffuse_tensor::Error`].

pub mod classifier;
pub mod data;
pub mod fid;
pub mod io;
pub mod pipeline;
pub mod poisson;
/// Loss curves (they live in `diffuse-tensor`, beside the training loop, for every modality).
pub use diffuse_tensor::plot;
pub mod train;
pub mod unet;
