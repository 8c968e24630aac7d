//! Training an image model: a dataset, a UNet2d, a DDPM scheduler and a core objective, run by the
//! shared [`Trainer`] (checkpoints, exact resume, EMA, metrics). The run directory holds
//! `run.json` (this config, written first so the run is reproducible from its folder),
//! `metrics.jsonl`, `checkpoints/`, `samples/step-N.png` grids, `loss.png` and, at the end,
//! `model/`, a diffusers pipeline directory (EMA weights when EMA is on).

use crate::data::{ImageDataset, Prefetcher, Split};
use crate::io::save_grid;
use crate::pipeline::{ImageModelInfo, ImagePipeline, SampleOptions, UNetDenoiser};
use crate::poisson::{to_counts, UNetCounts};
use crate::unet::{SampleSize, UNet2d, UNet2dConfig};
use diffuse_core::guidance::drop_labels;
use diffuse_core::losses::{LearnedVariance, Objective, ObjectiveConfig};
use diffuse_core::poisson::{JumpConfig, JumpProcess};
use diffuse_core::samplers::ddpm::{DdpmConfig, VarianceType};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_core::scheduler_config::SchedulerConfig;
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::train::{StepReport, TrainConfig, TrainOutcome, TrainTask, Trainer};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Everything an image training run needs; written to `RUN_DIR/run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageTrainConfig {
    /// `mnist`, `fashion-mnist`, a folder of images, or a directory/file of IDX data.
    pub data: String,
    /// Side of the (square) training images; `None` = the dataset's own size.
    pub resolution: Option<u32>,
    /// 1 (grayscale) or 3 (RGB); `None` = the dataset's own.
    pub channels: Option<u32>,
    /// Random horizontal flips.
    pub hflip: bool,
    pub batch_size: usize,
    /// The network; `sample_size`, `in_channels`, `out_channels` and the class embedding are
    /// filled in from the data and the objective.
    pub unet: UNet2dConfig,
    /// The noise schedule and sampler defaults saved with the model.
    pub scheduler: DdpmConfig,
    pub objective: ObjectiveConfig,
    /// Condition on the dataset's class labels.
    pub class_conditional: bool,
    /// Fraction of labels replaced by the null class (for classifier-free guidance).
    pub label_dropout: f64,
    pub train: TrainConfig,
    /// Write a sample grid every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Images in each grid.
    pub sample_num: usize,
    /// DDIM steps for each grid (count models: thickening steps).
    pub sample_steps: usize,
    /// Count diffusion (`--process poisson`): pixels are counts 0..255, thinned and thickened
    /// instead of noised; `None` is Gaussian diffusion. A `signal_mean` of 0 is filled in from the
    /// training data when the run starts.
    pub process: Option<JumpConfig>,
}

impl Default for ImageTrainConfig {
    fn default() -> Self {
        ImageTrainConfig {
            data: "mnist".into(),
            resolution: None,
            channels: None,
            hflip: false,
            batch_size: 64,
            unet: small_unet(),
            scheduler: DdpmConfig::default(),
            objective: ObjectiveConfig::default(),
            class_conditional: false,
            label_dropout: 0.1,
            train: TrainConfig::default(),
            sample_every: 500,
            sample_num: 16,
            sample_steps: 50,
            process: None,
        }
    }
}

/// A UNet sized for 28x28-64x64 images on a CPU: three levels of 32, 64 and 64 channels, one
/// residual block per level, self-attention at the lowest resolution.
pub fn small_unet() -> UNet2dConfig {
    UNet2dConfig {
        block_out_channels: vec![32, 64, 64],
        down_block_types: vec![
            "DownBlock2D".into(),
            "DownBlock2D".into(),
            "AttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "AttnUpBlock2D".into(),
            "UpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        layers_per_block: 1,
        norm_num_groups: 16,
        attention_head_dim: Some(32),
        ..UNet2dConfig::default()
    }
}

/// Files of a run directory.
pub const RUN_CONFIG: &str = "run.json";
pub const MODEL_DIR: &str = "model";

/// Load the run's dataset as the config describes.
pub fn load_dataset(config: &ImageTrainConfig, split: Split) -> Result<ImageDataset> {
    ImageDataset::load(
        &config.data,
        split,
        config.resolution,
        config.channels,
        &ImageDataset::default_datasets_dir(),
    )
}

/// Fill the UNet config from the data and the objective: image size and channels, output
/// channels (doubled with a learned variance), and class embeddings (+1 null class).
pub fn complete_unet_config(config: &mut ImageTrainConfig, data: &ImageDataset) -> Result<()> {
    let unet = &mut config.unet;
    unet.in_channels = data.channels();
    unet.out_channels = if config.objective.learned_variance.is_some() {
        2 * data.channels()
    } else {
        data.channels()
    };
    unet.sample_size = Some(if data.height() == data.width() {
        SampleSize::Square(data.height())
    } else {
        SampleSize::HeightWidth([data.height(), data.width()])
    });
    if config.class_conditional {
        let classes = data.num_classes().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--class-conditional: the dataset {} has no class labels (IDX label files or one subfolder per class)",
                config.data
            ))
        })?;
        unet.num_class_embeds = Some(classes + 1);
        unet.class_embed_type = None;
    }
    config.scheduler.prediction_type = config.objective.prediction_type;
    config.scheduler.variance_type = match config.objective.learned_variance {
        Some(lv) => lv.variance_type,
        None => VarianceType::FixedSmall,
    };
    unet.validate()?;
    // The UNet halves the image once per level after the first, so both sides must divide.
    let levels = unet.block_out_channels.len().max(1) as u32;
    let multiple = 1i64 << (levels - 1);
    let (h, w) = (data.height(), data.width());
    if h % multiple != 0 || w % multiple != 0 {
        let up = |side: i64| (side + multiple - 1) / multiple * multiple;
        return Err(Error::InvalidArgument(format!(
            "--resolution: the images are {h}x{w}, but a UNet with {levels} levels halves them {} \
             times, so both sides must be multiples of {multiple}: use --resolution {} (or fewer \
             levels with --block-out-channels)",
            levels - 1,
            up(h.min(w)),
        )));
    }
    Ok(())
}

/// The model-specific half of the training loop.
struct ImageTask<'a> {
    config: &'a ImageTrainConfig,
    unet: &'a UNet2d,
    objective: Objective,
    /// Set for count diffusion (then `objective` is unused).
    process: Option<JumpProcess>,
    prefetcher: Prefetcher,
    device: Device,
    null_class: Option<i64>,
    /// A second network for preview grids and the export, so sampling with EMA weights leaves
    /// training alone.
    preview: ImagePipeline,
    run_dir: PathBuf,
}

impl ImageTask<'_> {
    fn write_previews(&mut self, trainer: &Trainer<'_>, step: u64) -> Result<()> {
        trainer.copy_averaged_weights_to(&self.preview.vs);
        let options = SampleOptions {
            num: self.config.sample_num,
            // Count models have their own sampler (the pipeline's default for them).
            sampler: self.process.is_none().then(|| "ddim".to_string()),
            steps: Some(self.config.sample_steps),
            seed: Some(self.config.train.seed),
            class: None,
            ..SampleOptions::default()
        };
        let images = sample_with(&self.preview, &options)?;
        let path = self
            .run_dir
            .join("samples")
            .join(format!("step-{step:09}.png"));
        fs::create_dir_all(path.parent().expect("has parent"))
            .map_err(|e| Error::io(&self.run_dir, e))?;
        save_grid(&images, &path, None)?;
        write_loss_curve(&self.run_dir)?;
        Ok(())
    }
}

/// Sample a preview grid: unconditional, or spread over the classes when the model is
/// class-conditioned.
fn sample_with(view: &ImagePipeline, options: &SampleOptions) -> Result<Tensor> {
    let info = &view.info;
    if info.null_class.is_some() {
        let classes = view.num_classes().unwrap_or(1).max(1) as usize;
        let mut all = Vec::new();
        let per_row = options.num.div_ceil(classes).max(1);
        for class in 0..classes.min(options.num) {
            let o = SampleOptions {
                num: per_row,
                class: Some(class as i64),
                seed: options.seed.map(|s| s + class as u64),
                ..options.clone()
            };
            all.push(view.sample(&o, |_, _| {})?);
        }
        return Ok(Tensor::cat(&all, 0).narrow(0, 0, options.num as i64));
    }
    view.sample(options, |_, _| {})
}

pub use diffuse_tensor::plot::write_loss_curve;

impl TrainTask for ImageTask<'_> {
    fn loss(&mut self, step: u64, micro_batch: u64) -> Result<Tensor> {
        let index = step * self.config.train.grad_accum + micro_batch;
        let (x0, labels) = self.prefetcher.get(index);
        let x0 = x0.to(self.device);
        let labels = match (self.null_class, labels) {
            (Some(null), Some(l)) => Some(drop_labels(
                &l.to(self.device),
                self.config.label_dropout,
                null,
            )),
            _ => None,
        };
        if let Some(process) = &self.process {
            let model = UNetCounts {
                unet: self.unet,
                class_labels: labels,
                unconditional_labels: None,
                guidance: 1.0,
                train: true,
            };
            return Ok(process.loss(&model, &to_counts(&x0)));
        }
        let model = UNetDenoiser {
            unet: self.unet,
            prediction_type: self.config.objective.prediction_type,
            class_labels: labels,
            train: true,
            keep_channels: None,
        };
        Ok(self.objective.loss(&model, &x0)?.loss)
    }

    fn after_step(&mut self, report: &StepReport, trainer: &Trainer<'_>) -> Result<()> {
        let every = self.config.sample_every;
        if every > 0 && report.step % every == 0 {
            self.write_previews(trainer, report.step)?;
        }
        Ok(())
    }
}

/// Train (or, with `resume`, continue) the run in `run_dir`. `stop_after` ends this call early
/// after that many total steps, as an interruption would (for tests and time-boxed sessions).
pub fn train_image_model(
    config: &ImageTrainConfig,
    run_dir: &Path,
    device: Device,
    resume: bool,
    stop_after: Option<u64>,
) -> Result<TrainOutcome> {
    let mut config = config.clone();
    let data = Arc::new(load_dataset(&config, Split::Train)?);
    complete_unet_config(&mut config, &data)?;
    if data.len() < config.batch_size {
        tracing::warn!(
            images = data.len(),
            batch = config.batch_size,
            "the dataset is smaller than one batch; batches repeat images"
        );
    }
    if let Some(process) = &mut config.process {
        if config.objective.learned_variance.is_some() {
            return Err(Error::InvalidArgument(
                "--objective hybrid: a learned variance is for Gaussian diffusion, not \
                 --process poisson"
                    .into(),
            ));
        }
        crate::poisson::check_image_config(process)?;
        if process.signal_mean <= 0.0 {
            process.signal_mean = mean_pixel_count(&data);
        }
    }
    let process = config.process.clone().map(JumpProcess::new).transpose()?;
    if !(0.0..1.0).contains(&config.label_dropout) {
        return Err(Error::InvalidArgument(format!(
            "--label-dropout: must lie in [0, 1), got {}",
            config.label_dropout
        )));
    }
    if config.batch_size == 0 {
        return Err(Error::InvalidArgument(
            "--batch-size: must be at least 1".into(),
        ));
    }

    // The initial weights come from the run's seed, so a run is reproducible from its run.json.
    diffuse_tensor::manual_seed(config.train.seed);
    let vs = VarStore::new(device);
    let unet = UNet2d::new(&vs.root(), &config.unet)?;
    let schedule = NoiseSchedule::new(&config.scheduler.schedule)?;
    let objective = Objective::new(schedule, config.objective.clone())?;
    let sampler = EpochSampler::new(data.len(), config.batch_size, config.train.seed);
    let prefetcher = Prefetcher::new(data.clone(), sampler, config.hflip, config.train.seed);
    let null_class = config
        .class_conditional
        .then(|| data.num_classes())
        .flatten();
    let info = ImageModelInfo {
        class_names: data.class_names().map(|n| n.to_vec()),
        null_class,
        dataset: Some(config.data.clone()),
        objective: config.process.is_none().then(|| config.objective.clone()),
        steps: Some(config.train.steps),
        process: config.process.clone(),
    };
    let preview = ImagePipeline::new(
        &config.unet,
        SchedulerConfig::Ddpm(config.scheduler.clone()),
        info.clone(),
        device,
    )?;
    let mut task = ImageTask {
        config: &config,
        unet: &unet,
        objective,
        process,
        prefetcher,
        device,
        null_class,
        preview,
        run_dir: run_dir.to_path_buf(),
    };
    let mut trainer = Trainer::new(&vs, config.train.clone(), run_dir)?;
    trainer.begin_run(RUN_CONFIG, &config, resume)?;
    let until = stop_after.unwrap_or(config.train.steps);
    let (summary, model_dir) = trainer.run_and_finish(
        &mut task,
        until,
        config.sample_every,
        |task, trainer, step| task.write_previews(trainer, step),
        |task, trainer| {
            // Export the EMA weights when there are any: they are the ones worth sampling from.
            trainer.copy_averaged_weights_to(&task.preview.vs);
            let model_dir = run_dir.join(MODEL_DIR);
            task.preview.save(&model_dir)?;
            Ok(model_dir)
        },
    )?;
    Ok(TrainOutcome { summary, model_dir })
}

/// The mean pixel count 0..255 of (up to 10,000 of) the images: the data mean m that sets a count
/// model's log-SNR endpoints.
pub fn mean_pixel_count(data: &ImageDataset) -> f64 {
    let n = data.len().min(10_000);
    let idx: Vec<usize> = (0..n).collect();
    let mut sum = 0.0;
    for chunk in idx.chunks(1000) {
        let (x, _) = data.batch(chunk, false, Device::Cpu);
        sum += to_counts(&x).sum(tch::Kind::Double).double_value(&[]) / x.numel() as f64
            * chunk.len() as f64;
    }
    (sum / n.max(1) as f64).max(1e-3)
}

/// The hybrid objective (learned variance, L_simple + 0.001 L_vlb; Nichol & Dhariwal 2021).
pub fn hybrid_objective(base: ObjectiveConfig) -> ObjectiveConfig {
    ObjectiveConfig {
        learned_variance: Some(LearnedVariance::default()),
        ..base
    }
}

/// Read a run's saved config (for `--resume`).
pub fn read_run_config(run_dir: &Path) -> Result<ImageTrainConfig> {
    diffuse_tensor::atomic::read_json(&run_dir.join(RUN_CONFIG), "a run config")
}
