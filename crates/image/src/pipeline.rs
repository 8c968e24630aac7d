//! A model directory is a diffusers pipeline directory: `model_index.json`, `unet/config.json`,
//! `unet/diffusion_pytorch_model.safetensors` and `scheduler/scheduler_config.json`, so diffusers'
//! `DDPMPipeline.from_pretrained` loads what diffuse trains and diffuse loads what diffusers
//! trains. diffuse adds `diffuse.json` (class names, the null class used for guidance, the
//! objective it was trained with), which diffusers ignores.
//!
//! [`ImagePipeline`] samples (every sampler, guidance), inpaints (replacement or RePaint), edits
//! (SDEdit) and measures bits/dim. Unless told otherwise a Gaussian model samples with
//! DPM-Solver++ 2M in 20 steps, which gives good images in seconds where the DDPM scheduler
//! diffusers saves takes 1000 model calls; [`MODEL_SCHEDULER`] asks for that saved scheduler. Sampling
//! draws the initial noise and every later draw from libtorch's generator in diffusers' order, so a
//! seeded CPU run with the model's scheduler (or `ddpm`/`ddim` on a DDPM model) reproduces
//! `DDPMPipeline` / `DDIMPipeline` called with `generator=torch.manual_seed(seed)`.

use crate::poisson::{count_sampler, from_counts, to_counts, UNetCounts, COUNT_DEFAULT_STEPS};
use crate::unet::{load_unet_weights, save_unet_weights, UNet2d, UNet2dConfig};
use diffuse_core::denoiser::Denoiser;
use diffuse_core::editing::{self, Resampling};
use diffuse_core::guidance::ClassSpace;
use diffuse_core::losses::ObjectiveConfig;
use diffuse_core::poisson::{self, JumpConfig, JumpProcess, JumpSampler};
use diffuse_core::prediction::PredictionType;
pub use diffuse_core::sampler_choice::{
    convert_scheduler, scheduler_for, scheduler_prediction_type, scheduler_variance_type,
    DPM_SOLVER_DEFAULT_STEPS, MODEL_SCHEDULER, SCHEDULER_SAMPLERS,
};
use diffuse_core::sampler_choice::{SamplerChoice, DIFFWAVE_FAST};
use diffuse_core::samplers::{self, Sampler, StepInfo};
use diffuse_core::scheduler_config::{SchedulerConfig, DIFFUSERS_VERSION};
use diffuse_core::vlb::{dataset_bits_per_dim, VlbTables};
use diffuse_tensor::atomic::write_json_atomic;
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// File names inside a pipeline directory (diffusers' layout).
pub const MODEL_INDEX: &str = "model_index.json";
pub const UNET_CONFIG: &str = "unet/config.json";
pub const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";
pub const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";
/// diffuse's own notes about the model (diffusers ignores the file).
pub const DIFFUSE_INFO: &str = "diffuse.json";

/// The sampler of a Gaussian model when none is named (at [`DPM_SOLVER_DEFAULT_STEPS`] steps).
pub const DEFAULT_SAMPLER: &str = "dpm++2m";

/// The samplers of a Gaussian image model, as one readable list for messages.
fn gaussian_sampler_list() -> String {
    let names: Vec<String> = SCHEDULER_SAMPLERS
        .iter()
        .map(|n| match *n {
            DEFAULT_SAMPLER => format!("{n} (the default)"),
            n => n.to_string(),
        })
        .collect();
    format!(
        "{} and {MODEL_SCHEDULER} (its own saved scheduler)",
        names.join(", ")
    )
}

