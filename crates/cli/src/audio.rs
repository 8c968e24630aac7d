//! The audio commands: `train audio`, `sample audio` (WAV files, optional spectrograms),
//! `inpaint audio` (fill a gap in a recording) and `eval audio` (the log-mel Fréchet distance
//! between bounds), thin over `diffuse-audio`.

use crate::class_key;
use crate::gaussian::{ObjectiveArgs, SamplerChoiceArgs};
use crate::model_kind::{check_model_kind, ModelKind};
use crate::run_dir::{
    check_dir_target, check_file_target, device, parent_folder, step_bar, LoopArgs, LoopFlags,
    TrainingCommand,
};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use diffuse_audio::clip::MAX_SAMPLE_RATE;
use diffuse_audio::data::{
    AudioDataConfig, AudioDataset, Holdout, Normalize, Split, Trim, DATASET_NAMES,
};
use diffuse_audio::diffwave::DiffWaveConfig;
use diffuse_audio::envelope::{decay_envelope, envelope_report};
use diffuse_audio::eval::{judge_report, log_mel_report, split_held_out};
use diffuse_audio::features::save_spectrogram_png;
use diffuse_audio::judge::AudioJudge;
use diffuse_audio::network::AudioNetworkConfig;
use diffuse_audio::pipeline::{AudioPipeline, AudioSampleOptions};
use diffuse_audio::train::{
    check_config, default_clip_frames, default_holdout, default_sample_rate, load_dataset,
    read_run_config, recipe_network, train_audio_model, AudioTrainConfig, DataScale, RUN_CONFIG,
};
use diffuse_audio::wav::{read_audio_exact, write_wav, write_wav_exact, SampleFormat};
use diffuse_core::editing::Resampling;
use diffuse_tensor::atomic::temp_path_for;
use diffuse_tensor::data::recorded_data_path;
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::plot::{save_confusion_matrix, save_line_plot, LineSeries};
use diffuse_tensor::progress::progress_bar;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// `diffuse train audio`.
#[derive(Args, Debug)]
pub struct TrainAudioArgs {
    /// Dataset: speech, drums, a folder of WAV/FLAC/AIFF files (recursive) or one file (with --resume: replaces the run's data).
    #[arg(long)]
    pub data: Option<String>,
    /// Run directory (checkpoints, metrics, preview clips and spectrograms, the final model in RUN_DIR/model).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its run.json settings apply; --steps may extend it).
    #[arg(long)]
    pub resume: bool,
    /// Sample rate of the model in Hz (default: 8000 for speech, 16000 otherwise); audio is resampled to it.
    #[arg(long)]
    pub sample_rate: Option<u32>,
    /// 1 (mono) or 2 (stereo).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Length of the training clips in seconds (longer files are cut, shorter ones padded with silence; default: 0.512 for drums, 1.024 otherwise, rounded up to a length the network takes whole).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Loudness normalisation: peak (to 0.95), peak:LEVEL, rms:DBFS or none.
    #[arg(long, default_value = "peak")]
    pub normalize: String,
    /// Keep leading silence (by default clips start where the sound does).
    #[arg(long)]
    pub keep_silence: bool,
    /// Clips start where the sound first comes within DB dB of the clip's own peak (default -40).
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    pub trim_db: Option<f32>,
    /// Held-out files: every (every k-th file, --val-fraction of them) or kits:A,B (whole kits or top-level folders; default for drums: kits:BJA_Pacific,Audiophob, else every).
    #[arg(long)]
    pub holdout: Option<String>,
    /// Fraction of the files held out for validation (`eval audio` uses them) with --holdout every.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// unet1d (the default: five levels of 16 to 128 channels, attention in the two coarsest) or diffwave (dilated residual convolutions).
    #[arg(long)]
    pub network: Option<String>,
    /// A network config.json to start from (its channels are filled from the data).
    #[arg(long)]
    pub network_config: Option<PathBuf>,
    /// DiffWave: residual channels.
    #[arg(long)]
    pub residual_channels: Option<i64>,
    /// DiffWave: residual layers.
    #[arg(long)]
    pub residual_layers: Option<i64>,
    /// DiffWave: the dilation doubles for this many layers, then starts again at 1.
    #[arg(long)]
    pub dilation_cycle: Option<i64>,
    /// UNet1d: channels per level, e.g. 32,64,96,128.
    #[arg(long, value_delimiter = ',')]
    pub block_out_channels: Option<Vec<i64>>,
    /// UNet1d: downsampling factor between levels, e.g. 4,4,4 (one fewer than the levels).
    #[arg(long, value_delimiter = ',')]
    pub down_factors: Option<Vec<i64>>,
    /// UNet1d: residual blocks per level.
    #[arg(long)]
    pub layers_per_block: Option<i64>,
    /// UNet1d: self-attention in the middle block (on/off).
    #[arg(long)]
    pub attention: Option<bool>,
    /// UNet1d: dropout in the residual blocks.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// UNet1d: self-attention in the down and up blocks of these levels (0 = the finest), e.g. 3,4.
    #[arg(long, value_delimiter = ',')]
    pub attention_levels: Option<Vec<usize>>,
    /// Give the network where in the clip each sample lies (an input channel counting 0 to 1 over the training length); off by default (the recipe's UNet sees the whole clip and placed the decay as well without it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub position_channel: Option<bool>,
    /// Condition on the data's classes (drum kits' instruments, or one subfolder per class), for `sample audio --class`.
    #[arg(long)]
    pub class_conditional: bool,
    /// Fraction of training labels dropped to the null class (for --guidance).
    #[arg(long, default_value_t = 0.1)]
    pub label_dropout: f64,
    /// Scale of the normalised training clips: std:S (to a standard deviation of S), a factor, or none.
    #[arg(long, default_value = "std:0.5")]
    pub data_scale: String,
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Optimiser steps (default 1000; with --resume, extends the run when larger).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 4e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// EMA decay ceiling (0 = no EMA).
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Write preview clips (WAV + spectrogram) every N steps (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    #[arg(long, default_value_t = 4)]
    pub sample_num: usize,
    /// Sampler of the previews (diffwave-fast suits only DiffWave's own linear schedule).
    #[arg(long, default_value = "ddim")]
    pub sample_sampler: String,
    /// Steps of the preview sampler (default: its own).
    #[arg(long)]
    pub sample_steps: Option<usize>,
    #[command(flatten)]
    pub train_loop: LoopArgs,
}

/// The longest training clip, in seconds: the same hour `sample audio --seconds` allows.
const MAX_CLIP_SECONDS: f64 = 3600.0;

/// A fresh run's config from the flags, every value checked with its flag's name before any
/// work (nothing is read or written here).
fn build_config(args: &TrainAudioArgs) -> Result<AudioTrainConfig> {
    let given = args.data.as_deref().ok_or_else(|| {
        anyhow!("--data: required (speech, drums, a folder of audio files or one file)")
    })?;
    // An existing path is recorded absolute, so --resume and `eval audio` find it from any
    // folder; a dataset name stays a name.
    let data = recorded_data_path(given, &DATASET_NAMES);
    let sample_rate = args
        .sample_rate
        .unwrap_or_else(|| default_sample_rate(&data));
    if sample_rate == 0 || sample_rate > MAX_SAMPLE_RATE {
        bail!(
            "--sample-rate: expected a number of samples per second from 1 to {MAX_SAMPLE_RATE}, got {sample_rate}"
        );
    }
    if !(1..=2).contains(&args.channels) {
        bail!(
            "--channels: expected 1 (mono) or 2 (stereo), got {}",
            args.channels
        );
    }
    if let Some(seconds) = args.seconds {
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_CLIP_SECONDS) {
            bail!(
                "--seconds: must be a positive length of at most {MAX_CLIP_SECONDS} (an hour), got {seconds}"
            );
        }
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!(
            "--val-fraction: must lie in [0, 1), got {}",
            args.val_fraction
        );
    }
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    let normalize: Normalize = args
        .normalize
        .parse()
        .map_err(|e| anyhow!("--normalize: {e}"))?;
    let trim_silence = match args.trim_db {
        Some(_) if args.keep_silence => {
            bail!("--trim-db: says where to cut leading silence, which --keep-silence keeps; give one of them")
        }
        Some(db) if !(db.is_finite() && db < 0.0) => {
            bail!("--trim-db: expected a level in dB below each clip's peak (below 0, e.g. -40), got {db}")
        }
        Some(db) => Some(Trim::RelativeDb(db)),
        None if args.keep_silence => None,
        None => AudioDataConfig::default().trim_silence,
    };
    let holdout = match &args.holdout {
        Some(text) => {
            let holdout: Holdout = text.parse().map_err(|e| anyhow!("--holdout: {e}"))?;
            if holdout != Holdout::EveryKth && crate::given::given("val_fraction") {
                bail!("--val-fraction: sets how many files --holdout every holds out; {text} holds out whole kits (drop one of them)");
            }
            holdout
        }
        // A typed fraction asks for the every-k-th split, whatever the dataset's default.
        None if crate::given::given("val_fraction") => Holdout::EveryKth,
        None => default_holdout(&data),
    };
    let mut audio = AudioDataConfig {
        sample_rate,
        channels: args.channels,
        clip_frames: 1,
        normalize,
        trim_silence,
        validation_fraction: args.val_fraction,
        holdout,
    };
    let chosen = match args.network.as_deref().unwrap_or("unet1d") {
        "diffwave" => AudioNetworkConfig::DiffWave(DiffWaveConfig::default()),
        "unet1d" => recipe_network(),
        other => bail!("--network: expected unet1d or diffwave, got '{other}'"),
    };
    let mut network = match &args.network_config {
        Some(path) => {
            let file = AudioNetworkConfig::from_json_file(path)
                .map_err(|e| anyhow!("--network-config: {e}"))?;
            // The file decides the network; a typed --network naming another one would be
            // silently ignored, so it is refused (the default, not typed, is no choice at all).
            if args.network.is_some() && file.name() != chosen.name() {
                bail!(
                    "--network: {} is a {} network config, not {}; drop --network (the file decides) or give a {} config file",
                    path.display(),
                    file.name(),
                    chosen.name(),
                    chosen.name()
                );
            }
            file
        }
        None => chosen,
    };
    let diffwave_flags = args.residual_channels.is_some()
        || args.residual_layers.is_some()
        || args.dilation_cycle.is_some();
    let unet_flags = args.block_out_channels.is_some()
        || args.down_factors.is_some()
        || args.layers_per_block.is_some()
        || args.attention.is_some()
        || args.dropout.is_some()
        || args.attention_levels.is_some();
    match &mut network {
        AudioNetworkConfig::DiffWave(c) => {
            if unet_flags {
                bail!("--block-out-channels, --down-factors, --layers-per-block, --attention, --attention-levels and --dropout are UNet1d flags; this run's network is diffwave (give --network unet1d)");
            }
            if let Some(v) = args.residual_channels {
                c.residual_channels = v;
            }
            if let Some(v) = args.residual_layers {
                c.residual_layers = v;
            }
            if let Some(v) = args.dilation_cycle {
                c.dilation_cycle = v;
            }
        }
        AudioNetworkConfig::Unet1d(c) => {
            if diffwave_flags {
                bail!("--residual-channels, --residual-layers and --dilation-cycle are DiffWave flags; this run's network is unet1d");
            }
            if let Some(v) = &args.block_out_channels {
                c.block_out_channels = v.clone();
                // Keep x4 between levels unless told otherwise.
                if args.down_factors.is_none() {
                    c.down_factors = vec![4; v.len().saturating_sub(1)];
                }
                // Keep the recipe's attention in the two coarsest levels (with three or more).
                let n = v.len();
                c.attention_levels = (0..n).map(|l| n >= 3 && l + 2 >= n).collect();
                // Narrow networks get one attention head as wide as the last level.
                if let Some(&last) = v.last() {
                    if last > 0 && last % c.attention_head_dim != 0 {
                        c.attention_head_dim = last;
                    }
                }
            }
            if let Some(v) = &args.down_factors {
                c.down_factors = v.clone();
            }
            if let Some(v) = args.layers_per_block {
                c.layers_per_block = v;
            }
            if let Some(v) = args.attention {
                c.attention = v;
            }
            if let Some(v) = args.dropout {
                if !(0.0..1.0).contains(&v) {
                    bail!("--dropout: must lie in [0, 1), got {v}");
                }
                c.dropout = v;
            }
            if let Some(levels) = &args.attention_levels {
                let n = c.block_out_channels.len();
                if let Some(bad) = levels.iter().find(|&&l| l >= n) {
                    bail!("--attention-levels: level {bad} does not exist (the network has levels 0..{})", n - 1);
                }
                c.attention_levels = (0..n).map(|l| levels.contains(&l)).collect();
            }
        }
    }
    audio.clip_frames = match args.seconds {
        Some(seconds) => (seconds * sample_rate as f64).round().max(1.0) as usize,
        None => default_clip_frames(&data, sample_rate, &network),
    };
    // Off unless asked for (a --network-config file says for itself); sized to the clips.
    let position = match (args.position_channel, &args.network_config) {
        (Some(on), _) => on,
        (None, Some(_)) => {
            network.position_frames().is_some() || network.position_channel_unsized()
        }
        (None, None) => false,
    };
    network.set_position_channel(position.then_some(audio.clip_frames as i64));
    if !(0.0..1.0).contains(&args.label_dropout) {
        bail!(
            "--label-dropout: must lie in [0, 1), got {}",
            args.label_dropout
        );
    }
    if crate::given::given("label_dropout") && !args.class_conditional {
        bail!("--label-dropout: drops class labels, which only --class-conditional training has");
    }
    let data_scale = parse_data_scale(&args.data_scale)?;
    let mut config = AudioTrainConfig {
        data,
        audio,
        network,
        class_conditional: args.class_conditional,
        label_dropout: args.label_dropout,
        data_scale,
        batch_size: args.batch_size,
        sample_every: args.sample_every,
        sample_num: args.sample_num,
        sample_sampler: args.sample_sampler.clone(),
        sample_steps: args.sample_steps,
        ..AudioTrainConfig::default()
    };
    args.objective
        .apply(&mut config.scheduler, &mut config.objective)?;
    LoopFlags {
        shared: &args.train_loop,
        steps: args.steps.unwrap_or(1000),
        lr: args.lr,
        weight_decay: args.weight_decay,
        ema: (args.ema_decay > 0.0).then(|| EmaConfig {
            decay: args.ema_decay,
            ..EmaConfig::default()
        }),
    }
    .apply(&mut config.train)?;
    // What is left to check (the network as the flags shaped it, the preview sampler) names
    // its flags too: the library says --sample-sampler / --sample-steps itself.
    check_config(&config).map_err(|e| network_error(args, &e.to_string()))?;
    Ok(config)
}

