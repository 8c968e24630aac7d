//! Text corpora: UTF-8 files read into memory, tokenized, split into training and validation
//! text, and cut into fixed-length token sequences served as `[B, L]` i64 batches.
//!
//! A corpus is one file or a folder. A folder is searched recursively by default (hidden files
//! and folders skipped, paths sorted so the order never depends on the filesystem) and only
//! `*.txt` files are read unless [`CorpusOptions::all_files`] is set. Every file is a document;
//! a file that is not UTF-8 is an error naming the file and the byte offset of the first bad
//! byte. A leading byte-order mark is dropped; line endings are kept as they are.
//!
//! Split: the last `val_fraction` of each document's characters (moved back to the start of the
//! line it falls in) is validation text, the rest training text. Taking the tail of every
//! document, rather than whole documents, keeps each work's vocabulary and style in both splits
//! and makes the split independent of how many files there are.
//!
//! Sequences: each split's pieces are tokenized separately and joined, with the tokens of
//! [`DOCUMENT_SEPARATOR`] between documents, into one token stream, which is cut into
//! non-overlapping windows of `seq_len` tokens; the incomplete tail is dropped. Batches come from
//! [`diffuse_tensor::data::EpochSampler`], so they are a pure function of (seed, step).
//!
//! Named corpora: [`resolve_corpus`] maps `shakespeare` to `data/datasets/shakespeare`, reading
//! only its top-level `*_gut.txt` files (the 42 works in modern spelling, 5 MB); the `folio/`
//! (First Folio spelling of the same plays) and `milton/` subfolders are other corpora. A path
//! that exists wins over a name.

use crate::tokenizer::{TextTokenizer, TokenStats};
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The text between two documents of a token stream (tokenized with the corpus's tokenizer, so a
/// character tokenizer must know `\n`; [`Corpus::char_tokenizer`] includes it).
pub const DOCUMENT_SEPARATOR: &str = "\n\n";

/// Named corpora: (name, folder under the datasets directory, read subfolders too).
const NAMED: &[(&str, &str, bool)] = &[("shakespeare", "shakespeare", false)];

/// Which files of a folder make up a corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusOptions {
    /// Read subfolders too (default true).
    pub recursive: bool,
    /// Read every file, not only `*.txt` (default false). Either way hidden files are skipped.
    pub all_files: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            recursive: true,
            all_files: false,
        }
    }
}

/// Where a corpus name or path points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusSource {
    pub path: PathBuf,
    pub options: CorpusOptions,
}

/// Where named datasets live ([`diffuse_tensor::data::default_datasets_dir`], one rule for every
/// modality).
pub fn default_datasets_dir() -> PathBuf {
    diffuse_tensor::data::default_datasets_dir()
}

/// The names [`resolve_corpus`] knows (for `diffuse_tensor::data::recorded_data_path`, which
/// keeps a name a name and makes a path absolute).
pub fn corpus_names() -> Vec<&'static str> {
    NAMED.iter().map(|(n, ..)| *n).collect()
}

/// A path to a file or folder, or a corpus name (`shakespeare`). A path that exists wins over a
/// name, so a local folder called `shakespeare` is read rather than shadowed by the bundled
/// corpus (and a run recorded with its absolute path reads the same files from anywhere). A
/// plain name that is neither an existing path nor a named corpus is looked up in
/// `datasets_dir`. Paths get the default [`CorpusOptions`].
pub fn resolve_corpus(name_or_path: &str, datasets_dir: &Path) -> Result<CorpusSource> {
    let path = Path::new(name_or_path);
    if !name_or_path.is_empty() && path.exists() {
        return Ok(CorpusSource {
            path: path.to_path_buf(),
            options: CorpusOptions::default(),
        });
    }
    if let Some(&(name, folder, recursive)) = NAMED.iter().find(|(n, ..)| *n == name_or_path) {
        let dir = datasets_dir.join(folder);
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "dataset {name} is not in {}: run `cargo xtask setup --data {name}` \
                 (or set DIFFUSE_DATA_DIR to the folder holding {folder}/)",
                datasets_dir.display()
            )));
        }
        return Ok(CorpusSource {
            path: dir,
            options: CorpusOptions {
                recursive,
                all_files: false,
            },
        });
    }
    let plain_name = !name_or_path.is_empty()
        && !name_or_path.contains(['/', '\\'])
        && name_or_path != "."
        && name_or_path != "..";
    if plain_name && datasets_dir.join(name_or_path).exists() {
        return Ok(CorpusSource {
            path: datasets_dir.join(name_or_path),
            options: CorpusOptions::default(),
        });
    }
    Err(Error::InvalidArgument(format!(
        "{name_or_path}: no such file or folder{} (named corpora: {})",
        if plain_name {
            format!(", and no corpus of that name in {}", datasets_dir.display())
        } else {
            String::new()
        },
        corpus_names().join(", ")
    )))
}

