//! Corpora: which files are read, errors for non-UTF-8 and empty corpora, the train/validation
//! split, sequence cutting, batches and the `shakespeare` name.

use crate::fixture_corpus;
use diffuse_tensor::Error;
use diffuse_text::corpus::{
    default_datasets_dir, read_text_file, resolve_corpus, Document, DOCUMENT_SEPARATOR,
};
use diffuse_text::{Corpus, CorpusOptions, TextTokenizer};
use tch::Device;

fn names(corpus: &Corpus) -> Vec<&str> {
    corpus.documents().iter().map(|d| d.name.as_str()).collect()
}

#[test]
fn folders_are_read_recursively_sorted_and_txt_only_by_default() {
    let root = fixture_corpus();
    let corpus = Corpus::from_path(&root, &CorpusOptions::default()).unwrap();
    assert_eq!(names(&corpus), ["more/hamlet.txt", "sonnets.txt"]);
    assert!(corpus.documents()[1]
        .text
        .contains("From fairest creatures"));

    let flat = CorpusOptions {
        recursive: false,
        all_files: false,
    };
    let corpus = Corpus::from_path(&root, &flat).unwrap();
    assert_eq!(names(&corpus), ["sonnets.txt"]);

    let all = CorpusOptions {
        recursive: true,
        all_files: true,
    };
    let corpus = Corpus::from_path(&root, &all).unwrap();
    assert_eq!(
        names(&corpus),
        ["README.md", "more/hamlet.txt", "sonnets.txt"]
    );

    // A single file is a one-document corpus whatever its extension.
    let corpus = Corpus::from_path(&root.join("README.md"), &flat).unwrap();
    assert_eq!(names(&corpus), ["README.md"]);
}

#[test]
fn non_utf8_file_error_names_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "fine text\n").unwrap();
    std::fs::write(dir.path().join("bad.txt"), b"hello\nwor\xffld\n").unwrap();
    let err = Corpus::from_path(dir.path(), &CorpusOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("bad.txt"), "{msg}");
    assert!(msg.contains("not UTF-8"), "{msg}");
    assert!(
        msg.contains("byte offset 9") && msg.contains("line 2"),
        "{msg}"
    );
    assert!(msg.contains("0xFF"), "{msg}");
}

#[test]
fn a_byte_order_mark_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bom.txt");
    std::fs::write(&path, "\u{FEFF}text").unwrap();
    assert_eq!(read_text_file(&path).unwrap(), "text");
}

#[test]
fn empty_corpora_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Corpus::from_path(dir.path(), &CorpusOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty corpus") && err.contains(".txt files"),
        "{err}"
    );

    std::fs::write(dir.path().join("notes.md"), "not read").unwrap();
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    let err = Corpus::from_path(dir.path(), &CorpusOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty corpus: 1 file(s), 0 characters"),
        "{err}"
    );
    assert!(err.contains(&dir.path().display().to_string()), "{err}");

    let err = Corpus::from_documents(Vec::new()).unwrap_err().to_string();
    assert!(err.contains("empty corpus"), "{err}");
}

fn doc(name: &str, text: String) -> Document {
    Document {
        name: name.into(),
        text,
    }
}

/// Two documents of 10 and 5 lines of ten characters.
fn lined_corpus() -> Corpus {
    Corpus::from_documents(vec![
        doc("one", "abcdefghi\n".repeat(10)),
        doc("two", "jklmnopqr\n".repeat(5)),
    ])
    .unwrap()
}

#[test]
fn split_takes_the_tail_of_every_document_at_a_line_start() {
    let corpus = lined_corpus();
    let parts = corpus.split_text(0.2).unwrap();
    assert_eq!(parts[0].0.len(), 80);
    assert_eq!(parts[0].1.len(), 20);
    assert_eq!(parts[1].0.len(), 40);
    assert_eq!(parts[1].1.len(), 10);

    // A cut inside a line moves back to the line's start.
    let corpus = Corpus::from_documents(vec![doc("d", "abc\ndefghij".into())]).unwrap();
    let parts = corpus.split_text(0.5).unwrap();
    assert_eq!(parts[0], ("abc\n", "defghij"));
    // No validation at all with fraction 0; fractions outside [0, 1) are errors.
    assert_eq!(corpus.split_text(0.0).unwrap()[0].1, "");
    let err = corpus.split_text(1.0).unwrap_err().to_string();
    assert!(err.contains("[0, 1)"), "{err}");
}

