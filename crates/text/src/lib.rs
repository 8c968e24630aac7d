//! Text for diffuse: tokenizers to token ids and back, text corpora, and the transformer
//! denoiser for categorical diffusion. Depends on `diffuse-core`, never on the other modality
//! crates.
//!
//! Filled in by the text work; it exists now so the workspace has its final shape.
