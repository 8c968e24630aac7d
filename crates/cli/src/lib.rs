//! The `diffuse` command-line program: argument parsing (the only crate that knows clap),
//! logging setup, one-line error reporting, and the commands themselves, each in its own
//! module and built on the library crates. `diffuse-bench`, the Rust side of
//! `cargo xtask bench`, shares the timing code in [`measure`].

pub mod audio;
pub mod counts;
pub mod doctor;
pub mod fid;
pub mod gaussian;
pub mod given;
pub mod image;
pub mod inspect;
pub mod launch;
pub mod measure;
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}
