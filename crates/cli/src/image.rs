//! `diffuse train|sample|inpaint|eval image`: the image commands, thin over `diffuse-image`.

use crate::gaussian::{ImageSamplers, ObjectiveArgs, SamplerFlags};
use crate::model_kind::{check_model_kind, ModelKind};
use crate::poisson::JumpArgs;
use crate::run_dir::{
    check_dir_target, device, prepare_output_file, step_bar, LoopArgs, LoopFlags, TrainingCommand,
};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use diffuse_core::editing::Resampling;
use diffuse_image::data::{ImageDataset, Split};
use diffuse_image::io::{read_image, read_mask, save_grid, save_image, save_images};
use diffuse_image::pipeline::{ImagePipeline, SampleOptions};
use diffuse_image::train::{read_run_config, train_image_model, ImageTrainConfig, RUN_CONFIG};
use diffuse_image::unet::{NormType, UNet2dConfig};
use diffuse_tensor::ema::EmaConfig;
use diffuse_tensor::progress::progress_bar;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// Options shared by every command that samples.
#[derive(Args, Clone, Debug)]
pub struct SamplerArgs {
    #[command(flatten)]
    pub choice: SamplerFlags<ImageSamplers>,
    /// Seed of the random generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class label to generate (class-conditioned models).
    #[arg(long)]
    pub class: Option<i64>,
    /// Classifier-free guidance scale (1 = none; needs --class and a model trained with label dropout).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// Guidance rescale phi in [0, 1] (Lin et al. 2023).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl SamplerArgs {
    pub fn options(&self, num: usize, batch_size: Option<usize>) -> Result<SampleOptions> {
        let choice = self.choice.choice()?;
        // Lin et al. 2023 blend between the guided and the rescaled prediction: phi in [0, 1].
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            bail!(
                "--guidance-rescale: expected a number in [0, 1], got {}",
                self.guidance_rescale
            );
        }
        Ok(SampleOptions {
            num,
            sampler: choice.name,
            steps: choice.steps,
            eta: choice.eta,
            karras: choice.karras,
            seed: Some(self.seed),
            class: self.class,
            guidance: self.guidance,
            guidance_rescale: self.guidance_rescale,
            batch_size,
        })
    }
}

/// `diffuse sample image`.
#[derive(Args, Debug)]
pub struct SampleImageArgs {
    /// Model directory (a diffusers pipeline directory, or a training run directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    pub num: usize,
    /// Images per model call (default: all at once, which reproduces diffusers' seeded pipelines;
    /// with a seed, deterministic samplers give the same images at any batch size, stochastic ones
    /// (ddpm, euler-ancestral, sde-dpm++2m, eta > 0) draw their noise per batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Grid picture to write (.png, .jpg or .jpeg).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per grid row (default: about the square root of --num).
    #[arg(long)]
    pub nrow: Option<usize>,
    /// Also write every image as DIR/sample-NNNNN.png.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Also save the float samples in [-1, 1], exactly as produced, as safetensors (tensor "samples").
    #[arg(long)]
    pub raw: Option<PathBuf>,
}

/// Check an output picture's extension before any work is done.
fn check_picture_path(path: &Path, flag: &str) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
        bail!(
            "{flag}: {}: the picture format is chosen by the extension, expected .png, .jpg or .jpeg",
            path.display()
        );
    }
    Ok(())
}

/// Read a picture for a model that makes `channels`-channel images: a picture with another
/// channel count (alpha aside) is refused rather than silently converted.
fn read_model_image(path: &Path, channels: i64, flag: &str) -> Result<Tensor> {
    let decoded = diffuse_image::io::decode(path).map_err(|e| anyhow!("{flag}: {e}"))?;
    let colour = decoded.color();
    let found = colour.channel_count() as i64 - i64::from(colour.has_alpha());
    if found != channels {
        let what = |c: i64| match c {
            1 => "grayscale".to_string(),
            3 => "RGB".to_string(),
            n => format!("{n}-channel"),
        };
        bail!(
            "{flag}: {} is a {} image but the model makes {} images",
            path.display(),
            what(found),
            what(channels)
        );
    }
    read_image(path, channels).map_err(|e| anyhow!("{flag}: {e}"))
}