/// What diffuse knows about a model beyond diffusers' files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageModelInfo {
    /// Names of the classes, index = label (from IDX labels or subfolder names).
    pub class_names: Option<Vec<String>>,
    /// The label that means "no class" (trained by label dropout, used by guidance): the UNet
    /// then has `num_class_embeds = classes + 1`.
    pub null_class: Option<i64>,
    /// The dataset the model was trained on, as given to `--data`.
    pub dataset: Option<String>,
    /// The objective it was trained with.
    pub objective: Option<ObjectiveConfig>,
    /// Optimiser steps it was trained for.
    pub steps: Option<u64>,
    /// Set for a count-diffusion model (`--process poisson`): the thinning process it was trained
    /// with. diffusers cannot sample such a model (its scheduler file is a placeholder).
    pub process: Option<JumpConfig>,
}

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Number of images.
    pub num: usize,
    /// For a Gaussian model a name from [`SCHEDULER_SAMPLERS`] or [`MODEL_SCHEDULER`] (the
    /// directory's own scheduler); for a count model (`--process poisson`) `jump` or `blackout`.
    /// `None` = [`DEFAULT_SAMPLER`] for a Gaussian model, `jump` for a count model.
    pub sampler: Option<String>,
    /// Inference steps; `None` = [`DPM_SOLVER_DEFAULT_STEPS`] for the DPM-Solver++ samplers,
    /// every training step (at most 1000, as diffusers' DDPMPipeline) for DDPM, 50 for the other
    /// Gaussian samplers, [`COUNT_DEFAULT_STEPS`] for a count model (each at most the training
    /// schedule's length).
    pub steps: Option<usize>,
    /// DDIM's eta (0 deterministic, 1 ancestral).
    pub eta: Option<f64>,
    /// Karras sigma spacing for the samplers that offer it (Euler, Heun, DPM-Solver++).
    pub karras: bool,
    /// Seed of libtorch's generator; `None` leaves it as it is.
    pub seed: Option<u64>,
    /// Class label for class-conditioned models (`None`: unconditional, i.e. the null class).
    pub class: Option<i64>,
    /// Classifier-free guidance scale w (1 = plain conditional sampling).
    pub guidance: f64,
    /// Guidance rescale phi (Lin et al. 2023), 0 = off.
    pub guidance_rescale: f64,
    /// Images per model call; `None` = all at once (needed for exact parity with diffusers).
    pub batch_size: Option<usize>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            num: 16,
            sampler: None,
            steps: None,
            eta: None,
            karras: false,
            seed: Some(0),
            class: None,
            guidance: 1.0,
            guidance_rescale: 0.0,
            batch_size: None,
        }
    }
}

impl SampleOptions {
    /// The sampler part of the options for a Gaussian model ([`DEFAULT_SAMPLER`] when none is named).
    pub fn sampler_choice(&self) -> SamplerChoice {
        SamplerChoice {
            name: Some(
                self.sampler
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SAMPLER.to_string()),
            ),
            steps: self.steps,
            eta: self.eta,
            karras: self.karras,
        }
    }
}

/// The UNet as a [`Denoiser`]: fixed class labels (or none), train or eval mode, and whether to
/// drop learned-variance channels for samplers that only use the mean.
pub struct UNetDenoiser<'a> {
    pub unet: &'a UNet2d,
    pub prediction_type: PredictionType,
    pub class_labels: Option<Tensor>,
    pub train: bool,
    /// Keep only the first this many output channels (None: all).
    pub keep_channels: Option<i64>,
}

impl Denoiser for UNetDenoiser<'_> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        let batch = x_t.size()[0];
        let labels = self.class_labels.as_ref().map(|l| {
            if l.size()[0] == batch {
                l.shallow_clone()
            } else {
                l.expand([batch], true)
            }
        });
        let out = self.unet.forward_t(x_t, t, labels.as_ref(), self.train);
        match self.keep_channels {
            Some(c) if out.size()[1] > c => out.narrow(1, 0, c),
            _ => out,
        }
    }
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}

/// A loaded image model: the UNet, its weights, its scheduler and diffuse's notes.
pub struct ImagePipeline {
    pub vs: VarStore,
    pub unet: UNet2d,
    pub scheduler: SchedulerConfig,
    pub info: ImageModelInfo,
}

/// Where the model of `dir` lives: `dir` itself, or `dir/model` for a training run directory.
pub fn resolve_model_dir(dir: &Path) -> Result<PathBuf> {
    diffuse_tensor::atomic::resolve_model_dir(dir, &[MODEL_INDEX, UNET_CONFIG])
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::format(
            dir,
            format!(
                "not a complete model directory: {name} is missing (expected a diffusers pipeline \
                 directory holding {MODEL_INDEX}, {UNET_CONFIG}, {UNET_WEIGHTS} and {SCHEDULER_CONFIG})"
            ),
        ))
    }
}

