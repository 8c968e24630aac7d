//! An audio model directory and what can be done with it. The directory holds `config.json` (the
//! [`AudioNetworkConfig`], tagged `diffwave` or `unet1d`), `model.safetensors` (its weights),
//! `scheduler_config.json` (a diffusers scheduler config, DDPM by default, so the noise schedule
//! travels with the weights) and `diffuse.json` ([`AudioModelInfo`]: sample rate, channels, the
//! training clip length and how the data was normalised).
//!
//! [`AudioPipeline`] samples clips of any length with every sampler in `diffuse-core` (the
//! networks are fully convolutional, so a model trained on 1-second clips makes 3-second ones),
//! fills gaps in a recording (inpainting along time: the known audio is noised to each step's level
//! and replaces the sample outside the gap, optionally with RePaint's resampling; the recording is
//! brought to the model's level, rate and channels for that and the gap back to the recording's,
//! so the gap is as loud as its surroundings and the output has the input's rate and channels;
//! with [`AudioPipeline::fill_gap_exact`] the recording outside the gap stays bit for bit as
//! stored, whatever its sample format) and writes WAV files. Saving writes a sibling temporary
//! directory and renames it into place. Loading checks every field of `diffuse.json` it relies
//! on, and a network that makes NaN is an error rather than silent output.

use crate::clip::AudioClip;
use crate::data::AudioDataConfig;
use crate::network::{AudioNetwork, AudioNetworkConfig};
use crate::wav::ExactAudio;
use diffuse_core::denoiser::Denoiser;
use diffuse_core::editing::{self, Resampling};
use diffuse_core::guidance::ClassSpace;
use diffuse_core::losses::ObjectiveConfig;
use diffuse_core::prediction::PredictionType;
use diffuse_core::sampler_choice::{scheduler_prediction_type, SamplerChoice};
use diffuse_core::samplers::{self, Sampler, StepInfo};
use diffuse_core::scheduler_config::SchedulerConfig;
use diffuse_tensor::atomic::write_json_atomic;
use diffuse_tensor::weights::{load_var_store, save_var_store};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
pub const INFO_FILE: &str = "diffuse.json";

/// What diffuse knows about an audio model beyond the network and its schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudioModelInfo {
    /// Samples per second of the audio the model makes (and of any audio it is given).
    pub sample_rate: u32,
    /// 1 (mono) or 2 (stereo).
    pub channels: usize,
    /// Length of the training clips, in frames (the default length of samples).
    pub clip_frames: usize,
    /// How the training clips were made (normalisation, silence trimming, the validation split),
    /// so `eval audio` can cut held-out clips the same way.
    pub data: Option<AudioDataConfig>,
    /// The dataset the model was trained on: a dataset name, or the absolute path of a folder or
    /// file (so `eval audio` finds it from any folder).
    pub dataset: Option<String>,
    pub objective: Option<ObjectiveConfig>,
    /// Optimiser steps it was trained for.
    pub steps: Option<u64>,
    /// Names of the classes of a class-conditional model, by label (the null class, label K,
    /// is the network's last class row and has no name).
    pub class_names: Option<Vec<String>>,
    /// The factor the training clips were multiplied by after normalisation (e.g. to bring
    /// their spread to 0.5); samples are divided by it. `None`: 1.
    pub data_scale: Option<f64>,
}

impl Default for AudioModelInfo {
    fn default() -> Self {
        AudioModelInfo {
            sample_rate: 16000,
            channels: 1,
            clip_frames: 16384,
            data: None,
            dataset: None,
            objective: None,
            steps: None,
            class_names: None,
            data_scale: None,
        }
    }
}

