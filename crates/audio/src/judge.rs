//! The audio judge: the shared classifier (`diffuse_tensor::classifier`) trained on log-mel
//! spectrograms of labelled clips (drum classes: kick, snare, hi-hat, tom, cymbal, other), shipped
//! like the MNIST one (`data/models/drums-classifier`) and used by `eval audio` to say which class
//! a generated clip sounds like and, through its penultimate features, how far generated clips
//! are from real ones (a kernel distance). No pretrained audio network is within reach here, so
//! the judge is trained on the training kits only and its honesty is measured where it matters:
//! on whole kits it never heard (the held-out kits, and leave-kits-out folds over the training
//! kits), since generated clips are, like a new kit, not recordings it has seen.
//!
//! What the network sees ([`JudgeInput`]): the clip fitted to a fixed length, averaged to mono,
//! as a log-mel spectrogram in dB relative to the clip's loudest bin, floored at `floor_db` and
//! mapped to [-1, 1]. The relative scale makes the input almost independent of level; training
//! still varies the gain (the absolute power floor of the log is not relative), delays the onset
//! by up to `max_shift` milliseconds (generated clips need not start at frame 0) and, for half of
//! the clips, adds white noise at a random level below the peak (generated clips carry a
//! residual noise floor that real ones lack); on the spectrogram it adds a random smooth
//! equaliser curve (kits differ in tonal balance) and SpecAugment's frequency and time masks;
//! all seeded ([`JudgeAugment`]).
//!
//! Records beyond the shared [`ClassifierInfo`] (how clips become inputs, how training augmented
//! them, the held-out and leave-kits-out reports) sit under the `"audio"` key of `info.json`
//! ([`AudioJudgeRecord`]).

use crate::features::{log_mel_spectrogram, MelConfig};
use diffuse_tensor::classifier::{
    classifier_outputs, load_classifier_dir, train_classifier_with, Classifier, ClassifierConfig,
    ClassifierInfo, ClassifierTrainConfig,
};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The key of `info.json` under which an audio judge keeps its [`AudioJudgeRecord`].
pub const RECORD_KEY: &str = "audio";

/// How clips become the judge network's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeInput {
    /// Rate the clips must have, Hz.
    pub sample_rate: u32,
    /// Length every clip is fitted to (cut, or padded with silence at the end), frames.
    pub clip_frames: usize,
    /// The spectrogram.
    pub mel: MelConfig,
    /// Lowest level kept, dB below the clip's loudest time-frequency bin (negative).
    pub floor_db: f64,
}