impl ImagePipeline {
    /// Load a pipeline directory (or a training run directory holding one in `model/`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let dir = resolve_model_dir(dir)?;
        let config_path = require_file(&dir, UNET_CONFIG)?;
        let weights_path = require_file(&dir, UNET_WEIGHTS)?;
        let scheduler_path = require_file(&dir, SCHEDULER_CONFIG)?;
        let config = UNet2dConfig::from_json_file(&config_path)?;
        let scheduler = SchedulerConfig::load(&scheduler_path)?;
        let info_path = dir.join(DIFFUSE_INFO);
        let info = if info_path.is_file() {
            let text = fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::format(&info_path, format!("not valid diffuse.json: {e}")))?
        } else {
            ImageModelInfo::default()
        };
        let vs = VarStore::new(device);
        let unet = UNet2d::new(&vs.root(), &config)
            .map_err(|e| Error::format(&config_path, e.to_string()))?;
        load_unet_weights(&vs, &weights_path)?;
        Ok(ImagePipeline {
            vs,
            unet,
            scheduler,
            info,
        })
    }

    /// A fresh (untrained) pipeline.
    pub fn new(
        config: &UNet2dConfig,
        scheduler: SchedulerConfig,
        info: ImageModelInfo,
        device: Device,
    ) -> Result<Self> {
        let vs = VarStore::new(device);
        let unet = UNet2d::new(&vs.root(), config)?;
        Ok(ImagePipeline {
            vs,
            unet,
            scheduler,
            info,
        })
    }

    /// Write the directory atomically: everything goes into a sibling temporary directory that
    /// replaces `dir` only when complete. An existing `dir` must itself be a model directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_pipeline_dir(
            dir,
            self.unet.config(),
            &self.vs,
            &self.scheduler,
            &self.info,
        )
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Channels, height and width of the images this model makes.
    pub fn image_shape(&self) -> Result<(i64, i64, i64)> {
        let c = self.unet.config();
        let (h, w) = c.sample_size_hw().ok_or_else(|| {
            Error::InvalidArgument(
                "the UNet config has no sample_size, so the image size is unknown".into(),
            )
        })?;
        Ok((c.in_channels, h, w))
    }

    /// The network's parameterisation (the scheduler's `prediction_type`).
    pub fn prediction_type(&self) -> PredictionType {
        scheduler_prediction_type(&self.scheduler)
    }

    /// Number of classes the model was trained on (without the null class).
    pub fn num_classes(&self) -> Option<i64> {
        let embeds = self.unet.config().num_class_embeds?;
        Some(match self.info.null_class {
            Some(_) => embeds - 1,
            None => embeds,
        })
    }

    /// The sampler for `options` with its timesteps set (Gaussian models only; see
    /// [`Self::check_sample_options`] for a check that covers both kinds).
    pub fn sampler(&self, options: &SampleOptions) -> Result<Box<dyn Sampler>> {
        self.gaussian_choice(options)?.build(&self.scheduler)
    }

    /// The sampler choice of `options` for this Gaussian model, refusing the samplers that do
    /// not fit it: count samplers, and DiffWave's short chain (calibrated on audio schedules, it
    /// leaves image models' samples as blobs).
    fn gaussian_choice(&self, options: &SampleOptions) -> Result<SamplerChoice> {
        if self.info.process.is_some() {
            return Err(Error::InvalidArgument(
                "this model diffuses pixel counts (--process poisson); it has no Gaussian sampler"
                    .into(),
            ));
        }
        if let Some(name) = options.sampler.as_deref() {
            let why = if JumpSampler::parse(name).is_ok() {
                "is a sampler for count models (trained with --process poisson), but this model is Gaussian"
            } else if name == DIFFWAVE_FAST {
                "is DiffWave's short audio schedule, which does not fit image models"
            } else if name != MODEL_SCHEDULER && !SCHEDULER_SAMPLERS.contains(&name) {
                "is not a sampler"
            } else {
                ""
            };
            if !why.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "--sampler: {name} {why}; this model's samplers are {}",
                    gaussian_sampler_list()
                )));
            }
        }
        Ok(options.sampler_choice())
    }

    /// What `options` sample this model with, for reports: the sampler's name (the scheduler's
    /// class for [`MODEL_SCHEDULER`]) and its number of steps, e.g. "dpm++2m, 20 steps".
    pub fn sampler_description(&self, options: &SampleOptions) -> Result<String> {
        let name = match self.jump_process()? {
            Some(_) => count_sampler(options.sampler.as_deref())?
                .name()
                .to_string(),
            None => match self.gaussian_choice(options)?.named() {
                Some(name) => name.to_string(),
                None => format!("{MODEL_SCHEDULER} ({})", self.scheduler.class_name()),
            },
        };
        Ok(format!("{name}, {} steps", self.sampling_steps(options)?))
    }

    /// The count process of a `--process poisson` model (`None` for a Gaussian model).
    pub fn jump_process(&self) -> Result<Option<JumpProcess>> {
        self.info.process.clone().map(JumpProcess::new).transpose()
    }

    /// Check the sampling options against the model before any work is done.
    pub fn check_sample_options(&self, options: &SampleOptions) -> Result<()> {
        Self::check_num(options)?;
        match self.jump_process()? {
            None => self.sampler(options).map(|_| ()),
            Some(process) => {
                count_sampler(options.sampler.as_deref())?.check(&process)?;
                if options.eta.is_some() || options.karras {
                    return Err(Error::InvalidArgument(
                        "--eta and --karras apply to Gaussian samplers; this model diffuses pixel counts"
                            .into(),
                    ));
                }
                self.count_steps(&process, options)?;
                Ok(())
            }
        }
    }

    /// Model calls per sample: the sampler's timesteps, or the count sampler's steps.
    pub fn sampling_steps(&self, options: &SampleOptions) -> Result<usize> {
        match self.jump_process()? {
            None => Ok(self.sampler(options)?.timesteps().len()),
            Some(process) => self.count_steps(&process, options),
        }
    }

    /// Count models sample in [`COUNT_DEFAULT_STEPS`] steps (at most every training step) unless
    /// told otherwise.
    fn count_steps(&self, process: &JumpProcess, options: &SampleOptions) -> Result<usize> {
        let steps = options
            .steps
            .unwrap_or(COUNT_DEFAULT_STEPS.min(process.timesteps()));
        poisson::schedule::sampling_timesteps(process.timesteps(), steps)?;
        Ok(steps)
    }

    /// The UNet as a count denoiser for `options` (class, guidance).
    fn count_denoiser(&self, options: &SampleOptions, num: i64) -> Result<UNetCounts<'_>> {
        if options.guidance_rescale != 0.0 {
            return Err(Error::InvalidArgument(
                "--guidance-rescale: applies to Gaussian models only".into(),
            ));
        }
        let labels =
            self.class_space()
                .guided(options.class, options.guidance, 0.0, num, self.device())?;
        Ok(UNetCounts {
            unet: &self.unet,
            class_labels: labels.conditional,
            unconditional_labels: labels.unconditional,
            guidance: options.guidance,
            train: false,
        })
    }

    /// [`Self::sample`] for a count model.
    fn sample_counts(
        &self,
        process: &JumpProcess,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Tensor> {
        let (c, h, w) = self.image_shape()?;
        let sampler = count_sampler(options.sampler.as_deref())?;
        let steps = self.count_steps(process, options)?;
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let batch = options.batch_size.unwrap_or(options.num).min(options.num);
        let chunks_total = options.num.div_ceil(batch);
        let mut chunks = Vec::new();
        let mut done = 0;
        let mut chunk = 0;
        while done < options.num {
            let n = batch.min(options.num - done) as i64;
            let model = self.count_denoiser(options, n)?;
            let counts = poisson::sample::sample(
                process,
                &model,
                &[n, c, h, w],
                steps,
                sampler,
                self.device(),
                |i, total| on_step(chunk * total + i, total * chunks_total),
            )?;
            chunks.push(from_counts(&counts.round()));
            done += n as usize;
            chunk += 1;
        }
        Ok(Tensor::cat(&chunks, 0))
    }

    /// Channels the sampler reads: with a learned variance only DDPM and DPM-Solver use the extra ones.
    fn keep_channels(&self, sampler_config_learned: bool) -> Option<i64> {
        let c = self.unet.config();
        (c.out_channels > c.in_channels && !sampler_config_learned).then_some(c.in_channels)
    }

    /// The model's classes as sampling checks them.
    pub fn class_space(&self) -> ClassSpace {
        let config = self.unet.config();
        ClassSpace {
            class_embedded: config.num_class_embeds.is_some() || config.class_embed_type.is_some(),
            num_classes: self.num_classes(),
            null_class: self.info.null_class,
            class_names: self.info.class_names.clone(),
        }
    }

    fn class_labels(&self, class: Option<i64>, num: i64) -> Result<Option<Tensor>> {
        self.class_space().labels(class, num, self.device())
    }

    /// Run `f` with the denoiser `options` describe (guided when asked).
    fn with_denoiser<T>(
        &self,
        options: &SampleOptions,
        learned_sampler: bool,
        num: i64,
        f: impl FnOnce(&dyn Denoiser) -> Result<T>,
    ) -> Result<T> {
        let labels = self.class_space().guided(
            options.class,
            options.guidance,
            options.guidance_rescale,
            num,
            self.device(),
        )?;
        let keep = self.keep_channels(learned_sampler);
        let denoiser = |labels: Option<Tensor>| UNetDenoiser {
            unet: &self.unet,
            prediction_type: self.prediction_type(),
            class_labels: labels,
            train: false,
            keep_channels: keep,
        };
        labels.with_denoiser(options.guidance, options.guidance_rescale, denoiser, f)
    }

    fn learned_sampler(&self, options: &SampleOptions) -> Result<bool> {
        self.gaussian_choice(options)?
            .uses_learned_variance(&self.scheduler)
    }

    fn check_num(options: &SampleOptions) -> Result<()> {
        if options.num == 0 {
            return Err(Error::InvalidArgument("--num: must be at least 1".into()));
        }
        if options.batch_size == Some(0) {
            return Err(Error::InvalidArgument(
                "--batch-size: must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Sample `options.num` images: `[N, C, H, W]` in [-1, 1] (clamped as diffusers' pipelines
    /// do before quantising). `on_step(done, total)` reports progress.
    pub fn sample(
        &self,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Tensor> {
        Self::check_num(options)?;
        if let Some(process) = self.jump_process()? {
            return self.sample_counts(&process, options, on_step);
        }
        let (c, h, w) = self.image_shape()?;
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let learned = self.learned_sampler(options)?;
        let batch = options.batch_size.unwrap_or(options.num).min(options.num);
        let mut chunks = Vec::new();
        let mut done = 0;
        let total_steps = {
            let s = self.sampler(options)?;
            s.timesteps().len() * options.num.div_ceil(batch)
        };
        let mut global = 0;
        while done < options.num {
            let n = batch.min(options.num - done) as i64;
            let mut sampler = self.sampler(options)?;
            // diffusers' pipelines draw the initial noise on the CPU generator, then move it.
            let noise = Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu)).to(self.device())
                * sampler.init_noise_sigma();
            let x = self.with_denoiser(options, learned, n, |model| {
                samplers::sample(sampler.as_mut(), model, noise, |_: &StepInfo<'_>| {
                    global += 1;
                    on_step(global, total_steps);
                })
            })?;
            chunks.push(x.clamp(-1.0, 1.0));
            done += n as usize;
        }
        Ok(Tensor::cat(&chunks, 0))
    }

    /// Inpaint `image` `[1 or N, C, H, W]` in [-1, 1]: where `mask` `[.., 1, H, W]` is 1 the image is
    /// kept, elsewhere generated; with `resampling`, RePaint's jumps.
    pub fn inpaint(
        &self,
        image: &Tensor,
        mask: &Tensor,
        resampling: Option<Resampling>,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize),
    ) -> Result<Tensor> {
        Self::check_num(options)?;
        let (c, h, w) = self.image_shape()?;
        self.check_image(image, "--image")?;
        let ms = mask.size();
        if ms.len() != 4 || ms[2] != h || ms[3] != w || (ms[1] != 1 && ms[1] != c) {
            return Err(Error::InvalidArgument(format!(
                "--mask: the mask is {}x{} but the model makes {w}x{h} images",
                ms.get(3).copied().unwrap_or(0),
                ms.get(2).copied().unwrap_or(0)
            )));
        }
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let n = options.num as i64;
        if let Some(process) = self.jump_process()? {
            if resampling.is_some() {
                return Err(Error::InvalidArgument(
                    "--resample: RePaint's resampling is for Gaussian models; a count model's \
                     known pixels already follow their exact path"
                        .into(),
                ));
            }
            let known = to_counts(&image.to(self.device()).expand([n, c, h, w], false));
            let mask = mask.to(self.device()).to_kind(Kind::Float);
            let model = self.count_denoiser(options, n)?;
            let counts = poisson::sample::inpaint(
                &process,
                &model,
                &known,
                &mask,
                self.count_steps(&process, options)?,
                count_sampler(options.sampler.as_deref())?,
                |i, _| on_step(i),
            )?;
            return Ok(from_counts(&counts.round()));
        }
        let learned = self.learned_sampler(options)?;
        let mut sampler = self.sampler(options)?;
        let known = image
            .to(self.device())
            .expand([n, c, h, w], false)
            .contiguous();
        let mask = mask.to(self.device()).to_kind(Kind::Float);
        let noise = Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu)).to(self.device())
            * sampler.init_noise_sigma();
        let x = self.with_denoiser(options, learned, n, |model| {
            editing::inpaint(
                sampler.as_mut(),
                model,
                noise,
                &known,
                &mask,
                resampling,
                |i, _| on_step(i),
            )
        })?;
        // The known region is exact, not a re-noised copy.
        let x = &known * &mask + x.clamp(-1.0, 1.0) * (1.0 - &mask);
        Ok(x)
    }

    /// SDEdit: noise `image` to `strength` of the schedule and denoise it.
    pub fn sdedit(
        &self,
        image: &Tensor,
        strength: f64,
        options: &SampleOptions,
        mut on_step: impl FnMut(usize),
    ) -> Result<Tensor> {
        Self::check_num(options)?;
        let (c, h, w) = self.image_shape()?;
        self.check_image(image, "--from")?;
        if !(0.0..=1.0).contains(&strength) {
            return Err(Error::InvalidArgument(format!(
                "--strength: must lie in [0, 1], got {strength}"
            )));
        }
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let n = options.num as i64;
        if let Some(process) = self.jump_process()? {
            let x0 = to_counts(&image.to(self.device()).expand([n, c, h, w], false));
            let model = self.count_denoiser(options, n)?;
            let counts = poisson::sample::edit(
                &process,
                &model,
                &x0,
                strength,
                self.count_steps(&process, options)?,
                count_sampler(options.sampler.as_deref())?,
                |i, _| on_step(i),
            )?;
            return Ok(from_counts(&counts.round()));
        }
        let learned = self.learned_sampler(options)?;
        let mut sampler = self.sampler(options)?;
        let x0 = image
            .to(self.device())
            .expand([n, c, h, w], false)
            .contiguous();
        let x = self.with_denoiser(options, learned, n, |model| {
            editing::sdedit(sampler.as_mut(), model, &x0, strength, |s| on_step(s.index))
        })?;
        Ok(x.clamp(-1.0, 1.0))
    }

    fn check_image(&self, image: &Tensor, flag: &str) -> Result<()> {
        let (c, h, w) = self.image_shape()?;
        let s = image.size();
        if s.len() != 4 || s[1] != c || s[2] != h || s[3] != w {
            let what = |c: i64| match c {
                1 => "grayscale".to_string(),
                3 => "RGB".to_string(),
                n => format!("{n}-channel"),
            };
            return Err(Error::InvalidArgument(format!(
                "{flag}: the image is {} {}x{} but the model makes {} {w}x{h} images",
                what(s.get(1).copied().unwrap_or(0)),
                s.get(3).copied().unwrap_or(0),
                s.get(2).copied().unwrap_or(0),
                what(c)
            )));
        }
        Ok(())
    }

    /// Bits per dimension of `batches` (images in [-1, 1]) under the full T-term variational bound
    /// (Ho et al. 2020 eq. 5; the improved-DDPM protocol: discretised Gaussian decoder, 8-bit data).
    pub fn bits_per_dim(
        &self,
        batches: impl IntoIterator<Item = Tensor>,
        total_examples: Option<u64>,
        class: Option<i64>,
    ) -> Result<f64> {
        if let Some(process) = self.jump_process()? {
            return self.count_bits_per_dim(&process, batches, total_examples, class);
        }
        let schedule = match &self.scheduler {
            SchedulerConfig::Ddpm(c) => diffuse_core::schedule::NoiseSchedule::new(&c.schedule)?,
            other => {
                let ddpm = convert_scheduler(other, "DDPMScheduler")?;
                match ddpm {
                    SchedulerConfig::Ddpm(c) => {
                        diffuse_core::schedule::NoiseSchedule::new(&c.schedule)?
                    }
                    _ => unreachable!("converted to DDPM"),
                }
            }
        };
        let variance = scheduler_variance_type(&self.scheduler);
        let tables = VlbTables::new(schedule);
        let labels = self.class_labels(class, 1)?;
        let model = UNetDenoiser {
            unet: &self.unet,
            prediction_type: self.prediction_type(),
            class_labels: labels,
            train: false,
            keep_channels: None,
        };
        let device = self.device();
        tch::no_grad(|| {
            dataset_bits_per_dim(
                &tables,
                &model,
                batches.into_iter().map(|b| b.to(device)),
                total_examples,
                variance,
            )
        })
    }
}