/// How to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioSampleOptions {
    /// Number of clips.
    pub num: usize,
    /// Length of each clip in seconds; `None` = the training clip length.
    pub seconds: Option<f64>,
    /// Sampler, steps, eta, Karras spacing (default: the model's DDPM scheduler, every step).
    pub sampler: SamplerChoice,
    /// Seed of libtorch's generator; `None` leaves it as it is.
    pub seed: Option<u64>,
    /// Clips per model call; `None` = all at once.
    pub batch_size: Option<usize>,
    /// Class label for a class-conditional model (`None`: the null class, i.e. unconditional).
    pub class: Option<i64>,
    /// Classifier-free guidance scale w (1 = plain conditional sampling).
    pub guidance: f64,
    /// Guidance rescale phi (Lin et al. 2023; 0 = off).
    pub guidance_rescale: f64,
}

impl Default for AudioSampleOptions {
    fn default() -> Self {
        AudioSampleOptions {
            num: 1,
            seconds: None,
            sampler: SamplerChoice::default(),
            seed: Some(0),
            batch_size: None,
            class: None,
            guidance: 1.0,
            guidance_rescale: 0.0,
        }
    }
}

/// The network as a [`Denoiser`] (train or eval mode; class labels, one per example or one for
/// all, or none; learned-variance channels dropped for samplers that read only the mean). One
/// label for all (`[1]`) fits any chunk of the batch.
pub struct NetworkDenoiser<'a> {
    pub network: &'a AudioNetwork,
    pub prediction_type: PredictionType,
    pub train: bool,
    /// Keep only the first this many output channels (None: all).
    pub keep_channels: Option<i64>,
    /// `[B]` or `[1]` labels (`None`: unconditional, or the null class on a class-conditional
    /// network).
    pub class_labels: Option<Tensor>,
}

impl Denoiser for NetworkDenoiser<'_> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        let out = self
            .network
            .forward_t(x_t, t, self.class_labels.as_ref(), self.train);
        match self.keep_channels {
            Some(c) if out.size()[1] > c => out.narrow(1, 0, c),
            _ => out,
        }
    }
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}

/// A denoiser that hands its inner one at most `chunk` samples per call and joins the outputs:
/// the batch size of [`AudioPipeline::sample`], which bounds the network's memory without
/// splitting the sampler's random draws (see there).
struct ChunkedDenoiser<D: Denoiser> {
    inner: D,
    chunk: i64,
}

impl<D: Denoiser> ChunkedDenoiser<D> {
    /// `f(start, len)` over consecutive chunks of `n` samples, joined along the batch.
    fn in_chunks(&self, n: i64, f: impl Fn(i64, i64) -> Tensor) -> Tensor {
        if n <= self.chunk {
            return f(0, n);
        }
        let outputs: Vec<Tensor> = (0..n)
            .step_by(self.chunk as usize)
            .map(|start| f(start, self.chunk.min(n - start)))
            .collect();
        Tensor::cat(&outputs, 0)
    }
}

impl<D: Denoiser> Denoiser for ChunkedDenoiser<D> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        self.in_chunks(x_t.size()[0], |s, l| {
            self.inner.forward(&x_t.narrow(0, s, l), &t.narrow(0, s, l))
        })
    }
    fn prediction_type(&self) -> PredictionType {
        self.inner.prediction_type()
    }
    fn self_conditioning(&self) -> bool {
        self.inner.self_conditioning()
    }
    fn forward_self_cond(&self, x_t: &Tensor, t: &Tensor, x0_prev: &Tensor) -> Tensor {
        self.in_chunks(x_t.size()[0], |s, l| {
            self.inner.forward_self_cond(
                &x_t.narrow(0, s, l),
                &t.narrow(0, s, l),
                &x0_prev.narrow(0, s, l),
            )
        })
    }
}

/// A loaded audio model.
pub struct AudioPipeline {
    pub vs: VarStore,
    pub network: AudioNetwork,
    pub scheduler: SchedulerConfig,
    pub info: AudioModelInfo,
}