/// Load `--model` for `verb` (sample, inpaint, eval); another modality's model is named as such.
fn load_pipeline(model: &Path, device: tch::Device, verb: &str) -> Result<ImagePipeline> {
    check_model_kind(model, ModelKind::Image, verb)?;
    ImagePipeline::load(model, device).map_err(|e| anyhow!("--model: {e}"))
}

fn save_raw(samples: &Tensor, path: &Path) -> Result<()> {
    diffuse_tensor::weights::save_tensors(
        path,
        &[("samples".to_string(), samples.shallow_clone())],
        None,
    )
    .with_context(|| format!("--raw: writing {}", path.display()))
}

pub fn sample(args: SampleImageArgs) -> Result<()> {
    if args.out.is_none() && args.out_dir.is_none() && args.raw.is_none() {
        bail!("nothing to write: give --out GRID.png, --out-dir DIR or --raw FILE.safetensors");
    }
    if let Some(out) = &args.out {
        check_picture_path(out, "--out")?;
        prepare_output_file(out, "--out")?;
    }
    if let Some(raw) = &args.raw {
        prepare_output_file(raw, "--raw")?;
    }
    if let Some(dir) = &args.out_dir {
        check_dir_target(dir, "--out-dir")?;
    }
    if args.nrow == Some(0) {
        bail!("--nrow: must be at least 1");
    }
    let options = args.sampler.options(args.num, args.batch_size)?;
    let device = device(&args.sampler.device)?;
    let pipeline = load_pipeline(&args.model, device, "sample")?;
    // Fail on bad sampler settings before the long part.
    pipeline.check_sample_options(&options)?;
    let sampling = pipeline.sampler_description(&options)?;
    let started = Instant::now();
    let (bar, on_step) = step_bar("sample");
    let images = pipeline.sample(&options, on_step)?;
    bar.finish();
    let images = images.to_device(tch::Device::Cpu);
    check_finite(&images, &args.model)?;
    if let Some(raw) = &args.raw {
        save_raw(&images, raw)?;
    }
    if let Some(out) = &args.out {
        save_grid(&images, out, args.nrow)?;
        println!(
            "wrote {} ({}; {sampling})",
            out.display(),
            crate::count_of(args.num as u64, "image")
        );
    }
    if let Some(dir) = &args.out_dir {
        let files = save_images(&images, dir, "sample-")?;
        println!(
            "wrote {} to {} ({sampling})",
            crate::count_of(files.len() as u64, "image"),
            dir.display()
        );
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "sampled {}",
        crate::count_of(args.num as u64, "image")
    );
    Ok(())
}

/// Samples with NaN or infinite values (a damaged model, an unstable sampler setting) would be
/// written as black pixels: refuse them instead.
fn check_finite(images: &Tensor, model: &Path) -> Result<()> {
    let bad = images
        .isfinite()
        .logical_not()
        .sum(tch::Kind::Int64)
        .int64_value(&[]);
    if bad > 0 {
        bail!(
            "the model {} produced {bad} non-finite (NaN or infinite) values; nothing was written \
             (check the model's weights, or try another --sampler)",
            model.display()
        );
    }
    Ok(())
}

/// `diffuse inpaint image`.
#[derive(Args, Debug)]
pub struct InpaintImageArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The image to complete (PNG/JPEG of the model's size).
    #[arg(long, requires = "mask", conflicts_with = "from")]
    pub image: Option<PathBuf>,
    /// Mask picture: white = keep the image's pixels, black = generate them; strictly black and white.
    #[arg(long, requires = "image")]
    pub mask: Option<PathBuf>,
    /// RePaint: resample each jump this many times (1 = plain replacement).
    #[arg(long, default_value_t = 1)]
    pub resample: usize,
    /// RePaint: steps per jump back.
    #[arg(long, default_value_t = 10)]
    pub jump: usize,
    /// SDEdit: the image to edit (instead of --image/--mask).
    #[arg(long, requires = "strength")]
    pub from: Option<PathBuf>,
    /// SDEdit: how far up the noise schedule to go, in [0, 1].
    #[arg(long)]
    pub strength: Option<f64>,
    /// Number of results.
    #[arg(long, default_value_t = 1)]
    pub num: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Output picture (.png, .jpg or .jpeg): the result, or a grid when --num > 1.
    #[arg(long)]
    pub out: PathBuf,
    /// Also save the float results as safetensors.
    #[arg(long)]
    pub raw: Option<PathBuf>,
}