#[test]
fn sequences_are_non_overlapping_windows_of_the_joined_stream() {
    let corpus = lined_corpus();
    let tok = corpus.char_tokenizer().unwrap();
    let data = corpus.tokenize(&tok, 16, 0.2).unwrap();
    let sep = DOCUMENT_SEPARATOR.chars().count() as u64;
    // Training stream: 80 + separator + 40 tokens; validation: 20 + separator + 10.
    assert_eq!(data.train.stats().tokens, 120 + sep);
    assert_eq!(data.train.stats().chars, 120 + sep);
    assert_eq!(data.validation.stats().tokens, 30 + sep);
    assert_eq!(data.train.len(), (120 + sep as usize) / 16);
    assert_eq!(data.validation.len(), (30 + sep as usize) / 16);
    assert_eq!(data.train.tokens().size(), [data.train.len() as i64, 16]);
    assert_eq!(data.seq_len, 16);

    // Window k is stream[16k .. 16k + 16].
    let mut stream = tok.encode(&"abcdefghi\n".repeat(8)).unwrap();
    stream.extend(tok.encode(DOCUMENT_SEPARATOR).unwrap());
    stream.extend(tok.encode(&"jklmnopqr\n".repeat(4)).unwrap());
    for k in 0..data.train.len() {
        let row = Vec::<i64>::try_from(data.train.tokens().get(k as i64)).unwrap();
        assert_eq!(row, stream[16 * k..16 * k + 16], "window {k}");
    }
    let first_val = Vec::<i64>::try_from(data.validation.tokens().get(0)).unwrap();
    assert_eq!(
        tok.decode(&first_val),
        "abcdefghi\nabcdefghi\n\n\njklmnopqr\n"[..16].to_string()
    );

    // No validation split asked for: all text trains.
    let data = corpus.tokenize(&tok, 16, 0.0).unwrap();
    assert!(data.validation.is_empty());
    assert_eq!(data.train.stats().tokens, 150 + sep);
}

#[test]
fn splits_too_short_for_one_sequence_are_errors() {
    let corpus = lined_corpus();
    let tok = corpus.char_tokenizer().unwrap();
    let err = corpus.tokenize(&tok, 1000, 0.2).unwrap_err().to_string();
    assert!(
        err.contains("training split has 122 tokens, fewer than --seq-len 1000"),
        "{err}"
    );
    let err = corpus.tokenize(&tok, 40, 0.2).unwrap_err().to_string();
    assert!(err.contains("validation split has 32 tokens"), "{err}");
    let err = corpus.tokenize(&tok, 0, 0.2).unwrap_err().to_string();
    assert!(err.contains("seq_len"), "{err}");
}

#[test]
fn a_tokenizer_missing_corpus_characters_names_the_document() {
    let corpus = lined_corpus();
    let tok = TextTokenizer::char_level(["abcdefghi\n"]).unwrap();
    let err = corpus.tokenize(&tok, 8, 0.0).unwrap_err().to_string();
    assert!(err.starts_with("two: characters not in"), "{err}");
}

