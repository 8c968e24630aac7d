//! The Fréchet distance between two sets of image features (Heusel et al. 2017, "GANs Trained
//! by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6), computed the way
//! pytorch-fid does but on the penultimate features of diffuse's own small classifier
//! ([`crate::classifier`]) rather than Inception-v3's: numbers are comparable between diffuse
//! runs on the same dataset with the same classifier, never with published Inception FIDs.
//!
//! Statistics and the distance are computed in f64 on the CPU. The matrix square root uses a
//! symmetric eigendecomposition, which is exact where scipy's `sqrtm` of the non-symmetric
//! product S1 S2 (pytorch-fid's route) loses digits, e.g. when a covariance is singular.
//!
//! A distance alone says little (it is biased upwards at small N and its scale is the
//! classifier's), so [`quality_report`] puts it between a floor and a bound computed the same way
//! against the same reference: the floor from as many real training images (what real data gets
//! at this N), the bound from as many images of uniform noise. Beside it stand what the judging
//! layer (`diffuse_tensor::quality`, shared with audio) computes on the classifier's outputs:
//! precision and recall in its feature space against real test images (with real training
//! images' figures as their ceiling), the class mix and confidence, and for class-conditional
//! models the share of images the classifier puts in the class they were asked for.

use crate::classifier::{images_to_unit_range, Classifier, ClassifierConfig, ClassifierInfo};
use diffuse_tensor::classifier::classifier_outputs;
use diffuse_tensor::quality::{
    conditional_report, mix_and_confidence, precision_recall, ConditionalReport, PrecisionRecall,
    NEIGHBOURS,
};
use diffuse_tensor::seed::{derive_seed, SplitMix};
use diffuse_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use diffuse_tensor::frechet::{frechet_distance, FeatureStats};

/// Classifier features `[N, feature_dim]` (f32, CPU) of images `[N, C, H, W]` (f32 in [-1, 1], or
/// u8 in 0..=255), computed in batches without gradients on the classifier's device, with a
/// progress bar.
pub fn classifier_features(model: &Classifier, images: &Tensor, batch_size: i64) -> Tensor {
    classifier_logits_and_features(model, images, batch_size).1
}

/// Classifier logits `[N, K]` and features `[N, feature_dim]` (f32, CPU) of images as
/// [`classifier_features`] takes them.
pub fn classifier_logits_and_features(
    model: &Classifier,
    images: &Tensor,
    batch_size: i64,
) -> (Tensor, Tensor) {
    classifier_outputs(model, images, batch_size, "image", |xs, _| {
        images_to_unit_range(xs)
    })
}

/// `num` images `[num, C, H, W]` of noise uniform in [-1, 1] (the data range), drawn from
/// libtorch's generator seeded with `seed`.
pub fn uniform_noise_images(num: i64, channels: i64, height: i64, width: i64, seed: u64) -> Tensor {
    diffuse_tensor::manual_seed(seed);
    Tensor::rand([num, channels, height, width], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

/// A classifier-feature Fréchet distance together with the protocol that produced it, the form in
/// which `diffuse eval image --metric fid` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidReport {
    /// Always "fid_classifier": a Fréchet distance on diffuse-classifier features, not Inception FID.
    pub metric: String,
    /// The distance.
    pub value: f64,
    /// Number of generated images whose features were compared.
    pub samples: i64,
    /// Dataset the classifier was trained on; the reference set is its `reference_split`.
    pub dataset: String,
    /// Which split of the dataset gave the reference statistics (e.g. "test").
    pub reference_split: String,
    /// Number of reference images.
    pub reference_count: i64,
    /// Dimension of the features (the classifier's penultimate layer).
    pub feature_dim: i64,
    /// The classifier's accuracy on the test split, in [0, 1].
    pub classifier_test_accuracy: f64,
    /// One sentence naming the method and its source.
    pub protocol: String,
}

impl FidReport {
    /// A report for `value`, the distance between `samples` and `reference` statistics under the
    /// classifier described by `config` and `info`, the reference being the classifier's own
    /// (its dataset's `info.reference_split`).
    pub fn new(
        value: f64,
        samples: &FeatureStats,
        reference: &FeatureStats,
        config: &ClassifierConfig,
        info: &ClassifierInfo,
    ) -> Self {
        Self::with_reference(
            value,
            samples,
            reference,
            config,
            info,
            (&info.dataset, &info.reference_split),
        )
    }

    /// [`FidReport::new`] with reference statistics from other data: `(dataset, split)`.
    pub fn with_reference(
        value: f64,
        samples: &FeatureStats,
        reference: &FeatureStats,
        config: &ClassifierConfig,
        info: &ClassifierInfo,
        (reference_data, reference_split): (&str, &str),
    ) -> Self {
        FidReport {
            metric: "fid_classifier".into(),
            value,
            samples: samples.count,
            dataset: reference_data.to_string(),
            reference_split: reference_split.to_string(),
            reference_count: reference.count,
            feature_dim: config.feature_width(),
            classifier_test_accuracy: info.test_accuracy,
            protocol: format!(
                "Fréchet distance (Heusel et al. 2017) between Gaussians fitted to the {}-d penultimate \
                 features of diffuse's {} classifier (test accuracy {:.2}%) for {} generated images and \
                 {} images of the {} {} split; not comparable to Inception-v3 FID",
                config.feature_width(),
                info.dataset,
                100.0 * info.test_accuracy,
                samples.count,
                reference.count,
                reference_data,
                reference_split
            ),
        }
    }

    /// One line for a terminal: the value and the protocol.
    pub fn summary(&self) -> String {
        format!(
            "FID (classifier features) {:.4}: {}",
            self.value, self.protocol
        )
    }
}

/// What [`quality_report`] measures generated images against.
pub struct QualityInputs<'a> {
    /// Generated images `[N, C, H, W]` in [-1, 1].
    pub generated: &'a Tensor,
    /// For a class-conditional model: the classifier's class each generated image was asked for
    /// `[N]`.
    pub requested: Option<&'a Tensor>,
    /// Statistics of the reference images (normally the test split) and `(dataset, split)`.
    pub reference: &'a FeatureStats,
    pub reference_data: (&'a str, &'a str),
    /// The dataset's training images `[M, C, H, W]` (u8 or [-1, 1]); the floor set is N of them.
    pub train: &'a Tensor,
    /// Whether they are other images than the reference's (false for data with one split).
    pub train_held_out: bool,
    /// The test images `[T, C, H, W]` and their labels in the classifier's classes (-1: none).
    pub test: &'a Tensor,
    pub test_labels: Option<&'a Tensor>,
    /// The classifier's class names, in its label order.
    pub class_names: &'a [String],
    /// Seeds the random train and test subsets and the noise.
    pub seed: u64,
    /// Images per classifier call.
    pub batch_size: i64,
}

