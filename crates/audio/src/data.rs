//! Audio datasets held in memory as f32 `[N, C, L]` clips at one sample rate, loaded from the
//! named datasets that `cargo xtask setup --data speech|drums` fetches, from any folder of
//! WAV/FLAC/AIFF files, or from one file.
//!
//! Every file goes through the same steps, in this order: read ([`crate::wav::read_audio`]), mix
//! to the configured channel count, resample to the configured rate (band-limited), optionally
//! cut leading silence ([`Trim`]: so one-shots and spoken words start at the onset, which is what
//! a model of fixed-length clips should see), normalise the loudness, then cut or zero-pad to
//! `clip_frames`. Files are taken in sorted relative-path order, so a dataset is the same on
//! every machine. A file that is silent as read (peak below [`crate::train::SILENCE_PEAK`], e.g.
//! the drums' two `emptySample.flac`) is skipped with a warning, unless every file is.
//!
//! Each file also gets a group and perhaps a class label from the folder's layout (Hydrogen kits,
//! class folders or neither; see [`crate::labels`]), carried beside its clip.
//!
//! The held-out split ([`Holdout`]) is decided on the file list before any file is read, so a
//! skipped file never moves another between splits. By default it is a fixed, evenly spread
//! subset of the files (every k-th file of the sorted list, about `validation_fraction` of them),
//! not a random one: no seed to carry around, and each part of an alphabetically grouped
//! collection is represented in both splits. With fewer than [`MIN_FILES_FOR_VALIDATION`] files
//! there is no held-out split: [`Split::Train`] gets every file and [`Split::Validation`] is an
//! error. [`Holdout::Groups`] holds out whole kits or top-level folders instead, so that no kit
//! (and no velocity layer of one recorded hit) is on both sides.

use crate::clip::AudioClip;
use crate::labels::{label_files, Labelling, UNLABELLED};
use crate::wav::{audio_extensions, is_audio_path, read_audio};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Audio datasets that `cargo xtask setup --data NAME` provides.
pub const DATASET_NAMES: [&str; 2] = ["speech", "drums"];

/// Below this many files a validation split would be too small to mean anything.
pub const MIN_FILES_FOR_VALIDATION: usize = 5;

/// Loading shows a progress bar from this many files on.
const PROGRESS_FROM: usize = 64;

/// Which part of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Everything but the held-out files.
    Train,
    /// The held-out files (about `validation_fraction` of them).
    Validation,
    /// Every file.
    All,
}

impl FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "validation" | "val" | "valid" => Ok(Split::Validation),
            "all" => Ok(Split::All),
            _ => Err(Error::InvalidArgument(format!(
                "unknown split '{s}' (expected train, validation or all)"
            ))),
        }
    }
}

/// Loudness normalisation of each clip. String form (configs and the CLI): `none`,
/// `peak` (= `peak:0.95`), `peak:P` (largest sample becomes P, 0 < P <= 1), `rms` (= `rms:-20`),
/// `rms:DB` (RMS loudness DB dBFS, DB <= 0, limited so no sample exceeds 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Normalize {
    /// Leave levels as recorded.
    None,
    /// Scale so the largest absolute sample equals this.
    Peak(f32),
    /// Scale to this RMS level in dBFS (see [`AudioClip::normalize_rms_db`]).
    RmsDb(f32),
}

impl Normalize {
    /// Apply to one clip.
    pub fn apply(&self, clip: &AudioClip) -> AudioClip {
        match *self {
            Normalize::None => clip.clone(),
            Normalize::Peak(p) => clip.normalize_peak(p),
            Normalize::RmsDb(db) => clip.normalize_rms_db(db),
        }
    }

    /// The factor [`Normalize::apply`] scales `clip` by (1 for `None`); `None` for a silent clip,
    /// which it leaves as it is.
    pub fn gain(&self, clip: &AudioClip) -> Option<f32> {
        match *self {
            Normalize::None => Some(1.0),
            Normalize::Peak(p) => clip.peak_gain(p),
            Normalize::RmsDb(db) => clip.rms_db_gain(db),
        }
    }

    fn check(self) -> Result<Self> {
        match self {
            Normalize::Peak(p) if !(p > 0.0 && p <= 1.0) => Err(Error::InvalidArgument(format!(
                "the peak must be in (0, 1], got {p}"
            ))),
            Normalize::RmsDb(db) if !(db.is_finite() && db <= 0.0) => Err(Error::InvalidArgument(
                format!("the RMS level must be a finite dBFS value <= 0, got {db}"),
            )),
            ok => Ok(ok),
        }
    }
}

