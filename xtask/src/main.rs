//! `cargo xtask`: the command line over the xtask library. Errors print as one `error: ...` line (anyhow's
//! context chain joined by colons) and a non-zero exit; argument mistakes get clap's usage line.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use xtask::datasets::{self, Clients, State, Verification};
use xtask::libtorch::{self, Env};
use xtask::manifest::Manifest;
use xtask::{bench, tasks, util};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "diffuse's project tasks",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provide libtorch 2.11 in target/libtorch and fetch the datasets named by --data
    Setup {
        /// Datasets to fetch and verify: NAME[,NAME...] or all (see `cargo xtask data list`)
        #[arg(long, value_name = "NAMES|all")]
        data: Option<String>,
    },
    /// Inspect the datasets of data/datasets.toml
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Provide libtorch, build the diffuse binary, then run `cargo test [ARGS...]` (over the whole
    /// workspace unless ARGS select packages with -p/--package)
    Test {
        /// Passed to `cargo test`, e.g. `cargo xtask test -- -p diffuse-core -- --nocapture`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Provide libtorch, then run the demo steps (`diffuse doctor`, ...)
    Demo,
    /// Run benchmarks in diffuse and in PyTorch and update BENCHMARKS.md
    Bench {
        /// A registered benchmark (matmul, train_step); all of them when omitted
        name: Option<String>,
        /// Where both sides run
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        device: String,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Every manifest entry: modality, source package, size on disk, state
    List,
    /// Re-hash fetched datasets (all fetched ones, or NAMES); a changed file is deleted and its stamp removed
    Verify {
        #[arg(value_name = "NAMES|all")]
        names: Option<String>,
    },
    /// Print the folder a dataset lives in
    Path { name: String },
    /// Fetch a package and print the checksums its manifest entry should pin (for maintainers)
    Hash { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    let repo = util::repo_root();
    match cmd {
        Cmd::Setup { data } => setup(&repo, data.as_deref()),
        Cmd::Data { cmd } => data(&repo, cmd),
        Cmd::Test { args } => {
            libtorch::ensure(&Env::from_process(&repo))?;
            Ok(exit_code(tasks::test(&repo, &args)?))
        }
        Cmd::Demo => {
            libtorch::ensure(&Env::from_process(&repo))?;
            tasks::demo(&repo)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { name, device } => {
            if let Some(name) = &name {
                bench::lookup(name)?;
            }
            let ready = libtorch::ensure(&Env::from_process(&repo))?;
            let args: Vec<String> = std::env::args().skip(1).collect();
            let opts = bench::Options {
                names: name.into_iter().collect(),
                device,
                command: format!("cargo xtask {}", args.join(" ")),
            };
            bench::run(&repo, &ready, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn setup(repo: &std::path::Path, data: Option<&str>) -> Result<ExitCode> {
    // Resolve dataset names first: a typo should fail before minutes of downloading.
    let manifest = data
        .map(|_| Manifest::load(&datasets::manifest_path(repo)))
        .transpose()?;
    let selected = match (&manifest, data) {
        (Some(m), Some(spec)) => m.select(spec)?,
        _ => Vec::new(),
    };
    let libtorch_error = libtorch::ensure(&Env::from_process(repo)).err();
    if selected.is_empty() {
        return match libtorch_error {
            Some(e) => Err(e),
            None => Ok(ExitCode::SUCCESS),
        };
    }
    if let Some(e) = &libtorch_error {
        eprintln!("error: {e:#}");
    }
    let started = Instant::now();
    let root = datasets::data_root(repo);
    std::fs::create_dir_all(&root)?;
    let failed = datasets::ensure_all(&root, &selected, &mut Clients::new("python3"));
    let ok = selected.len() - failed.len();
    println!(
        "datasets: {ok} of {} verified in {:.1} s",
        selected.len(),
        started.elapsed().as_secs_f64()
    );
    match (failed.is_empty(), libtorch_error) {
        (true, None) => Ok(ExitCode::SUCCESS),
        (true, Some(_)) => bail!("libtorch is not set up (see above); the datasets are"),
        (false, _) => bail!(
            "{} of {} datasets failed: {}",
            failed.len(),
            selected.len(),
            failed.join(", ")
        ),
    }
}

fn data(repo: &std::path::Path, cmd: DataCmd) -> Result<ExitCode> {
    let root = datasets::data_root(repo);
    match cmd {
        DataCmd::List => {
            let manifest = Manifest::load(&datasets::manifest_path(repo))?;
            print!(
                "{}",
                datasets::format_rows(&datasets::list(&root, &manifest))
            );
        }
        DataCmd::Verify { names } => {
            let manifest = Manifest::load(&datasets::manifest_path(repo))?;
            let selected = match names.as_deref() {
                Some(spec) => manifest.select(spec)?,
                None => manifest
                    .datasets
                    .iter()
                    .filter(|d| datasets::state(&root, d) != State::NotFetched)
                    .collect(),
            };
            if selected.is_empty() {
                println!("no dataset is fetched; `cargo xtask setup --data all` fetches them");
            }
            let mut failed = Vec::new();
            for (name, outcome) in datasets::verify_selected(&root, &selected) {
                match outcome {
                    Verification::Verified(n) => println!("{name}: {n} files verified"),
                    Verification::NotFetched => println!(
                        "{name}: not fetched (`cargo xtask setup --data {name}` fetches it)"
                    ),
                    Verification::Failed(why) => {
                        eprintln!("error: {why}");
                        failed.push(name);
                    }
                }
            }
            if !failed.is_empty() {
                bail!("verification failed for: {}", failed.join(", "));
            }
        }
        DataCmd::Path { name } => {
            let manifest = Manifest::load(&datasets::manifest_path(repo))?;
            if manifest.get(&name).is_none() {
                bail!(
                    "unknown dataset {name:?}; the manifest has: {}",
                    manifest.names().join(", ")
                );
            }
            println!("{}", datasets::dataset_dir(repo, &name).display());
        }
        DataCmd::Hash { name } => {
            let manifest = Manifest::load_unchecked(&datasets::manifest_path(repo))?;
            let Some(ds) = manifest.get(&name) else {
                bail!("unknown dataset {name:?}")
            };
            std::fs::create_dir_all(&root)?;
            print!(
                "{}",
                datasets::hash(&root, ds, &mut Clients::new("python3"))?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_arguments_pass_through_to_cargo() {
        let Ok(Cmd::Test { args }) =
            parse(&["test", "--", "-p", "diffuse-core", "--", "--nocapture"])
        else {
            panic!("test did not parse")
        };
        assert_eq!(args, ["-p", "diffuse-core", "--", "--nocapture"]);
        let Ok(Cmd::Test { args }) = parse(&["test", "--release"]) else {
            panic!("test did not parse")
        };
        assert_eq!(args, ["--release"]);
        let Ok(Cmd::Test { args }) = parse(&["test"]) else {
            panic!("test did not parse")
        };
        assert!(args.is_empty());
    }

    #[test]
    fn bench_and_setup_arguments() {
        let Ok(Cmd::Bench { name, device }) = parse(&["bench", "matmul", "--device", "cuda"])
        else {
            panic!("bench did not parse")
        };
        assert_eq!((name.as_deref(), device.as_str()), (Some("matmul"), "cuda"));
        let Ok(Cmd::Bench { name, device }) = parse(&["bench"]) else {
            panic!("bench did not parse")
        };
        assert_eq!((name, device.as_str()), (None, "cpu"));
        let Ok(Cmd::Setup { data }) = parse(&["setup", "--data", "mnist,speech"]) else {
            panic!("setup did not parse")
        };
        assert_eq!(data.as_deref(), Some("mnist,speech"));
    }

    #[test]
    fn mistakes_are_usage_errors() {
        assert!(parse(&["frob"]).is_err());
        assert!(parse(&["setup", "--frob"]).is_err());
        assert!(parse(&["bench", "--device", "tpu"]).is_err());
        assert!(parse(&["data"]).is_err());
    }
}
