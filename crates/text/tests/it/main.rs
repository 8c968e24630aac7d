//! Integration tests of diffuse-text: tokenizers (character level, byte-level BPE, loading),
//! corpora (reading, errors, splitting, batching), the transformer (shapes, masking, parity with
//! the PyTorch twin from `tests/golden/make_transformer_golden.py`) and model directories.

mod bd3lm;
mod corpus;
mod model_dir;
mod pipeline;
mod tokenizer;
mod transformer;

use std::path::{Path, PathBuf};

/// libtorch's generator is process-global and tests run on several threads: tests whose results
/// depend on the exact random stream hold this lock.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The committed fixture corpus: `sonnets.txt`, `more/hamlet.txt` and a `README.md`.
pub fn fixture_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus")
}
