//! Build-script helper shared by every diffuse crate that links libtorch into a binary or a test.
//!
//! torch-sys links libtorch for tch's own shim, but two things are left to the final binaries:
//! an rpath, so that `cargo run`, `cargo test` and the installed binary find libtorch without
//! `LD_LIBRARY_PATH`, and `--no-as-needed -ltorch`, without which the linker drops
//! `libtorch_cuda.so` (nothing references it by symbol) and tch then reports no CUDA device
//! even on a GPU machine. This is the linker recipe tch-rs recommends; keeping it in one place
//! means every crate's `build.rs` is a single call.

use std::env;
use std::path::PathBuf;

/// Emit the link arguments for libtorch. Call from a crate's `build.rs`.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let Some(lib_dir) = libtorch_lib_dir() {
        if target_os == "linux" || target_os == "macos" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
        }
        if let Some(version) = libtorch_version(&lib_dir) {
            println!("cargo:rustc-env=DIFFUSE_LIBTORCH_VERSION={version}");
        }
    }
    if target_os == "linux" {
        // rust-lld (the default linker here) has no --copy-dt-needed-entries, so name
        // libtorch_cuda itself when the libtorch has one (a CPU-only libtorch does not).
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        let has_cuda = libtorch_lib_dir().is_some_and(|dir| dir.join("libtorch_cuda.so").exists());
        if has_cuda {
            println!("cargo:rustc-link-arg=-ltorch_cuda");
        }
        println!("cargo:rustc-link-arg=-ltorch");
    }
}

/// The directory holding libtorch's shared libraries, as torch-sys sees it.
fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(lib) = env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    env::var("LIBTORCH")
        .ok()
        .map(|root| PathBuf::from(root).join("lib"))
}

/// The libtorch version string (e.g. `2.11.0+cu130`), read from the files a libtorch ships:
/// `build-version` in the C++ distribution, `version.py` in a Python wheel.
fn libtorch_version(lib_dir: &std::path::Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        return Some(text.trim().to_owned());
    }
    let text = std::fs::read_to_string(root.join("version.py")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("__version__"))
        .and_then(|rest| rest.split(['\'', '"']).nth(1))
        .map(str::to_owned)
}

/// Compile C++ sources against libtorch's headers into a static library linked into the crate.
///
/// Used for the few libtorch entry points tch does not wrap (e.g. the autocast dtype). The flags
/// mirror those torch-sys builds its own shim with, so both agree on the C++ ABI.
pub fn compile_libtorch_cpp(lib_name: &str, sources: &[&str]) {
    let root = PathBuf::from(env::var("LIBTORCH").expect(
        "LIBTORCH is not set: run `cargo xtask setup` (the workspace's .cargo/config.toml points LIBTORCH at target/libtorch/torch)",
    ));
    let cxx11_abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}"));
    // Code that calls into libtorch_cuda (NCCL) is compiled only when this libtorch has it, so a
    // CPU-only libtorch still links.
    if root.join("lib").join("libtorch_cuda.so").exists() {
        build.define("DIFFUSE_HAVE_TORCH_CUDA", None);
    }
    for source in sources {
        println!("cargo:rerun-if-changed={source}");
        build.file(source);
    }
    build.compile(lib_name);
}
