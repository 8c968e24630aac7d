//! The `diffuse` binary: parse arguments, set up logging, run a command, report errors in one line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use diffuse_cli::{doctor, init_logging, inspect, report};
use std::path::PathBuf;

/// Train diffusion models and sample images, audio and text with them, on libtorch.
#[derive(Parser)]
#[command(name = "diffuse", version, about, long_about = None)]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Versions, threads, CUDA/cuDNN and a timed matmul on every device.
    Doctor {
        /// Check and time only this device: auto, cpu, cuda or cuda:N.
        #[arg(long)]
        device: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the tensors (name, dtype, shape), parameter count and metadata of a safetensors file.
    Inspect {
        /// The .safetensors file.
        file: PathBuf,
        /// Print the listing as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor { device, json } => doctor::run(device.as_deref(), json),
        Command::Inspect { file, json } => inspect::run(&file, json),
    }
}

fn main() -> std::process::ExitCode {
    diffuse_tensor::runtime::tune_allocator();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    report(run(cli))
}
