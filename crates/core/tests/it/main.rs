//! Integration tests of diffuse-core against values recorded from diffusers 0.42.1
//! (`tests/golden/make_golden.py`).

mod likelihood;
mod prediction;
mod schedules;