/// One file of a corpus.
#[derive(Clone, Debug)]
pub struct Document {
    /// The path relative to the corpus root (the file name for a one-file corpus).
    pub name: String,
    pub text: String,
}

/// Documents in memory, in sorted path order.
#[derive(Clone, Debug)]
pub struct Corpus {
    documents: Vec<Document>,
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The corpus files under `root`, sorted; see [`CorpusOptions`]. Links are followed, but every
/// folder and file is read once: a link back to a folder already walked (a loop) or to a
/// file already listed is skipped, so a corpus never holds the same text twice.
pub fn corpus_files(root: &Path, options: &CorpusOptions) -> Result<Vec<PathBuf>> {
    struct Walk<'a> {
        options: &'a CorpusOptions,
        /// Canonical folders and files seen so far.
        seen: HashSet<PathBuf>,
        out: Vec<PathBuf>,
    }
    impl Walk<'_> {
        /// True the first time `path` (by its canonical form) is met.
        fn first_visit(&mut self, path: &Path) -> Result<bool> {
            let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
            Ok(self.seen.insert(canonical))
        }

        fn dir(&mut self, dir: &Path) -> Result<()> {
            let mut paths = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                paths.push(entry.map_err(|e| Error::io(dir, e))?.path());
            }
            // Sorted, so that which of two links to the same file is kept never depends on the
            // filesystem's order.
            paths.sort();
            for path in paths {
                if is_hidden(&path) {
                    continue;
                }
                // A dangling link or an unreadable entry is not part of the corpus.
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    if !self.options.recursive {
                        continue;
                    }
                    if self.first_visit(&path)? {
                        self.dir(&path)?;
                    } else {
                        tracing::warn!(
                            folder = %path.display(),
                            "skipping a folder already read through another path (a link \
                             loop, or two links to one folder)"
                        );
                    }
                } else if (self.options.all_files || path.extension().is_some_and(|e| e == "txt"))
                    && self.first_visit(&path)?
                {
                    self.out.push(path);
                }
            }
            Ok(())
        }
    }
    let mut walk = Walk {
        options,
        seen: HashSet::new(),
        out: Vec::new(),
    };
    walk.first_visit(root)?;
    walk.dir(root)?;
    let mut out = walk.out;
    if out.is_empty() {
        return Err(Error::format(
            root,
            format!(
                "empty corpus: no {} found ({}; hidden files skipped)",
                if options.all_files {
                    "files"
                } else {
                    ".txt files"
                },
                if options.recursive {
                    "searched recursively"
                } else {
                    "subfolders not searched"
                }
            ),
        ));
    }
    out.sort();
    Ok(out)
}

/// A file's text; non-UTF-8 content is an error naming the byte offset (and line) of the first
/// bad byte. A leading byte-order mark is dropped.
pub fn read_text_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(match text.strip_prefix('\u{FEFF}') {
            Some(rest) => rest.to_owned(),
            None => text,
        }),
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(Error::format(
                path,
                format!(
                    "not UTF-8 text: invalid byte 0x{:02X} at byte offset {offset} (line {line}); \
                     convert the file to UTF-8",
                    bytes[offset]
                ),
            ))
        }
    }
}