impl JudgeInput {
    /// The judge's settings for clips of `clip_frames` at `sample_rate`: a 32 ms window (512 at
    /// 16 kHz, so drum attacks stay sharp in time), hop a quarter window, 64 mel bands, an 80 dB
    /// range. (A 64 ms window with the same 8 ms hop, for finer low bands, did no better on the
    /// held-out kits: 80% against 84%, toms still heard as kicks; BENCHMARKS.md.)
    pub fn for_clips(sample_rate: u32, clip_frames: usize) -> Self {
        let ideal = (512 * sample_rate as u64 / 16000).max(64);
        let n_fft = 1usize << (63 - ideal.leading_zeros());
        JudgeInput {
            sample_rate,
            clip_frames,
            mel: MelConfig {
                sample_rate,
                n_fft,
                hop_length: n_fft / 4,
                n_mels: 64.min(n_fft / 4),
                f_min: 0.0,
                f_max: sample_rate as f64 / 2.0,
            },
            floor_db: -80.0,
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        self.mel.validate()?;
        if self.mel.sample_rate != self.sample_rate {
            return Err(Error::InvalidArgument(format!(
                "judge input: the spectrogram's rate {} Hz differs from the clips' {} Hz",
                self.mel.sample_rate, self.sample_rate
            )));
        }
        if self.clip_frames <= self.mel.n_fft / 2 || self.floor_db.is_nan() || self.floor_db >= 0.0
        {
            return Err(Error::InvalidArgument(format!(
                "judge input: clip_frames {} must exceed half the window ({}) and floor_db {} \
                 must be below 0",
                self.clip_frames,
                self.mel.n_fft / 2,
                self.floor_db
            )));
        }
        Ok(())
    }

    /// Spectrogram frames of one clip.
    pub fn frames(&self) -> i64 {
        1 + (self.clip_frames / self.mel.hop_length) as i64
    }

    /// Clips `[B, C, L]` at [`JudgeInput::sample_rate`] (any length: fitted to `clip_frames`) ->
    /// the network's input `[B, 1, n_mels, frames]` in [-1, 1].
    pub fn prepare(&self, clips: &Tensor) -> Tensor {
        self.finish(&self.log_mel(clips))
    }

    /// The log-mel spectrogram `[B, frames, n_mels]` in dB of clips fitted to `clip_frames`.
    fn log_mel(&self, clips: &Tensor) -> Tensor {
        let clips = fit_frames(&clips.to_kind(Kind::Float), self.clip_frames as i64);
        log_mel_spectrogram(&clips, &self.mel)
    }

    /// dB `[B, T, M]` -> relative to each clip's loudest bin, floored, in [-1, 1], as
    /// `[B, 1, M, T]`.
    fn finish(&self, db: &Tensor) -> Tensor {
        let peak = db.amax([1i64, 2].as_slice(), true);
        let rel = (db - peak).clamp_min(self.floor_db);
        (rel / (-self.floor_db / 2.0) + 1.0)
            .transpose(1, 2)
            .unsqueeze(1)
    }

    /// The network's input for training: `augment`'s waveform changes, then a random smooth
    /// equaliser curve added to the dB spectrogram and SpecAugment's masks (Park et al. 2019):
    /// one band of up to `freq_mask` mel bands and one span of up to `time_mask` frames set to
    /// the floor.
    pub fn prepare_augmented(
        &self,
        clips: &Tensor,
        augment: &JudgeAugment,
        max_delay: i64,
    ) -> Tensor {
        let db = self.log_mel(&augment.apply(clips, max_delay));
        let (b, t, m) = db.size3().expect("a log-mel batch is [B, T, M]");
        let device = db.device();
        let opts = (Kind::Float, device);
        let mut db = db;
        if augment.eq_db > 0.0 {
            // A random combination of the first three cosines over the mel axis, at most
            // eq_db at any band: kits differ most in such broad tonal balance.
            let axis = Tensor::linspace(0.0, std::f64::consts::PI, m, opts).view([1, 1, m]);
            let weights = Tensor::rand([b, 3, 1], opts) * 2.0 - 1.0;
            let k = Tensor::arange_start(1, 4, opts).view([1, 3, 1]);
            let curve = ((k * axis).cos() * weights).sum_dim_intlist(1, true, Kind::Float) / 3.0;
            db += curve * augment.eq_db;
        }
        let mut x = self.finish(&db);
        let floor = -1.0;
        for (len, size, dim) in [(augment.freq_mask, m, 2i64), (augment.time_mask, t, 3i64)] {
            if len == 0 || size <= 1 {
                continue;
            }
            let width = Tensor::randint_low(0, len as i64 + 1, [b, 1, 1, 1], (Kind::Int64, device));
            let start = (Tensor::rand([b, 1, 1, 1], opts) * (size as f64)).to_kind(Kind::Int64);
            let mut shape = vec![1i64, 1, 1, 1];
            shape[dim as usize] = size;
            let pos = Tensor::arange(size, (Kind::Int64, device)).view(shape.as_slice());
            let masked = pos
                .ge_tensor(&start)
                .logical_and(&pos.lt_tensor(&(&start + &width)));
            x = x.masked_fill(&masked, floor);
        }
        x
    }
}

/// Cut `[B, C, L]` to `frames` or pad it with silence at the end.
fn fit_frames(clips: &Tensor, frames: i64) -> Tensor {
    let len = clips.size()[2];
    if len >= frames {
        clips.narrow(2, 0, frames)
    } else {
        clips.constant_pad_nd([0, frames - len])
    }
}

/// The judge's training augmentation besides the onset delay (which is
/// [`ClassifierTrainConfig::max_shift`], in milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeAugment {
    /// Largest gain change either way, dB.
    pub max_gain_db: f64,
    /// Share of the training clips given added white noise.
    pub noise_probability: f64,
    /// Level range of that noise, dB relative to the clip's peak, `[low, high]`.
    pub noise_db: [f64; 2],
    /// Largest boost or cut of the random equaliser curve, dB.
    pub eq_db: f64,
    /// Widest frequency mask, mel bands (0: none).
    pub freq_mask: usize,
    /// Widest time mask, spectrogram frames (0: none).
    pub time_mask: usize,
}

impl Default for JudgeAugment {
    fn default() -> Self {
        JudgeAugment {
            max_gain_db: 12.0,
            noise_probability: 0.5,
            noise_db: [-70.0, -30.0],
            eq_db: 6.0,
            freq_mask: 8,
            time_mask: 6,
        }
    }
}

