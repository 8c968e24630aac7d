//! Training metrics as JSON lines (`metrics.jsonl`): one object per logged step, appended and
//! flushed as it happens so a crash loses nothing already logged.

use crate::atomic::write_atomic;
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Appends JSON objects, one per line.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Open `path` for appending (created if absent).
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Append one record.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("JSON values serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Drop records whose `"step"` is beyond `step` (what a run logged after the checkpoint it is
/// resumed from; the resumed run logs those steps again). Lines that do not parse (a line cut
/// by a kill) are dropped too.
pub fn truncate_after_step(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut kept = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let keep = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
            .is_some_and(|s| s <= step);
        if keep {
            kept.push(line);
        }
    }
    write_atomic(path, |w| {
        for line in &kept {
            writeln!(w, "{line}")?;
        }
        Ok(())
    })
}

/// Read every record of a metrics file (skipping lines that do not parse).
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if let Ok(v) = serde_json::from_str(&line) {
            records.push(v);
        }
    }
    Ok(records)
}
