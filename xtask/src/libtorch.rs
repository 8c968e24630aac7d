//! libtorch 2.11 for the build. `setup` makes `target/libtorch/torch` (the `LIBTORCH` that
//! `.cargo/config.toml` sets) hold libtorch 2.11.x, taking the first that works of: the user's own exported
//! `LIBTORCH` (linked), a `python3` whose torch is 2.11 (linked), or `pip install --target` of the torch
//! wheel (which carries libtorch and, on Linux, the CUDA libraries it finds by relative rpath, so the pip
//! layout is kept as it is). What was chosen is written to `target/libtorch/SOURCE`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::util::{describe, has_pip, pip, remove_path, write_atomic};

/// The libtorch minor release the `tch` pin accepts.
pub const REQUIRED: &str = "2.11";
/// What pip installs when nothing suitable is found.
pub const PIP_SPEC: &str = "torch==2.11.0";

/// The version a libtorch folder declares: `build-version` in the C++ distribution, `version.py`'s
/// `__version__` in a Python torch package.
pub fn read_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("build-version")) {
        let v = text.trim();
        if !v.is_empty() {
            return Some(v.to_owned());
        }
    }
    parse_version_py(&std::fs::read_to_string(dir.join("version.py")).ok()?)
}

/// `__version__ = '2.11.0+cu130'` -> `2.11.0+cu130`.
pub fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("__version__")?;
        // `__version__ = '…'` or, annotated, `__version__: str = '…'`.
        if !rest.starts_with([' ', '\t', ':', '=']) {
            return None;
        }
        let value = rest.split_once('=')?.1.trim();
        let quote = value.chars().next().filter(|c| matches!(c, '\'' | '"'))?;
        value[1..].split(quote).next().map(str::to_owned)
    })
}

/// Whether `version` is a 2.11.x release (local suffixes like `+cu130` and `+cpu` allowed).
pub fn is_supported(version: &str) -> bool {
    let mut parts = version.split(['.', '+']);
    matches!((parts.next(), parts.next()), (Some("2"), Some("11")))
}

/// Where setup looks and what it may run; built from the process environment, or by tests.
#[derive(Clone, Debug)]
pub struct Env {
    pub repo: PathBuf,
    /// `LIBTORCH` if the user exported one (not the repository default that cargo's config sets).
    pub user_libtorch: Option<PathBuf>,
    /// The Python interpreter to ask for torch and to run pip with.
    pub python: String,
}

impl Env {
    pub fn from_process(repo: &Path) -> Self {
        let default = default_dir(repo);
        let user_libtorch = std::env::var_os("LIBTORCH")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .map(|p| match std::env::current_dir() {
                Ok(cwd) if p.is_relative() => cwd.join(p),
                _ => p,
            })
            .filter(|p| !same_path(p, &default));
        Self {
            repo: repo.to_path_buf(),
            user_libtorch,
            python: "python3".into(),
        }
    }
}

/// `<repo>/target/libtorch/torch`, the `LIBTORCH` cargo's config points at.
pub fn default_dir(repo: &Path) -> PathBuf {
    repo.join("target").join("libtorch").join("torch")
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The libtorch setup settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub version: String,
    /// `env`, `python` or `pip`.
    pub source: String,
    /// The libtorch folder itself (the link's target when linked).
    pub path: PathBuf,
}

/// Is `target/libtorch/torch` a 2.11 libtorch already? Reads files only; never runs anything.
pub fn installed(repo: &Path) -> Option<Ready> {
    let dir = default_dir(repo);
    let version = read_version(&dir).filter(|v| is_supported(v))?;
    let source_file = dir.parent()?.join("SOURCE");
    let (source, path) = match std::fs::read_to_string(&source_file) {
        Ok(text) => {
            let line = text.lines().next().unwrap_or_default();
            let (kind, path) = line.split_once(' ').unwrap_or((line, ""));
            (kind.to_owned(), PathBuf::from(path))
        }
        Err(_) => ("unknown".to_owned(), dir.canonicalize().unwrap_or(dir)),
    };
    Some(Ready {
        version,
        source,
        path,
    })
}

