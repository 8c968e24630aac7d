//! The `diffuse` command-line program: argument parsing (the only crate that knows clap),
//! logging setup, one-line error reporting, and the commands themselves, each in its own
//! module and built on the library crates. `diffuse-bench`, the Rust side of
//! `cargo xtask bench`, shares the timing code in [`measure`].

pub mod audio;
pub mod audio_judge;
pub mod counts;
pub mod doctor;
pub mod fid;
pub mod gaussian;
pub mod given;
pub mod image;
pub mod inspect;
pub mod launch;
pub mod measure;
pub mod model_kind;
pub mod poisson;
pub mod run_dir;
pub mod text;

use anyhow::Result;
use tracing_subscriber::EnvFilter;

/// Send `tracing` logs to stderr: `RUST_LOG` if set, else warnings, or info/debug with -v/-vv.
pub fn init_logging(verbosity: u8) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: piped or redirected logs (CI, `2> log`) get plain
    // text, and NO_COLOR turns colour off everywhere (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Normalised class name (letters and digits, lower case), for matching a model's classes with
/// a judge's, a classifier's or a dataset's: `Hi-Hat` and `hihat` are one class.
pub(crate) fn class_key(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// `n` and a noun in agreement: "1 image", "4 images" (nouns that take a plain "s").
pub fn count_of(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Print an error as one line (`error: outer: inner: cause`) and give the process exit code.
pub fn report(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The chain of causes on one line, skipping a cause that a message already quotes
            // (an I/O error's text is part of its path-tagged message).
            let mut text = String::new();
            for cause in err.chain() {
                let message = cause.to_string().replace('\n', " ");
                if text.contains(&message) {
                    continue;
                }
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&message);
            }
            // A rank started by `diffuse launch` hands its error to launch, which prints each
            // distinct one once instead of once per rank.
            let handed_over = std::env::var_os(launch::ERROR_FILE_VAR)
                .is_some_and(|path| std::fs::write(path, format!("error: {text}\n")).is_ok());
            if !handed_over {
                eprintln!("error: {text}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nouns_agree_with_their_count() {
        assert_eq!(super::count_of(1u64, "image"), "1 image");
        assert_eq!(super::count_of(0u64, "row"), "0 rows");
        assert_eq!(super::count_of(16u32, "clip"), "16 clips");
    }
}
