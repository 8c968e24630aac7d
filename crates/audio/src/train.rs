//! Training an audio model: a dataset of fixed-length clips, a 1-D network (DiffWave-style or
//! UNet1d), a DDPM noise schedule and a core objective, run by the shared [`Trainer`]
//! (checkpoints, exact resume, EMA, metrics). The run directory holds `run.json` (this config,
//! written first so the run is reproducible from its folder), `metrics.jsonl`, `checkpoints/`,
//! `samples/step-N.wav` with its spectrogram `samples/step-N.png` (the preview clips one after
//! another, a short silence between them), `loss.png` and, at the end, `model/` (EMA weights when
//! EMA is on).
//!
//! The default schedule is DiffWave's for unconditional generation (Kong et al. 2021, sec. 5.3:
//! T = 200, betas linear from 1e-4 to 0.02), on which its 6-step fast sampler aligns.

use crate::clip::AudioClip;
use crate::data::{files_for_held_out, split_indices, AudioDataConfig, AudioDataset, Split};
use crate::eval::MIN_HELD_OUT_CLIPS;
use crate::features::save_spectrogram_png;
use crate::network::{AudioNetwork, AudioNetworkConfig};
use crate::pipeline::{AudioModelInfo, AudioPipeline, AudioSampleOptions, NetworkDenoiser};
use crate::wav::{write_wav, SampleFormat};
use diffuse_core::guidance::drop_labels;
use diffuse_core::losses::{Objective, ObjectiveConfig};
use diffuse_core::sampler_choice::SamplerChoice;
use diffuse_core::samplers::ddpm::{DdpmConfig, VarianceType};
use diffuse_core::schedule::{BetaScheduleConfig, NoiseSchedule};
use diffuse_core::scheduler_config::SchedulerConfig;
use diffuse_tensor::data::EpochSampler;
use diffuse_tensor::plot::write_loss_curve;
use diffuse_tensor::train::{StepReport, TrainConfig, TrainOutcome, TrainTask, Trainer};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Files of a run directory.
pub const RUN_CONFIG: &str = "run.json";
pub const MODEL_DIR: &str = "model";

/// Everything an audio training run needs; written to `RUN_DIR/run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudioTrainConfig {
    /// `speech`, `drums`, a folder of audio files or one file (`train audio` records paths
    /// absolute, so the run resumes from any folder).
    pub data: String,
    /// Rate, channels, clip length, normalisation and the validation split.
    pub audio: AudioDataConfig,
    /// The network; its channels are filled in from the data and the objective.
    pub network: AudioNetworkConfig,
    /// The noise schedule and sampler defaults saved with the model.
    pub scheduler: DdpmConfig,
    pub objective: ObjectiveConfig,
    pub batch_size: usize,
    pub train: TrainConfig,
    /// Write preview clips every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Clips in each preview.
    pub sample_num: usize,
    /// Sampler of the previews (a name `diffuse sample audio --sampler` takes).
    pub sample_sampler: String,
    /// Its steps (`None`: the sampler's default).
    pub sample_steps: Option<usize>,
    /// Condition the network on the data's classes (kit instrument names or class folders),
    /// with a null class for unlabelled clips, label dropout and classifier-free guidance.
    pub class_conditional: bool,
    /// Fraction of training labels replaced by the null class (classifier-free guidance's
    /// unconditional half; Ho & Salimans use 0.1 to 0.2).
    pub label_dropout: f64,
    /// What the normalised training clips are multiplied by before noise is added. (A run
    /// written before the field existed had none: read as a factor of 1, not today's default.)
    #[serde(default)]
    pub data_scale: DataScale,
}

/// How the training clips are scaled after normalisation: by a fixed factor, or by the factor
/// that brings the training set's standard deviation to a target (EDM's sigma_data, Karras et
/// al. 2022: a diffusion model's noise levels are set for data of a known spread; peak-normalised
/// drum one-shots have a spread near 0.13, so most noise levels hide them).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataScale {
    Fixed(f64),
    Std(f64),
}

impl Default for DataScale {
    fn default() -> Self {
        DataScale::Fixed(1.0)
    }
}