impl Corpus {
    /// Read a file (one document, whatever its extension) or a folder (see [`CorpusOptions`]).
    /// Errors for non-UTF-8 files and for a corpus without a single character.
    pub fn from_path(path: &Path, options: &CorpusOptions) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let documents = if meta.is_dir() {
            corpus_files(path, options)?
                .into_iter()
                .map(|file| {
                    let name = file
                        .strip_prefix(path)
                        .unwrap_or(&file)
                        .to_string_lossy()
                        .into_owned();
                    Ok(Document {
                        name,
                        text: read_text_file(&file)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            vec![Document {
                name,
                text: read_text_file(path)?,
            }]
        };
        Self::from_documents(documents).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::format(path, m),
            other => other,
        })
    }

    /// Resolve `name_or_path` (see [`resolve_corpus`]) and read it.
    pub fn load(name_or_path: &str, datasets_dir: &Path) -> Result<Self> {
        let source = resolve_corpus(name_or_path, datasets_dir)?;
        Self::from_path(&source.path, &source.options)
    }

    /// A corpus from documents in memory; errors when they hold no characters.
    pub fn from_documents(documents: Vec<Document>) -> Result<Self> {
        if documents.iter().all(|d| d.text.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "empty corpus: {} file(s), 0 characters",
                documents.len()
            )));
        }
        Ok(Corpus { documents })
    }

    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// Characters (Rust `char`s) over all documents.
    pub fn num_chars(&self) -> u64 {
        self.documents
            .iter()
            .map(|d| d.text.chars().count() as u64)
            .sum()
    }

    /// A character tokenizer over every character of the corpus and of [`DOCUMENT_SEPARATOR`].
    pub fn char_tokenizer(&self) -> Result<TextTokenizer> {
        let docs = self.documents.iter().map(|d| d.text.as_str());
        TextTokenizer::char_level(docs.chain(std::iter::once(DOCUMENT_SEPARATOR)))
    }

    /// A byte-level BPE tokenizer trained on the corpus (see [`TextTokenizer::train_bpe`]).
    pub fn train_bpe(&self, vocab_size: usize) -> Result<TextTokenizer> {
        let texts: Vec<&str> = self.documents.iter().map(|d| d.text.as_str()).collect();
        TextTokenizer::train_bpe(&texts, vocab_size)
    }

    /// Each document cut into (training, validation) text: the validation part is the last
    /// `val_fraction` of the document's characters, moved back to the start of its line.
    pub fn split_text(&self, val_fraction: f64) -> Result<Vec<(&str, &str)>> {
        check_fraction(val_fraction)?;
        Ok(self
            .documents
            .iter()
            .map(|d| split_document(&d.text, val_fraction))
            .collect())
    }

    /// Tokenize, split and cut into sequences of `seq_len` tokens (see the module docs).
    /// Errors when a split is too short for one sequence (validation only when `val_fraction > 0`).
    pub fn tokenize(
        &self,
        tokenizer: &TextTokenizer,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<TokenizedCorpus> {
        check_seq_len(seq_len)?;
        let parts = self.split_text(val_fraction)?;
        let mut separator = None;
        let (train_tokens, train_stats) =
            self.stream(tokenizer, &mut separator, parts.iter().map(|p| p.0))?;
        let (val_tokens, val_stats) =
            self.stream(tokenizer, &mut separator, parts.iter().map(|p| p.1))?;
        let too_short = |split: &str, n: usize| {
            Error::InvalidArgument(format!(
                "the {split} split has {n} tokens, fewer than --seq-len {seq_len}: use a shorter \
                 --seq-len{}",
                if split == "validation" {
                    " or a larger --val-fraction"
                } else {
                    " or a larger corpus (--data)"
                }
            ))
        };
        if train_tokens.len() < seq_len {
            return Err(too_short("training", train_tokens.len()));
        }
        if val_fraction > 0.0 && val_tokens.len() < seq_len {
            return Err(too_short("validation", val_tokens.len()));
        }
        Ok(TokenizedCorpus {
            train: TokenSequences::from_stream(&train_tokens, seq_len, train_stats),
            validation: TokenSequences::from_stream(&val_tokens, seq_len, val_stats),
            seq_len,
        })
    }

    /// Only the held-out (validation) split of [`Corpus::tokenize`], cut into sequences of
    /// `seq_len` tokens: what evaluation scores. The training part is never tokenized, so it may
    /// be of any length (a small file can be scored with most of it held out). Errors when
    /// `val_fraction` is not in (0, 1) or the held-out split is too short for one sequence.
    pub fn held_out(
        &self,
        tokenizer: &TextTokenizer,
        seq_len: usize,
        val_fraction: f64,
    ) -> Result<TokenSequences> {
        check_seq_len(seq_len)?;
        if val_fraction <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "validation fraction must be in (0, 1) to hold out text, got {val_fraction}"
            )));
        }
        let parts = self.split_text(val_fraction)?;
        let (tokens, stats) = self.stream(tokenizer, &mut None, parts.iter().map(|p| p.1))?;
        if tokens.len() < seq_len {
            return Err(Error::InvalidArgument(format!(
                "the held-out split has {} tokens, but one sequence needs seq_len {seq_len}: \
                 hold out a larger fraction or use a longer text",
                tokens.len()
            )));
        }
        Ok(TokenSequences::from_stream(&tokens, seq_len, stats))
    }

    /// One split's pieces (one per document, in order) tokenized and joined into one stream
    /// with the tokens of [`DOCUMENT_SEPARATOR`] between non-empty pieces. The separator is
    /// encoded (into `separator`, shared by both splits) only when two pieces are joined: a
    /// one-document corpus never needs it, so a tokenizer that cannot encode it still works.
    fn stream<'a>(
        &self,
        tokenizer: &TextTokenizer,
        separator: &mut Option<Vec<i64>>,
        pieces: impl Iterator<Item = &'a str>,
    ) -> Result<(Vec<i64>, TokenStats)> {
        let mut tokens = Vec::new();
        let mut chars = 0u64;
        let mut first = true;
        for (document, text) in self.documents.iter().zip(pieces) {
            if text.is_empty() {
                continue;
            }
            if !first {
                let separator = match separator {
                    Some(ids) => ids,
                    None => {
                        separator.insert(tokenizer.encode(DOCUMENT_SEPARATOR).map_err(|e| {
                            Error::InvalidArgument(format!(
                                "the document separator {DOCUMENT_SEPARATOR:?} cannot be \
                                 encoded (it goes between the corpus's documents): {e}"
                            ))
                        })?)
                    }
                };
                tokens.extend_from_slice(separator);
                chars += DOCUMENT_SEPARATOR.chars().count() as u64;
            }
            first = false;
            let ids = tokenizer
                .encode(text)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", document.name)))?;
            tokens.extend_from_slice(&ids);
            chars += text.chars().count() as u64;
        }
        let stats = TokenStats {
            chars,
            tokens: tokens.len() as u64,
        };
        Ok((tokens, stats))
    }
}

