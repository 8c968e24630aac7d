//! A text model directory: `config.json` (the [`TransformerConfig`]), `model.safetensors` (its
//! weights, names as in [`crate::transformer`]), `tokenizer.json` and, optionally,
//! `diffuse.json` (how the model was trained and is sampled: free-form JSON the caller defines).
//!
//! Saving writes a sibling temporary directory and renames it over the target, so at every
//! moment the path holds either the old complete model or the new one. Loading names the missing
//! file when the directory is incomplete and checks that the tokenizer fits the network.

use crate::tokenizer::TextTokenizer;
use crate::transformer::{TextTransformer, TransformerConfig};
use diffuse_tensor::atomic::write_json_atomic;
use diffuse_tensor::weights::{load_var_store, save_var_store};
use diffuse_tensor::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Device;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const INFO_FILE: &str = "diffuse.json";

/// A network with its weights, its tokenizer and the optional process information.
#[derive(Debug)]
pub struct TextModel {
    pub vs: VarStore,
    pub model: TextTransformer,
    pub tokenizer: TextTokenizer,
    /// The contents of `diffuse.json`, if any.
    pub info: Option<serde_json::Value>,
}

fn check_tokenizer_fits(config: &TransformerConfig, tokenizer: &TextTokenizer) -> Result<()> {
    let n = tokenizer.vocab_size() as i64;
    if config.vocab_size < n || config.output_vocab_size < n {
        return Err(Error::InvalidArgument(format!(
            "the tokenizer has {n} tokens but the transformer takes {} input and {} output ids \
             (both must be at least the tokenizer's vocabulary)",
            config.vocab_size, config.output_vocab_size
        )));
    }
    Ok(())
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::format(
            dir,
            format!(
                "not a complete text model directory: {name} is missing (expected \
                 {CONFIG_FILE}, {WEIGHTS_FILE} and {TOKENIZER_FILE})"
            ),
        ))
    }
}

/// The model directory `dir` names: `dir` itself, or the `model/` subfolder of a training run
/// directory, as the image and audio commands accept. The markers are files only a model
/// directory holds (a run directory has `tokenizer.json` and `run.json`, but no `config.json`
/// or weights of its own).
pub fn resolve_model_dir(dir: &Path) -> Result<PathBuf> {
    diffuse_tensor::atomic::resolve_model_dir(dir, &[CONFIG_FILE, WEIGHTS_FILE])
}

impl TextModel {
    /// A fresh (untrained) model on `device`.
    pub fn new(
        config: &TransformerConfig,
        tokenizer: TextTokenizer,
        info: Option<serde_json::Value>,
        device: Device,
    ) -> Result<Self> {
        check_tokenizer_fits(config, &tokenizer)?;
        let vs = VarStore::new(device);
        let model = TextTransformer::new(&vs.root(), config)?;
        Ok(TextModel {
            vs,
            model,
            tokenizer,
            info,
        })
    }

    /// Read a model directory onto `device` (strict: every weight present, none extra). A
    /// training run directory works too: its `model/` subfolder is read (see
    /// [`resolve_model_dir`]).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let dir = &resolve_model_dir(dir)?;
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: no such model directory",
                dir.display()
            )));
        }
        let config_path = require_file(dir, CONFIG_FILE)?;
        let weights_path = require_file(dir, WEIGHTS_FILE)?;
        let tokenizer_path = require_file(dir, TOKENIZER_FILE)?;
        let config = TransformerConfig::from_json_file(&config_path)?;
        let tokenizer = TextTokenizer::load(&tokenizer_path)?;
        check_tokenizer_fits(&config, &tokenizer).map_err(|e| Error::format(dir, e.to_string()))?;
        let info_path = dir.join(INFO_FILE);
        let info = if info_path.is_file() {
            let text = fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| Error::format(&info_path, format!("not valid JSON: {e}")))?,
            )
        } else {
            None
        };
        let vs = VarStore::new(device);
        let model = TextTransformer::new(&vs.root(), &config)?;
        load_var_store(&vs, &weights_path, true)?;
        Ok(TextModel {
            vs,
            model,
            tokenizer,
            info,
        })
    }

    /// Write the directory atomically (see the module docs). An existing `dir` must be a text
    /// model directory or empty.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_text_model_dir(
            dir,
            self.model.config(),
            &self.vs,
            &self.tokenizer,
            self.info.as_ref(),
        )
    }

    pub fn config(&self) -> &TransformerConfig {
        self.model.config()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// Write a text model directory from its parts (see [`TextModel::save`]).
pub fn save_text_model_dir(
    dir: &Path,
    config: &TransformerConfig,
    vs: &VarStore,
    tokenizer: &TextTokenizer,
    info: Option<&serde_json::Value>,
) -> Result<()> {
    check_tokenizer_fits(config, tokenizer)?;
    diffuse_tensor::atomic::write_dir_atomic(
        dir,
        CONFIG_FILE,
        &[CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, INFO_FILE],
        |staging| {
            config.to_json_file(&staging.join(CONFIG_FILE))?;
            save_var_store(vs, &staging.join(WEIGHTS_FILE), None)?;
            tokenizer.save(&staging.join(TOKENIZER_FILE))?;
            if let Some(info) = info {
                write_json_atomic(&staging.join(INFO_FILE), info)?;
            }
            Ok(())
        },
    )
}