impl DataScale {
    /// The factor for the training clips `clips`.
    pub fn factor(&self, clips: &Tensor) -> Result<f64> {
        let factor = match *self {
            DataScale::Fixed(f) => f,
            DataScale::Std(target) => {
                let std = clips.to_kind(Kind::Double).std(true).double_value(&[]);
                if std.is_nan() || std <= 0.0 {
                    return Err(Error::InvalidArgument(
                        "--data-scale: the training clips are silent, so no factor brings their spread to a target".into(),
                    ));
                }
                target / std
            }
        };
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "--data-scale: the factor must be a positive number, got {factor}"
            )));
        }
        Ok(factor)
    }
}

/// DiffWave's schedule for unconditional generation: T = 200, betas linear in [1e-4, 0.02].
pub fn diffwave_schedule() -> DdpmConfig {
    DdpmConfig {
        schedule: BetaScheduleConfig {
            num_train_timesteps: 200,
            beta_start: 1e-4,
            beta_end: 0.02,
            ..BetaScheduleConfig::default()
        },
        ..DdpmConfig::default()
    }
}

/// The recipe's network (chosen at equal training time on the drums, BENCHMARKS.md "Choosing
/// the audio recipe"): a UNet1d of five levels (16, 32, 64, 96 and 128 channels, x4 between
/// them, so the middle runs at 1/256 of the rate and its receptive field spans a whole
/// half-second clip), and self-attention in the two coarsest levels' blocks and the middle. No
/// position channel: with a receptive field over the whole clip the network placed the decay as
/// well without it (the measurement's ablation).
pub fn recipe_network() -> AudioNetworkConfig {
    AudioNetworkConfig::Unet1d(crate::unet1d::UNet1dConfig {
        block_out_channels: vec![16, 32, 64, 96, 128],
        down_factors: vec![4, 4, 4, 4],
        attention_levels: vec![false, false, false, true, true],
        ..crate::unet1d::UNet1dConfig::default()
    })
}

/// The recipe's schedule: DiffWave's betas rescaled to end at pure noise (zero terminal SNR, Lin
/// et al. 2023), sampled from the last step ("trailing"); it needs v- or sample-prediction.
pub fn recipe_schedule() -> DdpmConfig {
    let mut scheduler = diffwave_schedule();
    scheduler.schedule.rescale_betas_zero_snr = true;
    scheduler.timestep_spacing = diffuse_core::schedule::TimestepSpacing::Trailing;
    scheduler
}

/// The default clip length of `data` at `sample_rate` for `network`: about 0.512 s for drums
/// (one-shots decay within it) and 1.024 s otherwise, rounded up to a length the network takes
/// whole (a multiple of the UNet's down factors), so no clip is padded with clean silence.
pub fn default_clip_frames(data: &str, sample_rate: u32, network: &AudioNetworkConfig) -> usize {
    let seconds = match data {
        "drums" => 0.512,
        _ => 1.024,
    };
    let frames = (seconds * sample_rate as f64).round().max(1.0) as i64;
    let multiple = network.length_multiple().max(1);
    (((frames + multiple - 1) / multiple) * multiple) as usize
}

impl Default for AudioTrainConfig {
    /// The measured recipe: [`recipe_network`], [`recipe_schedule`] with v-prediction, the clips
    /// scaled to a spread of 0.5, previews by DDIM in 50 steps (DiffWave's 6-step schedule fits
    /// only its own linear betas).
    fn default() -> Self {
        AudioTrainConfig {
            data: "speech".into(),
            audio: AudioDataConfig::default(),
            network: recipe_network(),
            scheduler: recipe_schedule(),
            objective: ObjectiveConfig {
                prediction_type: diffuse_core::prediction::PredictionType::VPrediction,
                ..ObjectiveConfig::default()
            },
            batch_size: 16,
            train: TrainConfig::default(),
            sample_every: 500,
            sample_num: 4,
            sample_sampler: "ddim".into(),
            sample_steps: None,
            class_conditional: false,
            label_dropout: 0.1,
            data_scale: DataScale::Std(0.5),
        }
    }
}

