//! The mathematics of diffusion, independent of any file format or modality: noise schedules
//! and forward processes (Gaussian, categorical, Poisson), parameterisations, training losses,
//! samplers, guidance, inpainting and likelihood bounds. Built on `diffuse-tensor`; the image,
//! audio and text crates supply the networks and data.
//!
//! What is here so far: [`likelihood`] (Gaussian posteriors, KL, the discretised decoder),
//! [`prediction`] (epsilon, sample and v parameterisations and their
//! conversions) and [`schedule`], the discrete-time Gaussian noise schedules of diffusers
//! (betas, cumulative alphas, zero-terminal-SNR rescaling), their continuous-time view (log-SNR
//! and sigma at any real t), the inference timestep spacings, and the Karras/exponential sigma
//! spacings. Schedule maths runs in f64 on the CPU; tensors are made from it once.

pub mod denoiser;
pub mod editing;
pub mod guidance;
pub mod likelihood;
pub mod losses;
pub mod prediction;
pub mod samplers;
pub mod schedule;
pub mod scheduler_config;
pub mod vlb;

pub use diffuse_tensor as tensor;
pub use diffuse_tensor::{Error, Result};