impl ImagePipeline {
    /// [`Self::bits_per_dim`] of a count model: the exact bound of binomial thinning on the 8-bit
    /// counts (the same units as the Gaussian bound on the same images).
    fn count_bits_per_dim(
        &self,
        process: &JumpProcess,
        batches: impl IntoIterator<Item = Tensor>,
        total_examples: Option<u64>,
        class: Option<i64>,
    ) -> Result<f64> {
        let t = process.timesteps() as u64;
        let bar = diffuse_tensor::progress::progress_bar(
            total_examples.map_or(0, |n| n * t),
            "bits/dim",
            "term",
        );
        let (mut sum, mut count) = (0.0, 0usize);
        for batch in batches {
            let n = batch.size()[0];
            let options = SampleOptions {
                class,
                ..SampleOptions::default()
            };
            let model = self.count_denoiser(&options, n)?;
            let counts = to_counts(&batch.to(self.device()));
            let bpd = tch::no_grad(|| {
                poisson::likelihood::bits_per_dim(process, &model, &counts, |_| bar.inc(n as u64))
            })?;
            let values = Vec::<f64>::try_from(bpd.to_kind(Kind::Double)).expect("bits/dim");
            sum += values.iter().sum::<f64>();
            count += values.len();
            bar.set_message(format!(
                "{:.4} bits/dim over {count} examples",
                sum / count as f64
            ));
        }
        bar.finish();
        if count == 0 {
            return Err(Error::InvalidArgument(
                "bits/dim of an empty dataset".into(),
            ));
        }
        Ok(sum / count as f64)
    }
}