/// The classifier-feature Fréchet distance between its floor and bound, with precision, recall,
/// the class mix and, for class-conditional models, the share of images in the requested class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// The distance of the generated images (`value`) and its protocol, as before.
    #[serde(flatten)]
    pub fid: FidReport,
    /// The same distance for `floor_images` random training images: what real data gets.
    pub floor: f64,
    pub floor_images: i64,
    /// False when the training images are the reference's own (data with one split).
    pub floor_held_out: bool,
    /// `value / floor`: 1 is as good as real images.
    pub ratio: f64,
    /// The same distance for as many images of uniform noise in [-1, 1].
    pub noise_bound: f64,
    /// Generated images against `real` random test images (Kynkäänniemi et al. 2019).
    pub precision_recall: PrecisionRecall,
    /// The floor set's training images against the same test images: the ceiling.
    pub real_precision_recall: PrecisionRecall,
    /// The classifier's classes.
    pub classes: Vec<String>,
    /// Share of generated images the classifier puts in each class, and their mean largest
    /// class probability.
    pub generated_mix: Vec<f64>,
    pub generated_confidence: f64,
    /// The same for the test images (`test_images` of them), and the confidence on noise.
    pub test_mix: Vec<f64>,
    pub test_confidence: f64,
    pub test_images: i64,
    pub noise_confidence: f64,
    /// Present for a class-conditional model: the requested classes' shares, beside the
    /// classifier's own on the test images of those classes.
    pub conditional: Option<ConditionalReport>,
}

