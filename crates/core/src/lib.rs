//! The mathematics of diffusion, independent of any file format or modality: noise schedules
//! and forward processes (Gaussian, categorical, Poisson), parameterisations, training losses,
//! samplers, guidance, inpainting and likelihood bounds. Built on `diffuse-tensor`; the image,
//! audio and text crates supply the networks and data.
//!
//! This crate is filled in by the Gaussian-core, text and count-data work; until then it only
//! fixes its place in the dependency order (cli -> modalities -> core -> tensor -> tch).

pub use diffuse_tensor as tensor;