impl std::fmt::Display for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Normalize::None => write!(f, "none"),
            Normalize::Peak(p) => write!(f, "peak:{p}"),
            Normalize::RmsDb(db) => write!(f, "rms:{db}"),
        }
    }
}

impl FromStr for Normalize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let (kind, value) = match t.split_once(':') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (t.as_str(), None),
        };
        let number = |v: &str| {
            v.trim_end_matches("dbfs")
                .trim_end_matches("db")
                .trim()
                .parse::<f32>()
                .map_err(|_| Error::InvalidArgument(format!("'{v}' is not a number in '{s}'")))
        };
        let n = match (kind, value) {
            ("none", None) => Normalize::None,
            ("peak", None) => Normalize::Peak(0.95),
            ("peak", Some(v)) => Normalize::Peak(number(v)?),
            ("rms", None) => Normalize::RmsDb(-20.0),
            ("rms", Some(v)) => Normalize::RmsDb(number(v)?),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown normalisation '{s}' (expected none, peak, peak:0.9, rms or rms:-20)"
                )))
            }
        };
        n.check()
    }
}

impl From<Normalize> for String {
    fn from(n: Normalize) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for Normalize {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        // Parsing messages name no field, since the flag (--normalize) says it where the text
        // came from the command line; in a JSON file this is where the field gets named.
        s.parse().map_err(|e: Error| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("normalize: {m}")),
            other => other,
        })
    }
}

/// Where a clip's leading silence ends. String form (configs): a bare level such as `0.01` is
/// [`Trim::Absolute`] and `-40dB` is [`Trim::RelativeDb`]; in JSON the first is a plain number,
/// which is what every `diffuse.json` written before relative trimming holds, so those models
/// cut their held-out clips exactly as they were trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trim {
    /// Cut before the first sample louder than this level, in [0, 1), whatever the clip's peak
    /// ([`AudioClip::trim_leading_silence`]). Before normalisation a fixed level sits anywhere
    /// from -45 to -4 dB below a real one-shot's peak, so quiet hits were cut later than loud ones.
    Absolute(f32),
    /// Cut before the first sample within this many dB (< 0) of the clip's own peak
    /// ([`AudioClip::trim_leading_silence_db`]); -40 equals `Absolute(0.01)` for a full-scale clip.
    RelativeDb(f32),
}

impl Trim {
    /// Apply to one clip (keeping 5 ms before the onset either way).
    pub fn apply(&self, clip: &AudioClip) -> AudioClip {
        match *self {
            Trim::Absolute(level) => clip.trim_leading_silence(level),
            Trim::RelativeDb(db) => clip.trim_leading_silence_db(db),
        }
    }

    fn check(self) -> Result<Self> {
        match self {
            Trim::Absolute(t) if !(t.is_finite() && (0.0..1.0).contains(&t)) => Err(
                Error::InvalidArgument(format!("the level must be in [0, 1), got {t}")),
            ),
            Trim::RelativeDb(db) if !(db.is_finite() && db < 0.0) => {
                Err(Error::InvalidArgument(format!(
                    "the relative level must be a finite number of dB below the peak (< 0), got \
                     {db}"
                )))
            }
            ok => Ok(ok),
        }
    }
}

impl std::fmt::Display for Trim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trim::Absolute(level) => write!(f, "{level}"),
            Trim::RelativeDb(db) => write!(f, "{db}dB"),
        }
    }
}

impl FromStr for Trim {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let number = |v: &str| {
            v.trim().parse::<f32>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "'{s}' is neither a level such as 0.01 nor a relative level such as -40dB"
                ))
            })
        };
        let trim = match t.strip_suffix("db") {
            Some(db) => Trim::RelativeDb(number(db)?),
            None => Trim::Absolute(number(&t)?),
        };
        trim.check()
    }
}

