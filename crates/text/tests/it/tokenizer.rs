//! Tokenizers: exact round trips (spaces, newlines, non-ASCII), deterministic vocabularies, the
//! character table agreeing with the library pipeline, save/load, unencodable characters.

use crate::fixture_corpus;
use diffuse_text::tokenizer::{TextTokenizer, TokenStats, TokenizerKind};
use diffuse_text::{Corpus, CorpusOptions};

const MIXED: &str =
    "To be, or not to be:\n  that is\tthe question.\r\n\nÉté — naïve café ☕ 日本語 👋🏽!\n";

#[test]
fn char_level_round_trips_spaces_newlines_and_unicode() {
    let tok = TextTokenizer::char_level([MIXED]).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Char);
    let ids = tok.encode(MIXED).unwrap();
    assert_eq!(ids.len(), MIXED.chars().count());
    assert_eq!(tok.decode(&ids), MIXED);
    // Ids follow sorted character order: '\t' < '\n' < '\r' < ' ' < ...
    assert_eq!(tok.encode("\t\n\r ").unwrap(), vec![0, 1, 2, 3]);
    let mut chars: Vec<char> = MIXED.chars().collect();
    chars.sort();
    chars.dedup();
    assert_eq!(tok.vocab_size(), chars.len());
    assert_eq!(tok.token(0).as_deref(), Some("\t"));
}

#[test]
fn char_table_agrees_with_the_library_pipeline() {
    let tok = TextTokenizer::char_level([MIXED]).unwrap();
    let text = "question naïve 👋🏽\n\n  be";
    let fast = tok.encode(text).unwrap();
    assert_eq!(tok.encode_with_library(text).unwrap(), fast);
    assert_eq!(tok.decode_with_library(&fast).unwrap(), text);
}

#[test]
fn char_level_vocabulary_is_deterministic_and_order_free() {
    let a = TextTokenizer::char_level(["hello world", "xyz"]).unwrap();
    let b = TextTokenizer::char_level(["zyx", "dlrow olleh"]).unwrap();
    assert_eq!(a.to_json_string().unwrap(), b.to_json_string().unwrap());
}

#[test]
fn char_level_names_unencodable_characters() {
    let tok = TextTokenizer::char_level(["abc def"]).unwrap();
    let err = tok.encode("abc é€ a\u{1}").unwrap_err().to_string();
    assert!(
        err.contains("characters not in the tokenizer's vocabulary"),
        "{err}"
    );
    assert!(err.contains("'é' (U+00E9)"), "{err}");
    assert!(err.contains("'€' (U+20AC)"), "{err}");
    assert!(err.contains("'\\u{1}' (U+0001)"), "{err}");
    assert!(!err.contains("'a'"), "{err}");
    // After a save and load the same check still applies.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let again = TextTokenizer::load(&path).unwrap();
    let err = again.encode("é").unwrap_err().to_string();
    assert!(err.contains("'é' (U+00E9)"), "{err}");
}

