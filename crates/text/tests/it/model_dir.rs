//! Text model directories: save and load give the same logits and tokenizer, saving replaces a
//! model whole, and incomplete or foreign directories are named errors.

use crate::rng_lock;
use diffuse_text::model_dir::{CONFIG_FILE, INFO_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use diffuse_text::{Positions, TextModel, TextTokenizer, TransformerConfig};
use tch::{Device, Kind, Tensor};

const TEXT: &str = "the quick brown fox\njumps over the lazy dog\n";

fn model(positions: Positions, causal: bool) -> TextModel {
    let tokenizer = TextTokenizer::char_level([TEXT]).unwrap();
    let v = tokenizer.vocab_size() as i64;
    let config = TransformerConfig {
        vocab_size: v + 1,
        output_vocab_size: v,
        hidden_size: 16,
        num_layers: 1,
        num_heads: 2,
        mlp_ratio: 2.0,
        max_seq_len: 32,
        positions,
        dropout: 0.0,
        causal,
        cond_dim: 8,
        time_conditioning: true,
    };
    let info = serde_json::json!({"process": "masked", "mask_id": v});
    let m = TextModel::new(&config, tokenizer, Some(info), Device::Cpu).unwrap();
    let _guard = rng_lock();
    tch::manual_seed(3);
    tch::no_grad(|| {
        for (_, mut var) in m.vs.variables() {
            var.copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.3));
        }
    });
    m
}

fn logits(m: &TextModel) -> Tensor {
    let ids = m.tokenizer.encode("the lazy fox").unwrap();
    let x = Tensor::from_slice(&ids).view([1, -1]);
    let cond = (!m.config().causal).then(|| Tensor::from_slice(&[123.0f32]));
    tch::no_grad(|| m.model.forward_t(&x, cond.as_ref(), false))
}

#[test]
fn save_load_gives_identical_logits() {
    for (positions, causal) in [(Positions::Rotary, false), (Positions::Learned, true)] {
        let m = model(positions, causal);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models").join("tiny");
        m.save(&path).unwrap();
        for file in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, INFO_FILE] {
            assert!(path.join(file).is_file(), "{file} missing");
        }
        let loaded = TextModel::load(&path, Device::Cpu).unwrap();
        assert_eq!(loaded.config(), m.config());
        assert_eq!(loaded.info, m.info);
        assert!(logits(&loaded).equal(&logits(&m)));
        assert_eq!(
            loaded.tokenizer.encode(TEXT).unwrap(),
            m.tokenizer.encode(TEXT).unwrap()
        );
        // Only the model directory is left: no staging or old copies.
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("tiny")]);
    }
}

#[test]
fn saving_again_replaces_the_model_and_info_is_optional() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    let first = model(Positions::Rotary, false);
    first.save(&path).unwrap();
    let mut second = model(Positions::Learned, false);
    second.info = None;
    second.save(&path).unwrap();
    let loaded = TextModel::load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.config().positions, Positions::Learned);
    assert_eq!(loaded.info, None);
    assert!(!path.join(INFO_FILE).exists());
}

#[test]
fn foreign_or_incomplete_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    let m = model(Positions::Rotary, false);
    let err = m.save(&foreign).unwrap_err().to_string();
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(foreign.join("cat.jpg").is_file());

    let path = dir.path().join("m");
    m.save(&path).unwrap();
    std::fs::remove_file(path.join(TOKENIZER_FILE)).unwrap();
    let err = TextModel::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json is missing") && err.contains(&path.display().to_string()),
        "{err}"
    );
    let err = TextModel::load(&dir.path().join("absent"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such model directory"), "{err}");
}

#[test]
fn a_tokenizer_larger_than_the_network_is_refused() {
    let tokenizer = TextTokenizer::char_level([TEXT]).unwrap();
    let config = TransformerConfig {
        vocab_size: 4,
        output_vocab_size: 4,
        hidden_size: 8,
        num_layers: 1,
        num_heads: 2,
        ..TransformerConfig::default()
    };
    let err = TextModel::new(&config, tokenizer, None, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the tokenizer has"), "{err}");
}