impl Serialize for Trim {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            Trim::Absolute(level) => serializer.serialize_f32(level),
            Trim::RelativeDb(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Trim {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct TrimVisitor;

        impl serde::de::Visitor<'_> for TrimVisitor {
            type Value = Trim;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "a level such as 0.01 or a relative level such as \"-40dB\""
                )
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Trim, E> {
                named(Trim::Absolute(v as f32).check())
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Trim, E> {
                self.visit_f64(v as f64)
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Trim, E> {
                self.visit_f64(v as f64)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Trim, E> {
                named(v.parse())
            }
        }

        // As with `normalize`, a JSON file is where the field gets named.
        fn named<E: serde::de::Error>(r: Result<Trim>) -> std::result::Result<Trim, E> {
            r.map_err(|e| E::custom(format!("trim_silence: {e}")))
        }

        deserializer.deserialize_any(TrimVisitor)
    }
}

/// Which files are held out for [`Split::Validation`]. String form (the CLI): `every` or
/// `kits:A,B` (whole kits or top-level folders by name); JSON: `"every"` or `{"kits": [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holdout {
    /// Every k-th file of the sorted list, about `validation_fraction` of them (see the module
    /// docs): what every run before group holdouts used.
    #[default]
    #[serde(rename = "every")]
    EveryKth,
    /// Every file of these groups ([`AudioDataset::groups`]: Hydrogen kits, class folders or
    /// first-level folders) and no other; a name the data does not have is an error.
    #[serde(rename = "kits")]
    Groups(Vec<String>),
}

impl Holdout {
    /// The indices (into the sorted file list, whose groups are `groups`) of `split`.
    /// Errors start with `holdout:` (a group the data lacks, or no group left to train on), so
    /// a caller can name its own setting instead.
    pub fn indices(
        &self,
        groups: &[String],
        validation_fraction: f64,
        split: Split,
    ) -> Result<Vec<usize>> {
        let names = match self {
            Holdout::EveryKth => {
                return Ok(split_indices(groups.len(), validation_fraction, split))
            }
            Holdout::Groups(names) => names,
        };
        let mut known: Vec<&str> = groups.iter().map(String::as_str).collect();
        known.sort_unstable();
        known.dedup();
        if let Some(unknown) = names
            .iter()
            .find(|n| known.binary_search(&n.as_str()).is_err())
        {
            return Err(Error::InvalidArgument(format!(
                "holdout: no kit or top-level folder '{unknown}' in this data (it has: {})",
                known.join(", ")
            )));
        }
        let held = |g: &String| names.contains(g);
        if split == Split::Train && groups.iter().all(held) {
            return Err(Error::InvalidArgument(format!(
                "holdout: {self} holds out every file, leaving none to train on (hold out fewer)"
            )));
        }
        Ok((0..groups.len())
            .filter(|&i| match split {
                Split::All => true,
                Split::Validation => held(&groups[i]),
                Split::Train => !held(&groups[i]),
            })
            .collect())
    }

    fn check(&self) -> Result<()> {
        match self {
            Holdout::Groups(names) if names.is_empty() => Err(Error::InvalidArgument(
                "holdout: names no kit (expected kits:NAME,NAME)".into(),
            )),
            Holdout::Groups(names) if names.iter().any(|n| n.trim().is_empty()) => Err(
                Error::InvalidArgument("holdout: a kit name is empty".into()),
            ),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Holdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holdout::EveryKth => write!(f, "every"),
            Holdout::Groups(names) => write!(f, "kits:{}", names.join(",")),
        }
    }
}

impl FromStr for Holdout {
    type Err = Error;

    /// `every`, or `kits:A,B` (also `folders:A,B`); names are trimmed, kept case as given.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("every") {
            return Ok(Holdout::EveryKth);
        }
        let list = t.split_once(':').and_then(|(kind, list)| {
            ["kits", "folders"]
                .iter()
                .any(|k| kind.trim().eq_ignore_ascii_case(k))
                .then_some(list)
        });
        let Some(list) = list else {
            return Err(Error::InvalidArgument(format!(
                "unknown holdout '{s}' (expected every or kits:NAME,NAME)"
            )));
        };
        let names: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "'{s}' names no kit (expected kits:NAME,NAME)"
            )));
        }
        Ok(Holdout::Groups(names))
    }
}

/// How files become training clips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudioDataConfig {
    /// Rate every clip is resampled to, Hz.
    pub sample_rate: u32,
    /// 1 (mono: channels averaged) or more (mono copied); other conversions are errors.
    pub channels: usize,
    /// Length of every clip in frames (cut or zero-padded at the end).
    pub clip_frames: usize,
    /// Loudness normalisation, applied after trimming.
    pub normalize: Normalize,
    /// Cut what comes before the onset (keeping 5 ms), if set; see [`Trim`].
    pub trim_silence: Option<Trim>,
    /// Share of the files held out for [`Split::Validation`] by [`Holdout::EveryKth`], in [0, 1).
    pub validation_fraction: f64,
    /// Which files are held out (absent in configs written before it: every k-th file).
    pub holdout: Holdout,
}

impl Default for AudioDataConfig {
    fn default() -> Self {
        AudioDataConfig {
            sample_rate: 16000,
            channels: 1,
            clip_frames: 16384,
            normalize: Normalize::Peak(0.95),
            trim_silence: Some(Trim::RelativeDb(-40.0)),
            validation_fraction: 0.1,
            holdout: Holdout::EveryKth,
        }
    }
}