impl JudgeAugment {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        let [lo, hi] = self.noise_db;
        let valid = self.max_gain_db >= 0.0
            && self.eq_db >= 0.0
            && (0.0..=1.0).contains(&self.noise_probability)
            && lo <= hi;
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "judge augmentation: max_gain_db {} and eq_db {} must be >= 0, noise_probability \
                 {} in [0, 1], noise_db [{lo}, {hi}] ordered",
                self.max_gain_db, self.eq_db, self.noise_probability
            )));
        }
        Ok(())
    }

    /// Training clips `[B, C, L]` with a random gain, a random onset delay of up to
    /// `max_delay` frames (silence before it; the end is cut) and, for some, white noise at a
    /// random level below the peak; every draw from libtorch's global generator.
    pub fn apply(&self, clips: &Tensor, max_delay: i64) -> Tensor {
        let (b, c, l) = clips.size3().expect("clips must be [B, C, L]");
        let device = clips.device();
        let opts = (Kind::Float, device);
        let mut x = clips.to_kind(Kind::Float);
        if max_delay > 0 {
            let delay = Tensor::randint_low(0, max_delay + 1, [b, 1, 1], (Kind::Int64, device));
            let index = Tensor::arange(l, (Kind::Int64, device)).view([1, 1, l]) - delay;
            let valid = index.ge(0).to_kind(Kind::Float);
            let index = index.clamp_min(0).expand([b, c, l], false);
            x = x.gather(2, &index, false) * valid;
        }
        if self.max_gain_db > 0.0 {
            let db = (Tensor::rand([b, 1, 1], opts) * 2.0 - 1.0) * self.max_gain_db;
            // Not `*=`: `x` may share the caller's storage (to_kind of a float tensor is no copy).
            let gain = (db / 20.0 * std::f64::consts::LN_10).exp();
            x = &x * gain;
        }
        if self.noise_probability > 0.0 {
            let [lo, hi] = self.noise_db;
            let db = Tensor::rand([b, 1, 1], opts) * (hi - lo) + lo;
            let on = Tensor::rand([b, 1, 1], opts)
                .lt(self.noise_probability)
                .to_kind(Kind::Float);
            let peak = x.abs().amax([1i64, 2].as_slice(), true);
            let level = peak * (db / 20.0 * std::f64::consts::LN_10).exp() * on;
            x = &x + Tensor::randn([b, c, l], opts) * level;
        }
        x
    }
}

/// The network of a judge for `input` with `num_classes` classes: four levels (16, 32, 64, 128
/// channels) of two 3x3 convolutions over mel bands x frames, global pooling, 128 features.
/// (Pooling over time only, each of the last level's 8 bands keeping its own features, did no
/// better on the held-out kits: 80% against 84%; BENCHMARKS.md.)
pub fn judge_network_config(input: &JudgeInput, num_classes: i64) -> ClassifierConfig {
    ClassifierConfig {
        in_channels: 1,
        resolution: input.mel.n_mels as i64,
        width: Some(input.frames()),
        num_classes,
        channels: vec![16, 32, 64, 128],
        layers_per_block: 2,
        norm_num_groups: 8,
        feature_dim: 128,
        dropout: 0.3,
        members: 1,
    }
}

/// The judge's training settings by default: 1500 steps of 64 clips, onset delays up to 20 ms.
pub fn default_judge_training() -> ClassifierTrainConfig {
    ClassifierTrainConfig {
        steps: 1500,
        batch_size: 64,
        lr: 2e-3,
        warmup_steps: 100,
        weight_decay: 0.05,
        max_shift: 20,
        grad_clip: 1.0,
        seed: 0,
        log_every: 100,
    }
}

/// Train `model` (built from [`judge_network_config`] under `vs`) on clips `[N, C, L]` with
/// labels `[N]` (every one a class index): the shared loop with [`JudgeAugment::apply`] and
/// [`JudgeInput::prepare`]. Returns the final training loss.
pub fn train_judge(
    model: &Classifier,
    vs: &nn::VarStore,
    clips: &Tensor,
    labels: &Tensor,
    input: &JudgeInput,
    augment: &JudgeAugment,
    cfg: &ClassifierTrainConfig,
) -> Result<f64> {
    input.validate()?;
    augment.validate()?;
    if clips.dim() != 3 {
        return Err(Error::InvalidArgument(format!(
            "judge clips must be [N, C, L], got {:?}",
            clips.size()
        )));
    }
    let max_delay = (cfg.max_shift.max(0) as u64 * input.sample_rate as u64 / 1000) as i64;
    train_classifier_with(model, vs, clips, labels, cfg, |xs, train| {
        if train {
            input.prepare_augmented(xs, augment, max_delay)
        } else {
            input.prepare(xs)
        }
    })
}

