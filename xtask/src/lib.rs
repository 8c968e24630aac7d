//! xtask: the project's automation, as a library with a thin `main`. `setup` provides libtorch 2.11
//! ([`libtorch`]) and the datasets of `data/datasets.toml` ([`manifest`], [`datasets`], [`archive`]); `test` and
//! `demo` wrap cargo ([`tasks`]); `bench` compares diffuse with PyTorch ([`bench`]). This crate downloads
//! through the ordinary package clients only and never depends on tch, so it builds before libtorch exists.
//!
//! Other code finds a dataset with [`datasets::dataset_dir`] / [`datasets::verified_dir`].

pub mod archive;
pub mod bench;
pub mod checksum;
pub mod datasets;
pub mod glob;
pub mod libtorch;
pub mod manifest;
pub mod tasks;
pub mod util;