/// Where the model of `dir` lives: `dir` itself, or `dir/model` for a training run directory.
pub fn resolve_model_dir(dir: &Path) -> Result<PathBuf> {
    diffuse_tensor::atomic::resolve_model_dir(dir, &[CONFIG_FILE])
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::format(
            dir,
            format!(
                "not a complete audio model directory: {name} is missing (expected {CONFIG_FILE}, \
                 {WEIGHTS_FILE}, {SCHEDULER_FILE} and {INFO_FILE})"
            ),
        ))
    }
}

impl AudioPipeline {
    /// Load a model directory (or a training run directory holding one in `model/`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let dir = resolve_model_dir(dir)?;
        let config_path = require_file(&dir, CONFIG_FILE)?;
        let weights_path = require_file(&dir, WEIGHTS_FILE)?;
        let scheduler_path = require_file(&dir, SCHEDULER_FILE)?;
        let info_path = require_file(&dir, INFO_FILE)?;
        let config = AudioNetworkConfig::from_json_file(&config_path)?;
        let scheduler = SchedulerConfig::load(&scheduler_path)?;
        let text = fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: AudioModelInfo = serde_json::from_str(&text)
            .map_err(|e| Error::format(&info_path, format!("not valid diffuse.json: {e}")))?;
        check_info(&info, &config).map_err(|e| Error::format(&info_path, e.to_string()))?;
        let vs = VarStore::new(device);
        let network = AudioNetwork::new(&vs.root(), &config)
            .map_err(|e| Error::format(&config_path, e.to_string()))?;
        load_var_store(&vs, &weights_path, true)?;
        Ok(AudioPipeline {
            vs,
            network,
            scheduler,
            info,
        })
    }

    /// A fresh (untrained) pipeline.
    pub fn new(
        config: &AudioNetworkConfig,
        scheduler: SchedulerConfig,
        info: AudioModelInfo,
        device: Device,
    ) -> Result<Self> {
        check_info(&info, config)?;
        let vs = VarStore::new(device);
        let network = AudioNetwork::new(&vs.root(), config)?;
        Ok(AudioPipeline {
            vs,
            network,
            scheduler,
            info,
        })
    }

    /// Write the directory atomically; files a user put beside the model (a model card, clips)
    /// are kept.
    pub fn save(&self, dir: &Path) -> Result<()> {
        diffuse_tensor::atomic::write_dir_atomic(
            dir,
            CONFIG_FILE,
            &[CONFIG_FILE, WEIGHTS_FILE, SCHEDULER_FILE, INFO_FILE],
            |staging| {
                self.network
                    .config()
                    .to_json_file(&staging.join(CONFIG_FILE))?;
                save_var_store(&self.vs, &staging.join(WEIGHTS_FILE), None)?;
                self.scheduler.save(&staging.join(SCHEDULER_FILE))?;
                write_json_atomic(&staging.join(INFO_FILE), &self.info)
            },
        )
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn sample_rate(&self) -> u32 {
        self.info.sample_rate
    }

    pub fn channels(&self) -> usize {
        self.info.channels
    }

    /// The network's parameterisation (the scheduler's `prediction_type`).
    pub fn prediction_type(&self) -> PredictionType {
        scheduler_prediction_type(&self.scheduler)
    }

    /// The sampler `choice` describes, with its timesteps set.
    pub fn sampler(&self, choice: &SamplerChoice) -> Result<Box<dyn Sampler>> {
        choice.build(&self.scheduler)
    }

    /// Frames in a clip of `seconds` (`None`: the training clip length).
    pub fn frames_for(&self, seconds: Option<f64>) -> Result<usize> {
        let Some(seconds) = seconds else {
            return Ok(self.info.clip_frames);
        };
        let frames = (seconds * self.info.sample_rate as f64).round();
        if !(seconds.is_finite() && frames >= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "--seconds: must be a positive length of at least one sample (1/{} s), got {seconds}",
                self.info.sample_rate
            )));
        }
        if frames > 3600.0 * self.info.sample_rate as f64 {
            return Err(Error::InvalidArgument(format!(
                "--seconds: {seconds} s is more than an hour of audio"
            )));
        }
        Ok(frames as usize)
    }

    /// The model's classes as sampling checks them.
    pub fn class_space(&self) -> ClassSpace {
        let config = self.network.config();
        ClassSpace {
            class_embedded: config.num_classes().is_some(),
            num_classes: config.num_classes(),
            null_class: config.null_class(),
            class_names: self.info.class_names.clone(),
        }
    }

    /// The factor samples are divided by (the training data's scale).
    pub fn data_scale(&self) -> f64 {
        self.info.data_scale.unwrap_or(1.0)
    }

    /// Run `f` with the denoiser `options` ask for: the network for the class (or none),
    /// guided by its null-class half when the guidance scale or rescale asks, and handed the
    /// batch `chunk` examples at a time (guidance inside the chunks, so a chunk's two halves
    /// see the same examples).
    fn with_denoiser<T>(
        &self,
        options: &AudioSampleOptions,
        chunk: i64,
        f: impl FnOnce(&dyn Denoiser) -> Result<T>,
    ) -> Result<T> {
        let labels = self.class_space().guided(
            options.class,
            options.guidance,
            options.guidance_rescale,
            1,
            self.device(),
        )?;
        let learned = options.sampler.uses_learned_variance(&self.scheduler)?;
        let channels = self.info.channels as i64;
        let out = self.network.config().out_channels();
        let network = |class_labels: Option<Tensor>| NetworkDenoiser {
            network: &self.network,
            prediction_type: self.prediction_type(),
            train: false,
            keep_channels: (out > channels && !learned).then_some(channels),
            class_labels,
        };
        labels.with_denoiser(
            options.guidance,
            options.guidance_rescale,
            network,
            |model| {
                f(&ChunkedDenoiser {
                    inner: model,
                    chunk,
                })
            },
        )
    }

    fn check_num(options: &AudioSampleOptions) -> Result<()> {
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

    /// Sample `options.num` clips: `[N, C, L]` in [-1, 1]. `on_step(done, total)` reports
    /// progress over the sampler's steps.
    ///
    /// All `num` clips go through the sampler together and only the network sees them
    /// `batch_size` at a time: the initial noise and every stochastic step's noise are drawn for
    /// all clips at once from the seeded generator, so each clip depends on the seed and its
    /// index alone, never on the batch size (which bounds the network's memory, the part that
    /// grows with the batch; the samples themselves, `num * C * L` floats, stay whole). With no
    /// batch size this is diffusers' own order of draws.
    pub fn sample(
        &self,
        options: &AudioSampleOptions,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Tensor> {
        Self::check_num(options)?;
        let frames = self.frames_for(options.seconds)? as i64;
        let channels = self.info.channels as i64;
        let chunk = options.batch_size.unwrap_or(options.num).max(1) as i64;
        self.with_denoiser(options, chunk, |model| {
            if let Some(seed) = options.seed {
                diffuse_tensor::manual_seed(seed);
            }
            let mut sampler = self.sampler(&options.sampler)?;
            let total = sampler.timesteps().len();
            // The initial noise comes from the CPU generator, as diffusers' pipelines draw it.
            let noise = Tensor::randn(
                [options.num as i64, channels, frames],
                (Kind::Float, Device::Cpu),
            )
            .to(self.device())
                * sampler.init_noise_sigma();
            let mut done = 0;
            let x = samplers::sample(sampler.as_mut(), model, noise, |_: &StepInfo<'_>| {
                done += 1;
                on_step(done, total);
            })?;
            check_generated(&x)?;
            Ok((x / self.data_scale())
                .clamp(-1.0, 1.0)
                .to_device(Device::Cpu))
        })
    }

    /// [`AudioPipeline::sample`] as clips at the model's rate.
    pub fn sample_clips(
        &self,
        options: &AudioSampleOptions,
        on_step: impl FnMut(usize, usize),
    ) -> Result<Vec<AudioClip>> {
        let x = self.sample(options, on_step)?;
        (0..x.size()[0])
            .map(|i| AudioClip::from_tensor(&x.get(i), self.info.sample_rate))
            .collect()
    }

    /// `clip` at the model's rate and channel count (resampled and mixed as needed).
    pub fn conform(&self, clip: &AudioClip) -> Result<AudioClip> {
        clip.to_channels(self.info.channels)?
            .resample(self.info.sample_rate)
    }

    /// Fill the part of `clip` between `start` and `end` seconds with generated audio that fits
    /// what surrounds it; `options.num` versions are made (`options.seconds` is ignored: the
    /// length is the clip's). With `resampling`, RePaint's jumps, which blend the boundaries
    /// better at the price of more model calls.
    ///
    /// Each version has the clip's own rate, channels and length, and outside the gap its
    /// samples unchanged. The model works at its level, rate and channels: the clip is mixed and
    /// resampled to them ([`AudioPipeline::conform`]) and scaled the way its training data was
    /// normalised (`diffuse.json`'s `data.normalize`; the level is measured on the kept audio
    /// within a training clip's length of the gap, see [`AudioPipeline::level_gain`]), the gap is
    /// filled, and the filled audio scaled back, so the gap is as loud as its surroundings, not
    /// as loud as the training data. When the clip had to be resampled or mixed, the gap is
    /// resampled back and spread to (or mixed down to) the clip's channels, and its first and
    /// last 5 ms (at most a quarter of the gap each) fade linearly from the recording into the
    /// generated audio: the model's audio is band-limited to its rate and has its channel
    /// count, so without a fade the full-band (or stereo) recording would step into it with a
    /// click.
    pub fn fill_gap(
        &self,
        clip: &AudioClip,
        gap: (f64, f64),
        resampling: Option<Resampling>,
        options: &AudioSampleOptions,
        mut on_step: impl FnMut(usize),
    ) -> Result<Vec<AudioClip>> {
        Self::check_num(options)?;
        let conformed = self.conform(clip)?;
        let (range, model_range) = self.gap_frames_of(clip, conformed.frames(), gap)?;
        let gain = self.level_gain(&conformed, &model_range);
        let n = options.num as i64;
        let x = self.with_denoiser(options, n.max(1), |model| {
            self.inpaint_gap(
                &conformed,
                gain,
                &model_range,
                resampling,
                options,
                model,
                &mut on_step,
            )
        })?;
        let (first, len) = (model_range.start as i64, model_range.len() as i64);
        let device = self.device();
        let recording = conformed.to_tensor().to(device).unsqueeze(0);
        let l = conformed.frames() as i64;
        let mask = Tensor::ones([1, 1, l], (Kind::Float, device));
        let _ = mask.narrow(2, first, len).fill_(0.0);
        // Clamped where the model's audio lives, then brought back to the recording's level
        // (and clamped again: a recording quieter than the data never needs it, a louder one
        // may). The recording outside the gap is exact, not a re-noised copy, nor scaled there
        // and back; a choice rather than `known * mask + x * (1 - mask)`, in which one NaN would
        // spread over the whole clip.
        let generated = (x.clamp(-1.0, 1.0) / gain as f64).clamp(-1.0, 1.0);
        let x = recording
            .where_self(&mask.gt(0.5), &generated)
            .to_device(Device::Cpu);
        let converted =
            clip.sample_rate != self.info.sample_rate || clip.num_channels() != self.info.channels;
        (0..n)
            .map(|i| {
                let filled = AudioClip::from_tensor(&x.get(i), self.info.sample_rate)?;
                if !converted {
                    // `conform` returned the clip itself: outside the gap `filled` is `clip`.
                    return Ok(filled);
                }
                // The whole clip is resampled, not the gap alone, so the filter sees the audio
                // on both sides of the gap's edges as the forward conversion did.
                let back = filled
                    .resample(clip.sample_rate)?
                    .to_channels(clip.num_channels())?
                    .fit_length(clip.frames());
                Ok(splice_with_fades(clip, &back, range.clone()))
            })
            .collect()
    }

    /// The inpainting loop of [`AudioPipeline::fill_gap`]: the conformed recording at the
    /// model's level (and the data's scale) outside `model_range`, generated inside; returns the
    /// samples at the model's level.
    #[allow(clippy::too_many_arguments)]
    fn inpaint_gap(
        &self,
        conformed: &AudioClip,
        gain: f32,
        model_range: &Range<usize>,
        resampling: Option<Resampling>,
        options: &AudioSampleOptions,
        model: &dyn Denoiser,
        on_step: &mut impl FnMut(usize),
    ) -> Result<Tensor> {
        let scale = self.data_scale();
        if let Some(seed) = options.seed {
            diffuse_tensor::manual_seed(seed);
        }
        let n = options.num as i64;
        let c = self.info.channels as i64;
        let l = conformed.frames() as i64;
        let (first, len) = (model_range.start as i64, model_range.len() as i64);
        let device = self.device();
        let recording = conformed.to_tensor().to(device).unsqueeze(0);
        let known = (&recording * (gain as f64 * scale))
            .expand([n, c, l], false)
            .contiguous();
        // 1 = keep the recording, 0 = generate.
        let mask = Tensor::ones([1, 1, l], (Kind::Float, device));
        let _ = mask.narrow(2, first, len).fill_(0.0);
        let mut sampler = self.sampler(&options.sampler)?;
        let noise = Tensor::randn([n, c, l], (Kind::Float, Device::Cpu)).to(device)
            * sampler.init_noise_sigma();
        let x = editing::inpaint(
            sampler.as_mut(),
            model,
            noise,
            &known,
            &mask,
            resampling,
            |i, _| on_step(i),
        )?;
        check_generated(&x.narrow(2, first, len))?;
        Ok(x / scale)
    }

    /// The gain that brings `conformed` (a recording at the model's rate and channels) to the
    /// level the model was trained at, measured as training measured it (`diffuse.json`'s
    /// `data.normalize`: peak, RMS or none) on the recording outside `gap` and within a training
    /// clip's length of it, the context the model was trained to see. 1 where nothing says how
    /// the data was normalised, where it was not, and where the gap is the whole recording (no
    /// surroundings to match). At most [`MAX_LEVEL_GAIN`]: surroundings that are silent, or
    /// nearly, would ask for an unbounded gain, and at this one the gap over them comes back
    /// 100 dB below the model's level, silent too.
    pub fn level_gain(&self, conformed: &AudioClip, gap: &Range<usize>) -> f32 {
        let Some(normalize) = self.info.data.as_ref().map(|d| d.normalize) else {
            return 1.0;
        };
        let frames = conformed.frames();
        let before = gap.start.saturating_sub(self.info.clip_frames)..gap.start.min(frames);
        let after = gap.end.min(frames)..gap.end.saturating_add(self.info.clip_frames).min(frames);
        let kept = AudioClip {
            sample_rate: conformed.sample_rate,
            channels: conformed
                .channels
                .iter()
                .map(|ch| [&ch[before.clone()], &ch[after.clone()]].concat())
                .collect(),
        };
        if kept.frames() == 0 {
            return 1.0;
        }
        normalize
            .gain(&kept)
            .map_or(MAX_LEVEL_GAIN, |g| g.min(MAX_LEVEL_GAIN))
    }

    /// The frames `[first, last)` of a clip of `frames` frames at the model's rate that the gap
    /// `(start, end)` (seconds) covers; errors name `--gap`.
    pub fn gap_frames(&self, frames: usize, gap: (f64, f64)) -> Result<Range<usize>> {
        gap_range(self.info.sample_rate, frames, gap)
    }

    /// The frames the gap `(start, end)` (seconds) covers in `recording` and in the same
    /// recording at the model's rate, `conformed_frames` long ([`AudioPipeline::conform`]); the
    /// gap must cover at least one frame at both rates. Errors name `--gap`.
    pub fn gap_frames_of(
        &self,
        recording: &AudioClip,
        conformed_frames: usize,
        gap: (f64, f64),
    ) -> Result<(Range<usize>, Range<usize>)> {
        let at_input = gap_range(recording.sample_rate, recording.frames(), gap)?;
        // The bounds were checked against the recording; rounding may make the converted
        // recording a fraction of a frame shorter, so here the frames are only clamped.
        let rate = self.info.sample_rate;
        let frame = |t: f64| ((t * rate as f64).round() as usize).min(conformed_frames);
        let at_model = frame(gap.0)..frame(gap.1);
        if at_model.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--gap: {}:{} s is shorter than one sample at {rate} Hz, the model's rate",
                gap.0, gap.1
            )));
        }
        Ok((at_input, at_model))
    }

    /// [`AudioPipeline::fill_gap`] on a recording as read by [`crate::wav::read_audio_exact`]:
    /// every sample outside the gap comes back exactly as stored, at the recording's own rate
    /// and channel count, so written in the file's own format it is bit for bit the input, for
    /// every format (32-bit integers and 64-bit floats included, which the model's f32 cannot
    /// hold), whether or not the recording had to be resampled or mixed for the model.
    pub fn fill_gap_exact(
        &self,
        recording: &ExactAudio,
        gap: (f64, f64),
        resampling: Option<Resampling>,
        options: &AudioSampleOptions,
        on_step: impl FnMut(usize),
    ) -> Result<Vec<ExactAudio>> {
        let clip = recording.to_clip();
        let filled = self.fill_gap(&clip, gap, resampling, options, on_step)?;
        let range = gap_range(clip.sample_rate, clip.frames(), gap)?;
        filled
            .iter()
            .map(|clip| {
                let mut out = recording.clone();
                out.splice(range.clone(), clip)?;
                Ok(out)
            })
            .collect()
    }
}

