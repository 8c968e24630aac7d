//! The Fréchet distance between two sets of image features (Heusel et al. 2017, "GANs Trained
//! by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6), computed the way
//! pytorch-fid does but on the penultimate features of diffuse's own small classifier
//! ([`crate::classifier`]) rather than Inception-v3's: numbers are comparable between diffuse
//! runs on the same dataset with the same classifier, never with published Inception FIDs.
//!
//! Statistics and the distance are computed in f64 on the CPU. The matrix square root uses a
//! symmetric eigendecomposition, which is exact where scipy's `sqrtm` of the non-symmetric
//! product S1 S2 (pytorch-fid's route) loses digits, e.g. when a covariance is singular.

use crate::classifier::{images_to_unit_range, Classifier, ClassifierConfig, ClassifierInfo};
use diffuse_tensor::classifier::classifier_outputs;
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use diffuse_tensor::frechet::{frechet_distance, FeatureStats};

/// Classifier features `[N, feature_dim]` (f32, CPU) of images `[N, C, H, W]` (f32 in [-1, 1], or
/// u8 in 0..=255), computed in batches without gradients on the classifier's device, with a
/// progress bar.
pub fn classifier_features(model: &Classifier, images: &Tensor, batch_size: i64) -> Tensor {
    classifier_outputs(model, images, batch_size, "image", |xs, _| {
        images_to_unit_range(xs)
    })
    .1
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