/// `--data-scale`: std:S, a factor, or none.
fn parse_data_scale(text: &str) -> Result<DataScale> {
    let bad = || {
        anyhow!("--data-scale: expected std:S (a target standard deviation), a factor or none, got '{text}'")
    };
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if text == "none" {
        return Ok(DataScale::Fixed(1.0));
    }
    if let Some(std) = text.strip_prefix("std:") {
        let v: f64 = std.parse().map_err(|_| bad())?;
        return if positive(v) {
            Ok(DataScale::Std(v))
        } else {
            Err(bad())
        };
    }
    let v: f64 = text.parse().map_err(|_| bad())?;
    if positive(v) {
        Ok(DataScale::Fixed(v))
    } else {
        Err(bad())
    }
}

/// A network config error with the flag that caused it: the field it names, when a flag set
/// that field, else the --network-config file or the --network choice.
fn network_error(args: &TrainAudioArgs, message: &str) -> anyhow::Error {
    if message.starts_with("--") {
        return anyhow!("{message}");
    }
    let flags = [
        ("down factor", "--down-factors", args.down_factors.is_some()),
        (
            "down_factors",
            "--down-factors",
            args.down_factors.is_some(),
        ),
        (
            "block_out_channels",
            "--block-out-channels",
            args.block_out_channels.is_some(),
        ),
        (
            "layers_per_block",
            "--layers-per-block",
            args.layers_per_block.is_some(),
        ),
        ("dropout", "--dropout", args.dropout.is_some()),
        (
            "residual_channels",
            "--residual-channels",
            args.residual_channels.is_some(),
        ),
        (
            "residual_layers",
            "--residual-layers",
            args.residual_layers.is_some(),
        ),
        (
            "dilation_cycle",
            "--dilation-cycle",
            args.dilation_cycle.is_some(),
        ),
    ];
    if let Some((_, flag, _)) = flags
        .iter()
        .find(|(field, _, given)| *given && message.contains(field))
    {
        return anyhow!("{flag}: {message}");
    }
    match &args.network_config {
        Some(path) => anyhow!("--network-config: {}: {message}", path.display()),
        None => anyhow!(
            "--network {}: {message}",
            args.network.as_deref().unwrap_or("unet1d")
        ),
    }
}

