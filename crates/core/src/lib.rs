//! The mathematics of diffusion, independent of any file format or modality: noise schedules
//! and forward processes (Gaussian, categorical, Poisson), parameterisations, training losses,
//! samplers, guidance, inpainting and likelihood bounds. Built on `diffuse-tensor`; the image,
//! audio and text crates supply the networks and data.
//!
//! What is here: [`schedule`] (diffusers' noise schedules, spacings and their continuous-time
//! view), [`prediction`] (epsilon / x0 / v and conversions), [`denoiser`] (the network as the maths
//! sees it), [`samplers`] (one per file, each with diffusers' step API and a loop), [`scheduler_config`]
//! (diffusers' scheduler_config.json), [`guidance`] and [`editing`] (classifier-free guidance,
//! inpainting, RePaint, SDEdit), [`losses`] (the denoising objective and its weightings),
//! [`likelihood`] and [`vlb`] (the variational bound and bits/dim), and [`edm`] (Karras et al.'s
//! preconditioning, loss and sampler), and [`toy`] (2-D data with known modes and a small MLP, for
//! learning tests and benchmarks). [`categorical`] holds discrete-state diffusion over tokens (D3PM
//! and MDLM: losses, likelihood bounds, samplers), and [`poisson`] count diffusion (JUMP's
//! thinning and thickening, Blackout's binomial bridge, their bound and the earth mover's
//! distance), each beside the Gaussian code rather than inside it. Schedule maths runs in f64 on
//! the CPU; tensors are made from it once.

pub mod categorical;
pub mod denoiser;
pub mod editing;
pub mod edm;
pub mod guidance;
mod json_float;
pub mod likelihood;
pub mod losses;
pub mod poisson;
pub mod prediction;
pub mod sampler_choice;
pub mod samplers;
pub mod schedule;
pub mod scheduler_config;
pub mod toy;
pub mod vlb;

pub use diffuse_tensor as tensor;
pub use diffuse_tensor::{Error, Result};