pub fn inpaint(args: InpaintImageArgs) -> Result<()> {
    check_picture_path(&args.out, "--out")?;
    prepare_output_file(&args.out, "--out")?;
    if let Some(raw) = &args.raw {
        prepare_output_file(raw, "--raw")?;
    }
    let options = args.sampler.options(args.num, None)?;
    let device = device(&args.sampler.device)?;
    let pipeline = load_pipeline(&args.model, device, "inpaint")?;
    let (channels, _, _) = pipeline.image_shape()?;
    pipeline.check_sample_options(&options)?;
    let sampling = pipeline.sampler_description(&options)?;
    let bar = progress_bar(0, "inpaint", "step");
    let result = match (&args.image, &args.mask, &args.from, args.strength) {
        (Some(image), Some(mask), None, _) => {
            let picture = read_model_image(image, channels, "--image")?;
            let mask = read_mask(mask).map_err(|e| anyhow!("--mask: {e}"))?;
            if args.resample == 0 || args.jump == 0 {
                bail!("--resample and --jump must be at least 1");
            }
            let resampling = (args.resample > 1).then_some(Resampling {
                jump_length: args.jump,
                jump_n_sample: args.resample,
            });
            pipeline.inpaint(&picture, &mask, resampling, &options, |i| {
                bar.set_position(i as u64)
            })?
        }
        (None, None, Some(from), Some(strength)) => {
            let picture = read_model_image(from, channels, "--from")?;
            pipeline.sdedit(&picture, strength, &options, |i| bar.set_position(i as u64))?
        }
        _ => bail!("give either --image and --mask (inpainting) or --from and --strength (SDEdit)"),
    };
    bar.finish();
    let result = result.to_device(tch::Device::Cpu);
    check_finite(&result, &args.model)?;
    if let Some(raw) = &args.raw {
        save_raw(&result, raw)?;
    }
    if args.num == 1 {
        save_image(&result, &args.out)?;
    } else {
        save_grid(&result, &args.out, None)?;
    }
    println!("wrote {} ({sampling})", args.out.display());
    Ok(())
}

/// `diffuse train image`.
#[derive(Args, Debug)]
pub struct TrainImageArgs {
    /// Dataset: mnist, fashion-mnist, a folder of PNG/JPEG images (subfolders = classes), or IDX files.
    #[arg(long)]
    pub data: Option<String>,
    /// Run directory (checkpoints, metrics, sample grids, the final model in RUN_DIR/model).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its run.json settings apply; --steps may extend it).
    #[arg(long)]
    pub resume: bool,
    /// Image side in pixels (resized and centre-cropped); default: the dataset's own.
    #[arg(long)]
    pub resolution: Option<u32>,
    /// 1 (grayscale) or 3 (RGB); default: the dataset's own.
    #[arg(long)]
    pub channels: Option<u32>,
    /// Random horizontal flips.
    #[arg(long)]
    pub hflip: bool,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Optimiser steps (default 1000 unless --epochs is given).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Train for this many passes over the data instead of --steps.
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<u64>,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-6)]
    pub weight_decay: f64,
    /// Dropout in the residual blocks.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// EMA decay ceiling (0 = no EMA); warmed up as diffusers' train_unconditional does.
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay: f64,
    #[command(flatten)]
    pub objective: ObjectiveArgs,
    /// gaussian (noise added to pixels in [-1, 1]) or poisson (pixels as counts 0..255, thinned
    /// and thickened: JUMP / Blackout; see the --thinning, --alpha-schedule, --logsnr-*, --lambda,
    /// --jump-prediction and --jump-loss flags).
    #[arg(long, default_value = "gaussian")]
    pub process: String,
    #[command(flatten)]
    pub jump: JumpArgs,
    /// Condition on class labels (with label dropout, for guidance).
    #[arg(long)]
    pub class_conditional: bool,
    /// Fraction of labels dropped to the null class.
    #[arg(long, default_value_t = 0.1)]
    pub label_dropout: f64,
    /// A diffusers UNet2DModel config.json to start from (sizes/classes are filled from the data).
    #[arg(long)]
    pub unet_config: Option<PathBuf>,
    /// Channels per level, e.g. 32,64,64.
    #[arg(long, value_delimiter = ',')]
    pub block_out_channels: Option<Vec<i64>>,
    #[arg(long)]
    pub layers_per_block: Option<i64>,
    /// Levels (0 = full resolution) with self-attention, e.g. 2 or 1,2; "none" for none.
    #[arg(long)]
    pub attention_levels: Option<String>,
    /// Channels per attention head (0 = one head as wide as the channels).
    #[arg(long)]
    pub attention_head_dim: Option<i64>,
    #[arg(long)]
    pub norm_num_groups: Option<i64>,
    /// group (diffusers) or batch (batch-norm variant; diffusers cannot load it).
    #[arg(long)]
    pub norm: Option<String>,
    /// FiLM-style scale-and-shift time conditioning (resnet_time_scale_shift = scale_shift).
    #[arg(long)]
    pub scale_shift: bool,
    /// Write a sample grid every N steps (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    #[arg(long, default_value_t = 16)]
    pub sample_num: usize,
    /// DDIM steps for the sample grids.
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    #[command(flatten)]
    pub train_loop: LoopArgs,
}

