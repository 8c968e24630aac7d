//! Text to token ids and back, through the `tokenizers` library so that every tokenizer diffuse
//! makes is a standard `tokenizer.json` that other tools load.
//!
//! Three sources: [`TextTokenizer::char_level`] (one token per character of a corpus; ids in the
//! sorted order of the characters, so the same corpus always gives the same ids; built as a
//! `WordLevel` model behind a `FixedLength(1)` pre-tokenizer and a `Fuse` decoder, which round
//! trips any text made of known characters exactly, spaces and newlines included);
//! [`TextTokenizer::train_bpe`] (byte-level BPE as GPT-2 uses it: every string encodes, decoding
//! gives the text back); and [`TextTokenizer::load`] for any existing `tokenizer.json`.
//!
//! Character tokenizers encode and decode through a plain character table instead of the library
//! pipeline (the ids are identical, tested; the pipeline costs about a microsecond per character,
//! which adds up over a 5 MB corpus). [`TokenStats`] turns a per-token loss into bits per
//! character, the measure that compares models with different tokenizers.

use diffuse_tensor::atomic::write_atomic;
use diffuse_tensor::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::fixed_length::FixedLength;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer, Trainer,
};

/// The `unk_token` a character tokenizer's `WordLevel` model names. It is deliberately not in the
/// vocabulary: an unseen character is an error, never a silent `[UNK]`.
const CHAR_UNK: &str = "[UNK]";

/// The 256 byte symbols of byte-level BPE: every vocabulary starts with them.
pub const BPE_BYTE_ALPHABET: usize = 256;

/// The character table of a character-level tokenizer (the fast path).
#[derive(Clone, Debug)]
struct CharTable {
    /// Ids of ASCII characters by code (`u32::MAX`: not in the vocabulary): most text is ASCII
    /// and an array index is several times cheaper than hashing.
    ascii: [u32; 128],
    to_id: HashMap<char, u32>,
    /// Indexed by id; `None` for ids that are not characters.
    to_char: Vec<Option<char>>,
}

/// Which kind of tokenizer this is (from its `tokenizer.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// One token per character (`WordLevel` over single characters, `FixedLength(1)` splits).
    Char,
    /// Byte-level BPE (`BPE` model with a `ByteLevel` pre-tokenizer).
    ByteLevelBpe,
    /// Anything else `tokenizers` can read.
    Other,
}

/// A tokenizer: text to ids `i64` (what embeddings take) and back. See the module docs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    kind: TokenizerKind,
    chars: Option<CharTable>,
    /// One more than the largest id (added tokens included): the size of an embedding table.
    vocab_size: usize,
    /// The id of the model's unknown token, if it has one in its vocabulary.
    unk_id: Option<u32>,
    /// Ids below `vocab_size` that name no token (a `tokenizer.json` whose ids have gaps):
    /// samplers must never draw them, since decoding would drop them silently.
    unused_ids: Vec<i64>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

/// How many characters and tokens a text has: bits per character from a per-token loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenStats {
    /// Unicode scalar values (Rust `char`s) of the text.
    pub chars: u64,
    /// Tokens the text encodes to.
    pub tokens: u64,
}

impl TokenStats {
    /// Average characters per token (1 for a character tokenizer; 0 for an empty text).
    pub fn chars_per_token(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.chars as f64 / self.tokens as f64
        }
    }

    /// Bits per character from a mean loss in nats per token: the text's total information
    /// (`nats * tokens`) spread over its characters, in bits.
    pub fn bits_per_char(&self, nats_per_token: f64) -> f64 {
        if self.chars == 0 {
            return f64::NAN;
        }
        nats_per_token * self.tokens as f64 / (self.chars as f64 * std::f64::consts::LN_2)
    }
}

/// Both counts added: the stats of two texts together.
impl std::ops::Add for TokenStats {
    type Output = TokenStats;

    fn add(self, other: TokenStats) -> TokenStats {
        TokenStats {
            chars: self.chars + other.chars,
            tokens: self.tokens + other.tokens,
        }
    }
}

/// `'é' (U+00E9)` for an error message: escaped so that a newline or control character is visible.
fn describe_char(c: char) -> String {
    format!("'{}' (U+{:04X})", c.escape_debug(), c as u32)
}

fn unencodable(chars: &BTreeSet<char>) -> Error {
    const SHOWN: usize = 20;
    let mut listed: Vec<String> = chars
        .iter()
        .take(SHOWN)
        .map(|&c| describe_char(c))
        .collect();
    if chars.len() > SHOWN {
        listed.push(format!("and {} more", chars.len() - SHOWN));
    }
    Error::InvalidArgument(format!(
        "characters not in the tokenizer's vocabulary: {}",
        listed.join(", ")
    ))
}