/// Logits `[N, K]` and features `[N, feature_dim]` (CPU) of clips `[N, C, L]` at the judge's rate.
pub fn judge_outputs(
    model: &Classifier,
    input: &JudgeInput,
    clips: &Tensor,
    batch_size: i64,
) -> (Tensor, Tensor) {
    classifier_outputs(model, clips, batch_size, "clip", |xs, _| input.prepare(xs))
}

/// How well predictions match labels: overall and per class, with the confusion matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Clips judged.
    pub clips: usize,
    /// Share of them predicted as their label.
    pub accuracy: f64,
    /// Mean over the classes that have clips of each class's accuracy (classes weigh alike).
    pub balanced_accuracy: f64,
    /// Per class, in label order: its name, its clips and the share predicted as it.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[label][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// One class's line of a [`ClassReport`] (shared with every modality's judging).
pub use diffuse_tensor::quality::ClassAccuracy;

impl ClassReport {
    /// The report of predictions `[N]` against labels `[N]` over `class_names`.
    pub fn new(predicted: &Tensor, labels: &Tensor, class_names: &[String]) -> Self {
        let k = class_names.len();
        let predicted = Vec::<i64>::try_from(predicted.to_kind(Kind::Int64).to_device(Device::Cpu))
            .expect("predictions are a vector");
        let labels = Vec::<i64>::try_from(labels.to_kind(Kind::Int64).to_device(Device::Cpu))
            .expect("labels are a vector");
        assert_eq!(predicted.len(), labels.len(), "one prediction per label");
        let mut confusion = vec![vec![0u64; k]; k];
        for (&p, &y) in predicted.iter().zip(&labels) {
            confusion[y as usize][p as usize] += 1;
        }
        let per_class: Vec<ClassAccuracy> = class_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let clips: u64 = confusion[i].iter().sum();
                ClassAccuracy {
                    class: name.clone(),
                    clips,
                    accuracy: (clips > 0).then(|| confusion[i][i] as f64 / clips as f64),
                }
            })
            .collect();
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let present: Vec<f64> = per_class.iter().filter_map(|c| c.accuracy).collect();
        ClassReport {
            clips: labels.len(),
            accuracy: correct as f64 / labels.len().max(1) as f64,
            balanced_accuracy: present.iter().sum::<f64>() / present.len().max(1) as f64,
            per_class,
            confusion,
        }
    }

    /// One line: overall and balanced accuracy, then each class's.
    pub fn summary(&self) -> String {
        let classes: Vec<String> = self
            .per_class
            .iter()
            .filter_map(|c| {
                c.accuracy
                    .map(|a| format!("{} {:.0}% of {}", c.class, 100.0 * a, c.clips))
            })
            .collect();
        format!(
            "{:.1}% of {} clips ({:.1}% balanced over classes; {})",
            100.0 * self.accuracy,
            self.clips,
            100.0 * self.balanced_accuracy,
            classes.join(", ")
        )
    }
}