impl AudioDataConfig {
    /// Check every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.sample_rate == 0 {
            return bad("sample_rate must be above 0 Hz".into());
        }
        if self.channels == 0 || self.channels > 64 {
            return bad(format!(
                "channels must be between 1 and 64, got {}",
                self.channels
            ));
        }
        if self.clip_frames == 0 {
            return bad("clip_frames must be at least 1".into());
        }
        if let Some(t) = self.trim_silence {
            if let Err(e) = t.check() {
                return bad(format!("trim_silence: {e}"));
            }
        }
        self.holdout.check()?;
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction must be in [0, 1), got {}",
                self.validation_fraction
            ));
        }
        self.normalize.check().map(|_| ())
    }

    /// One file's samples as a training clip: channels, rate, trim, loudness, length.
    pub fn prepare(&self, clip: &AudioClip) -> Result<AudioClip> {
        let mut clip = clip
            .to_channels(self.channels)?
            .resample(self.sample_rate)?;
        if let Some(trim) = self.trim_silence {
            clip = trim.apply(&clip);
        }
        Ok(self.normalize.apply(&clip).fit_length(self.clip_frames))
    }
}

/// In-memory audio dataset: clips `[N, C, L]` f32 on the CPU, one name per clip (its path
/// relative to the dataset folder), one sample rate; per clip also its group and, when the
/// folder's layout gives classes, its class label (see [`crate::labels`]).
pub struct AudioDataset {
    clips: Tensor,
    names: Vec<String>,
    sample_rate: u32,
    /// `[N]` i64: a class index, or [`UNLABELLED`].
    labels: Option<Tensor>,
    class_names: Option<Vec<String>>,
    groups: Vec<String>,
}

impl std::fmt::Debug for AudioDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioDataset")
            .field("shape", &self.clips.size())
            .field("sample_rate", &self.sample_rate)
            .field("class_names", &self.class_names)
            .finish()
    }
}

/// How many clips of a dataset each class has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassCounts {
    /// Every class in label order, with its clips (0 for a class with none in this split).
    pub classes: Vec<(String, usize)>,
    /// Clips without a class ([`UNLABELLED`]).
    pub unlabelled: usize,
}

impl std::fmt::Display for ClassCounts {
    /// `kick 45, snare 108, ...; 112 unlabelled` (the last part only when some are).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes: Vec<String> = self
            .classes
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        write!(f, "{}", classes.join(", "))?;
        if self.unlabelled > 0 {
            write!(f, "; {} unlabelled", self.unlabelled)?;
        }
        Ok(())
    }
}

impl AudioDataset {
    /// A dataset from clips `[N, C, L]` (any float kind and device; kept as f32 on the CPU) at
    /// `sample_rate`, e.g. synthetic data. `names` may be empty (clips are then named
    /// `clip-00000`, ...) or hold one name per clip. It has no labels and one group
    /// ([`crate::labels::TOP_LEVEL_GROUP`]); see [`AudioDataset::with_labels`] and
    /// [`AudioDataset::with_groups`]. Panics on other shapes or a rate of 0.
    pub fn from_clips(clips: Tensor, sample_rate: u32, names: Vec<String>) -> Self {
        let size = clips.size();
        assert!(
            size.len() == 3 && clips.is_floating_point(),
            "clips must be float [N, C, L], got {:?} {size:?}",
            clips.kind()
        );
        assert!(sample_rate > 0, "the sample rate must be above 0 Hz");
        let names = if names.is_empty() {
            (0..size[0]).map(|i| format!("clip-{i:05}")).collect()
        } else {
            names
        };
        assert_eq!(
            names.len() as i64,
            size[0],
            "one name per clip: {} names for {} clips",
            names.len(),
            size[0]
        );
        AudioDataset {
            clips: clips
                .detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous(),
            groups: vec![crate::labels::TOP_LEVEL_GROUP.to_owned(); names.len()],
            names,
            sample_rate,
            labels: None,
            class_names: None,
        }
    }