fn build_config(args: &TrainImageArgs) -> Result<ImageTrainConfig> {
    let data = args
        .data
        .clone()
        .ok_or_else(|| anyhow!("--data: required (mnist, fashion-mnist, or a folder of images)"))?;
    if args.epochs == Some(0) {
        bail!("--epochs: must be at least 1");
    }
    let mut config = ImageTrainConfig {
        data: diffuse_tensor::data::recorded_data_path(&data, &ImageDataset::NAMED_DATASETS),
        resolution: args.resolution,
        channels: args.channels,
        hflip: args.hflip,
        batch_size: args.batch_size,
        class_conditional: args.class_conditional,
        label_dropout: args.label_dropout,
        sample_every: args.sample_every,
        sample_num: args.sample_num,
        sample_steps: args.sample_steps,
        ..ImageTrainConfig::default()
    };
    if let Some(c) = args.channels {
        if c != 1 && c != 3 {
            bail!("--channels: expected 1 (grayscale) or 3 (RGB), got {c}");
        }
    }
    // The network.
    if let Some(path) = &args.unet_config {
        config.unet =
            UNet2dConfig::from_json_file(path).map_err(|e| anyhow!("--unet-config: {e}"))?;
        let unet = &config.unet;
        if !args.class_conditional
            && (unet.num_class_embeds.is_some() || unet.class_embed_type.is_some())
        {
            bail!(
                "--unet-config: {} sets class embeddings (num_class_embeds/class_embed_type); \
                 pass --class-conditional (with a labelled dataset) or remove them",
                path.display()
            );
        }
        // diffusers' Fourier embedding takes log(sigma) of score-SDE models' continuous noise
        // levels; fed the discrete timestep 0 it gives -inf and NaN samples.
        if unet.time_embedding_type == "fourier" {
            bail!(
                "--unet-config: {}: time_embedding_type \"fourier\" is for score-SDE models with \
                 continuous noise levels; diffuse trains discrete timesteps: use \"positional\"",
                path.display()
            );
        }
    }
    let unet = &mut config.unet;
    if let Some(channels) = &args.block_out_channels {
        unet.block_out_channels = channels.clone();
    }
    let levels = unet.block_out_channels.len();
    if args.block_out_channels.is_some() || args.attention_levels.is_some() {
        let attention: Vec<usize> = match args.attention_levels.as_deref() {
            Some("none") | Some("") => vec![],
            Some(list) => list
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&l| l < levels)
                        .ok_or_else(|| {
                            anyhow!("--attention-levels: '{s}' is not a level in 0..{levels}")
                        })
                })
                .collect::<Result<_>>()?,
            None => vec![levels - 1],
        };
        unet.down_block_types = (0..levels)
            .map(|l| {
                if attention.contains(&l) {
                    "AttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
                .into()
            })
            .collect();
        unet.up_block_types = (0..levels)
            .rev()
            .map(|l| {
                if attention.contains(&l) {
                    "AttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
                .into()
            })
            .collect();
    }
    if let Some(n) = args.layers_per_block {
        unet.layers_per_block = n;
    }
    if let Some(d) = args.attention_head_dim {
        unet.attention_head_dim = (d > 0).then_some(d);
    }
    if let Some(g) = args.norm_num_groups {
        unet.norm_num_groups = g;
    }
    if let Some(norm) = &args.norm {
        unet.norm_type = match norm.as_str() {
            "group" => NormType::Group,
            "batch" => NormType::Batch,
            other => bail!("--norm: expected group or batch, got '{other}'"),
        };
    }
    if args.scale_shift {
        unet.resnet_time_scale_shift = "scale_shift".into();
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout: must lie in [0, 1), got {}", args.dropout);
    }
    unet.dropout = args.dropout;
    // The schedule and objective.
    args.objective
        .apply(&mut config.scheduler, &mut config.objective)?;
    // Each process's own flags, typed for the other process, would be silently unused.
    let count_flags = crate::given::ids_of::<JumpArgs>();
    let gaussian_flags: Vec<String> = crate::given::ids_of::<ObjectiveArgs>()
        .into_iter()
        // The timestep count and first beta set both processes' schedules.
        .filter(|id| id != "num_train_timesteps" && id != "beta_start")
        .collect();
    let misplaced = match args.process.as_str() {
        "gaussian" => crate::given::given_among(count_flags.iter().map(String::as_str)),
        _ => crate::given::given_among(gaussian_flags.iter().map(String::as_str)),
    };
    if !misplaced.is_empty() {
        bail!(
            "{}: not used by --process {} (the count-diffusion flags are --thinning, \
             --alpha-schedule, --logsnr-*, --lambda, --jump-*; the Gaussian ones --prediction-type, \
             --objective, --weighting, --snr-gamma, --timestep-sampling, --offset-noise, \
             --beta-schedule, --beta-end)",
            misplaced.join(", "),
            args.process
        );
    }
    match args.process.as_str() {
        "gaussian" => {}
        "poisson" => {
            let mut jump = diffuse_image::poisson::image_jump_config();
            args.jump.apply(
                &mut jump,
                args.objective.num_train_timesteps,
                args.objective.beta_start,
            )?;
            config.process = Some(jump);
        }
        other => bail!("--process: unknown process '{other}' (expected gaussian or poisson)"),
    }
    LoopFlags {
        shared: &args.train_loop,
        steps: args.steps.unwrap_or(1000),
        lr: args.lr,
        weight_decay: args.weight_decay,
        ema: (args.ema_decay > 0.0).then(|| EmaConfig {
            decay: args.ema_decay,
            use_ema_warmup: true,
            inv_gamma: 1.0,
            power: 0.75,
            ..EmaConfig::default()
        }),
    }
    .apply(&mut config.train)?;
    Ok(config)
}