/// Make `target/libtorch/torch` a 2.11 libtorch (see the module docs for the order), and report it.
pub fn ensure(env: &Env) -> Result<Ready> {
    let home = env.repo.join("target").join("libtorch");
    let link = home.join("torch");
    if let Some(user) = &env.user_libtorch {
        return use_user_libtorch(&home, user);
    }
    if let Some(mut ready) = installed(&env.repo) {
        if ready.source == "unknown" {
            // Installed by hand (e.g. `pip install --target target/libtorch torch==2.11.0`): record it.
            let kind = if is_symlink(&link) { "link" } else { "pip" };
            write_source(&home, kind, &ready.path)?;
            ready.source = kind.to_owned();
        }
        let origin = if ready.path == link {
            ready.source.clone()
        } else {
            format!("{}: {}", ready.source, ready.path.display())
        };
        println!(
            "libtorch {} ready at {} ({origin})",
            ready.version,
            link.display()
        );
        return Ok(ready);
    }
    let found = read_version(&link);
    if !replaceable(&home) {
        // Never delete gigabytes setup did not put there (say, a pip install someone is still running).
        let what = found.map_or("no libtorch".to_owned(), |v| format!("libtorch {v}"));
        bail!(
            "{} holds {what} and was not made by setup; move it away (or delete it) and run setup again",
            home.display()
        );
    }
    if let Some(v) = found {
        println!("target/libtorch holds libtorch {v}, not {REQUIRED}; replacing it");
    }
    remove_path(&home)?;
    if let Some((version, dir)) = python_torch(&env.python, &link) {
        link_dir(&home, &dir)?;
        write_source(&home, "python", &dir)?;
        println!(
            "libtorch {version} ready: linked {} to {}'s torch at {}",
            link.display(),
            env.python,
            dir.display()
        );
        return Ok(Ready {
            version,
            source: "python".into(),
            path: dir,
        });
    }
    pip_install(env, &home)
}

/// Whether setup may clear `home`: absent, empty, only a link, or written by setup (it has a SOURCE).
fn replaceable(home: &Path) -> bool {
    let Ok(mut entries) = std::fs::read_dir(home) else {
        return true;
    };
    is_symlink(&home.join("torch")) || home.join("SOURCE").exists() || entries.next().is_none()
}

fn use_user_libtorch(home: &Path, user: &Path) -> Result<Ready> {
    let shown = user.display();
    let version = read_version(user).ok_or_else(|| {
        anyhow!("LIBTORCH={shown} is not a libtorch (no build-version or version.py there); point it at libtorch {REQUIRED}, or unset LIBTORCH to let setup fetch one")
    })?;
    if !is_supported(&version) {
        bail!("LIBTORCH={shown} holds libtorch {version}, but diffuse needs {REQUIRED}.x; unset LIBTORCH to let setup fetch one");
    }
    let link = home.join("torch");
    let ready = Ready {
        version: version.clone(),
        source: "env".into(),
        path: user.to_path_buf(),
    };
    if link.exists() && !is_symlink(&link) {
        // A real libtorch install lives there (gigabytes); cargo uses the exported LIBTORCH anyway, so keep it.
        println!(
            "libtorch {version} ready: using LIBTORCH={shown} (target/libtorch keeps its own copy)"
        );
        return Ok(ready);
    }
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    link_dir(home, user)?;
    write_source(home, "env", user)?;
    println!(
        "libtorch {version} ready: linked {} to LIBTORCH={shown}",
        link.display()
    );
    Ok(ready)
}