    /// The same clips with class labels: `labels` `[N]` of any integer kind, each an index into
    /// `class_names` or [`UNLABELLED`]. Panics on another shape or a label out of range.
    pub fn with_labels(mut self, labels: &Tensor, class_names: Vec<String>) -> Self {
        assert!(
            labels.size() == [self.len() as i64] && !labels.is_floating_point(),
            "labels must be integer [{}], got {:?} {:?}",
            self.len(),
            labels.kind(),
            labels.size()
        );
        let labels = labels
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Int64)
            .contiguous();
        if labels.numel() > 0 {
            let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
            assert!(
                lo >= UNLABELLED && hi < class_names.len() as i64,
                "labels must lie in [{UNLABELLED}, {}), got [{lo}, {hi}]",
                class_names.len()
            );
        }
        self.labels = Some(labels);
        self.class_names = Some(class_names);
        self
    }

    /// The same clips in these groups (one per clip). Panics on another count.
    pub fn with_groups(mut self, groups: Vec<String>) -> Self {
        assert_eq!(
            groups.len(),
            self.len(),
            "one group per clip: {} groups for {} clips",
            groups.len(),
            self.len()
        );
        self.groups = groups;
        self
    }

    /// Load a dataset.
    ///
    /// `spec` is one of (an existing file or folder wins over a dataset of the same name, so a
    /// folder of one's own called `speech` is never silently swapped for the bundled one):
    /// - `speech` or `drums`: the dataset in `datasets_dir/<name>/` (missing => an error saying to
    ///   run `cargo xtask setup --data NAME`); another plain name is also looked up there when no
    ///   such path exists;
    /// - a folder: every file with an audio extension (`.wav`, `.flac`, `.aif`, `.aiff`,
    ///   case-insensitive) in it and its subfolders, hidden files and folders skipped; its layout
    ///   gives the labels and groups ([`crate::labels::label_files`]);
    /// - one audio file (read whatever its extension), which has no validation split and no label.
    ///
    /// See the module docs for the processing steps, the split and silent files. Any unreadable
    /// file is an error naming it; so is a folder without audio files, an empty class folder,
    /// and a [`Holdout::Groups`] naming a group the data lacks (listing those it has).
    pub fn load(
        spec: &str,
        split: Split,
        config: &AudioDataConfig,
        datasets_dir: &Path,
    ) -> Result<Self> {
        config.validate()?;
        let location = resolve(spec, datasets_dir)?;
        let (root, files) = if location.is_file() {
            let parent = location.parent().unwrap_or(Path::new("")).to_path_buf();
            (parent, vec![location.clone()])
        } else {
            (location.clone(), audio_files(&location)?)
        };
        let names: Vec<String> = files.iter().map(|f| relative_name(&root, f)).collect();
        // Labels come from the file list and the kits' XML, so a mislaid class folder is an
        // error before minutes of reading audio.
        let labelling = if location.is_file() {
            Labelling::plain(1)
        } else {
            label_files(&root, &files)?
        };
        let chosen =
            config
                .holdout
                .indices(&labelling.groups, config.validation_fraction, split)?;
        if chosen.is_empty() {
            let why = if config.validation_fraction <= 0.0 {
                "the validation fraction is 0, so no file is held out (train with --val-fraction \
                 above 0 to hold some out)"
                    .to_owned()
            } else {
                format!(
                    "{} audio file(s) are too few for a validation split, which needs at least \
                     {MIN_FILES_FOR_VALIDATION} (use a dataset of at least \
                     {MIN_FILES_FOR_VALIDATION} audio files)",
                    files.len()
                )
            };
            return Err(Error::InvalidArgument(format!(
                "{spec}: no held-out clips: {why}"
            )));
        }
        let chosen_files: Vec<&Path> = chosen.iter().map(|&i| files[i].as_path()).collect();
        let loaded = load_clips(&chosen_files, config)?;
        // A silent file is dropped with its name, label and group; when every file is silent
        // nothing is (there is nothing else to learn, and training warns about that).
        let all_silent = loaded.iter().all(|l| l.silent.is_some());
        let mut kept = Vec::with_capacity(loaded.len());
        let mut skipped = 0;
        for (slot, &i) in loaded.into_iter().zip(&chosen) {
            match slot.silent {
                Some(why) if !all_silent => {
                    tracing::warn!("skipping {}: silent ({why})", names[i]);
                    skipped += 1;
                }
                _ => kept.push((slot.clip, i)),
            }
        }
        let (c, l) = (config.channels, config.clip_frames);
        let mut flat = Vec::with_capacity(kept.len() * c * l);
        for (clip, _) in &kept {
            for ch in &clip.channels {
                flat.extend_from_slice(ch);
            }
        }
        let tensor = Tensor::from_slice(&flat).view([kept.len() as i64, c as i64, l as i64]);
        let mut data = AudioDataset {
            clips: tensor,
            names: kept.iter().map(|&(_, i)| names[i].clone()).collect(),
            sample_rate: config.sample_rate,
            labels: None,
            class_names: None,
            groups: kept
                .iter()
                .map(|&(_, i)| labelling.groups[i].clone())
                .collect(),
        };
        if let (Some(labels), Some(class_names)) = (&labelling.labels, &labelling.class_names) {
            let kept_labels: Vec<i64> = kept.iter().map(|&(_, i)| labels[i]).collect();
            data = data.with_labels(&Tensor::from_slice(&kept_labels), class_names.clone());
        }
        let skipped = if skipped > 0 {
            format!(" ({skipped} silent file(s) skipped)")
        } else {
            String::new()
        };
        let classes = data
            .class_counts()
            .map(|counts| format!("; classes: {counts}"))
            .unwrap_or_default();
        tracing::info!(
            "loaded {} clip(s) of {} ({split:?} split of {} file(s), held out: {}){skipped} as \
             [{}, {c}, {l}] at {} Hz{classes}",
            data.len(),
            location.display(),
            files.len(),
            config.holdout,
            data.len(),
            config.sample_rate
        );
        Ok(data)
    }

    /// Where named datasets live ([`diffuse_tensor::data::default_datasets_dir`], one rule for
    /// every modality).
    pub fn default_datasets_dir() -> PathBuf {
        diffuse_tensor::data::default_datasets_dir()
    }

    /// Number of clips.
    pub fn len(&self) -> usize {
        self.clips.size()[0] as usize
    }

    /// Whether there are no clips.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels per clip.
    pub fn channels(&self) -> usize {
        self.clips.size()[1] as usize
    }

    /// Frames per clip.
    pub fn clip_frames(&self) -> usize {
        self.clips.size()[2] as usize
    }

    /// All clips `[N, C, L]` f32 (CPU).
    pub fn clips(&self) -> &Tensor {
        &self.clips
    }

    /// Clip names (paths relative to the dataset folder, `/`-separated), in clip order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Sample rate of every clip, Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Clip `i` as an [`AudioClip`]. Panics when `i` is out of range.
    pub fn clip(&self, i: usize) -> AudioClip {
        assert!(
            i < self.len(),
            "clip {i} out of range for {} clips",
            self.len()
        );
        AudioClip::from_tensor(&self.clips.get(i as i64), self.sample_rate)
            .expect("dataset clips are valid [C, L] float")
    }

    /// The clips at `indices` (in that order, repeats allowed) as `[B, C, L]` f32 on the CPU.
    /// Panics on an index out of range.
    pub fn batch(&self, indices: &[i64]) -> Tensor {
        let n = self.len() as i64;
        if let Some(bad) = indices.iter().find(|&&i| i < 0 || i >= n) {
            panic!("clip index {bad} out of range for a dataset of {n} clips");
        }
        self.clips.index_select(0, &Tensor::from_slice(indices))
    }

    /// The class label of each clip `[N]` i64 (a class index, or [`UNLABELLED`]); `None` when
    /// the data has no classes.
    pub fn labels(&self) -> Option<&Tensor> {
        self.labels.as_ref()
    }

    /// The class names (label `i` is `class_names()[i]`); `None` when the data has no classes.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Clips per class and unlabelled clips; `None` when the data has no classes.
    pub fn class_counts(&self) -> Option<ClassCounts> {
        let (labels, names) = (self.labels.as_ref()?, self.class_names.as_ref()?);
        let labels: Vec<i64> = Vec::<i64>::try_from(labels).ok()?;
        let mut classes: Vec<(String, usize)> = names.iter().map(|n| (n.clone(), 0)).collect();
        let mut unlabelled = 0;
        for label in labels {
            match usize::try_from(label).ok().and_then(|i| classes.get_mut(i)) {
                Some((_, n)) => *n += 1,
                None => unlabelled += 1,
            }
        }
        Some(ClassCounts {
            classes,
            unlabelled,
        })
    }

    /// The group of each clip (its Hydrogen kit, class folder or first-level folder), in clip
    /// order: what [`Holdout::Groups`] names.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    /// The labels of the clips at `indices` (as [`AudioDataset::batch`] takes them) as `[B]` i64
    /// on the CPU; all [`UNLABELLED`] when the data has no classes. Panics on an index out of
    /// range.
    pub fn batch_labels(&self, indices: &[i64]) -> Tensor {
        let n = self.len() as i64;
        if let Some(bad) = indices.iter().find(|&&i| i < 0 || i >= n) {
            panic!("clip index {bad} out of range for a dataset of {n} clips");
        }
        match &self.labels {
            Some(labels) => labels.index_select(0, &Tensor::from_slice(indices)),
            None => Tensor::full(
                [indices.len() as i64],
                UNLABELLED,
                (Kind::Int64, Device::Cpu),
            ),
        }
    }
}