#[test]
fn empty_text_gives_no_char_tokenizer() {
    let err = TextTokenizer::char_level(["", ""]).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn save_load_gives_the_same_ids_and_a_standard_file() {
    let tok = TextTokenizer::char_level([MIXED]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    // A standard tokenizer.json: the library reads it without diffuse.
    let plain = tokenizers::Tokenizer::from_file(&path).unwrap();
    assert_eq!(plain.get_vocab_size(true), tok.vocab_size());
    let loaded = TextTokenizer::load(&path).unwrap();
    assert_eq!(loaded.kind(), TokenizerKind::Char);
    assert_eq!(loaded.encode(MIXED).unwrap(), tok.encode(MIXED).unwrap());
    assert_eq!(loaded.decode(&tok.encode(MIXED).unwrap()), MIXED);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "a temporary file was left behind: {names:?}"
    );
}

fn fixture_texts() -> Vec<String> {
    let corpus = Corpus::from_path(&fixture_corpus(), &CorpusOptions::default()).unwrap();
    corpus.documents().iter().map(|d| d.text.clone()).collect()
}

#[test]
fn bpe_trains_round_trips_and_reloads() {
    let texts = fixture_texts();
    let tok = TextTokenizer::train_bpe(&texts, 300).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::ByteLevelBpe);
    assert!(
        tok.vocab_size() > 256 && tok.vocab_size() <= 300,
        "{}",
        tok.vocab_size()
    );
    // Every string encodes, seen characters or not, and decodes back exactly.
    for text in [texts[0].as_str(), MIXED, "  leading and trailing  \n\n", ""] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids), text);
    }
    // Merges compress: fewer tokens than characters on the training text.
    let stats = tok.stats(&texts[0]).unwrap();
    assert!(stats.chars_per_token() > 1.3, "{stats:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let loaded = TextTokenizer::load(&path).unwrap();
    assert_eq!(loaded.kind(), TokenizerKind::ByteLevelBpe);
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    assert_eq!(loaded.encode(MIXED).unwrap(), tok.encode(MIXED).unwrap());
    assert_eq!(
        loaded.encode(&texts[1]).unwrap(),
        tok.encode(&texts[1]).unwrap()
    );
}

#[test]
fn bpe_training_is_deterministic() {
    let texts = fixture_texts();
    let a = TextTokenizer::train_bpe(&texts, 280).unwrap();
    let b = TextTokenizer::train_bpe(&texts, 280).unwrap();
    assert_eq!(a.to_json_string().unwrap(), b.to_json_string().unwrap());
}

#[test]
fn bpe_rejects_a_vocabulary_smaller_than_the_bytes() {
    let err = TextTokenizer::train_bpe(&["some text"], 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 256"), "{err}");
}

#[test]
fn decode_skips_or_marks_ids_outside_the_vocabulary() {
    let tok = TextTokenizer::char_level(["abc"]).unwrap();
    let mask = tok.vocab_size() as i64;
    assert_eq!(tok.decode(&[0, mask, 1, -1, 2]), "abc");
    assert_eq!(
        tok.decode_with_placeholder(&[0, mask, 1, mask, 2], "_"),
        "a_b_c"
    );
    assert_eq!(
        tok.decode_with_placeholder(&[mask, 0, mask, mask, 2], "_"),
        "_a__c"
    );
}

#[test]
fn loading_a_missing_or_broken_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = TextTokenizer::load(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.json"), "{err}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"model\": 3}").unwrap();
    let err = TextTokenizer::load(&broken).unwrap_err().to_string();
    assert!(
        err.contains("broken.json") && err.contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn token_stats_give_bits_per_character() {
    let stats = TokenStats {
        chars: 200,
        tokens: 100,
    };
    assert_eq!(stats.chars_per_token(), 2.0);
    // ln 2 nats per token over two characters each = half a bit per character.
    let bpc = stats.bits_per_char(std::f64::consts::LN_2);
    assert!((bpc - 0.5).abs() < 1e-12, "{bpc}");
    let tok = TextTokenizer::char_level(["abc"]).unwrap();
    assert_eq!(tok.chars_per_token("abcabc").unwrap(), 1.0);
}

/// A `tokenizer.json` around `model`, splitting at whitespace.
fn tokenizer_json(model: serde_json::Value) -> String {
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": model,
    })
    .to_string()
}

