//! Helpers for the end-to-end tests: find (and if needed build) the `diffuse` binary, run it
//! as a user would, and check that failures are one clear line with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `diffuse` binary of this build profile (target/debug or target/release), built with
/// cargo first so the tests never run a stale binary.
pub fn diffuse_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/e2e-HASH -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "diffuse-cli", "--bin", "diffuse"]);
        if release {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo to build the diffuse binary");
        assert!(status.success(), "building the diffuse binary failed");
        let bin = profile_dir.join("diffuse");
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    })
}

/// A path as the `&str` argument of a command line (the tests' temporary paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What a run of the binary printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Run `diffuse ARGS...` in `dir` (or the current directory).
pub fn diffuse(args: &[&str], dir: Option<&Path>) -> Run {
    let mut cmd = Command::new(diffuse_bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        // A fixed thread count: without it each command takes the cores that are free as it
        // starts (diffuse_tensor::runtime::adapt_threads), which varies with the other tests
        // running beside it, and the last float digits of a result depend on the thread count,
        // so tests that compare two commands bit for bit would compare different counts.
        .env("OMP_NUM_THREADS", "1");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("running diffuse");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A user mistake: non-zero exit, exactly one line on stderr starting `error:` and containing
/// every `needle`, no panic or backtrace (RUST_BACKTRACE is on, so a panic would show one).
pub fn assert_user_error(run: &Run, needles: &[&str]) {
    assert!(
        !run.success(),
        "expected failure, got success; stdout: {}",
        run.stdout
    );
    assert_ne!(
        run.code,
        Some(101),
        "exit code 101 is a panic: {}",
        run.stderr
    );
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line, got: {}",
        run.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for needle in needles {
        assert!(lines[0].contains(needle), "'{needle}' not in: {}", lines[0]);
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

/// Write a minimal safetensors file by hand (8-byte header length, JSON header, raw data), so
/// these tests do not depend on the library they are testing to make their inputs.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &[usize], &[f32])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        for v in *values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"made_by": "e2e"}));
    let mut text = serde_json::to_string(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// The tensors of a safetensors file as (dtype, shape, raw little-endian bytes), by name.
pub fn read_safetensors(
    path: &Path,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Vec<usize> = info["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let shape = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        out.insert(
            name.clone(),
            (
                info["dtype"].as_str().unwrap().to_owned(),
                shape,
                data[offsets[0]..offsets[1]].to_vec(),
            ),
        );
    }
    out
}

/// An F32 tensor of a safetensors file as values.
pub fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let tensors = read_safetensors(path);
    let (dtype, shape, bytes) = tensors
        .get(name)
        .unwrap_or_else(|| panic!("{}: no tensor {name}", path.display()));
    assert_eq!(dtype, "F32");
    let values = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape.clone(), values)
}

/// The repository root (for committed fixtures under data/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}