#[test]
fn batches_are_seeded_shuffles_of_whole_sequences() {
    let corpus = Corpus::from_path(&fixture_corpus(), &CorpusOptions::default()).unwrap();
    let tok = corpus.char_tokenizer().unwrap();
    let data = corpus.tokenize(&tok, 32, 0.1).unwrap();
    let n = data.train.len();
    assert!(n > 50, "{n}");
    let sampler = data.train.sampler(8, 7).unwrap();
    let batch = data.train.sampled_batch(&sampler, 0, Device::Cpu);
    assert_eq!(batch.size(), [8, 32]);
    assert_eq!(batch.kind(), tch::Kind::Int64);
    let again = data
        .train
        .sampled_batch(&data.train.sampler(8, 7).unwrap(), 0, Device::Cpu);
    assert!(batch.equal(&again));
    let other = data
        .train
        .sampled_batch(&data.train.sampler(8, 8).unwrap(), 0, Device::Cpu);
    assert!(!batch.equal(&other));
    // Row i of a batch is sequence indices[i].
    let indices = sampler.batch(3);
    let batch = data.train.batch(&indices, Device::Cpu);
    for (row, &i) in indices.iter().enumerate() {
        assert!(batch
            .get(row as i64)
            .equal(&data.train.tokens().get(i as i64)));
    }
    // Evaluation batches cover every sequence once, in order.
    let rows: i64 = data
        .validation
        .ordered_batches(5, Device::Cpu)
        .map(|b| b.size()[0])
        .sum();
    assert_eq!(rows as usize, data.validation.len());
    assert!(data.train.sampler(0, 1).is_err());
}

#[test]
fn bpe_corpus_stats_give_more_than_one_char_per_token() {
    let corpus = Corpus::from_path(&fixture_corpus(), &CorpusOptions::default()).unwrap();
    let tok = corpus.train_bpe(320).unwrap();
    let data = corpus.tokenize(&tok, 16, 0.1).unwrap();
    let stats = data.train.stats();
    assert!(stats.chars_per_token() > 1.5, "{stats:?}");
    let total = (stats + data.validation.stats()).chars;
    let sep = DOCUMENT_SEPARATOR.chars().count() as u64;
    // Every character is in one split; each split adds one separator between its two documents.
    assert_eq!(total, corpus.num_chars() + 2 * sep);
}

#[test]
fn shakespeare_resolves_to_the_top_level_works() {
    let empty = tempfile::tempdir().unwrap();
    let err = resolve_corpus("shakespeare", empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cargo xtask setup --data shakespeare"),
        "{err}"
    );
    let err = resolve_corpus("no-such-corpus", empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-corpus: no such file or folder"),
        "{err}"
    );
    // A path is taken as it is, with the default options.
    let source = resolve_corpus(fixture_corpus().to_str().unwrap(), empty.path()).unwrap();
    assert_eq!(source.options, CorpusOptions::default());

    let datasets = default_datasets_dir();
    if !datasets.join("shakespeare").is_dir() {
        eprintln!("shakespeare is not downloaded; skipping the part that reads it");
        return;
    }
    let source = resolve_corpus("shakespeare", &datasets).unwrap();
    assert!(source.path.ends_with("shakespeare"));
    assert!(!source.options.recursive);
    let corpus = Corpus::load("shakespeare", &datasets).unwrap();
    assert_eq!(corpus.documents().len(), 42);
    assert!(names(&corpus).iter().all(|n| n.ends_with("_gut.txt")));
    assert!(names(&corpus).contains(&"hamlet_gut.txt"));
}

#[test]
fn an_existing_path_is_read_even_when_named_like_a_corpus() {
    // A datasets folder holding the named corpus, and a folder of the same name elsewhere: the
    // path given is what is read (the CLI records existing paths as absolute ones).
    let datasets = tempfile::tempdir().unwrap();
    std::fs::create_dir(datasets.path().join("shakespeare")).unwrap();
    std::fs::write(datasets.path().join("shakespeare/x_gut.txt"), "bundled\n").unwrap();
    let mine = tempfile::tempdir().unwrap();
    let local = mine.path().join("shakespeare");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("mine.txt"), "my own text\n").unwrap();
    let source = resolve_corpus(local.to_str().unwrap(), datasets.path()).unwrap();
    assert_eq!(source.path, local);
    assert_eq!(source.options, CorpusOptions::default());
    let corpus = Corpus::load(local.to_str().unwrap(), datasets.path()).unwrap();
    assert_eq!(names(&corpus), ["mine.txt"]);
    // The bare name, with no such folder here, is still the named corpus.
    let source = resolve_corpus("shakespeare", datasets.path()).unwrap();
    assert_eq!(source.path, datasets.path().join("shakespeare"));
    assert!(!source.options.recursive);
}

