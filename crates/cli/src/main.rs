//! The `diffuse` binary: parse arguments, set up logging, run a command, report errors in one line.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use diffuse_cli::{audio, counts, doctor, fid, image, init_logging, inspect, launch, report, text};
use std::path::PathBuf;

/// Train diffusion models and sample images, audio, text and count vectors with them, on libtorch.
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
    /// Train a model.
    #[command(subcommand)]
    Train(Box<TrainCommand>),
    /// Build a tokenizer.json from a corpus: character level, or byte-level BPE.
    TrainTokenizer(text::TrainTokenizerArgs),
    /// Generate samples from a trained model.
    #[command(subcommand)]
    Sample(SampleCommand),
    /// Fill the masked part of an image (replacement or RePaint) or edit one (SDEdit); fill a gap in a recording.
    #[command(subcommand)]
    Inpaint(InpaintCommand),
    /// Run a training command as N data-parallel processes on this machine (torchrun's variables;
    /// `torchrun --nproc-per-node N --no-python diffuse train ...` works too).
    Launch(launch::LaunchArgs),
    /// Measure a model: bits/dim, Fréchet distance, bits/char, log-mel distance.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Train an image diffusion model (UNet2d) on MNIST, Fashion-MNIST or a folder of images.
    Image(Box<image::TrainImageArgs>),
    /// Train the small classifier: the image one whose features `eval image --metric fid` compares, or the audio judge `eval audio` uses.
    Classifier(fid::TrainClassifierArgs),
    /// Train a text model (MDLM, D3PM absorbing/uniform, or the autoregressive baseline).
    Text(Box<text::TrainTextArgs>),
    /// Train an audio model (DiffWave-style or UNet1d) on speech, drums or a folder of clips.
    Audio(Box<audio::TrainAudioArgs>),
    /// Train a count model (JUMP / Blackout count diffusion) on a CSV or .npy table of counts.
    Counts(Box<counts::TrainCountsArgs>),
}

#[derive(Subcommand)]
enum SampleCommand {
    /// Sample images into a grid picture, a folder and/or raw floats.
    Image(image::SampleImageArgs),
    /// Sample text: unconditionally, continuing --prompt, or filling the gaps of --infill.
    Text(text::SampleTextArgs),
    /// Sample audio clips into WAV files (and spectrogram pictures).
    Audio(audio::SampleAudioArgs),
    /// Sample count vectors into a CSV/TSV/.npy table (optionally with some columns given).
    Counts(counts::SampleCountsArgs),
}

#[derive(Subcommand)]
enum InpaintCommand {
    /// Inpaint or edit an image with an image model.
    Image(image::InpaintImageArgs),
    /// Fill a gap (START:END seconds) in a recording with an audio model.
    Audio(audio::InpaintAudioArgs),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Bits/dim on the test split, or the classifier-feature Fréchet distance of samples.
    Image(image::EvalImageArgs),
    /// Bits per character on held-out text (an upper bound for diffusion models).
    Text(text::EvalTextArgs),
    /// Log-mel Fréchet distance of generated clips to held-out ones, between two bounds.
    Audio(audio::EvalAudioArgs),
    /// Earth mover's distance of generated count columns to held-out data, and bits/dim.
    Counts(counts::EvalCountsArgs),
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor { device, json } => doctor::run(device.as_deref(), json),
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Train(train) => match *train {
            TrainCommand::Image(args) => image::train(*args),
            TrainCommand::Classifier(args) => fid::train(args),
            TrainCommand::Text(args) => text::train(*args),
            TrainCommand::Audio(args) => audio::train(*args),
            TrainCommand::Counts(args) => counts::train(*args),
        },
        Command::TrainTokenizer(args) => text::train_tokenizer(args),
        Command::Sample(SampleCommand::Image(args)) => image::sample(args),
        Command::Sample(SampleCommand::Text(args)) => text::sample(args),
        Command::Sample(SampleCommand::Audio(args)) => audio::sample(args),
        Command::Sample(SampleCommand::Counts(args)) => counts::sample(args),
        Command::Inpaint(InpaintCommand::Audio(args)) => audio::inpaint(args),
        Command::Inpaint(InpaintCommand::Image(args)) => image::inpaint(args),
        Command::Eval(EvalCommand::Image(args)) => image::eval(args),
        Command::Eval(EvalCommand::Text(args)) => text::eval(args),
        Command::Eval(EvalCommand::Audio(args)) => audio::eval(args),
        Command::Eval(EvalCommand::Counts(args)) => counts::eval(args),
        Command::Launch(args) => launch::launch(args, |command| {
            Cli::try_parse_from(
                std::iter::once("diffuse").chain(command.iter().map(String::as_str)),
            )
            .map(|_| ())
        }),
    }
}

/// libtorch reports a failed allocation by an error that tch turns into a panic: say it as the
/// one-line error it is (with what to change), not as a crash with a backtrace.
fn report_out_of_memory_as_an_error() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let lower = message.to_ascii_lowercase();
        if lower.contains("can't allocate memory") || lower.contains("out of memory") {
            let bytes = message
                .split("allocate ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .map(|n| format!(" (one allocation of {:.1} GB failed)", n / 1e9))
                .unwrap_or_default();
            eprintln!(
                "error: out of memory{bytes}; use a smaller --batch-size (or fewer samples, a \
                 smaller model or --resolution)"
            );
            std::process::exit(1);
        }
        default_hook(info);
    }));
}

fn main() -> std::process::ExitCode {
    report_out_of_memory_as_an_error();
    diffuse_tensor::runtime::tune_allocator();
    diffuse_tensor::runtime::default_sigpipe();
    let matches = Cli::command().get_matches();
    diffuse_cli::given::record(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.verbose);
    // Before any tensor work: OpenMP threads spinning beside a busy process make a command many
    // times slower, so take only the cores nobody else is using (see diffuse_tensor::runtime).
    let threads = diffuse_tensor::runtime::adapt_threads();
    tracing::info!("libtorch threads: {} ({threads})", tch::get_num_threads());
    report(run(cli))
}
