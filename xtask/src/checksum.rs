//! Checksums: SHA-256 (what the manifest pins) and MD5 (only to compare with the canonical MNIST digests),
//! computed while bytes are written so large files are read once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What was seen of a byte stream: its length and both digests in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub sha256: String,
    pub md5: String,
}

/// A writer that hashes everything passing through it.
pub struct HashingWriter<W> {
    inner: W,
    sha256: Sha256,
    md5: Md5,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            sha256: Sha256::new(),
            md5: Md5::new(),
            size: 0,
        }
    }

    /// Flush and return the inner writer with the digests of what was written.
    pub fn finish(mut self) -> io::Result<(W, Digests)> {
        self.inner.flush()?;
        let digests = Digests {
            size: self.size,
            sha256: hex(&self.sha256.finalize()),
            md5: hex(&self.md5.finalize()),
        };
        Ok((self.inner, digests))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.md5.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Digests of everything `reader` yields.
pub fn digest_reader(mut reader: impl Read) -> io::Result<Digests> {
    let mut writer = HashingWriter::new(io::sink());
    io::copy(&mut reader, &mut writer)?;
    Ok(writer.finish()?.1)
}

/// Digests of a file's bytes.
pub fn digest_file(path: &Path) -> Result<Digests> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    digest_reader(io::BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading {}", path.display()))
}

/// SHA-256 of a byte string, in hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `s` is `len` lowercase hex digits (the form the manifest uses).
pub fn is_hex_digest(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let d = digest_reader(&b"abc"[..]).unwrap();
        assert_eq!(d.size, 3);
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(sha256_bytes(b"abc"), d.sha256);
    }

    #[test]
    fn hex_digest_shape() {
        assert!(is_hex_digest(&"a".repeat(64), 64));
        assert!(!is_hex_digest(&"A".repeat(64), 64));
        assert!(!is_hex_digest("abc", 64));
    }
}