pub fn train(args: TrainImageArgs) -> Result<()> {
    TrainingCommand {
        modality: "image",
        out: &args.out,
        resume: args.resume,
        steps: args.steps,
        run_config: RUN_CONFIG,
        shared: &args.train_loop,
        train_config: |c: &mut ImageTrainConfig| &mut c.train,
    }
    .run(
        |dir: &Path| -> Result<ImageTrainConfig> {
            let mut config = read_run_config(dir)?;
            // Data that moved: --data with --resume names its new place.
            if let Some(data) = &args.data {
                config.data =
                    diffuse_tensor::data::recorded_data_path(data, &ImageDataset::NAMED_DATASETS);
            }
            Ok(config)
        },
        || build_config(&args),
        |config| {
            if let Some(epochs) = args.epochs {
                let data = diffuse_image::train::load_dataset(config, Split::Train)?;
                // An epoch is one pass over the data by all ranks together.
                let ranks = diffuse_tensor::dist::current().map_or(1, |g| g.world_size()) as u64;
                let per_epoch =
                    (data.len() as u64).div_ceil(config.batch_size.max(1) as u64 * ranks);
                config.train.steps = (epochs * per_epoch).max(1);
            }
            Ok(())
        },
        |config, device, resume, stop_after| {
            train_image_model(config, &args.out, device, resume, stop_after)
        },
    )
}