/// The sample rate a dataset is trained at when none is given: the speech prompts' own 8 kHz,
/// 16 kHz otherwise (drum one-shots and user folders are resampled to it).
pub fn default_sample_rate(data: &str) -> u32 {
    match data {
        "speech" => 8000,
        _ => 16000,
    }
}

/// The held-out split a dataset is trained with when none is given: for `drums`, two whole kits
/// (BJA_Pacific and Audiophob: two authors, both acoustic, every drum class present, 100 of the
/// 754 files), so evaluation hears kits the model never did; every k-th file otherwise.
pub fn default_holdout(data: &str) -> crate::data::Holdout {
    match data {
        "drums" => crate::data::Holdout::Groups(vec!["BJA_Pacific".into(), "Audiophob".into()]),
        _ => crate::data::Holdout::EveryKth,
    }
}

/// Load the run's dataset as the config describes. Loading the training split also warns (once
/// each) about what would only show later: a held-out split too small for `eval audio`, and
/// data that is all silence.
pub fn load_dataset(config: &AudioTrainConfig, split: Split) -> Result<AudioDataset> {
    let datasets_dir = AudioDataset::default_datasets_dir();
    let data = AudioDataset::load(&config.data, split, &config.audio, &datasets_dir)?;
    if split == Split::Train {
        // A group holdout holds out what its kits hold, not a fraction of the files.
        if config.audio.holdout == crate::data::Holdout::EveryKth {
            let files = crate::data::count_files(&config.data, &datasets_dir)?;
            if let Some(message) = held_out_warning(files, config.audio.validation_fraction) {
                tracing::warn!("{message}");
            }
        }
        if let Some(message) = silence_warning(&data) {
            tracing::warn!("{message}");
        }
    }
    Ok(data)
}

/// Peak below which a training set counts as silent: under half an LSB of 16-bit audio, so
/// only digital silence and dither-level noise qualify.
pub const SILENCE_PEAK: f64 = 0.5 / 32768.0;

/// Why the held-out split of `files` files at `validation_fraction` is too small for `eval
/// audio` (which needs [`MIN_HELD_OUT_CLIPS`] held-out clips), with what would fix it; `None`
/// when it is large enough. Training goes on either way: a model is worth having without eval.
pub fn held_out_warning(files: usize, validation_fraction: f64) -> Option<String> {
    let held = split_indices(files, validation_fraction, Split::Validation).len();
    if held >= MIN_HELD_OUT_CLIPS {
        return None;
    }
    let fix = match files_for_held_out(validation_fraction, MIN_HELD_OUT_CLIPS) {
        Some(needed) => format!(
            "with --val-fraction {validation_fraction} that takes at least {needed} audio files"
        ),
        None => "give --val-fraction above 0 and more audio files".to_owned(),
    };
    Some(format!(
        "the held-out split has {held} of {files} audio file(s), but `eval audio` needs at \
         least {MIN_HELD_OUT_CLIPS} held-out clips ({fix}; or evaluate later with `eval audio \
         --data` on other audio)"
    ))
}

/// A warning when every clip of `data` is silent (peak below [`SILENCE_PEAK`]): the model
/// would learn silence, which training does not otherwise show until the samples are heard.
pub fn silence_warning(data: &AudioDataset) -> Option<String> {
    if data.is_empty() {
        return None;
    }
    let peak = data.clips().abs().max().double_value(&[]);
    (peak < SILENCE_PEAK).then(|| {
        format!(
            "all {} training clips are silent (peak {peak:.1e}): the model will learn silence \
             (check the files, or --keep-silence / --seconds if the sound lies outside the cut)",
            data.len()
        )
    })
}