/// The longest word (in bytes) byte-level BPE training counts; longer pre-tokenized words are cut
/// into pieces of this size. The trainer applies each merge to a word by shifting the rest of
/// its symbols, so one word of n bytes costs O(n) per merge and O(n^2) overall: a 200,000
/// character line without spaces took half a minute and a 2 MB one never finished. Bounding
/// words bounds that cost, making training linear in the corpus. 256 bytes is far above any
/// natural word (the pre-tokenizer already splits at spaces, letters/digits and punctuation, so
/// only runs such as `xxxx...`, long numbers or rules of `=====` are cut), and it is the length
/// up to which the library caches encoded words. Only training sees the cut: encoding keeps
/// whole words (its merge loop is O(n log n)), so the cut changes which merges are learned from
/// such runs, never whether text round-trips (byte-level BPE encodes any byte sequence).
pub const BPE_TRAINING_WORD_BYTES: usize = 256;

/// `word` (a byte-level pre-tokenized piece: one character per byte of `original`, the text it
/// stands for) cut into pieces of at most [`BPE_TRAINING_WORD_BYTES`] bytes, appended to `out`.
/// Cuts fall where a character of the original text starts, so no piece holds a fragment of a
/// multi-byte character at its edge (which would teach merges of meaningless byte pairs).
fn push_training_chunks(word: &str, original: &[u8], out: &mut Vec<String>) {
    let symbols: Vec<char> = word.chars().collect();
    if symbols.len() <= BPE_TRAINING_WORD_BYTES {
        out.push(word.to_owned());
        return;
    }
    // Without the original bytes lined up with the symbols, any cut will do.
    let aligned = original.len() == symbols.len();
    let starts_char = |i: usize| !aligned || i == symbols.len() || original[i] & 0xC0 != 0x80;
    let mut start = 0;
    while start < symbols.len() {
        let mut end = (start + BPE_TRAINING_WORD_BYTES).min(symbols.len());
        // A UTF-8 character is at most 4 bytes: this steps back at most 3.
        while end > start + 1 && !starts_char(end) {
            end -= 1;
        }
        out.push(symbols[start..end].iter().collect());
        start = end;
    }
}

/// The id of the model's unknown token, when it has one in the vocabulary. Read through each
/// model's own accessors: serialising the model to find it (as this once did) makes the library
/// print a warning to stdout for a vocabulary with gaps in its ids, which corrupts `--json`
/// output.
fn unknown_token_id(inner: &Tokenizer) -> Option<u32> {
    let unk_token = match inner.get_model() {
        ModelWrapper::BPE(m) => m.get_unk_token().clone(),
        ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
        ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
        // Unigram keeps only an id and has no accessor for it; its serialisation writes a plain
        // list of pieces (no gap check, no printing), so reading the id from it is safe.
        ModelWrapper::Unigram(m) => {
            let json = serde_json::to_value(m).ok()?;
            return json
                .get("unk_id")
                .and_then(|id| id.as_u64())
                .and_then(|id| u32::try_from(id).ok());
        }
    };
    unk_token.and_then(|t| inner.token_to_id(&t))
}

fn tokenizer_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("tokenizer: {what}: {e}"))
}