/// A resumed run's config: run.json, with --data (when given) replacing its data, checked as a
/// fresh run's is (errors name run.json, where the values come from).
fn resume_config(run_dir: &Path, data: Option<&str>) -> Result<AudioTrainConfig> {
    let mut config = read_run_config(run_dir)?;
    match data {
        Some(given) => {
            let new = recorded_data_path(given, &DATASET_NAMES);
            if new != config.data {
                tracing::info!(
                    "--data: training on {new} from here on (was {})",
                    config.data
                );
            }
            config.data = new;
        }
        // A relative path that exists from here is what will be read, so it is recorded as
        // such (runs from before paths were recorded absolute).
        None => config.data = recorded_data_path(&config.data, &DATASET_NAMES),
    }
    check_config(&config).map_err(|e| anyhow!("{}: {e}", run_dir.join(RUN_CONFIG).display()))?;
    Ok(config)
}

pub fn train(args: TrainAudioArgs) -> Result<()> {
    TrainingCommand {
        modality: "audio",
        out: &args.out,
        resume: args.resume,
        steps: args.steps,
        run_config: RUN_CONFIG,
        shared: &args.train_loop,
        train_config: |c: &mut AudioTrainConfig| &mut c.train,
    }
    .run(
        |dir: &Path| resume_config(dir, args.data.as_deref()),
        || build_config(&args),
        |_| Ok(()),
        |config, device, resume, stop_after| {
            // Every other setting was checked with its own flag already; only reading the data
            // is the data's fault (its errors name the file or folder).
            let data = load_dataset(config, Split::Train).map_err(|e| {
                let message = e.to_string();
                // The held-out kits are --holdout's (or run.json's) to fix, not the data's.
                if let Some(why) = message.strip_prefix("holdout: ") {
                    return if args.resume {
                        anyhow!("{}: holdout: {why}", args.out.join(RUN_CONFIG).display())
                    } else if crate::given::given("holdout") {
                        anyhow!("--holdout: {why}")
                    } else {
                        anyhow!(
                            "--holdout: {why}; {} is the default for {} (give --holdout every or kits:NAME,NAME)",
                            config.audio.holdout,
                            config.data
                        )
                    };
                }
                match &args.data {
                    Some(_) => anyhow!("--data: {message}"),
                    None => anyhow!(
                        "{message} (the data {} names; --data with --resume replaces it)",
                        args.out.join(RUN_CONFIG).display()
                    ),
                }
            })?;
            if let Some(counts) = data.class_counts() {
                if diffuse_tensor::dist::is_main() {
                    eprintln!("training on {} clips; classes: {counts}", data.len());
                }
            }
            train_audio_model(config, Some(data), &args.out, device, resume, stop_after)
                .map_err(|e| anyhow!("{e}"))
        },
    )
}