/// Fill the network's channels from the data and the objective (doubled output with a learned
/// variance) and the scheduler's parameterisation from the objective.
pub fn complete_config(config: &mut AudioTrainConfig) -> Result<()> {
    let c = config.audio.channels as i64;
    if !(1..=2).contains(&c) {
        return Err(Error::InvalidArgument(format!(
            "--channels: expected 1 (mono) or 2 (stereo), got {c}"
        )));
    }
    let out = if config.objective.learned_variance.is_some() {
        2 * c
    } else {
        c
    };
    config.network.set_channels(c, out);
    // A position channel without a length counts over the training clips.
    if config.network.position_channel_unsized() {
        config
            .network
            .set_position_channel(Some(config.audio.clip_frames as i64));
    }
    config.scheduler.prediction_type = config.objective.prediction_type;
    config.scheduler.variance_type = match config.objective.learned_variance {
        Some(lv) => lv.variance_type,
        None => VarianceType::FixedSmall,
    };
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
    if config.audio.sample_rate == 0 {
        return Err(Error::InvalidArgument(
            "--sample-rate: must be a positive number of samples per second, got 0".into(),
        ));
    }
    if config.audio.sample_rate > crate::clip::MAX_SAMPLE_RATE {
        return Err(Error::InvalidArgument(format!(
            "--sample-rate: {} Hz is above the {} Hz that resampling supports",
            config.audio.sample_rate,
            crate::clip::MAX_SAMPLE_RATE
        )));
    }
    if config.audio.clip_frames == 0 {
        return Err(Error::InvalidArgument(
            "--seconds: the training clips must be at least one sample long".into(),
        ));
    }
    config.network.validate()
}

/// Check a run's config the way [`train_audio_model`] uses it, before any work (no data is
/// read): the data settings, the network, and the preview sampler, whose errors name
/// `--sample-sampler` and `--sample-steps` (not the `--sampler`/`--steps` of `sample audio`).
/// Returns the completed config ([`complete_config`]).
pub fn check_config(config: &AudioTrainConfig) -> Result<AudioTrainConfig> {
    let mut config = config.clone();
    complete_config(&mut config)?;
    config.audio.validate()?;
    preview_choice(&config)
        .build(&SchedulerConfig::Ddpm(config.scheduler.clone()))
        .map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(preview_flags(&m)),
            other => other,
        })?;
    Ok(config)
}

/// The sampler of the preview clips.
fn preview_choice(config: &AudioTrainConfig) -> SamplerChoice {
    SamplerChoice {
        name: Some(config.sample_sampler.clone()),
        steps: config.sample_steps,
        ..SamplerChoice::default()
    }
}

/// A sampler error as the preview's flags say it: the sampler's own messages name the flags of
/// `sample audio` (`--sampler`, `--steps`), which `train audio` calls `--sample-sampler` and
/// `--sample-steps`.
fn preview_flags(message: &str) -> String {
    for (theirs, ours) in [
        ("--sampler:", "--sample-sampler:"),
        ("--steps:", "--sample-steps:"),
    ] {
        if let Some(rest) = message.strip_prefix(theirs) {
            return format!("{ours}{rest}");
        }
    }
    format!("--sample-sampler: {message}")
}

/// The model directory's notes for a run whose data had `class_names` (for a class-conditional
/// run) and was scaled by `data_scale`.
fn model_info(
    config: &AudioTrainConfig,
    class_names: Option<Vec<String>>,
    data_scale: f64,
) -> AudioModelInfo {
    AudioModelInfo {
        sample_rate: config.audio.sample_rate,
        channels: config.audio.channels,
        clip_frames: config.audio.clip_frames,
        data: Some(config.audio.clone()),
        // Absolute when it is a path, so `eval audio` finds the held-out clips from any folder.
        dataset: Some(diffuse_tensor::data::recorded_data_path(
            &config.data,
            &crate::data::DATASET_NAMES,
        )),
        objective: Some(config.objective.clone()),
        steps: Some(config.train.steps),
        class_names,
        data_scale: (data_scale != 1.0).then_some(data_scale),
    }
}