/// The most [`AudioPipeline::level_gain`] amplifies a recording (100 dB).
pub const MAX_LEVEL_GAIN: f32 = 1e5;

/// The longest fade at each edge of a gap filled in a resampled or mixed recording (5 ms): long
/// enough to hide the step from the full-band recording to the model's band-limited audio,
/// short enough to leave the gap the model's.
const GAP_FADE_SECS: f64 = 0.005;

/// The frames `[first, last)` of a clip of `frames` frames at `rate` Hz that the gap `(start,
/// end)` (seconds) covers; errors name `--gap`.
fn gap_range(rate: u32, frames: usize, gap: (f64, f64)) -> Result<Range<usize>> {
    let duration = frames as f64 / rate as f64;
    let (start, end) = gap;
    if !(start.is_finite() && end.is_finite() && 0.0 <= start && start < end) {
        return Err(Error::InvalidArgument(format!(
            "--gap: expected START:END in seconds with 0 <= START < END, got {start}:{end}"
        )));
    }
    if end > duration + 0.5 / rate as f64 {
        return Err(Error::InvalidArgument(format!(
            "--gap: {start}:{end} s runs past the end of the clip, which lasts {duration:.3} s"
        )));
    }
    let first = ((start * rate as f64).round() as usize).min(frames);
    let last = ((end * rate as f64).round() as usize).min(frames);
    if last <= first {
        return Err(Error::InvalidArgument(format!(
            "--gap: {start}:{end} s is shorter than one sample at {rate} Hz"
        )));
    }
    Ok(first..last)
}