/// Flags shared by the commands that run the model.
#[derive(Args, Clone, Debug)]
pub struct AudioModelArgs {
    /// Model directory (or a training run directory).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub choice: SamplerChoiceArgs,
    /// Seed of the random generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Class of a class-conditional model, by name (kick, snare, hi-hat, ...) or number (default: none, the null class).
    #[arg(long)]
    pub class: Option<String>,
    /// Classifier-free guidance scale (1 = plain conditional sampling; needs --class).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub guidance: f64,
    /// Guidance rescale in [0, 1] (Lin et al. 2023; 0 = off).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub guidance_rescale: f64,
}

impl AudioModelArgs {
    /// The model and the sampling options (sampler settings checked before any work).
    fn load(
        &self,
        num: usize,
        seconds: Option<f64>,
    ) -> Result<(AudioPipeline, AudioSampleOptions)> {
        let choice = self.choice.choice()?;
        let device = device(&self.device)?;
        let pipeline =
            AudioPipeline::load(&self.model, device).map_err(|e| anyhow!("--model: {e}"))?;
        pipeline.sampler(&choice)?;
        let space = pipeline.class_space();
        let class = match &self.class {
            Some(text) => Some(space.resolve(text).map_err(|e| anyhow!("{e}"))?),
            None => None,
        };
        // Checked here, before any output is prepared: a refusal writes nothing.
        space
            .guided(
                class,
                self.guidance,
                self.guidance_rescale,
                1,
                tch::Device::Cpu,
            )
            .map_err(|e| anyhow!("{e}"))?;
        let options = AudioSampleOptions {
            num,
            seconds,
            sampler: choice,
            seed: Some(self.seed),
            batch_size: None,
            class,
            guidance: self.guidance,
            guidance_rescale: self.guidance_rescale,
        };
        pipeline.frames_for(seconds)?;
        Ok((pipeline, options))
    }
}

/// `diffuse sample audio`.
#[derive(Args, Debug)]
pub struct SampleAudioArgs {
    #[command(flatten)]
    pub model: AudioModelArgs,
    /// Number of clips.
    #[arg(long, default_value_t = 1)]
    pub num: usize,
    /// Length of each clip in seconds (default: the training clip length).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Output WAV file; with --num > 1, NAME-0.wav, NAME-1.wav, ...
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the clips as DIR/sample-NNNNN.wav instead.
    #[arg(long, conflicts_with = "out")]
    pub out_dir: Option<PathBuf>,
    /// Also write a spectrogram picture (.png) beside every clip.
    #[arg(long)]
    pub spectrogram: bool,
    /// WAV sample format: int16, int24, int32, float32 or int8.
    #[arg(long, default_value = "int16")]
    pub format: String,
    /// Clips per network call (default: all at once). Only memory depends on it: with the same --seed, every clip comes out the same at any batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
}

fn check_wav_path(path: &Path, flag: &str) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "wav" {
        bail!("{flag}: {}: expected a .wav file name", path.display());
    }
    Ok(())
}

