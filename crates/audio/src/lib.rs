//! Audio for diffuse: WAV (and FLAC/AIFF) to tensors and back, band-limited resampling, audio
//! datasets, log-mel spectrograms and their statistics, and two 1-D denoisers (DiffWave-style
//! dilated residual convolutions and a 1-D UNet) that every Gaussian objective and sampler in
//! `diffuse-core` drives. Depends on `diffuse-core`, never on the other modality crates.
//!
//! `clip` is one clip in memory ([`clip::AudioClip`]: channels, rate, resampling, trimming,
//! normalisation); `wav` reads and writes files; `data` loads datasets, with the class labels
//! and groups (kits, class folders) that `labels` reads from a folder's layout; `features`
//! computes log-mel spectrograms and their PNG pictures, and `eval` the log-mel Fréchet distance
//! with its bounds; `diffwave`, `unet1d` and `network` are the networks; `pipeline` is a model
//! directory (sample, fill gaps) and `train` the training run.
//! Tensor shape misuse panics (as tch does); everything touching files or user input returns
//! [`diffuse_tensor::Error`].

pub mod clip;
pub mod data;
pub mod diffwave;
pub mod envelope;
pub mod eval;
pub mod features;
pub mod judge;
pub mod labels;
pub mod network;
pub mod pipeline;
pub mod train;
pub mod unet1d;
pub mod wav;