#[cfg(unix)]
#[test]
fn link_loops_and_repeated_links_read_every_file_once() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "first file\n").unwrap();
    std::fs::write(root.join("sub/b.txt"), "second file\n").unwrap();
    // A loop back to the root, a second way into sub/, and a second name for a.txt.
    symlink(&root, root.join("sub/loop")).unwrap();
    symlink(root.join("sub"), root.join("again")).unwrap();
    symlink(root.join("a.txt"), root.join("sub/same.txt")).unwrap();
    let files = diffuse_text::corpus::corpus_files(&root, &CorpusOptions::default()).unwrap();
    assert_eq!(files, [root.join("a.txt"), root.join("again/b.txt")]);
    let corpus = Corpus::from_path(&root, &CorpusOptions::default()).unwrap();
    assert_eq!(names(&corpus), ["a.txt", "again/b.txt"]);
    assert_eq!(
        corpus.num_chars(),
        ("first file\n".len() + "second file\n".len()) as u64
    );
}

#[test]
fn held_out_sequences_need_only_a_long_enough_held_out_split() {
    // One line of 40 characters: 90% held out leaves 4 training characters.
    let text = "Shall I compare thee to a summers day?\n\n";
    let corpus = Corpus::from_documents(vec![doc("small.txt", text.into())]).unwrap();
    let tok = corpus.char_tokenizer().unwrap();
    let err = corpus.tokenize(&tok, 32, 0.9).unwrap_err().to_string();
    assert!(err.contains("training split has 4 tokens"), "{err}");
    let held_out = corpus.held_out(&tok, 32, 0.9).unwrap();
    assert_eq!(held_out.len(), 1);
    assert_eq!(held_out.stats().tokens, 36);
    let row = Vec::<i64>::try_from(held_out.tokens().get(0)).unwrap();
    assert_eq!(tok.decode(&row), text[4..36]);
    // The same held-out sequences as a full tokenization gives, when that succeeds.
    let corpus = lined_corpus();
    let tok = corpus.char_tokenizer().unwrap();
    let full = corpus.tokenize(&tok, 16, 0.2).unwrap();
    let held_out = corpus.held_out(&tok, 16, 0.2).unwrap();
    assert!(held_out.tokens().equal(full.validation.tokens()));
    assert_eq!(held_out.stats(), full.validation.stats());
    // Too short even so: one error with the count and what one sequence needs.
    let err = corpus.held_out(&tok, 40, 0.2).unwrap_err().to_string();
    assert!(
        err.contains("held-out split has 32 tokens") && err.contains("seq_len 40"),
        "{err}"
    );
    let err = corpus.held_out(&tok, 16, 0.0).unwrap_err().to_string();
    assert!(err.contains("(0, 1)"), "{err}");
}

#[test]
fn only_a_corpus_of_several_documents_needs_the_separator() {
    // A tokenizer without "\n" cannot encode the separator.
    let tok = TextTokenizer::char_level(["abcdefgh"]).unwrap();
    let one = Corpus::from_documents(vec![doc("one", "abcdefgh".repeat(8))]).unwrap();
    let data = one.tokenize(&tok, 8, 0.25).unwrap();
    assert_eq!(data.train.stats().tokens, 48);
    assert_eq!(data.validation.stats().tokens, 16);
    // An empty second document joins nothing either.
    let with_empty = Corpus::from_documents(vec![
        doc("empty", String::new()),
        doc("one", "abcdefgh".repeat(8)),
    ])
    .unwrap();
    assert!(with_empty.tokenize(&tok, 8, 0.25).is_ok());
    let two = Corpus::from_documents(vec![
        doc("one", "abcdefgh".repeat(8)),
        doc("two", "hgfedcba".repeat(8)),
    ])
    .unwrap();
    let err = two.tokenize(&tok, 8, 0.25).unwrap_err().to_string();
    assert!(err.contains("document separator"), "{err}");
}