/// `clip` with the frames of `range` taken from `filled` (the same rate, channels and length),
/// faded in from `clip` over the gap's first frames and out over its last (see
/// [`GAP_FADE_SECS`]) where the gap does not start or end the clip.
fn splice_with_fades(clip: &AudioClip, filled: &AudioClip, range: Range<usize>) -> AudioClip {
    let fade = ((GAP_FADE_SECS * clip.sample_rate as f64).round() as usize).min(range.len() / 4);
    let (first, last) = (range.start, range.end);
    // The share of the generated audio at frame i of the gap: rising over the first `fade`
    // frames after a kept start, falling over the last `fade` before a kept end.
    let weight = |i: usize| {
        let ramp = |k: usize| (k + 1) as f32 / (fade + 1) as f32;
        let mut w = 1.0f32;
        if first > 0 && i - first < fade {
            w = w.min(ramp(i - first));
        }
        if last < clip.frames() && last - 1 - i < fade {
            w = w.min(ramp(last - 1 - i));
        }
        w
    };
    let mut out = clip.clone();
    for (mine, theirs) in out.channels.iter_mut().zip(&filled.channels) {
        for i in range.clone() {
            let w = weight(i);
            mine[i] = if w == 1.0 {
                theirs[i]
            } else {
                mine[i] * (1.0 - w) + theirs[i] * w
            };
        }
    }
    out
}