/// Clips one after another with `gap_seconds` of silence between them, as one clip.
pub fn concatenate(clips: &[AudioClip], gap_seconds: f64) -> Result<AudioClip> {
    let first = clips
        .first()
        .ok_or_else(|| Error::InvalidArgument("no clips to concatenate".into()))?;
    let rate = first.sample_rate;
    let gap = (gap_seconds * rate as f64).round() as usize;
    let mut channels = vec![Vec::new(); first.num_channels()];
    for (i, clip) in clips.iter().enumerate() {
        if i > 0 {
            for ch in channels.iter_mut() {
                ch.extend(std::iter::repeat_n(0.0, gap));
            }
        }
        for (ch, samples) in channels.iter_mut().zip(&clip.channels) {
            ch.extend_from_slice(samples);
        }
    }
    AudioClip::new(rate, channels)
}

/// The model-specific half of the training loop.
struct AudioTask<'a> {
    config: &'a AudioTrainConfig,
    network: &'a AudioNetwork,
    objective: Objective,
    data: &'a AudioDataset,
    sampler: EpochSampler,
    device: Device,
    /// A second network for previews and the export, so sampling with EMA weights leaves
    /// training alone.
    preview: AudioPipeline,
    run_dir: PathBuf,
    /// The factor clips are multiplied by ([`DataScale::factor`]).
    data_scale: f64,
    /// The null class of a class-conditional network.
    null_class: Option<i64>,
}

impl AudioTask<'_> {
    fn write_previews(&mut self, trainer: &Trainer<'_>, step: u64) -> Result<()> {
        trainer.copy_averaged_weights_to(&self.preview.vs);
        let options = AudioSampleOptions {
            num: self.config.sample_num.max(1),
            seconds: None,
            sampler: preview_choice(self.config),
            seed: Some(self.config.train.seed),
            batch_size: None,
            ..AudioSampleOptions::default()
        };
        // A class-conditional model previews one clip of each class, in label order.
        let clips = match self.preview.class_space().num_classes {
            Some(k) => {
                let mut clips = Vec::new();
                for class in 0..k {
                    let one = AudioSampleOptions {
                        num: 1,
                        class: Some(class),
                        seed: Some(self.config.train.seed + class as u64),
                        ..options.clone()
                    };
                    clips.extend(self.preview.sample_clips(&one, |_, _| {})?);
                }
                clips
            }
            None => self.preview.sample_clips(&options, |_, _| {})?,
        };
        let joined = concatenate(&clips, 0.25)?;
        let dir = self.run_dir.join("samples");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let wav = dir.join(format!("step-{step:09}.wav"));
        write_wav(&wav, &joined, SampleFormat::Int16)?;
        save_spectrogram_png(
            &joined.to_tensor(),
            joined.sample_rate,
            &wav.with_extension("png"),
        )?;
        write_loss_curve(&self.run_dir)
    }
}

