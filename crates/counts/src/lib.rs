//! Count data for diffuse: tables of non-negative integers (bag-of-words vectors, histograms, any
//! count vectors) and the count-diffusion models that generate them. `data` reads CSV or NumPy
//! `.npy` tables (checked value by value) and writes them back; `network` is the residual MLP
//! denoiser; `model` is a model directory (sample, sample with some columns given, bits/dim);
//! `train` is the training run and `eval` the earth mover's distance of generated marginals to
//! held-out data, with its bounds and histogram pictures. The maths (JUMP thinning and
//! thickening, Blackout's binomial bridge) is `diffuse_core::poisson`. Depends on
//! `diffuse-core`, never on the other modality crates.

pub mod data;
pub mod eval;
pub mod model;
pub mod network;
pub mod train;