#[test]
fn vocabularies_with_gaps_load_and_their_unknown_token_is_still_found() {
    // Ids 2 and 3 unused: the library warns on stdout whenever such a model is serialised, so
    // loading must not serialise it (the CLI's --json output would break; see the e2e tests).
    let word_level = tokenizer_json(serde_json::json!({
        "type": "WordLevel",
        "vocab": {"a": 0, "b": 1, "[UNK]": 4},
        "unk_token": "[UNK]",
    }));
    let bpe = tokenizer_json(serde_json::json!({
        "type": "BPE",
        "vocab": {"a": 0, "b": 1, "<unk>": 4},
        "merges": [],
        "unk_token": "<unk>",
    }));
    let word_piece = tokenizer_json(serde_json::json!({
        "type": "WordPiece",
        "vocab": {"a": 0, "b": 1, "[UNK]": 4},
        "unk_token": "[UNK]",
        "continuing_subword_prefix": "##",
        "max_input_chars_per_word": 100,
    }));
    for json in [word_level, bpe, word_piece] {
        let tok = TextTokenizer::from_json_str(&json).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::Other);
        assert_eq!(tok.vocab_size(), 5, "{json}");
        assert_eq!(tok.encode("a b").unwrap(), [0, 1], "{json}");
        // Text that would encode to the unknown token is refused, naming the character.
        let err = tok.encode("a c").unwrap_err().to_string();
        assert!(err.contains("'c' (U+0063)"), "{json}: {err}");
    }
    // A Unigram model keeps only the id of its unknown piece.
    let unigram = tokenizer_json(serde_json::json!({
        "type": "Unigram",
        "unk_id": 2,
        "vocab": [["a", -1.0], ["b", -1.0], ["<unk>", -5.0]],
    }));
    let tok = TextTokenizer::from_json_str(&unigram).unwrap();
    assert_eq!(tok.encode("a b").unwrap(), [0, 1]);
    let err = tok.encode("a c").unwrap_err().to_string();
    assert!(err.contains("'c' (U+0063)"), "{err}");
}

#[test]
fn bpe_training_on_a_very_long_run_without_spaces_finishes_and_round_trips() {
    // One 200,000-character word (quadratic to train on whole), a multi-byte run and some
    // ordinary text: training cuts long words, encoding keeps them and round-trips exactly.
    let long = "x".repeat(200_000);
    let accents = "é".repeat(3_000);
    let text = format!("{long}\nShall I compare thee {accents} to a summer's day?\n");
    let tok = TextTokenizer::train_bpe(&[text.as_str()], 300).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::ByteLevelBpe);
    for sample in [text.as_str(), long.as_str(), accents.as_str(), MIXED] {
        let ids = tok.encode(sample).unwrap();
        assert_eq!(tok.decode(&ids), sample);
    }
    // Runs are learned, but no token is longer than the longest word training counts (a
    // byte-level token has one character per byte).
    let x_tokens = tok.encode(&long).unwrap();
    assert!(x_tokens.len() < 2_000, "{} tokens", x_tokens.len());
    let bytes = |id: i64| tok.token(id).unwrap().chars().count();
    let longest = (0..tok.vocab_size() as i64).map(bytes).max().unwrap();
    assert_eq!(
        longest,
        diffuse_text::tokenizer::BPE_TRAINING_WORD_BYTES,
        "the longest token"
    );
    // Words are cut between characters: every token of the accented run is whole "é"s (and
    // those of its pieces learned a merge of, two bytes each).
    let e_ids = tok.encode(&accents).unwrap();
    for &id in &e_ids {
        let token = tok.decode(&[id]);
        assert!(
            !token.is_empty() && token.chars().all(|c| c == 'é'),
            "token {id}: {token:?}"
        );
    }
}

#[test]
fn bpe_training_on_ordinary_text_matches_the_library_trainer() {
    // Cutting long words is the only departure from `Tokenizer::train`: on text without long
    // words the merges and ids are the library's.
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{DecoderWrapper, PreTokenizerWrapper, Tokenizer};
    let texts = fixture_texts();
    let ours = TextTokenizer::train_bpe(&texts, 320).unwrap();
    let mut library = Tokenizer::new(BPE::default());
    library.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    library.with_decoder(Some(DecoderWrapper::ByteLevel(
        tokenizers::decoders::byte_level::ByteLevel::default(),
    )));
    let mut trainer = tokenizers::models::TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(320)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build(),
    );
    library.train(&mut trainer, texts.iter()).unwrap();
    assert_eq!(
        ours.to_json_string().unwrap(),
        library.to_string(true).unwrap()
    );
}