fn check_seq_len(seq_len: usize) -> Result<()> {
    if seq_len == 0 {
        return Err(Error::InvalidArgument(
            "seq_len must be positive, got 0".into(),
        ));
    }
    Ok(())
}

fn check_fraction(val_fraction: f64) -> Result<()> {
    if (0.0..1.0).contains(&val_fraction) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "validation fraction must be in [0, 1), got {val_fraction}"
        )))
    }
}

/// (training, validation) parts of one document; see [`Corpus::split_text`].
fn split_document(text: &str, val_fraction: f64) -> (&str, &str) {
    if val_fraction <= 0.0 {
        return (text, "");
    }
    let chars = text.chars().count();
    let val_chars = (chars as f64 * val_fraction).round() as usize;
    if val_chars == 0 {
        return (text, "");
    }
    let cut_char = chars - val_chars;
    let cut = text
        .char_indices()
        .nth(cut_char)
        .map_or(text.len(), |(i, _)| i);
    // Back to the start of the line, unless that would leave no training text of this document.
    let line_start = text[..cut].rfind('\n').map_or(0, |i| i + 1);
    let cut = if line_start > 0 { line_start } else { cut };
    (&text[..cut], &text[cut..])
}

/// Fixed-length token sequences `[N, L]` i64 (on the CPU) with the statistics of the stream they
/// were cut from.
#[derive(Debug)]
pub struct TokenSequences {
    tokens: Tensor,
    stats: TokenStats,
}

