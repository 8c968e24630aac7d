//! Which kind of model a `--model` directory holds, read from the files each modality saves,
//! so that a command given another modality's model says so in one line (with the command
//! that fits it) instead of naming the first of its own files that is missing.
//!
//! The layouts: an image model is a diffusers pipeline (`model_index.json`, `unet/config.json`);
//! a text model has `config.json` beside `tokenizer.json`; an audio model `config.json` beside
//! `scheduler_config.json`; a count model `config.json` beside a `diffuse.json` that names its
//! `columns`; the classifier of `eval image --metric fid` `reference_stats.safetensors` or
//! `info.json`. A training run directory is read through its `model/` folder, or, before that
//! exists, through the settings in its `run.json`.

use anyhow::{bail, Result};
use serde_json::Value;
use std::path::Path;

/// The kinds of model directory diffuse writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Image,
    Audio,
    Text,
    Counts,
    /// The feature classifier `diffuse eval image --metric fid --classifier` reads.
    Classifier,
}

impl ModelKind {
    /// "an image model", "a text model", ...
    pub fn described(self) -> &'static str {
        match self {
            ModelKind::Image => "an image model",
            ModelKind::Audio => "an audio model",
            ModelKind::Text => "a text model",
            ModelKind::Counts => "a count model",
            ModelKind::Classifier => "an image classifier, not a diffusion model",
        }
    }

    /// The command that does `verb` (sample, inpaint, eval) with this kind of model.
    pub fn command(self, verb: &str) -> &'static str {
        match (self, verb) {
            (ModelKind::Image, "inpaint") => "diffuse inpaint image",
            (ModelKind::Image, "eval") => "diffuse eval image",
            (ModelKind::Image, _) => "diffuse sample image",
            (ModelKind::Audio, "inpaint") => "diffuse inpaint audio",
            (ModelKind::Audio, "eval") => "diffuse eval audio",
            (ModelKind::Audio, _) => "diffuse sample audio",
            // Text and counts fill gaps while sampling.
            (ModelKind::Text, "inpaint") => "diffuse sample text --infill",
            (ModelKind::Text, "eval") => "diffuse eval text",
            (ModelKind::Text, _) => "diffuse sample text",
            (ModelKind::Counts, "inpaint") => "diffuse sample counts --given",
            (ModelKind::Counts, "eval") => "diffuse eval counts",
            (ModelKind::Counts, _) => "diffuse sample counts",
            (ModelKind::Classifier, _) => "diffuse eval image --metric fid --classifier",
        }
    }
}

fn json_object(path: &Path) -> Option<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The kind of the model directory `dir` itself, from its files.
fn kind_of_model_dir(dir: &Path) -> Option<ModelKind> {
    let has = |name: &str| dir.join(name).is_file();
    if has("model_index.json") || has("unet/config.json") {
        return Some(ModelKind::Image);
    }
    if !has("config.json") {
        return None;
    }
    if has("tokenizer.json") {
        Some(ModelKind::Text)
    } else if has("scheduler_config.json") {
        Some(ModelKind::Audio)
    } else if has("reference_stats.safetensors") || has("info.json") {
        Some(ModelKind::Classifier)
    } else if json_object(&dir.join("diffuse.json")).is_some_and(|m| m.contains_key("columns")) {
        Some(ModelKind::Counts)
    } else {
        None
    }
}

/// The kind of a training run directory that has no model yet, from its `run.json` settings.
fn kind_of_run(dir: &Path) -> Option<ModelKind> {
    let run = json_object(&dir.join("run.json"))?;
    let has = |key: &str| run.contains_key(key);
    if has("unet") {
        Some(ModelKind::Image)
    } else if has("tokenizer") {
        Some(ModelKind::Text)
    } else if has("audio") {
        Some(ModelKind::Audio)
    } else if has("held_out") {
        Some(ModelKind::Counts)
    } else {
        None
    }
}

/// The kind of model `dir` holds (a model directory or a training run directory); `None` when
/// it is none that diffuse recognises (the modality's own loader then names what is missing).
pub fn detect(dir: &Path) -> Option<ModelKind> {
    kind_of_model_dir(dir)
        .or_else(|| kind_of_model_dir(&dir.join("model")))
        .or_else(|| kind_of_run(dir))
}

/// Refuse a `--model` that holds another kind of model than `expected`, in one line saying what
/// it is and which command does `verb` (sample, inpaint, eval) with it.
pub fn check_model_kind(model: &Path, expected: ModelKind, verb: &str) -> Result<()> {
    match detect(model) {
        Some(kind) if kind != expected => bail!(
            "--model: {}: this is {}; use `{}`",
            model.display(),
            kind.described(),
            kind.command(verb)
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn each_layout_is_recognised_and_named_with_its_command() {
        let tmp = tempfile::tempdir().unwrap();
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<ModelKind>);
        let cases: [Case<'_>; 7] = [
            (
                "image",
                &[("model_index.json", "{}"), ("unet/config.json", "{}")],
                Some(ModelKind::Image),
            ),
            (
                "text",
                &[("config.json", "{}"), ("tokenizer.json", "{}")],
                Some(ModelKind::Text),
            ),
            (
                "audio",
                &[("config.json", "{}"), ("scheduler_config.json", "{}")],
                Some(ModelKind::Audio),
            ),
            (
                "counts",
                &[
                    ("config.json", "{}"),
                    ("diffuse.json", r#"{"columns": ["a"]}"#),
                ],
                Some(ModelKind::Counts),
            ),
            (
                "classifier",
                &[("config.json", "{}"), ("info.json", "{}")],
                Some(ModelKind::Classifier),
            ),
            (
                "text-run",
                &[("run.json", r#"{"tokenizer": "char"}"#)],
                Some(ModelKind::Text),
            ),
            ("empty", &[], None),
        ];
        for (name, files, want) in cases {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            write(&dir, files);
            assert_eq!(detect(&dir), want, "{name}");
        }
        // A run directory with its model inside.
        let run = tmp.path().join("run");
        write(
            &run,
            &[
                ("run.json", r#"{"tokenizer": "char"}"#),
                ("model/config.json", "{}"),
                ("model/tokenizer.json", "{}"),
            ],
        );
        assert_eq!(detect(&run), Some(ModelKind::Text));
        let err = check_model_kind(&run, ModelKind::Image, "sample")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--model: "), "{err}");
        assert!(
            err.ends_with("this is a text model; use `diffuse sample text`"),
            "{err}"
        );
        assert!(check_model_kind(&tmp.path().join("empty"), ModelKind::Image, "eval").is_ok());
        assert!(check_model_kind(&tmp.path().join("missing"), ModelKind::Text, "eval").is_ok());
    }
}