fn is_symlink(path: &Path) -> bool {
    path.symlink_metadata()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

/// Point `home/torch` at `target`, replacing any old link in one rename.
fn link_dir(home: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let tmp = home.join("torch.link-tmp");
    remove_path(&tmp)?;
    symlink(target, &tmp)
        .with_context(|| format!("linking {} to {}", tmp.display(), target.display()))?;
    let link = home.join("torch");
    if link.is_dir() && !is_symlink(&link) {
        remove_path(&link)?;
    }
    std::fs::rename(&tmp, &link)
        .with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

fn write_source(home: &Path, kind: &str, path: &Path) -> Result<()> {
    write_atomic(
        &home.join("SOURCE"),
        format!("{kind} {}\n", path.display()).as_bytes(),
    )
}

/// The version and package folder of `python`'s torch, if it is 2.11 and ships the C++ headers and libraries.
fn python_torch(python: &str, link: &Path) -> Option<(String, PathBuf)> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (version, dir) = (lines.next()?.to_owned(), PathBuf::from(lines.next()?));
    let usable = is_supported(&version) && dir.join("lib").is_dir() && dir.join("include").is_dir();
    // A PYTHONPATH that already reaches target/libtorch would make the link point at itself.
    (usable && !same_path(&dir, link)).then_some((version, dir))
}

fn pip_install(env: &Env, home: &Path) -> Result<Ready> {
    let python = &env.python;
    if !has_pip(python) {
        bail!("python3 with pip is needed to fetch libtorch: install python3 and python3-pip (Debian: apt-get install python3-pip), or export LIBTORCH=<a libtorch {REQUIRED}>");
    }
    // pip writes into a scratch folder renamed into place only when complete, so a killed install never
    // leaves a half libtorch that looks ready.
    let partial = home.with_file_name("libtorch.partial");
    remove_path(&partial)?;
    let mut cmd = pip(python, "install");
    cmd.args(["--no-warn-script-location", "--target"])
        .arg(&partial)
        .arg(PIP_SPEC);
    println!("no libtorch {REQUIRED} found (LIBTORCH unset, {python} has no torch {REQUIRED}); fetching it with pip (several GB with the CUDA libraries):");
    println!("  {}", describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    if !status.success() {
        remove_path(&partial)?;
        bail!("pip install {PIP_SPEC} failed ({status}); see pip's output above");
    }
    let torch = partial.join("torch");
    let version = read_version(&torch).ok_or_else(|| {
        anyhow!(
            "pip installed no torch/version.py into {}",
            partial.display()
        )
    })?;
    if !is_supported(&version) {
        remove_path(&partial)?;
        bail!("pip installed torch {version}, not {REQUIRED}.x");
    }
    let final_dir = home.join("torch");
    write_source(&partial, "pip", &final_dir)?;
    remove_path(home)?;
    std::fs::rename(&partial, home)
        .with_context(|| format!("renaming {} to {}", partial.display(), home.display()))?;
    println!("libtorch {version} ready at {} (pip)", final_dir.display());
    Ok(Ready {
        version,
        source: "pip".into(),
        path: final_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_version(dir.path()), None);
        std::fs::write(
            dir.path().join("version.py"),
            "from typing import Optional\n__all__ = ['__version__']\n__version__ = '2.11.0+cu130'\ndebug = False\n",
        )
        .unwrap();
        assert_eq!(read_version(dir.path()).as_deref(), Some("2.11.0+cu130"));
        // The C++ distribution's build-version wins when both exist.
        std::fs::write(dir.path().join("build-version"), "2.11.0+cpu\n").unwrap();
        assert_eq!(read_version(dir.path()).as_deref(), Some("2.11.0+cpu"));
        assert_eq!(
            parse_version_py("__version__: str = \"2.10.1\"\n").as_deref(),
            Some("2.10.1")
        );
        assert_eq!(parse_version_py("version = '1'\n"), None);
        assert_eq!(parse_version_py("__version___x = '1'\n"), None);
    }

    #[test]
    fn only_2_11_is_supported() {
        assert!(is_supported("2.11.0"));
        assert!(is_supported("2.11.3+cu130"));
        assert!(is_supported("2.11"));
        assert!(!is_supported("2.1.0"));
        assert!(!is_supported("2.110.0"));
        assert!(!is_supported("2.10.0+cpu"));
        assert!(!is_supported("3.11.0"));
    }

    fn fake_libtorch(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::create_dir_all(dir.join("include")).unwrap();
        std::fs::write(dir.join("build-version"), format!("{version}\n")).unwrap();
    }

    fn env(repo: &Path, user: Option<PathBuf>, python: &str) -> Env {
        Env {
            repo: repo.to_path_buf(),
            user_libtorch: user,
            python: python.into(),
        }
    }

    #[test]
    fn pip_layout_already_there_is_accepted_and_recorded() {
        let repo = tempfile::tempdir().unwrap();
        let torch = default_dir(repo.path());
        std::fs::create_dir_all(&torch).unwrap();
        std::fs::write(torch.join("version.py"), "__version__ = '2.11.0+cu130'\n").unwrap();
        // A python that cannot even start: the ready check must not need it.
        let ready = ensure(&env(repo.path(), None, "/nonexistent/python3")).unwrap();
        assert_eq!(ready.version, "2.11.0+cu130");
        assert_eq!(ready.source, "pip");
        let source = std::fs::read_to_string(repo.path().join("target/libtorch/SOURCE")).unwrap();
        assert!(source.starts_with("pip "), "{source}");
        assert!(
            torch.join("version.py").exists(),
            "a ready libtorch must be left alone"
        );
    }

    #[test]
    fn user_libtorch_of_another_version_is_refused_in_one_line() {
        let repo = tempfile::tempdir().unwrap();
        let user = repo.path().join("opt-libtorch");
        fake_libtorch(&user, "2.9.1+cpu");
        let err = ensure(&env(repo.path(), Some(user.clone()), "python3"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.contains("2.9.1+cpu") && err.contains("2.11") && err.contains("unset LIBTORCH"),
            "{err}"
        );
        assert!(!repo.path().join("target/libtorch").exists());
    }

    #[cfg(unix)]
    #[test]
    fn user_libtorch_of_2_11_is_linked() {
        let repo = tempfile::tempdir().unwrap();
        let user = repo.path().join("opt-libtorch");
        fake_libtorch(&user, "2.11.0+cpu");
        let ready = ensure(&env(repo.path(), Some(user.clone()), "python3")).unwrap();
        assert_eq!(
            (ready.source.as_str(), ready.version.as_str()),
            ("env", "2.11.0+cpu")
        );
        let link = default_dir(repo.path());
        assert_eq!(std::fs::read_link(&link).unwrap(), user);
        let source = std::fs::read_to_string(repo.path().join("target/libtorch/SOURCE")).unwrap();
        assert_eq!(source.trim(), format!("env {}", user.display()));
        // Running again is a no-op that keeps the link.
        ensure(&env(repo.path(), Some(user.clone()), "python3")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), user);
    }

    /// A stand-in `python3`: answers the torch query with `torch_line`, and "installs" torch for pip.
    #[cfg(unix)]
    fn fake_python(dir: &Path, torch_answer: Option<&Path>, pip_version: Option<&str>) -> String {
        use std::os::unix::fs::PermissionsExt;
        let query = match torch_answer {
            Some(p) => format!("echo 2.11.0+cpu; echo '{}'; exit 0", p.display()),
            None => "echo 'ModuleNotFoundError: torch' >&2; exit 1".into(),
        };
        let pip = match pip_version {
            Some(v) => format!(
                "if [ \"$3\" = --version ]; then echo pip; exit 0; fi\n\
                 for a in \"$@\"; do if [ \"$prev\" = --target ]; then t=\"$a\"; fi; prev=\"$a\"; done\n\
                 mkdir -p \"$t/torch/lib\" \"$t/nvidia\" && echo \"__version__ = '{v}'\" > \"$t/torch/version.py\"; exit 0"
            ),
            None => "echo 'No module named pip' >&2; exit 1".into(),
        };
        let script = format!("#!/bin/sh\nif [ \"$1\" = -c ]; then {query}; fi\nif [ \"$2\" = pip ]; then\n{pip}\nfi\nexit 2\n");
        let path = dir.join("python3");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[cfg(unix)]
    #[test]
    fn python_torch_2_11_is_linked() {
        let repo = tempfile::tempdir().unwrap();
        let site_torch = repo.path().join("site-packages/torch");
        fake_libtorch(&site_torch, "2.11.0+cpu");
        let python = fake_python(repo.path(), Some(&site_torch), None);
        let ready = ensure(&env(repo.path(), None, &python)).unwrap();
        assert_eq!(ready.source, "python");
        assert_eq!(
            std::fs::read_link(default_dir(repo.path())).unwrap(),
            site_torch
        );
        assert!(installed(repo.path()).is_some());
    }

    #[cfg(unix)]
    #[test]
    fn pip_installs_into_scratch_then_renames() {
        let repo = tempfile::tempdir().unwrap();
        let python = fake_python(repo.path(), None, Some("2.11.0+cu130"));
        // A leftover from a killed install must not be mistaken for a libtorch.
        std::fs::create_dir_all(repo.path().join("target/libtorch.partial/torch")).unwrap();
        let ready = ensure(&env(repo.path(), None, &python)).unwrap();
        assert_eq!(
            (ready.source.as_str(), ready.version.as_str()),
            ("pip", "2.11.0+cu130")
        );
        let home = repo.path().join("target/libtorch");
        assert!(home.join("torch/version.py").is_file());
        assert!(
            home.join("nvidia").is_dir(),
            "the wheels' side-by-side layout is kept"
        );
        assert!(!repo.path().join("target/libtorch.partial").exists());
        assert!(std::fs::read_to_string(home.join("SOURCE"))
            .unwrap()
            .starts_with("pip "));
    }

    #[cfg(unix)]
    #[test]
    fn pip_of_the_wrong_version_is_refused() {
        let repo = tempfile::tempdir().unwrap();
        let python = fake_python(repo.path(), None, Some("2.12.0"));
        let err = ensure(&env(repo.path(), None, &python))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2.12.0"), "{err}");
        assert!(installed(repo.path()).is_none());
    }

    #[test]
    fn foreign_contents_are_never_deleted() {
        let repo = tempfile::tempdir().unwrap();
        let half = default_dir(repo.path()).join("lib");
        std::fs::create_dir_all(&half).unwrap();
        let err = ensure(&env(repo.path(), None, "/nonexistent/python3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("was not made by setup"), "{err}");
        assert!(half.is_dir());
    }

    #[test]
    fn missing_python_says_what_to_install() {
        let repo = tempfile::tempdir().unwrap();
        let err = ensure(&env(repo.path(), None, "/nonexistent/python3"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("python3 with pip is needed to fetch libtorch"),
            "{err}"
        );
        assert!(err.contains("apt-get install python3-pip"), "{err}");
    }
}