/// How many audio files `spec` names (1 for a file), as [`AudioDataset::load`] counts them for
/// the split: what decides how many are held out.
pub fn count_files(spec: &str, datasets_dir: &Path) -> Result<usize> {
    let location = resolve(spec, datasets_dir)?;
    if location.is_file() {
        Ok(1)
    } else {
        Ok(audio_files(&location)?.len())
    }
}

/// The fewest files from which [`split_indices`] holds out at least `held` files at
/// `validation_fraction` (`None` when the fraction holds none out, or no count reaches `held`).
pub fn files_for_held_out(validation_fraction: f64, held: usize) -> Option<usize> {
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return None;
    }
    // round(n f) >= held from about n = (held - 1/2) / f on; the loop settles the rounding and
    // the clamps of split_indices exactly.
    let estimate = ((held as f64 - 0.5) / validation_fraction).floor().max(0.0);
    if estimate > 1e9 {
        return None;
    }
    let start = (estimate as usize).saturating_sub(2).max(1);
    (start..start + 8 + MIN_FILES_FOR_VALIDATION)
        .find(|&n| split_indices(n, validation_fraction, Split::Validation).len() >= held)
}

/// The folder or file `spec` names (see [`AudioDataset::load`]).
fn resolve(spec: &str, datasets_dir: &Path) -> Result<PathBuf> {
    resolve_from(Path::new(""), spec, datasets_dir)
}