/// A figure with about three significant digits.
fn figure(x: f64) -> String {
    match x.abs() {
        a if !a.is_finite() => format!("{x}"),
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        a if a >= 1.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

impl QualityReport {
    /// The figures in one line, each beside its floor, ceiling or bound.
    pub fn summary(&self) -> String {
        let floor_set = if self.floor_held_out {
            format!("{} real train images", self.floor_images)
        } else {
            format!(
                "{} real images that the reference holds too (the data has no separate test split)",
                self.floor_images
            )
        };
        let mix = |v: &[f64]| {
            self.classes
                .iter()
                .zip(v)
                .map(|(n, s)| format!("{n} {:.0}%", 100.0 * s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (pr, real) = (&self.precision_recall, &self.real_precision_recall);
        let mut line = format!(
            "Fréchet distance {} (floor {} for {floor_set}: ratio {:.1}x; bound {} for noise); \
             precision {:.2} recall {:.2} (real: {:.2} / {:.2}); classes: generated {} \
             (confidence {:.2}), test images {} (confidence {:.2}; noise {:.2})",
            figure(self.fid.value),
            figure(self.floor),
            self.ratio,
            figure(self.noise_bound),
            pr.precision,
            pr.recall,
            real.precision,
            real.recall,
            mix(&self.generated_mix),
            self.generated_confidence,
            mix(&self.test_mix),
            self.test_confidence,
            self.noise_confidence
        );
        if let Some(c) = &self.conditional {
            let shares = diffuse_tensor::quality::format_shares;
            let real = match c.real_mean_accuracy {
                Some(real) => format!(
                    "the classifier on test images of these classes {:.1}% ({})",
                    100.0 * real,
                    shares(&c.real_per_class)
                ),
                None => "no labelled test images of these classes".into(),
            };
            line.push_str(&format!(
                "; in the requested class: {:.1}% ({}); {real}, on all its test images {:.1}%; \
                 chance {:.1}%",
                100.0 * c.mean_accuracy,
                shares(&c.per_class),
                100.0 * self.fid.classifier_test_accuracy,
                100.0 * c.chance
            ));
        }
        line
    }

    /// How the figures beyond the distance were made, in one sentence.
    pub fn method(&self) -> String {
        format!(
            "floor: {} random train images; bound: {} images of uniform noise in [-1, 1]; \
             precision and recall (Kynkäänniemi et al. 2019, k = {}) against {} random test \
             images, the real figures for the floor's train images",
            self.floor_images,
            self.fid.samples,
            self.precision_recall.neighbours,
            self.precision_recall.real
        )
    }
}

/// The quality report of `inputs.generated` under the classifier `model` (described by `config`
/// and `info`): the Fréchet distance to the reference, with its floor (as many random training
/// images) and noise bound, precision and recall against as many random test images (beside the
/// floor set's), the class mixes, and for requested classes the conditional report. Fewer than
/// [`NEIGHBOURS`] + 1 generated or training images, or class names that are not the
/// classifier's, are [`Error::InvalidArgument`].
pub fn quality_report(
    model: &Classifier,
    info: &ClassifierInfo,
    inputs: &QualityInputs<'_>,
) -> Result<QualityReport> {
    let config = model.config();
    let k = config.num_classes;
    if inputs.class_names.len() as i64 != k {
        return Err(Error::InvalidArgument(format!(
            "{} class names for a classifier of {k} classes",
            inputs.class_names.len()
        )));
    }
    let size = inputs.generated.size();
    let (n, train_len, test_len) = (size[0], inputs.train.size()[0], inputs.test.size()[0]);
    for (what, count) in [
        ("generated", n),
        ("training", train_len),
        ("test", test_len),
    ] {
        if count < NEIGHBOURS + 1 {
            return Err(Error::InvalidArgument(format!(
                "the quality report needs at least {} {what} images (precision and recall use \
                 {NEIGHBOURS} nearest neighbours), there are {count}",
                NEIGHBOURS + 1
            )));
        }
    }
    let batch = inputs.batch_size;
    let outputs = |images: &Tensor| classifier_logits_and_features(model, images, batch);
    let distance = |features: &Tensor| {
        frechet_distance(&FeatureStats::from_features(features), inputs.reference)
    };
    let subset = |len: i64, stream: u64| {
        let idx = SplitMix::new(derive_seed(inputs.seed, stream)).sample(len as usize, n as usize);
        Tensor::from_slice(&idx)
    };
    let (gen_logits, gen_features) = outputs(inputs.generated);
    let stats = FeatureStats::from_features(&gen_features);
    let value = frechet_distance(&stats, inputs.reference);
    let floor_set = inputs.train.index_select(0, &subset(train_len, 1));
    let (_, floor_features) = outputs(&floor_set);
    let floor = distance(&floor_features);
    let noise = uniform_noise_images(n, size[1], size[2], size[3], derive_seed(inputs.seed, 3));
    let (noise_logits, noise_features) = outputs(&noise);
    let (test_logits, test_features) = outputs(inputs.test);
    let real = test_features.index_select(0, &subset(test_len, 2));
    let (generated_mix, generated_confidence) = mix_and_confidence(&gen_logits, k);
    let (test_mix, test_confidence) = mix_and_confidence(&test_logits, k);
    let (_, noise_confidence) = mix_and_confidence(&noise_logits, k);
    let conditional = match inputs.requested {
        None => None,
        Some(requested) => {
            let unlabelled = Tensor::full([test_len], -1i64, (Kind::Int64, Device::Cpu));
            Some(conditional_report(
                requested,
                &gen_logits.argmax(-1, false),
                inputs.test_labels.unwrap_or(&unlabelled),
                &test_logits.argmax(-1, false),
                inputs.class_names,
            )?)
        }
    };
    Ok(QualityReport {
        fid: FidReport::with_reference(
            value,
            &stats,
            inputs.reference,
            config,
            info,
            inputs.reference_data,
        ),
        floor,
        floor_images: floor_set.size()[0],
        floor_held_out: inputs.train_held_out,
        ratio: value / floor,
        noise_bound: distance(&noise_features),
        precision_recall: precision_recall(&real, &gen_features, NEIGHBOURS)?,
        real_precision_recall: precision_recall(&real, &floor_features, NEIGHBOURS)?,
        classes: inputs.class_names.to_vec(),
        generated_mix,
        generated_confidence,
        test_mix,
        test_confidence,
        test_images: test_len,
        noise_confidence,
        conditional,
    })
}