/// Whether `a` and `b` are the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The files one command writes. They are checked (and their folders made) before any long
/// work; each is written to a temporary file beside its target, and only once all are written
/// are they renamed into place, so a failure anywhere leaves none of them, nor the folders
/// made for them, and the files a user had there stay as they were.
#[derive(Default)]
struct Outputs {
    /// Folders this command made, outermost first.
    created: Vec<PathBuf>,
    /// (temporary, target) of every file written so far.
    written: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Outputs {
    /// Check every `(file, flag)` target (none may be `input`, which would be lost), then make
    /// the missing folders and make sure each folder takes files.
    fn prepare(targets: &[(PathBuf, &str)], input: Option<&Path>) -> Result<Self> {
        for (path, flag) in targets {
            check_file_target(path, flag)?;
            if let Some(input) = input.filter(|i| same_file(path, i)) {
                bail!(
                    "{flag}: {} is the --input recording, which writing there would lose; choose another file name",
                    input.display()
                );
            }
        }
        let mut outputs = Outputs::default();
        for (path, flag) in targets {
            let folder = parent_folder(path);
            let missing: Vec<&Path> = folder
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .take_while(|a| !a.exists())
                .collect();
            for dir in missing.into_iter().rev() {
                std::fs::create_dir(dir).map_err(|e| {
                    anyhow!("{flag}: cannot create the folder {}: {e}", dir.display())
                })?;
                outputs.created.push(dir.to_path_buf());
            }
            // A folder that refuses files (read-only, a full disk) is found now, not after
            // minutes of sampling.
            let probe = temp_path_for(path);
            std::fs::File::create(&probe)
                .map_err(|e| anyhow!("{flag}: cannot write in {}: {e}", folder.display()))?;
            let _ = std::fs::remove_file(&probe);
        }
        Ok(outputs)
    }

    /// Write `target`'s contents to its temporary file with `write`.
    fn write(
        &mut self,
        target: &Path,
        write: impl FnOnce(&Path) -> diffuse_tensor::Result<()>,
    ) -> Result<()> {
        let temp = temp_path_for(target);
        // Recorded first, so a half-written temporary is removed too.
        self.written.push((temp.clone(), target.to_path_buf()));
        write(&temp)?;
        Ok(())
    }

    /// Move every written file into place.
    fn commit(mut self) -> Result<()> {
        self.committed = true;
        let written = std::mem::take(&mut self.written);
        for (i, (temp, target)) in written.iter().enumerate() {
            if let Err(e) = std::fs::rename(temp, target) {
                for (rest, _) in &written[i..] {
                    let _ = std::fs::remove_file(rest);
                }
                bail!("{}: {e}", target.display());
            }
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for (temp, _) in &self.written {
            let _ = std::fs::remove_file(temp);
        }
        // remove_dir only takes empty folders: anything else put there stays.
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The line that says a clip (and its spectrogram) was written.
fn report_written(path: &Path, seconds: f64, sample_rate: u32, spectrogram: bool) {
    if spectrogram {
        println!(
            "wrote {} ({seconds:.2} s at {sample_rate} Hz) and {}",
            path.display(),
            path.with_extension("png").display()
        );
    } else {
        println!(
            "wrote {} ({seconds:.2} s at {sample_rate} Hz)",
            path.display()
        );
    }
}

/// The output files of `wavs`, with their spectrogram pictures when asked.
fn output_targets<'a>(wavs: &[(PathBuf, &'a str)], spectrogram: bool) -> Vec<(PathBuf, &'a str)> {
    let mut targets = wavs.to_vec();
    if spectrogram {
        targets.extend(
            wavs.iter()
                .map(|(wav, _)| (wav.with_extension("png"), "--spectrogram")),
        );
    }
    targets
}

pub fn sample(args: SampleAudioArgs) -> Result<()> {
    // The flags first, then the model, then the outputs: a command refused for any of them
    // leaves nothing on disk, and nothing is sampled that could not be written.
    let wavs: Vec<(PathBuf, &str)> = match (&args.out, &args.out_dir) {
        (Some(out), None) => {
            check_wav_path(out, "--out")?;
            if args.num == 1 {
                vec![(out.clone(), "--out")]
            } else {
                let stem = out.file_stem().unwrap_or_default().to_string_lossy();
                (0..args.num)
                    .map(|i| (out.with_file_name(format!("{stem}-{i}.wav")), "--out"))
                    .collect()
            }
        }
        (None, Some(dir)) => {
            check_dir_target(dir, "--out-dir")?;
            (0..args.num)
                .map(|i| (dir.join(format!("sample-{i:05}.wav")), "--out-dir"))
                .collect()
        }
        _ => bail!("nothing to write: give --out CLIP.wav or --out-dir DIR"),
    };
    if args.num == 0 {
        bail!("--num: must be at least 1");
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size: must be at least 1");
    }
    let format: SampleFormat = args.format.parse().map_err(|e| anyhow!("--format: {e}"))?;
    check_model_kind(&args.model.model, ModelKind::Audio, "sample")?;
    let (pipeline, mut options) = args.model.load(args.num, args.seconds)?;
    options.batch_size = args.batch_size;
    let mut outputs = Outputs::prepare(&output_targets(&wavs, args.spectrogram), None)?;
    let started = Instant::now();
    let (bar, on_step) = step_bar("sample");
    let clips = pipeline.sample_clips(&options, on_step)?;
    bar.finish();
    for (clip, (path, _)) in clips.iter().zip(&wavs) {
        outputs.write(path, |temp| write_wav(temp, clip, format))?;
        if args.spectrogram {
            outputs.write(&path.with_extension("png"), |temp| {
                save_spectrogram_png(&clip.to_tensor(), clip.sample_rate, temp)
            })?;
        }
    }
    outputs.commit()?;
    for (clip, (path, _)) in clips.iter().zip(&wavs) {
        report_written(
            path,
            clip.duration_secs(),
            clip.sample_rate,
            args.spectrogram,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let audio: f64 = clips.iter().map(|c| c.duration_secs()).sum();
    tracing::info!(
        seconds,
        real_time_factor = audio / seconds,
        "sampled {}",
        crate::count_of(args.num as u64, "clip")
    );
    Ok(())
}

/// `diffuse inpaint audio`.
#[derive(Args, Debug)]
pub struct InpaintAudioArgs {
    #[command(flatten)]
    pub model: AudioModelArgs,
    /// The recording (WAV, FLAC or AIFF, any rate and channels: the output keeps them, and the gap is filled as loud as its surroundings).
    #[arg(long)]
    pub input: PathBuf,
    /// The part to regenerate, START:END in seconds (e.g. 0.5:0.8).
    #[arg(long)]
    pub gap: String,
    /// Output WAV file (the whole recording with the gap filled).
    #[arg(long)]
    pub out: PathBuf,
    /// RePaint: resample each jump this many times (1 = plain replacement).
    #[arg(long, default_value_t = 1)]
    pub resample: usize,
    /// RePaint: steps per jump back.
    #[arg(long, default_value_t = 10)]
    pub jump: usize,
    /// Also write a spectrogram picture (.png) beside the output.
    #[arg(long)]
    pub spectrogram: bool,
    /// WAV sample format: int16, int24, int32, float32 or int8 (default: the input's own, so the recording outside the gap comes back bit for bit; float32 for 64-bit float input).
    #[arg(long)]
    pub format: Option<String>,
}

/// Parse `START:END` seconds.
pub fn parse_gap(text: &str) -> Result<(f64, f64)> {
    let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    match text.split_once(':') {
        Some((a, b)) => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!("--gap: expected START:END in seconds (e.g. 0.5:0.8), got '{text}'"),
        },
        None => bail!("--gap: expected START:END in seconds (e.g. 0.5:0.8), got '{text}'"),
    }
}

pub fn inpaint(args: InpaintAudioArgs) -> Result<()> {
    check_wav_path(&args.out, "--out")?;
    let gap = parse_gap(&args.gap)?;
    let format: Option<SampleFormat> = args
        .format
        .as_deref()
        .map(|f| f.parse().map_err(|e| anyhow!("--format: {e}")))
        .transpose()?;
    if args.resample == 0 || args.jump == 0 {
        bail!("--resample and --jump must be at least 1");
    }
    // Exact samples (f64), so the recording outside the gap is written back bit for bit.
    let recording = read_audio_exact(&args.input).map_err(|e| anyhow!("--input: {e}"))?;
    check_model_kind(&args.model.model, ModelKind::Audio, "inpaint")?;
    let (pipeline, options) = args.model.load(1, None)?;
    // Converting to the model's rate and channels, and the gap, are checked before sampling.
    let clip = recording.to_clip();
    let conformed = pipeline
        .conform(&clip)
        .map_err(|e| anyhow!("--input: {}: {e}", args.input.display()))?;
    pipeline.gap_frames_of(&clip, conformed.frames(), gap)?;
    let format = format.unwrap_or_else(|| {
        recording
            .stored
            .and_then(|s| s.exact_wav_format())
            .unwrap_or(SampleFormat::Float32)
    });
    let wav = [(args.out.clone(), "--out")];
    let mut outputs = Outputs::prepare(&output_targets(&wav, args.spectrogram), Some(&args.input))?;
    let resampling = (args.resample > 1).then_some(Resampling {
        jump_length: args.jump,
        jump_n_sample: args.resample,
    });
    let bar = progress_bar(0, "inpaint", "step");
    let filled = pipeline.fill_gap_exact(&recording, gap, resampling, &options, |i| {
        bar.set_position(i as u64)
    })?;
    bar.finish();
    let filled = &filled[0];
    outputs.write(&args.out, |temp| write_wav_exact(temp, filled, format))?;
    if args.spectrogram {
        let clip = filled.to_clip();
        outputs.write(&args.out.with_extension("png"), |temp| {
            save_spectrogram_png(&clip.to_tensor(), clip.sample_rate, temp)
        })?;
    }
    outputs.commit()?;
    report_written(
        &args.out,
        filled.frames() as f64 / filled.sample_rate as f64,
        filled.sample_rate,
        args.spectrogram,
    );
    Ok(())
}

/// `diffuse eval audio`.
#[derive(Args, Debug)]
pub struct EvalAudioArgs {
    #[command(flatten)]
    pub model: AudioModelArgs,
    /// Held-out data: speech, drums, a folder or a file (default: the model's training dataset; its validation split; other data: every k-th file).
    #[arg(long)]
    pub data: Option<String>,
    /// Generated clips (default: as many as the second held-out set has; a class-conditional model shares them out over the classes as the held-out clips are).
    #[arg(long)]
    pub num: Option<usize>,
    /// Clips per network call (default: all at once). Only memory depends on it: with the same --seed, the generated clips and the distance are the same at any batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// The judge: a classifier directory from `diffuse train classifier` on audio (default: data/models/<dataset>-classifier when there is one; none skips it).
    #[arg(long)]
    pub judge: Option<String>,
    /// Classes to ask a class-conditional model for, comma-separated names or numbers (default: every class it knows except other; --class asks for one).
    #[arg(long)]
    pub classes: Option<String>,
    /// Folder to write the pictures into: envelope.png (decay envelopes) and, with a judge and classes, confusion.png.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The judge `eval audio` uses: `--judge DIR`, none for `--judge none`, else the dataset's
/// bundled one when it exists.
fn eval_judge(args: &EvalAudioArgs, data: &str, device: tch::Device) -> Result<Option<AudioJudge>> {
    match args.judge.as_deref() {
        Some("none") => Ok(None),
        Some(dir) => AudioJudge::load(Path::new(dir), device)
            .map(Some)
            .map_err(|e| anyhow!("--judge: {e}")),
        None => {
            let short = crate::fid::dataset_short_name(data);
            let dir = crate::fid::default_models_dir().join(format!("{short}-classifier"));
            if !dir.join(diffuse_tensor::classifier::INFO_FILE).is_file() {
                return Ok(None);
            }
            AudioJudge::load(&dir, device)
                .map(Some)
                .map_err(|e| anyhow!("{}: {e} (--judge none skips the judge)", dir.display()))
        }
    }
}

/// Rows of `clips` whose label is in `keep` (all when `keep` is `None`).
fn select_rows(clips: &Tensor, labels: &[i64], keep: &dyn Fn(i64) -> bool) -> (Tensor, Vec<i64>) {
    let idx: Vec<i64> = (0..labels.len() as i64)
        .filter(|&i| keep(labels[i as usize]))
        .collect();
    let kept = idx.iter().map(|&i| labels[i as usize]).collect();
    (clips.index_select(0, &Tensor::from_slice(&idx)), kept)
}

pub fn eval(args: EvalAudioArgs) -> Result<()> {
    check_model_kind(&args.model.model, ModelKind::Audio, "eval")?;
    // Without --class, a class-conditional model is asked for each class in turn, so the guidance
    // is checked per class below rather than against no class.
    let mut unguided = args.model.clone();
    if unguided.class.is_none() {
        unguided.guidance = 1.0;
        unguided.guidance_rescale = 0.0;
    }
    let (pipeline, mut options) = unguided.load(1, None)?;
    options.guidance = args.model.guidance;
    options.guidance_rescale = args.model.guidance_rescale;
    let info = pipeline.info.clone();
    let data = match args.data.clone().or(info.dataset.clone()) {
        Some(d) => d,
        None => bail!("--data: required (the model does not say what it was trained on)"),
    };
    let space = pipeline.class_space();
    if !space.class_embedded {
        for (flag, value, plain) in [
            ("--guidance", args.model.guidance, 1.0),
            ("--guidance-rescale", args.model.guidance_rescale, 0.0),
        ] {
            if value != plain {
                bail!("{flag}: this model is not class-conditioned");
            }
        }
    }
    // The classes to ask for, checked before any work.
    let requested: Option<Vec<i64>> = if !space.class_embedded {
        if args.classes.is_some() {
            bail!("--classes: this model is not class-conditioned");
        }
        None
    } else if let Some(c) = options.class {
        if args.classes.is_some() {
            bail!("--classes: give either --class or --classes");
        }
        Some(vec![c])
    } else {
        let list: Vec<i64> = match &args.classes {
            Some(text) => text
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    space
                        .resolve(t)
                        .map_err(|e| anyhow!("{}", e.to_string().replace("--class:", "--classes:")))
                })
                .collect::<Result<_>>()?,
            None => {
                let n = space.num_classes.unwrap_or(0);
                (0..n)
                    .filter(|&c| {
                        space
                            .class_names
                            .as_ref()
                            .and_then(|names| names.get(c as usize))
                            .is_none_or(|name| class_key(name) != "other")
                    })
                    .collect()
            }
        };
        if list.is_empty() {
            bail!("--classes: names no class");
        }
        for &c in &list {
            space
                .guided(
                    Some(c),
                    options.guidance,
                    options.guidance_rescale,
                    1,
                    tch::Device::Cpu,
                )
                .map_err(|e| anyhow!("{}", e.to_string().replace("--class:", "--classes:")))?;
        }
        Some(list)
    };
    let model_class_name = |c: i64| -> String {
        space
            .class_names
            .as_ref()
            .and_then(|n| n.get(c as usize).cloned())
            .unwrap_or_else(|| c.to_string())
    };
    if let Some(plots) = &args.plots {
        check_dir_target(plots, "--plots")?;
    }
    let judge = eval_judge(&args, &data, pipeline.device())?;
    let mut config = info.data.clone().unwrap_or_default();
    config.sample_rate = info.sample_rate;
    config.channels = info.channels;
    config.clip_frames = info.clip_frames;
    // Held-out kits are kits of the training data; other audio is held out every k-th file.
    if args.data.is_some() && args.data != info.dataset {
        config.holdout = Holdout::EveryKth;
    }
    let held_out = AudioDataset::load(
        &data,
        Split::Validation,
        &config,
        &AudioDataset::default_datasets_dir(),
    )
    .map_err(|e| match &args.data {
        Some(_) => anyhow!("--data: {e}"),
        None => anyhow!(
            "{e} (the model's training data, named in its diffuse.json; --data evaluates on other audio)"
        ),
    })?;
    // Held-out labels by class name (-1: none), so the real clips can be matched with the
    // requested classes and with the judge's.
    let held_names: Vec<Option<String>> = match (held_out.labels(), held_out.class_names()) {
        (Some(labels), Some(names)) => Vec::<i64>::try_from(labels)?
            .into_iter()
            .map(|l| (l >= 0).then(|| names[l as usize].clone()))
            .collect(),
        _ => vec![None; held_out.len()],
    };
    // A conditional evaluation compares with the held-out clips of the requested classes.
    let requested_keys: Option<Vec<String>> = requested
        .as_ref()
        .map(|r| r.iter().map(|&c| class_key(&model_class_name(c))).collect());
    let index_of_name: Vec<i64> = held_names
        .iter()
        .map(|n| match (n, &requested_keys) {
            (Some(n), Some(keys)) => keys
                .iter()
                .position(|k| *k == class_key(n))
                .map_or(-1, |p| p as i64),
            _ => -1,
        })
        .collect();
    // Held-out data whose classes are not the model's (other audio, class folders of other
    // names) is compared whole, as for an unconditional model.
    let labelled_held = index_of_name.iter().any(|&i| i >= 0);
    let (real, real_requested) = match &requested_keys {
        Some(_) if labelled_held => select_rows(held_out.clips(), &index_of_name, &|l| l >= 0),
        _ => (held_out.clips().shallow_clone(), index_of_name.clone()),
    };
    let real_names: Vec<Option<String>> = match &requested_keys {
        Some(_) if labelled_held => held_names
            .iter()
            .zip(&index_of_name)
            .filter(|(_, &i)| i >= 0)
            .map(|(n, _)| n.clone())
            .collect(),
        _ => held_names.clone(),
    };
    let (reference, second) = split_held_out(&real).map_err(|e| match &args.data {
        Some(_) => anyhow!("--data: {data}: {e} in its held-out split"),
        // Nothing was typed: say which clips these were and how to evaluate on others.
        None => anyhow!(
            "{e} in the held-out split of the model's training data {data} (named in its diffuse.json); give --data with other audio (speech, drums, a folder or a file) to evaluate on that"
        ),
    })?;
    let total = args.num.unwrap_or(second.size()[0] as usize);
    if total == 0 {
        bail!("--num: expected at least 1 clip");
    }
    options.batch_size = args.batch_size;
    let started = Instant::now();
    // Generate: one set, or per class in the held-out clips' proportions (at least one each).
    let (generated, generated_class) = match &requested {
        None => {
            options.num = total;
            let (bar, on_step) = step_bar("sample");
            let g = pipeline.sample(&options, on_step)?;
            bar.finish();
            (g, None)
        }
        Some(classes) => {
            let counts: Vec<usize> = classes
                .iter()
                .enumerate()
                .map(|(i, _)| real_requested.iter().filter(|&&r| r == i as i64).count())
                .collect();
            let sum: usize = counts.iter().sum();
            let mut parts = Vec::new();
            let mut labels = Vec::new();
            for (i, &c) in classes.iter().enumerate() {
                let n = if sum > 0 {
                    ((total * counts[i]) as f64 / sum as f64).round() as usize
                } else {
                    total.div_ceil(classes.len())
                }
                .max(1);
                options.num = n;
                options.class = Some(c);
                options.seed = Some(args.model.seed.wrapping_add(i as u64));
                let (bar, on_step) = step_bar(&format!("sample {}", model_class_name(c)));
                parts.push(pipeline.sample(&options, on_step)?);
                bar.finish();
                labels.extend(std::iter::repeat_n(i as i64, n));
            }
            (Tensor::cat(&parts, 0), Some(labels))
        }
    };
    let report = log_mel_report(
        &generated,
        &reference,
        &second,
        info.sample_rate,
        config_normalize(&info),
    )?;
    let segments = 8;
    let envelope = envelope_report(&real, &generated, segments)?;
    let envelope_floor = envelope_report(&reference, &second, segments)?;
    let noise = diffuse_audio::eval::white_noise_like(
        generated.size()[0].max(2),
        real.size()[1],
        real.size()[2],
        info.sample_rate,
        config_normalize(&info),
    )?;
    let envelope_noise = envelope_report(&real, &noise, segments)?;
    let judged = match &judge {
        None => None,
        Some(judge) => {
            let judge_index = |name: &str| {
                judge
                    .class_names()
                    .iter()
                    .position(|n| class_key(n) == class_key(name))
                    .map_or(-1, |p| p as i64)
            };
            let real_labels: Vec<i64> = real_names
                .iter()
                .map(|n| n.as_deref().map_or(-1, judge_index))
                .collect();
            // The same alternate split as the reference and second sets.
            let real_labels = Tensor::from_slice(&real_labels);
            let requested_judge = match (&requested, &generated_class) {
                (Some(classes), Some(per_clip)) => {
                    let map: Vec<i64> = classes
                        .iter()
                        .map(|&c| judge_index(&model_class_name(c)))
                        .collect();
                    if let Some(i) = map.iter().position(|&m| m < 0) {
                        bail!(
                            "--judge: the judge does not know the class '{}' (its classes: {})",
                            model_class_name(classes[i]),
                            judge.class_names().join(", ")
                        );
                    }
                    Some(Tensor::from_slice(
                        &per_clip
                            .iter()
                            .map(|&i| map[i as usize])
                            .collect::<Vec<_>>(),
                    ))
                }
                _ => None,
            };
            let (ref_idx, sec_idx) = split_held_out(&Tensor::arange(
                real.size()[0],
                (tch::Kind::Int64, tch::Device::Cpu),
            ))?;
            let labels = Tensor::cat(
                &[
                    real_labels.index_select(0, &ref_idx),
                    real_labels.index_select(0, &sec_idx),
                ],
                0,
            );
            Some(judge_report(
                judge,
                &generated,
                requested_judge.as_ref(),
                &reference,
                &second,
                &labels,
                info.sample_rate,
                args.model.seed,
            )?)
        }
    };
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("--plots: cannot create {}: {e}", dir.display()))?;
        let series = |label: &str, clips: &Tensor| -> Result<LineSeries> {
            let levels = decay_envelope(clips, segments)?;
            let q = |p: f64| -> Result<Vec<f64>> {
                Ok(Vec::<f64>::try_from(
                    levels.quantile_scalar(p, 0, false, "linear"),
                )?)
            };
            let (lo, mid, hi) = (q(0.25)?, q(0.5)?, q(0.75)?);
            let x = |i: usize| (i + 1) as f64;
            Ok(LineSeries {
                label: label.into(),
                points: mid.iter().enumerate().map(|(i, &m)| (x(i), m)).collect(),
                band: Some((0..lo.len()).map(|i| (x(i), lo[i], hi[i])).collect()),
            })
        };
        save_line_plot(
            &[
                series("real (held out)", &real)?,
                series("generated", &generated)?,
            ],
            &format!(
                "decay envelope: median and 25-75% (largest gap {:.1} dB)",
                envelope.max_abs_diff_db
            ),
            "eighth of the clip",
            "RMS dB",
            &dir.join("envelope.png"),
        )?;
        if let (Some(judge), Some(c)) =
            (&judge, judged.as_ref().and_then(|j| j.conditional.as_ref()))
        {
            let rows: Vec<String> = c.per_class.iter().map(|p| p.class.clone()).collect();
            save_confusion_matrix(
                &c.confusion,
                &rows,
                judge.class_names(),
                &match c.real_mean_accuracy {
                    Some(real) => format!(
                        "heard as requested: {:.0}% (real clips {:.0}%)",
                        100.0 * c.mean_accuracy,
                        100.0 * real
                    ),
                    None => format!("heard as requested: {:.0}%", 100.0 * c.mean_accuracy),
                },
                &dir.join("confusion.png"),
            )?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        let map = value.as_object_mut().expect("an object");
        map.insert("data".into(), data.clone().into());
        map.insert("seed".into(), args.model.seed.into());
        map.insert(
            "sampler".into(),
            options
                .sampler
                .name
                .clone()
                .unwrap_or_else(|| pipeline.scheduler.class_name().into())
                .into(),
        );
        map.insert(
            "steps".into(),
            pipeline.sampler(&options.sampler)?.timesteps().len().into(),
        );
        if let Some(classes) = &requested {
            map.insert(
                "classes".into(),
                classes
                    .iter()
                    .map(|&c| model_class_name(c))
                    .collect::<Vec<_>>()
                    .into(),
            );
            map.insert("guidance".into(), options.guidance.into());
        }
        map.insert(
            "envelope".into(),
            serde_json::json!({
                "segments": segments,
                "real_median_db": envelope.real_median,
                "generated_median_db": envelope.generated_median,
                "max_abs_diff_db": envelope.max_abs_diff_db,
                "held_out_max_abs_diff_db": envelope_floor.max_abs_diff_db,
                "white_noise_max_abs_diff_db": envelope_noise.max_abs_diff_db,
            }),
        );
        if let Some(j) = &judged {
            map.insert("judge".into(), serde_json::to_value(j)?);
        }
        map.insert("seconds".into(), seconds.into());
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "log-mel Fréchet distance to {} held-out clips of {data} (by quarters, levels within {} dB of each clip's peak): generated {:.3} ({} clips); bounds: white noise {:.3}, noise shaped like the real clips {:.3}, a second held-out set {:.3} ({} clips)",
            report.reference_clips,
            -report.floor_db,
            report.generated,
            report.generated_clips,
            report.white_noise,
            report.shaped_noise,
            report.held_out,
            report.second_set_clips
        );
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "decay envelope (median dB by eighths): real {}; generated {}; largest gap {:.1} dB (a second held-out set {:.1}, white noise {:.1})",
            fmt(&envelope.real_median),
            fmt(&envelope.generated_median),
            envelope.max_abs_diff_db,
            envelope_floor.max_abs_diff_db,
            envelope_noise.max_abs_diff_db
        );
        if let Some(j) = &judged {
            if let Some(c) = &j.conditional {
                let line = diffuse_tensor::quality::format_shares;
                let real = match c.real_mean_accuracy {
                    Some(real) => format!(
                        "real held-out clips {:.1}% ({})",
                        100.0 * real,
                        line(&c.real_per_class)
                    ),
                    None => "real held-out clips: none of these classes".into(),
                };
                println!(
                    "heard as the requested class: {:.1}% ({}); {real}; chance {:.1}%",
                    100.0 * c.mean_accuracy,
                    line(&c.per_class),
                    100.0 * c.chance
                );
            }
            let mix = |v: &[f64]| {
                j.classes
                    .iter()
                    .zip(v)
                    .map(|(n, s)| format!("{n} {:.0}%", 100.0 * s))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "heard as: generated {} (confidence {:.2}); real {} (confidence {:.2}); shaped noise confidence {:.2}",
                mix(&j.generated_mix),
                j.generated_confidence,
                mix(&j.real_mix),
                j.real_confidence,
                j.shaped_noise_confidence
            );
            println!(
                "KID on the judge's features (x1000): generated {:.2} ± {:.2}; bounds: a second held-out set {:.2}, shaped noise {:.2}",
                1e3 * j.kid_generated.mean,
                1e3 * j.kid_generated.std,
                1e3 * j.kid_held_out.mean,
                1e3 * j.kid_shaped_noise.mean
            );
        }
    }
    Ok(())
}

fn config_normalize(info: &diffuse_audio::pipeline::AudioModelInfo) -> Option<&Normalize> {
    info.data.as_ref().map(|d| &d.normalize)
}