impl TrainTask for AudioTask<'_> {
    fn loss(&mut self, step: u64, micro_batch: u64) -> Result<Tensor> {
        let index = step * self.config.train.grad_accum + micro_batch;
        let indices: Vec<i64> = self
            .sampler
            .batch(index)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let x0 = self.data.batch(&indices).to(self.device) * self.data_scale;
        let class_labels = self.null_class.map(|null| {
            let labels = self.data.batch_labels(&indices);
            // Unlabelled clips (rumpf's numbered samples, say) teach the null class only.
            let labels = labels.where_self(&labels.ge(0), &labels.full_like(null));
            drop_labels(&labels, self.config.label_dropout, null).to(self.device)
        });
        let model = NetworkDenoiser {
            network: self.network,
            prediction_type: self.config.objective.prediction_type,
            train: true,
            keep_channels: None,
            class_labels,
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

/// Train (or, with `resume`, continue) the run in `run_dir`; `stop_after` ends this call after
/// that many total steps, as an interruption would. `data` replaces loading `config.data`
/// (in-memory clips, e.g. synthetic ones in tests); it must match the config's rate and shape.
pub fn train_audio_model(
    config: &AudioTrainConfig,
    data: Option<AudioDataset>,
    run_dir: &Path,
    device: Device,
    resume: bool,
    stop_after: Option<u64>,
) -> Result<TrainOutcome> {
    // Everything but the data is checked before the data is read, which can take minutes.
    let config = check_config(config)?;
    let data = match data {
        Some(d) => d,
        None => load_dataset(&config, Split::Train)?,
    };
    let shape = data.clips().size();
    if data.sample_rate() != config.audio.sample_rate
        || shape[1] != config.audio.channels as i64
        || shape[2] != config.audio.clip_frames as i64
    {
        return Err(Error::InvalidArgument(format!(
            "the training clips are {:?} at {} Hz but the run expects [N, {}, {}] at {} Hz",
            shape,
            data.sample_rate(),
            config.audio.channels,
            config.audio.clip_frames,
            config.audio.sample_rate
        )));
    }
    if data.len() < config.batch_size {
        tracing::warn!(
            clips = data.len(),
            batch = config.batch_size,
            "the dataset is smaller than one batch; batches repeat clips"
        );
    }

    let mut config = config;
    let class_names = if config.class_conditional {
        let names = data.class_names().ok_or_else(|| {
            Error::InvalidArgument(
                "--class-conditional: the data has no classes (give a folder of class subfolders, or Hydrogen kits with drumkit.xml)".into(),
            )
        })?;
        config.network.set_classes(names.len() as i64);
        config.network.validate()?;
        Some(names.to_vec())
    } else {
        None
    };
    let data_scale = config.data_scale.factor(data.clips())?;
    if data_scale > 1.0 {
        // DDPM's and DDIM's x0 clipping must not cut the scaled data's peaks.
        config.scheduler.clip_sample_range = config.scheduler.clip_sample_range.max(data_scale);
    }

    // The initial weights come from the run's seed, so a run is reproducible from its run.json.
    diffuse_tensor::manual_seed(config.train.seed);
    let vs = VarStore::new(device);
    let network = AudioNetwork::new(&vs.root(), &config.network)?;
    let schedule = NoiseSchedule::new(&config.scheduler.schedule)?;
    let objective = Objective::new(schedule, config.objective.clone())?;
    let sampler = EpochSampler::new(data.len(), config.batch_size, config.train.seed);
    let preview = AudioPipeline::new(
        &config.network,
        SchedulerConfig::Ddpm(config.scheduler.clone()),
        model_info(&config, class_names, data_scale),
        device,
    )?;
    tracing::info!(
        clips = data.len(),
        parameters = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum::<i64>(),
        network = config.network.name(),
        "training an audio model"
    );
    let mut task = AudioTask {
        config: &config,
        network: &network,
        objective,
        data: &data,
        sampler,
        device,
        preview,
        run_dir: run_dir.to_path_buf(),
        data_scale,
        null_class: config.network.null_class(),
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
            // The EMA weights, when there are any: they are the ones worth sampling from.
            trainer.copy_averaged_weights_to(&task.preview.vs);
            let model_dir = run_dir.join(MODEL_DIR);
            task.preview.save(&model_dir)?;
            Ok(model_dir)
        },
    )?;
    Ok(TrainOutcome { summary, model_dir })
}

/// Read a run's `run.json` (for `--resume`).
pub fn read_run_config(run_dir: &Path) -> Result<AudioTrainConfig> {
    diffuse_tensor::atomic::read_json(&run_dir.join(RUN_CONFIG), "a run config")
}

/// Sines at `frequencies` (Hz), `num` clips `[num, 1, frames]` at `sample_rate`: random
/// frequency from the set, random phase, amplitude 0.5. The learning test's data.
pub fn sine_clips(num: i64, frames: i64, sample_rate: u32, frequencies: &[f64]) -> Tensor {
    let k = frequencies.len() as i64;
    let choice = Tensor::randint(k, [num], (Kind::Int64, Device::Cpu));
    let freqs = Tensor::from_slice(frequencies).index_select(0, &choice);
    let phase = Tensor::rand([num], (Kind::Double, Device::Cpu)) * (2.0 * std::f64::consts::PI);
    let t = Tensor::arange(frames, (Kind::Double, Device::Cpu)) / sample_rate as f64;
    let arg =
        freqs.unsqueeze(1) * t.unsqueeze(0) * (2.0 * std::f64::consts::PI) + phase.unsqueeze(1);
    (arg.sin() * 0.5).to_kind(Kind::Float).unsqueeze(1)
}
