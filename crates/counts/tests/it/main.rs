//! Integration tests of diffuse-counts.

mod data;
mod learning;
