//! Audio for diffuse: WAV to tensors and back, audio datasets and 1-D denoisers (DiffWave-style
//! and a 1-D UNet). Depends on `diffuse-core`, never on the other modality crates.
//!
//! Filled in by the audio work; it exists now so the workspace has its final shape.