impl TokenSequences {
    /// Cut `stream` into non-overlapping windows of `seq_len`; the tail shorter than that is dropped.
    pub fn from_stream(stream: &[i64], seq_len: usize, stats: TokenStats) -> Self {
        let n = stream.len() / seq_len;
        let tokens = Tensor::from_slice(&stream[..n * seq_len]).view([n as i64, seq_len as i64]);
        TokenSequences { tokens, stats }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.tokens.size()[0] as usize
    }

    /// The first `n` sequences (all when fewer), keeping the whole stream's characters per token
    /// (a subset's own ratio would differ only by where its windows fall).
    pub fn take(&self, n: usize) -> TokenSequences {
        let n = n.min(self.len()) as i64;
        let total = self.len().max(1) as f64;
        let share = n as f64 / total;
        TokenSequences {
            tokens: self.tokens.narrow(0, 0, n),
            stats: TokenStats {
                chars: (self.stats.chars as f64 * share).round() as u64,
                tokens: (self.stats.tokens as f64 * share).round() as u64,
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn seq_len(&self) -> usize {
        self.tokens.size()[1] as usize
    }

    /// All sequences `[N, L]` i64.
    pub fn tokens(&self) -> &Tensor {
        &self.tokens
    }

    /// Characters (document separators included) and tokens of the split's whole stream
    /// (before cutting into sequences): its
    /// [`TokenStats::chars_per_token`] converts a per-token loss into bits per character.
    pub fn stats(&self) -> TokenStats {
        self.stats
    }

    /// Sequences `indices` as a batch `[B, L]` i64 on `device`.
    pub fn batch(&self, indices: &[usize], device: Device) -> Tensor {
        let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        self.tokens
            .index_select(0, &Tensor::from_slice(&index))
            .to_device(device)
    }

    /// A shuffling sampler over the sequences: [`EpochSampler::batch`]`(step)` gives the indices
    /// of step `step`, a pure function of (seed, step). Errors when there are no sequences.
    pub fn sampler(&self, batch_size: usize, seed: u64) -> Result<EpochSampler> {
        if self.is_empty() || batch_size == 0 {
            return Err(Error::InvalidArgument(format!(
                "cannot sample batches of {batch_size} from {} sequences",
                self.len()
            )));
        }
        Ok(EpochSampler::new(self.len(), batch_size, seed))
    }

    /// Batch `step` of a seeded shuffle (see [`TokenSequences::sampler`]).
    pub fn sampled_batch(&self, sampler: &EpochSampler, step: u64, device: Device) -> Tensor {
        self.batch(&sampler.batch(step), device)
    }

    /// Every sequence once, in order, in batches of `batch_size` (the last one may be smaller):
    /// for evaluation.
    pub fn ordered_batches(
        &self,
        batch_size: usize,
        device: Device,
    ) -> impl Iterator<Item = Tensor> + '_ {
        let n = self.len() as i64;
        let b = batch_size.max(1) as i64;
        (0..n).step_by(b as usize).map(move |start| {
            let len = b.min(n - start);
            self.tokens.narrow(0, start, len).to_device(device)
        })
    }
}

/// A corpus cut into training and validation sequences of `seq_len` tokens.
#[derive(Debug)]
pub struct TokenizedCorpus {
    pub train: TokenSequences,
    /// Empty when the validation fraction is 0.
    pub validation: TokenSequences,
    pub seq_len: usize,
}