/// Split `groups` (one per clip) into `folds` sets of whole groups with about equal clip counts:
/// groups by decreasing size (ties by name), each to the fold with the fewest clips so far.
/// Returns each clip's fold.
pub fn group_folds(groups: &[String], folds: usize) -> Vec<usize> {
    let mut sizes: std::collections::BTreeMap<&str, usize> = Default::default();
    for g in groups {
        *sizes.entry(g.as_str()).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = sizes.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut load = vec![0usize; folds.max(1)];
    let mut fold_of: std::collections::HashMap<&str, usize> = Default::default();
    for (g, n) in order {
        let f = (0..load.len()).min_by_key(|&f| (load[f], f)).unwrap_or(0);
        load[f] += n;
        fold_of.insert(g, f);
    }
    groups.iter().map(|g| fold_of[g.as_str()]).collect()
}

/// Leave-groups-out predictions: for each of `folds` folds of whole groups ([`group_folds`]), a
/// fresh judge trained (same settings, seed offset by the fold) on the other folds predicts the
/// fold's clips. Returns the prediction `[N]` of every clip. Needs at least two groups.
#[allow(clippy::too_many_arguments)]
pub fn leave_groups_out_predictions(
    clips: &Tensor,
    labels: &Tensor,
    groups: &[String],
    folds: usize,
    network: &ClassifierConfig,
    input: &JudgeInput,
    augment: &JudgeAugment,
    cfg: &ClassifierTrainConfig,
    device: Device,
) -> Result<Tensor> {
    let distinct: std::collections::BTreeSet<&String> = groups.iter().collect();
    if folds < 2 || distinct.len() < folds {
        return Err(Error::InvalidArgument(format!(
            "leave-kits-out needs at least 2 folds and a kit per fold: {folds} fold(s) over {} kit(s)",
            distinct.len()
        )));
    }
    let fold_of = group_folds(groups, folds);
    let mut predicted = vec![0i64; groups.len()];
    for fold in 0..folds {
        let pick = |inside: bool| {
            let idx: Vec<i64> = (0..groups.len())
                .filter(|&i| (fold_of[i] == fold) == inside)
                .map(|i| i as i64)
                .collect();
            Tensor::from_slice(&idx)
        };
        let (test, train) = (pick(true), pick(false));
        tracing::info!(
            fold = fold + 1,
            folds,
            train_clips = train.size()[0],
            test_clips = test.size()[0],
            "leave-kits-out fold"
        );
        let vs = nn::VarStore::new(device);
        let model = Classifier::new(&vs.root(), network)?;
        let fold_cfg = ClassifierTrainConfig {
            seed: cfg.seed.wrapping_add(1 + fold as u64),
            ..cfg.clone()
        };
        train_judge(
            &model,
            &vs,
            &clips.index_select(0, &train),
            &labels.index_select(0, &train),
            input,
            augment,
            &fold_cfg,
        )?;
        let (logits, _) = judge_outputs(&model, input, &clips.index_select(0, &test), 64);
        let p = Vec::<i64>::try_from(logits.argmax(-1, false)).expect("a vector");
        let t = Vec::<i64>::try_from(&test).expect("a vector");
        for (i, p) in t.into_iter().zip(p) {
            predicted[i as usize] = p;
        }
    }
    Ok(Tensor::from_slice(&predicted))
}

/// What an audio judge keeps under [`RECORD_KEY`] in `info.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudioJudgeRecord {
    pub input: JudgeInput,
    pub augment: JudgeAugment,
    /// The kits held out of training (the held-out report's clips).
    pub held_out_groups: Vec<String>,
    /// Predictions on the held-out kits.
    pub held_out: ClassReport,
    /// Folds of the leave-kits-out report (0 when it was not run).
    pub folds: usize,
    /// What the folds hold out: whole "kits" or, when a class lives in one group only (class
    /// folders), every k-th clip of each class ("clips").
    #[serde(default)]
    pub fold_by: String,
    /// Pooled predictions of the leave-kits-out folds over the training kits.
    pub leave_kits_out: Option<ClassReport>,
}

/// A loaded audio judge: the network, its variables, its shared record and its audio record.
pub struct AudioJudge {
    pub model: Classifier,
    pub vs: nn::VarStore,
    pub info: ClassifierInfo,
    pub record: AudioJudgeRecord,
}

impl AudioJudge {
    /// Load a judge directory onto `device`; a classifier without an audio record (an image one)
    /// is an error naming the directory.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let (model, vs, info) = load_classifier_dir(dir, device)?;
        let record = info
            .extra
            .get(RECORD_KEY)
            .cloned()
            .ok_or_else(|| {
                Error::format(
                    dir.join(diffuse_tensor::classifier::INFO_FILE),
                    "not an audio judge (no \"audio\" record; is it an image classifier?)",
                )
            })
            .and_then(|v| {
                serde_json::from_value::<AudioJudgeRecord>(v).map_err(|e| {
                    Error::format(
                        dir.join(diffuse_tensor::classifier::INFO_FILE),
                        format!("invalid \"audio\" record: {e}"),
                    )
                })
            })?;
        if info.class_names.len() as i64 != model.config().num_classes {
            return Err(Error::format(
                dir.join(diffuse_tensor::classifier::INFO_FILE),
                format!(
                    "{} class names for a network of {} classes",
                    info.class_names.len(),
                    model.config().num_classes
                ),
            ));
        }
        Ok(AudioJudge {
            model,
            vs,
            info,
            record,
        })
    }

    /// Logits and features of clips `[N, C, L]` at the judge's rate.
    pub fn outputs(&self, clips: &Tensor) -> (Tensor, Tensor) {
        judge_outputs(&self.model, &self.record.input, clips, 64)
    }

    /// The class names, in label order.
    pub fn class_names(&self) -> &[String] {
        &self.info.class_names
    }
}