/// [`resolve`] with relative paths taken from `base` (`""`: the current directory).
fn resolve_from(base: &Path, spec: &str, datasets_dir: &Path) -> Result<PathBuf> {
    let path = base.join(spec);
    let plain_name = !spec.is_empty() && !spec.contains(['/', '\\']) && spec != "." && spec != "..";
    // What exists wins over a name: `--data speech` run beside one's own `speech/` folder means
    // that folder (and `recorded_data_path` records it so).
    if !spec.is_empty() && path.exists() {
        return Ok(path);
    }
    if DATASET_NAMES.contains(&spec) {
        let dir = datasets_dir.join(spec);
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "dataset {spec} is not in {}: run `cargo xtask setup --data {spec}` \
                 (or set DIFFUSE_DATA_DIR to the folder holding {spec}/)",
                datasets_dir.display()
            )));
        }
        return Ok(dir);
    }
    if plain_name && datasets_dir.join(spec).exists() {
        return Ok(datasets_dir.join(spec));
    }
    Err(Error::InvalidArgument(format!(
        "{spec}: no such file or folder{} (named audio datasets: {})",
        if plain_name {
            format!(
                ", and no dataset of that name in {}",
                datasets_dir.display()
            )
        } else {
            String::new()
        },
        DATASET_NAMES.join(", ")
    )))
}

/// Audio files under `root` (recursive; hidden entries skipped), sorted by relative path.
pub fn audio_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            // file_type does not follow links; metadata does, so linked folders are entered.
            let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && is_audio_path(&path) {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no audio files (.{}) in this folder or its subfolders",
            root.display(),
            audio_extensions().join(", .")
        )));
    }
    found.sort_by_key(|f| relative_name(root, f));
    Ok(found)
}

/// `path` relative to `root`, `/`-separated on every platform (the sort key and the clip name).
fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Indices (into the sorted file list of `n` files) of `split`. Validation takes `k =
/// max(1, round(n * fraction))` files at positions `floor((j + 1/2) n / k)`, spread evenly over
/// the list; none when `n` < [`MIN_FILES_FOR_VALIDATION`] or the fraction is 0.
pub fn split_indices(n: usize, validation_fraction: f64, split: Split) -> Vec<usize> {
    let k = if n < MIN_FILES_FOR_VALIDATION || validation_fraction <= 0.0 {
        0
    } else {
        ((n as f64 * validation_fraction).round() as usize).clamp(1, n - 1)
    };
    let held: Vec<usize> = (0..k).map(|j| (2 * j + 1) * n / (2 * k)).collect();
    match split {
        Split::All => (0..n).collect(),
        Split::Validation => held,
        Split::Train => (0..n).filter(|i| held.binary_search(i).is_err()).collect(),
    }
}

/// One file as [`load_clips`] read it.
struct Loaded {
    /// The prepared clip.
    clip: AudioClip,
    /// Why the file counts as silent (peak below [`crate::train::SILENCE_PEAK`] as read), if it
    /// does.
    silent: Option<String>,
}