/// diffusers' `model_index.json` for a DDPM-style pipeline.
fn model_index(scheduler: &SchedulerConfig) -> Value {
    serde_json::json!({
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", scheduler.class_name()],
        "unet": ["diffusers", "UNet2DModel"],
    })
}

/// Write a pipeline directory from its parts (see [`ImagePipeline::save`]).
pub fn save_pipeline_dir(
    dir: &Path,
    unet: &UNet2dConfig,
    vs: &VarStore,
    scheduler: &SchedulerConfig,
    info: &ImageModelInfo,
) -> Result<()> {
    diffuse_tensor::atomic::write_dir_atomic(
        dir,
        MODEL_INDEX,
        &[MODEL_INDEX, "unet", "scheduler", DIFFUSE_INFO],
        |staging| {
            fs::create_dir_all(staging.join("unet")).map_err(|e| Error::io(staging, e))?;
            fs::create_dir_all(staging.join("scheduler")).map_err(|e| Error::io(staging, e))?;
            unet.to_json_file(&staging.join(UNET_CONFIG))?;
            save_unet_weights(vs, &staging.join(UNET_WEIGHTS))?;
            scheduler.save(&staging.join(SCHEDULER_CONFIG))?;
            write_json_atomic(&staging.join(DIFFUSE_INFO), info)?;
            write_json_atomic(&staging.join(MODEL_INDEX), &model_index(scheduler))
        },
    )
}