/// `diffuse eval image`.
#[derive(Args, Debug)]
pub struct EvalImageArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset whose test split to compare with (default: the one the model was trained on).
    #[arg(long)]
    pub data: Option<String>,
    /// bpd (bits/dim from the full variational bound) or fid (Fréchet distance in the features of
    /// diffuse's classifier for the dataset); comma-separate for both.
    #[arg(long, default_value = "bpd", value_delimiter = ',')]
    pub metric: Vec<String>,
    /// bpd: test images to evaluate (each costs num_train_timesteps model calls); 0 = all.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// fid: samples to generate.
    #[arg(long, default_value_t = 1000)]
    pub num: usize,
    /// Images per model call.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// fid: classifier directory (default: data/models/<dataset>-classifier).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// fid, class-conditional models: classes to ask for, comma-separated names or numbers, the
    /// --num images shared out evenly (default: every class; --class asks for one).
    #[arg(long)]
    pub classes: Option<String>,
    /// fid: folder to write the pictures into: classes.png (the classifier's class histogram of
    /// generated and test images) and, for a class-conditional model, confusion.png.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(args: EvalImageArgs) -> Result<()> {
    for m in &args.metric {
        if m != "bpd" && m != "fid" {
            bail!("--metric: unknown metric '{m}' (expected bpd or fid)");
        }
    }
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    let fid = args.metric.iter().any(|m| m == "fid");
    for (flag, given) in [
        ("--classes", args.classes.is_some()),
        ("--plots", args.plots.is_some()),
    ] {
        if given && !fid {
            bail!("{flag}: only for --metric fid");
        }
    }
    let device = device(&args.sampler.device)?;
    let pipeline = load_pipeline(&args.model, device, "eval")?;
    // Checked before the bound's long computation: the sampler, the classes, the pictures' folder.
    let requested = if fid {
        crate::fid::check_fid_args(&pipeline, &args)?
    } else {
        None
    };
    let data_name = args
        .data
        .clone()
        .or_else(|| pipeline.info.dataset.clone())
        .ok_or_else(|| {
            anyhow!("--data: the model does not say what it was trained on; name the dataset")
        })?;
    let (channels, h, w) = pipeline.image_shape()?;
    if h != w {
        bail!("eval: only square models are supported (this one makes {w}x{h} images)");
    }
    let test = ImageDataset::load(
        &data_name,
        Split::Test,
        Some(h as u32),
        Some(channels as u32),
        &ImageDataset::default_datasets_dir(),
    )
    .map_err(|e| anyhow!("--data: {e}"))?;
    let mut report = serde_json::Map::new();
    report.insert("model".into(), args.model.display().to_string().into());
    report.insert("data".into(), data_name.clone().into());
    for metric in &args.metric {
        match metric.as_str() {
            "bpd" => {
                let n = if args.limit == 0 {
                    test.len()
                } else {
                    args.limit.min(test.len())
                };
                let subset = test.take(n);
                let batches: Vec<Tensor> = (0..n)
                    .step_by(args.batch_size)
                    .map(|start| {
                        let idx: Vec<usize> = (start..(start + args.batch_size).min(n)).collect();
                        subset.batch(&idx, false, tch::Device::Cpu).0
                    })
                    .collect();
                diffuse_tensor::manual_seed(args.sampler.seed);
                let bpd = pipeline.bits_per_dim(batches, Some(n as u64), args.sampler.class)?;
                let protocol = match &pipeline.info.process {
                    Some(p) => format!(
                        "full {}-term bound of binomial thinning on 8-bit pixel counts, first {n} test images, seed {}",
                        p.num_train_timesteps, args.sampler.seed
                    ),
                    None => format!(
                        "full {}-term variational bound, discretised Gaussian decoder, first {n} test images, seed {}",
                        match &pipeline.scheduler {
                            diffuse_core::scheduler_config::SchedulerConfig::Ddpm(c) => c.schedule.num_train_timesteps,
                            _ => 0,
                        },
                        args.sampler.seed
                    ),
                };
                if !args.json {
                    println!("bits/dim {bpd:.4} ({protocol})");
                }
                report.insert(
                    "bpd".into(),
                    serde_json::json!({"value": bpd, "images": n, "protocol": protocol}),
                );
            }
            "fid" => {
                let value = crate::fid::eval_fid(
                    &pipeline,
                    &data_name,
                    &test,
                    requested.as_deref(),
                    &args,
                )?;
                if !args.json {
                    println!("{}", value["summary"].as_str().unwrap_or_default());
                }
                report.insert("fid".into(), value);
            }
            _ => unreachable!("checked above"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
