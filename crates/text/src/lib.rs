//! Text for diffuse: tokenizers to token ids and back, text corpora, and the transformer
//! denoiser for categorical diffusion. Depends on `diffuse-core`, never on the other modality
//! crates.
//!
//! `tokenizer` wraps the `tokenizers` library (character-level, byte-level BPE, or any
//! `tokenizer.json`); `corpus` reads UTF-8 files, splits them into training and validation text
//! and serves fixed-length token sequences; `transformer` is the network (bidirectional with
//! adaLN time conditioning, or causal for the autoregressive baseline); `model_dir` is the saved
//! model (config.json, model.safetensors, tokenizer.json, diffuse.json). Tensor shape misuse
//! panics (as tch does); everything touching files or user input returns
//! [`diffuse_tensor::Error`].

pub mod corpus;
pub mod model_dir;
pub mod pipeline;
pub mod process;
pub mod tokenizer;
pub mod train;
pub mod transformer;

pub use corpus::{Corpus, CorpusOptions, TokenSequences, TokenizedCorpus};
pub use model_dir::TextModel;
pub use tokenizer::{TextTokenizer, TokenStats, TokenizerKind};
pub use transformer::{Positions, TextTransformer, TransformerConfig};
