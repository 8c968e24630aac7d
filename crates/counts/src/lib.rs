//! Count data for diffuse: tables of non-negative integers (bag-of-words, histograms, any count
//! vectors) read from CSV or NumPy `.npy` files, checked on the way in, written back out.
//! Depends on `diffuse-core`, never on the other modality crates.

pub mod data;