impl TextTokenizer {
    /// A character-level tokenizer whose vocabulary is every character of `texts`, ids in sorted
    /// character order (deterministic). Errors when the texts have no characters at all.
    pub fn char_level<'a, I>(texts: I) -> Result<Self>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut set = BTreeSet::new();
        for text in texts {
            set.extend(text.chars());
        }
        if set.is_empty() {
            return Err(Error::InvalidArgument(
                "cannot build a character tokenizer: the text is empty".into(),
            ));
        }
        let vocab: serde_json::Map<String, serde_json::Value> = set
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), serde_json::Value::from(i as u64)))
            .collect();
        // Built from JSON because WordLevel's builder wants the library's private map type (and
        // from text: its deserialiser borrows strings, which a serde_json::Value cannot lend).
        let json = serde_json::json!({
            "type": "WordLevel",
            "vocab": vocab,
            "unk_token": CHAR_UNK,
        })
        .to_string();
        let model: WordLevel = serde_json::from_str(&json)
            .map_err(|e| tokenizer_error("building the character vocabulary", e))?;
        let mut inner = Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::FixedLength(FixedLength::new(1))));
        // Without a decoder the library joins tokens with spaces; Fuse concatenates them.
        inner.with_decoder(Some(DecoderWrapper::Fuse(Fuse::new())));
        Ok(Self::wrap(inner))
    }

    /// Train byte-level BPE on `texts` up to `vocab_size` tokens (the 256 byte symbols plus
    /// merges; a small corpus may stop short, see [`TextTokenizer::vocab_size`]). Every pair
    /// seen at least twice may be merged. Deterministic for the same texts.
    pub fn train_bpe<T: AsRef<str> + Sync>(texts: &[T], vocab_size: usize) -> Result<Self> {
        if vocab_size < BPE_BYTE_ALPHABET {
            return Err(Error::InvalidArgument(format!(
                "BPE vocabulary size must be at least {BPE_BYTE_ALPHABET} (the byte alphabet), \
                 got {vocab_size}"
            )));
        }
        if texts.iter().all(|t| t.as_ref().is_empty()) {
            return Err(Error::InvalidArgument(
                "cannot train a BPE tokenizer: the text is empty".into(),
            ));
        }
        // No prefix space: it would add a character that decoding keeps, breaking round trips.
        let pre_tokenizer = ByteLevel::new(false, true, true);
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .show_progress(false)
            .build();
        // What `Tokenizer::train` does (no normaliser, no added tokens: pre-tokenize, count the
        // words), except that words are cut to at most BPE_TRAINING_WORD_BYTES bytes first.
        trainer
            .feed(texts.iter().map(|t| t.as_ref()), |text| {
                let mut pieces = PreTokenizedString::from(text);
                pre_tokenizer.pre_tokenize(&mut pieces)?;
                let mut words = Vec::new();
                let splits = pieces.get_splits(OffsetReferential::Original, OffsetType::Byte);
                for (word, (start, end), _) in splits {
                    let original = text.as_bytes().get(start..end).unwrap_or_default();
                    push_training_chunks(word, original, &mut words);
                }
                Ok(words)
            })
            .map_err(|e| tokenizer_error("BPE training failed", e))?;
        let mut model = BPE::default();
        trainer
            .train(&mut model)
            .map_err(|e| tokenizer_error("BPE training failed", e))?;
        let mut inner = Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(pre_tokenizer)));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
        Ok(Self::wrap(inner))
    }

    /// Read a `tokenizer.json` (any kind the `tokenizers` library reads).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::format(path, m),
            other => other,
        })
    }

    /// Parse `tokenizer.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let inner: Tokenizer = text
            .parse()
            .map_err(|e| tokenizer_error("not a valid tokenizer.json", e))?;
        if inner.get_vocab_size(true) == 0 {
            return Err(Error::InvalidArgument(
                "tokenizer: the vocabulary is empty".into(),
            ));
        }
        Ok(Self::wrap(inner))
    }

    /// Write `tokenizer.json` atomically (pretty-printed, as the library saves it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.to_json_string()?;
        write_atomic(path, |w| w.write_all(json.as_bytes()))
    }

    /// The `tokenizer.json` text.
    pub fn to_json_string(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| tokenizer_error("cannot serialise", e))
    }

    fn wrap(inner: Tokenizer) -> Self {
        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let plain = inner.get_normalizer().is_none() && inner.get_added_tokens_decoder().is_empty();
        let model = inner.get_model();
        let pre = inner.get_pre_tokenizer();
        let kind = match (model, pre) {
            (ModelWrapper::WordLevel(_), Some(PreTokenizerWrapper::FixedLength(f)))
                if f.length == 1
                    && plain
                    && matches!(inner.get_decoder(), Some(DecoderWrapper::Fuse(_)))
                    && vocab.keys().all(|k| k.chars().count() == 1) =>
            {
                TokenizerKind::Char
            }
            (ModelWrapper::BPE(_), Some(PreTokenizerWrapper::ByteLevel(_))) => {
                TokenizerKind::ByteLevelBpe
            }
            _ => TokenizerKind::Other,
        };
        let chars = (kind == TokenizerKind::Char).then(|| {
            let mut to_char = vec![None; vocab_size];
            let mut to_id = HashMap::with_capacity(vocab.len());
            for (token, &id) in &vocab {
                let c = token.chars().next().expect("single-character tokens");
                to_char[id as usize] = Some(c);
                to_id.insert(c, id);
            }
            let mut ascii = [u32::MAX; 128];
            for (&c, &id) in &to_id {
                if c.is_ascii() {
                    ascii[c as usize] = id;
                }
            }
            CharTable {
                ascii,
                to_id,
                to_char,
            }
        });
        let unk_id = unknown_token_id(&inner);
        let mut used = vec![false; vocab_size];
        for &id in vocab.values() {
            used[id as usize] = true;
        }
        let unused_ids = (0..vocab_size as i64)
            .filter(|&id| !used[id as usize])
            .collect();
        TextTokenizer {
            inner,
            kind,
            chars,
            vocab_size,
            unk_id,
            unused_ids,
        }
    }

    /// The library tokenizer underneath.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Character-level, byte-level BPE or another kind.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// One more than the largest id: the size of an embedding table that indexes every token.
    /// A process that needs a `[MASK]` token can use this value as its id.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The ids in `0..vocab_size` that name no token (empty unless the `tokenizer.json` has gaps
    /// in its ids), in increasing order.
    pub fn unused_ids(&self) -> &[i64] {
        &self.unused_ids
    }

    /// The text of token `id`, if it is one.
    pub fn token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// Token ids of `text` (no special tokens added). Errors name every character the tokenizer
    /// cannot encode (a character tokenizer meeting a character its corpus lacked, or a model
    /// that would emit its unknown token).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        if let Some(table) = &self.chars {
            let mut ids = Vec::with_capacity(text.len());
            let mut missing = BTreeSet::new();
            for c in text.chars() {
                let id = if c.is_ascii() {
                    Some(table.ascii[c as usize]).filter(|&id| id != u32::MAX)
                } else {
                    table.to_id.get(&c).copied()
                };
                match id {
                    Some(id) => ids.push(id as i64),
                    None => {
                        missing.insert(c);
                    }
                }
            }
            return if missing.is_empty() {
                Ok(ids)
            } else {
                Err(unencodable(&missing))
            };
        }
        match self.inner.encode_fast(text, false) {
            Ok(encoding) => {
                let ids = encoding.get_ids();
                if self.unk_id.is_some_and(|unk| ids.contains(&unk)) {
                    return Err(self.find_unencodable(text, None));
                }
                Ok(ids.iter().map(|&id| id as i64).collect())
            }
            Err(e) => Err(self.find_unencodable(text, Some(e.to_string()))),
        }
    }

    /// Name the characters that fail to encode on their own; fall back on the library's message.
    fn find_unencodable(&self, text: &str, message: Option<String>) -> Error {
        let distinct: BTreeSet<char> = text.chars().collect();
        let missing: BTreeSet<char> = distinct
            .into_iter()
            .filter(|c| match self.inner.encode_fast(c.to_string(), false) {
                Ok(enc) => self.unk_id.is_some_and(|unk| enc.get_ids().contains(&unk)),
                Err(_) => true,
            })
            .collect();
        if !missing.is_empty() {
            return unencodable(&missing);
        }
        Error::InvalidArgument(format!(
            "tokenizer cannot encode the text: {}",
            message.unwrap_or_else(|| "it produced the unknown token".into())
        ))
    }

    /// Text of `ids`. Ids outside the vocabulary (a `[MASK]` id beyond it, negative values) are
    /// left out; see [`TextTokenizer::decode_with_placeholder`] to show them.
    pub fn decode(&self, ids: &[i64]) -> String {
        if let Some(table) = &self.chars {
            return ids
                .iter()
                .filter_map(|&id| usize::try_from(id).ok())
                .filter_map(|id| table.to_char.get(id).copied().flatten())
                .collect();
        }
        let ids: Vec<u32> = ids
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
            .filter(|&id| (id as usize) < self.vocab_size)
            .collect();
        match self.inner.decode(&ids, false) {
            Ok(text) => text,
            // Only a custom decoder can fail; the raw tokens are the best remaining answer.
            Err(_) => ids
                .iter()
                .filter_map(|&id| self.inner.id_to_token(id))
                .collect(),
        }
    }

    /// Text of `ids` with `placeholder` for every id outside the vocabulary (e.g. `_` for the
    /// still-masked positions of a partly denoised sample). Runs of known ids decode together, so
    /// byte-level tokens still join into characters.
    pub fn decode_with_placeholder(&self, ids: &[i64], placeholder: &str) -> String {
        let known =
            |id: i64| id >= 0 && (id as usize) < self.vocab_size && self.token(id).is_some();
        let mut out = String::new();
        let mut start = 0;
        for i in 0..=ids.len() {
            if i == ids.len() || !known(ids[i]) {
                out.push_str(&self.decode(&ids[start..i]));
                if i < ids.len() {
                    out.push_str(placeholder);
                }
                start = i + 1;
            }
        }
        out
    }

    /// Characters and tokens of `text` (see [`TokenStats::bits_per_char`]).
    pub fn stats(&self, text: &str) -> Result<TokenStats> {
        Ok(TokenStats {
            chars: text.chars().count() as u64,
            tokens: self.encode(text)?.len() as u64,
        })
    }

    /// Average characters per token over `text`.
    pub fn chars_per_token(&self, text: &str) -> Result<f64> {
        Ok(self.stats(text)?.chars_per_token())
    }

    /// Token ids through the library pipeline even for character tokenizers (tests compare it
    /// with the character table).
    #[doc(hidden)]
    pub fn encode_with_library(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tokenizer_error("encoding failed", e))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// Text through the library pipeline even for character tokenizers.
    #[doc(hidden)]
    pub fn decode_with_library(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.inner
            .decode(&ids, false)
            .map_err(|e| tokenizer_error("decoding failed", e))
    }
}