/// Whether a file's samples, as read, are silent, and how: all zeros, or the peak.
fn silence(clip: &AudioClip) -> Option<String> {
    let peak = clip.peak();
    if (peak as f64) >= crate::train::SILENCE_PEAK || !peak.is_finite() {
        return None;
    }
    let samples = clip.frames() * clip.num_channels();
    Some(if peak == 0.0 {
        format!("all {samples} samples are zero")
    } else {
        format!("peak {peak:.1e}, below half a step of 16-bit audio")
    })
}

/// Read and prepare `files` on all cores, in order; the first failure (in file order) wins.
fn load_clips(files: &[&Path], config: &AudioDataConfig) -> Result<Vec<Loaded>> {
    let n = files.len();
    let bar = (n >= PROGRESS_FROM)
        .then(|| diffuse_tensor::progress::progress_bar(n as u64, "loading audio", "file"));
    let slots: Vec<Mutex<Option<Result<Loaded>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(n)
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let path = files[i];
                let result = read_audio(path).and_then(|clip| {
                    let silent = silence(&clip);
                    let clip = config.prepare(&clip).map_err(|e| match e {
                        Error::InvalidArgument(m) => Error::format(path, m),
                        other => other,
                    })?;
                    Ok(Loaded { clip, silent })
                });
                let failed = result.is_err();
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
                if failed {
                    // Later files cannot matter once one has failed; stop handing them out.
                    next.store(n, Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Every file before a failing one was handed out before it, so the first error in file
    // order comes before any file skipped because of it.
    let mut clips = Vec::with_capacity(n);
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(clip)) => clips.push(clip),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(clips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strings() {
        for (s, n) in [
            ("none", Normalize::None),
            ("peak", Normalize::Peak(0.95)),
            ("peak:0.9", Normalize::Peak(0.9)),
            ("rms", Normalize::RmsDb(-20.0)),
            ("rms:-23", Normalize::RmsDb(-23.0)),
            ("RMS:-23dB", Normalize::RmsDb(-23.0)),
        ] {
            assert_eq!(s.parse::<Normalize>().unwrap(), n, "{s}");
            assert_eq!(n.to_string().parse::<Normalize>().unwrap(), n);
        }
        for bad in ["peak:0", "peak:1.5", "rms:3", "loud", "peak:x"] {
            assert!(bad.parse::<Normalize>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&AudioDataConfig::default()).unwrap();
        assert!(json.contains("\"normalize\":\"peak:0.95\""), "{json}");
        let back: AudioDataConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, AudioDataConfig::default());
        assert!(serde_json::from_str::<Normalize>("\"peak:7\"").is_err());
    }

    #[test]
    fn an_existing_folder_wins_over_a_dataset_name() {
        let here = tempfile::tempdir().unwrap();
        let datasets = tempfile::tempdir().unwrap();
        std::fs::create_dir(datasets.path().join("speech")).unwrap();
        // Without a local folder the name means the bundled dataset.
        assert_eq!(
            resolve_from(here.path(), "speech", datasets.path()).unwrap(),
            datasets.path().join("speech")
        );
        // With one, the local folder: the user's data is never swapped for the bundled one.
        std::fs::create_dir(here.path().join("speech")).unwrap();
        assert_eq!(
            resolve_from(here.path(), "speech", datasets.path()).unwrap(),
            here.path().join("speech")
        );
        // A missing bundled dataset is still an error that says how to fetch it.
        let e = resolve_from(here.path(), "drums", datasets.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo xtask setup --data drums"), "{e}");
        // Other plain names fall back to the datasets folder only when nothing local exists.
        std::fs::create_dir(datasets.path().join("mine")).unwrap();
        assert_eq!(
            resolve_from(here.path(), "mine", datasets.path()).unwrap(),
            datasets.path().join("mine")
        );
    }

    #[test]
    fn split_is_even_disjoint_and_complete() {
        assert_eq!(split_indices(20, 0.1, Split::Validation), vec![5, 15]);
        assert_eq!(split_indices(10, 0.1, Split::Validation), vec![5]);
        assert!(split_indices(4, 0.5, Split::Validation).is_empty());
        assert_eq!(split_indices(4, 0.5, Split::Train), vec![0, 1, 2, 3]);
        assert!(split_indices(100, 0.0, Split::Validation).is_empty());
        for n in [5, 7, 50, 568, 754] {
            let v = split_indices(n, 0.1, Split::Validation);
            let t = split_indices(n, 0.1, Split::Train);
            assert_eq!(v.len() + t.len(), n);
            assert!(v.windows(2).all(|w| w[0] < w[1]));
            assert!(v.iter().all(|i| t.binary_search(i).is_err()));
        }
        assert_eq!(split_indices(568, 0.1, Split::Validation).len(), 57);
    }
}