/// A network whose weights hold NaN (or that meets audio far outside [-1, 1]) makes NaN, which
/// would be written as silence (integer formats) or as NaN: refuse it instead.
fn check_generated(x: &Tensor) -> Result<()> {
    if x.isfinite().all().int64_value(&[]) == 0 {
        return Err(Error::InvalidArgument(
            "the model produced NaN or infinite samples: its weights may be damaged (retrain, or \
             use an earlier checkpoint)"
                .into(),
        ));
    }
    Ok(())
}

/// Every field of diffuse.json that loading, sampling and `eval audio` rely on, so a damaged or
/// hand-edited file is one error naming it rather than a panic deep in a network.
fn check_info(info: &AudioModelInfo, config: &AudioNetworkConfig) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if info.sample_rate == 0 || info.sample_rate > crate::clip::MAX_SAMPLE_RATE {
        return bad(format!(
            "sample_rate must be between 1 and {} Hz, got {}",
            crate::clip::MAX_SAMPLE_RATE,
            info.sample_rate
        ));
    }
    if !(1..=2).contains(&info.channels) {
        return bad(format!(
            "channels must be 1 (mono) or 2 (stereo), got {}",
            info.channels
        ));
    }
    if info.channels as i64 != config.in_channels() {
        return bad(format!(
            "the model makes {}-channel audio but its network takes {} channels",
            info.channels,
            config.in_channels()
        ));
    }
    // The network predicts the noise (C channels) or the noise and a variance (2C).
    let out = config.out_channels();
    if out != config.in_channels() && out != 2 * config.in_channels() {
        return bad(format!(
            "the network makes {out} channels for {}-channel audio (expected {} or, with a \
             learned variance, {})",
            info.channels,
            info.channels,
            2 * info.channels
        ));
    }
    // The same bound as --seconds: the default sample length is allocated whole.
    let max_frames = 3600 * info.sample_rate as usize;
    if info.clip_frames == 0 || info.clip_frames > max_frames {
        return bad(format!(
            "clip_frames must be between 1 and {max_frames} (an hour at {} Hz), got {}",
            info.sample_rate, info.clip_frames
        ));
    }
    if let Some(data) = &info.data {
        data.validate()
            .map_err(|e| Error::InvalidArgument(format!("data: {e}")))?;
    }
    if let Some(scale) = info.data_scale {
        if !(scale.is_finite() && scale > 0.0) {
            return bad(format!("data_scale must be a positive number, got {scale}"));
        }
    }
    if let Some(names) = &info.class_names {
        match config.num_classes() {
            None => {
                return bad(format!(
                    "class_names lists {} classes but the network is not class-conditional",
                    names.len()
                ))
            }
            Some(k) if k != names.len() as i64 => {
                return bad(format!(
                    "class_names lists {} classes but the network has {k}",
                    names.len()
                ))
            }
            _ => {}
        }
    }
    Ok(())
}
