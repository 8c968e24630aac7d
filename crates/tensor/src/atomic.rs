//! Atomic file and directory writes: write beside the target, flush to disk, then rename.
//! A process killed mid-write leaves the previous file whole and at worst a stray temporary
//! (named `.NAME.tmp-PID-N`, removed on the next write to the same folder by the same logic).

use crate::{Error, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary path in the same directory as `path` (same filesystem, so rename is atomic).
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Write a file atomically: `write` fills a temporary file, which replaces `path` only once it
/// is completely written and synced. On any error the temporary is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let tmp = temp_path_for(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    finish(&tmp, path, result)
}

/// Write a file atomically where a library insists on writing to a path itself:
/// `write` gets the temporary path to fill.
pub fn write_atomic_via_path<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> std::io::Result<()>,
{
    let tmp = temp_path_for(path);
    let result = write(&tmp).and_then(|()| File::open(&tmp)?.sync_all());
    finish(&tmp, path, result)
}

fn finish(tmp: &Path, path: &Path, result: std::io::Result<()>) -> Result<()> {
    let result = result.and_then(|()| fs::rename(tmp, path));
    match result {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(tmp);
            Err(Error::io(path, e))
        }
    }
}

/// Make a rename durable: sync the directory entry (best effort; not every filesystem allows it).
pub fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Write a JSON value atomically, pretty-printed with a trailing newline.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
}

/// Write a directory atomically: `fill` writes every file into a staging directory beside
/// `dir`, which then takes `dir`'s place (an old `dir` moves aside first and is removed after, so
/// at every moment one complete directory exists). An existing `dir` is replaced only if it is
/// empty or holds `marker` (a file only this kind of directory has), so a user's unrelated folder
/// is never overwritten. Files of the old `dir` that `fill` did not write are kept unless they are
/// among `owned` (the names this kind of directory consists of, optional ones included, so an
/// optional file left out this time does not survive from last time). On any error the staging
/// directory is removed and `dir` is untouched.
pub fn write_dir_atomic(
    dir: &Path,
    marker: &str,
    owned: &[&str],
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if dir.exists() && !dir.join(marker).is_file() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::InvalidArgument(format!(
                "{}: exists and is not a model directory; refusing to overwrite it",
                dir.display()
            )));
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = std::fs::create_dir_all(&staging)
        .map_err(|e| Error::io(&staging, e))
        .and_then(|_| fill(&staging));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Files of the old directory that the new one does not write (a model card, pictures)
    // are carried over: replacing a model must not lose what the user put beside it.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let target = staging.join(entry.file_name());
            let is_owned = owned
                .iter()
                .any(|o| entry.file_name() == std::ffi::OsStr::new(o));
            if !is_owned && !target.exists() {
                let _ = std::fs::rename(entry.path(), &target);
            }
        }
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    sync_parent(dir);
    Ok(())
}

/// Read a JSON file written by [`write_json_atomic`] (a run's `run.json`, a model's notes): a
/// missing file is an I/O error with its path, bad contents a format error saying the file is
/// not `what`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not {what}: {e}")))
}

/// Where the model of `dir` lives: `dir` itself when it holds one of `markers` (files only that
/// kind of model directory has), or `dir/model` when that does (a training run directory, whose
/// export is `model/`). A directory holding neither is returned as it is, so the caller's check of
/// its files names what is missing; a path that is no directory at all is an error.
pub fn resolve_model_dir(dir: &Path, markers: &[&str]) -> Result<PathBuf> {
    let holds = |d: &Path| markers.iter().any(|m| d.join(m).is_file());
    if holds(dir) {
        return Ok(dir.to_path_buf());
    }
    let inner = dir.join("model");
    if holds(&inner) {
        return Ok(inner);
    }
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{}: no such model directory",
            dir.display()
        )));
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, |w| w.write_all(b"old")).unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half of the new conte")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn successful_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&path, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
    }

    #[test]
    fn directory_write_replaces_keeps_extra_files_and_refuses_foreign_folders() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        let fill = |value: &'static str| {
            move |staging: &Path| write_json_atomic(&staging.join("config.json"), &value)
        };
        let owned = ["config.json", "extra.json"];
        write_dir_atomic(&dir, "config.json", &owned, fill("one")).unwrap();
        fs::write(dir.join("README.md"), "my notes").unwrap();
        fs::write(dir.join("extra.json"), "{}").unwrap();
        write_dir_atomic(&dir, "config.json", &owned, fill("two")).unwrap();
        // An owned file the new write left out is gone; a file the user added stays.
        assert!(!dir.join("extra.json").exists());
        let v: String =
            serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(v, "two");
        assert_eq!(
            fs::read_to_string(dir.join("README.md")).unwrap(),
            "my notes"
        );
        // A failed write leaves the old directory as it was and no staging folder behind.
        let err = write_dir_atomic(&dir, "config.json", &owned, |staging| {
            fs::write(staging.join("config.json"), "half").unwrap();
            Err(Error::InvalidArgument("disk on fire".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        let v: String =
            serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(v, "two");
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model")]);
        // A folder that is not this kind of directory is never replaced.
        let foreign = root.path().join("photos");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("cat.jpg"), "meow").unwrap();
        let err = write_dir_atomic(&foreign, "config.json", &owned, fill("x")).unwrap_err();
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(fs::read_to_string(foreign.join("cat.jpg")).unwrap(), "meow");
    }
}
