//! Integration tests of diffuse-core against values recorded from diffusers 0.42.1
//! (`tests/golden/make_golden.py`, `make_sampler_golden.py`) and against closed forms.

mod categorical_bd3lm;
mod categorical_d3pm;
mod categorical_learning;
mod categorical_mdlm;
mod diffwave_fast;
mod dpm_solver;
mod editing;
mod edm;
mod learning;
mod likelihood;
mod prediction;
mod sampler_choice;
mod samplers;
mod scheduler_config;
mod schedules;
mod self_conditioning;
mod sigma_samplers;
mod vlb;

/// libtorch's generator is process-global and tests run on several threads: tests whose results
/// depend on the exact random stream hold this lock.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A JSON array of numbers from a golden file.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}
mod poisson;
mod poisson_learning;
