//! Unpacking what the package clients fetch, in pure Rust so it behaves the same where `tar` or `dpkg` differ
//! or are missing: npm `.tgz` and PyPI sdist `.tar.gz` files, and Debian `.deb` files (an `ar` archive whose
//! `data.tar.{xz,gz}` member holds the files). Only members matched by a keep rule are written, and each is
//! hashed while it is written.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::MultiGzDecoder;

use crate::checksum::{Digests, HashingWriter};
use crate::glob;
use crate::manifest::{safe_relative, Keep};

/// One kept file: its path relative to the output folder and the digests of the bytes written.
#[derive(Clone, Debug)]
pub struct Extracted {
    pub path: String,
    pub digests: Digests,
}

/// Unpack the members of `archive` that `keep` selects into `out`; returns them sorted by path.
pub fn extract(archive: &Path, keep: &[Keep], out: &Path) -> Result<Vec<Extracted>> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let result = if name.ends_with(".deb") {
        extract_deb(reader, keep, out)
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        extract_tar(MultiGzDecoder::new(reader), keep, out)
    } else if name.ends_with(".tar.xz") {
        extract_tar(lzma_rust2::XzReader::new(reader, true), keep, out)
    } else if name.ends_with(".tar") {
        extract_tar(reader, keep, out)
    } else {
        bail!("{name}: unsupported archive format (expected .deb, .tgz, .tar.gz, .tar.xz or .tar)")
    };
    result.with_context(|| format!("unpacking {name}"))
}

/// A `.deb` is an `ar` archive: `debian-binary`, `control.tar.*`, `data.tar.*`; the files are in the last.
fn extract_deb(reader: impl Read, keep: &[Keep], out: &Path) -> Result<Vec<Extracted>> {
    let mut deb = ar::Archive::new(reader);
    while let Some(entry) = deb.next_entry() {
        let mut entry = entry.context("reading the .deb's ar archive")?;
        let id = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        let member = BufReader::with_capacity(1 << 20, &mut entry);
        match id.as_str() {
            "data.tar.xz" => {
                return extract_tar(lzma_rust2::XzReader::new(member, true), keep, out)
            }
            "data.tar.gz" => return extract_tar(MultiGzDecoder::new(member), keep, out),
            "data.tar" => return extract_tar(member, keep, out),
            other if other.starts_with("data.tar") => {
                bail!("{other}: this compression is not supported (only xz and gzip); unpack with dpkg-deb -x")
            }
            _ => continue,
        }
    }
    bail!("no data.tar member in the .deb")
}

fn extract_tar(reader: impl Read, keep: &[Keep], out: &Path) -> Result<Vec<Extracted>> {
    let mut archive = tar::Archive::new(reader);
    let mut kept = Vec::new();
    let mut seen = HashSet::new();
    for entry in archive.entries().context("reading the tar stream")? {
        let mut entry = entry.context("reading a tar member")?;
        let raw_path = entry
            .path()
            .context("reading a tar member's path")?
            .into_owned();
        let lossy = raw_path.to_string_lossy();
        let member = lossy.strip_prefix("./").unwrap_or(&lossy).to_owned();
        let Some(rule) = keep.iter().find(|k| glob::matches(&k.glob, &member)) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        ensure!(
            raw_path.to_str().is_some(),
            "{member}: member path is not UTF-8"
        );
        ensure!(
            kind.is_file(),
            "{member}: a kept member must be a regular file, this one is {kind:?}"
        );
        let mut rel = format!(
            "{}{}",
            rule.to,
            member.strip_prefix(&rule.strip).unwrap_or(&member)
        );
        if rule.gunzip {
            rel = match rel.strip_suffix(".gz") {
                Some(stem) => stem.to_owned(),
                None => bail!("{member}: keep rule says gunzip but the name does not end in .gz"),
            };
        }
        safe_relative(&rel).with_context(|| format!("archive member {member}"))?;
        ensure!(
            seen.insert(rel.clone()),
            "two archive members would both be written to {rel}"
        );
        let dest = out.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let copied = if rule.gunzip {
            io::copy(&mut MultiGzDecoder::new(&mut entry), &mut writer)
        } else {
            io::copy(&mut entry, &mut writer)
        };
        copied.with_context(|| format!("unpacking {member}"))?;
        let (_, digests) = writer
            .finish()
            .with_context(|| format!("writing {}", dest.display()))?;
        kept.push(Extracted { path: rel, digests });
    }
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(kept)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checksum::digest_reader;
    use flate2::write::GzEncoder;
    use std::io::Write;

    /// A tar stream of `(path, bytes)` regular files.
    pub(crate) fn tar_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn rule(glob: &str, strip: &str, to: &str, gunzip: bool) -> Keep {
        Keep {
            glob: glob.into(),
            strip: strip.into(),
            to: to.into(),
            gunzip,
        }
    }

    #[test]
    fn tgz_keeps_only_matching_members() {
        let dir = tempfile::tempdir().unwrap();
        let gz_member = gzip(b"inner bytes");
        let tgz = gzip(&tar_bytes(&[
            ("package/data/a-ubyte", b"AAAA"),
            ("package/data/b.txt", b"skip me"),
            ("package/data/deep/c-ubyte", b"too deep for *"),
            ("package/extra/d.gz", &gz_member),
        ]));
        let archive = dir.path().join("toy-1.0.tgz");
        std::fs::write(&archive, tgz).unwrap();
        let out = dir.path().join("out");
        let keep = [
            rule("package/data/*-ubyte", "package/data/", "", false),
            rule("package/extra/*.gz", "package/", "x/", true),
        ];
        let kept = extract(&archive, &keep, &out).unwrap();
        let paths: Vec<&str> = kept.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a-ubyte", "x/extra/d"]);
        assert_eq!(std::fs::read(out.join("a-ubyte")).unwrap(), b"AAAA");
        assert_eq!(
            std::fs::read(out.join("x/extra/d")).unwrap(),
            b"inner bytes"
        );
        assert_eq!(kept[1].digests, digest_reader(&b"inner bytes"[..]).unwrap());
        assert!(!out.join("b.txt").exists());
    }

    #[test]
    fn deb_data_member_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let data = gzip(&tar_bytes(&[
            ("./usr/share/ds/one.wav", b"RIFF"),
            ("./usr/share/doc/copyright", b"c"),
        ]));
        let control = gzip(&tar_bytes(&[("./control", b"Package: toy\n")]));
        let mut deb = ar::Builder::new(Vec::new());
        for (name, bytes) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar.gz", &control),
            ("data.tar.gz", &data),
        ] {
            deb.append(
                &ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64),
                bytes,
            )
            .unwrap();
        }
        let archive = dir.path().join("toy_1.0_all.deb");
        std::fs::write(&archive, deb.into_inner().unwrap()).unwrap();
        let out = dir.path().join("out");
        let kept = extract(
            &archive,
            &[rule("usr/share/ds/**/*.wav", "usr/share/ds/", "", false)],
            &out,
        )
        .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].path, "one.wav");
        assert_eq!(std::fs::read(out.join("one.wav")).unwrap(), b"RIFF");
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("toy.whl");
        std::fs::write(&archive, b"PK").unwrap();
        let err = extract(&archive, &[], dir.path()).unwrap_err().to_string();
        assert!(err.contains("unsupported archive format"), "{err}");
    }
}
