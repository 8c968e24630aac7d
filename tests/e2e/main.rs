//! End-to-end tests: the `diffuse` binary driven as a user drives it. Each module covers one
//! command; inputs are made inside the test (no network, no datasets).

mod audio;
mod counts;
mod doctor;
mod image;
mod inspect;
mod launch;
mod readme;
mod text;
