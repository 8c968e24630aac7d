//! Gaussian statistics of feature vectors and the Fréchet distance between two such Gaussians
//! (Heusel et al. 2017, eq. 6), shared by every modality's quality metric: classifier features of
//! images, log-mel frames of audio. Statistics and the distance are computed in f64 on the CPU.
//! The matrix square root uses a symmetric eigendecomposition, which is exact where scipy's
//! `sqrtm` of the non-symmetric product S1 S2 (pytorch-fid's route) loses digits, e.g. when a
//! covariance is singular.

use crate::weights::{load_tensors, save_tensors, Metadata};
use crate::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Mean `[D]` and unbiased covariance `[D, D]` (as `numpy.cov` and pytorch-fid) of `count` feature
/// vectors, all in f64 on the CPU.
#[derive(Debug)]
pub struct FeatureStats {
    /// Mean feature `[D]`, f64.
    pub mean: Tensor,
    /// Unbiased covariance `[D, D]` (divided by count - 1), f64.
    pub cov: Tensor,
    /// Number of feature vectors the statistics summarise.
    pub count: i64,
}

impl Clone for FeatureStats {
    fn clone(&self) -> Self {
        FeatureStats {
            mean: self.mean.copy(),
            cov: self.cov.copy(),
            count: self.count,
        }
    }
}

impl FeatureStats {
    /// Statistics of features `[N, D]` (any float kind, any device). Panics if N < 2, where an
    /// unbiased covariance does not exist.
    pub fn from_features(features: &Tensor) -> Self {
        let size = features.size();
        assert!(
            size.len() == 2 && size[0] >= 2,
            "FeatureStats::from_features needs features [N, D] with N >= 2, got {size:?}"
        );
        let f = features
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Double);
        let mean = f.mean_dim(0, false, Kind::Double);
        let centred = &f - mean.unsqueeze(0);
        let cov = centred.tr().matmul(&centred) / (size[0] - 1) as f64;
        FeatureStats {
            mean,
            cov,
            count: size[0],
        }
    }

    /// Feature dimension D.
    pub fn dim(&self) -> i64 {
        self.mean.size()[0]
    }

    /// Save as safetensors: `mean` and `cov` in f64, the count and `extra` in the header metadata.
    pub fn save(&self, path: &Path, extra: Option<Metadata>) -> Result<()> {
        let mut metadata = extra.unwrap_or_default();
        metadata.insert("format".into(), "diffuse-feature-stats".into());
        metadata.insert("count".into(), self.count.to_string());
        save_tensors(
            path,
            &[
                ("cov".to_owned(), self.cov.to_kind(Kind::Double)),
                ("mean".to_owned(), self.mean.to_kind(Kind::Double)),
            ],
            Some(metadata),
        )
    }

    /// Load statistics saved by [`FeatureStats::save`], checking names, shapes and the count;
    /// returns the header metadata too.
    pub fn load(path: &Path) -> Result<(Self, Metadata)> {
        let loaded = load_tensors(path)?;
        let mut mean = None;
        let mut cov = None;
        for (name, tensor) in loaded.tensors {
            match name.as_str() {
                "mean" => mean = Some(tensor),
                "cov" => cov = Some(tensor),
                _ => {
                    return Err(Error::format(
                        path,
                        format!("unexpected tensor '{name}' in feature statistics"),
                    ))
                }
            }
        }
        let (Some(mean), Some(cov)) = (mean, cov) else {
            return Err(Error::format(
                path,
                "feature statistics need tensors 'mean' and 'cov'",
            ));
        };
        let d = mean.size();
        if d.len() != 1 || cov.size() != [d[0], d[0]] {
            return Err(Error::format(
                path,
                format!(
                    "feature statistics have mean {:?} and cov {:?}; expected [D] and [D, D]",
                    mean.size(),
                    cov.size()
                ),
            ));
        }
        let count = loaded
            .metadata
            .get("count")
            .and_then(|c| c.parse::<i64>().ok())
            .filter(|&c| c >= 2)
            .ok_or_else(|| Error::format(path, "metadata lacks a sample count >= 2"))?;
        let stats = FeatureStats {
            mean: mean.to_kind(Kind::Double),
            cov: cov.to_kind(Kind::Double),
            count,
        };
        Ok((stats, loaded.metadata))
    }
}

/// Symmetric square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues
/// from rounding are clamped to 0).
fn sqrt_psd(s: &Tensor) -> Tensor {
    let (w, v) = s.linalg_eigh("L");
    (&v * w.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&v.tr())
}

/// Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between the Gaussians fitted to
/// two feature sets (Heusel et al. 2017, eq. 6), in f64. Tr((S1 S2)^{1/2}) is taken as the sum of
/// the square roots of the eigenvalues of sqrt(S1) S2 sqrt(S1), which has the same spectrum as
/// S1 S2 and is symmetric PSD. Agrees with pytorch-fid's `calculate_frechet_distance`; rounding
/// below zero is returned as 0. Panics if the dimensions differ.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> f64 {
    assert_eq!(
        a.dim(),
        b.dim(),
        "Fréchet distance between features of different dimensions"
    );
    let f64_cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
    let (mu1, mu2) = (f64_cpu(&a.mean), f64_cpu(&b.mean));
    let symmetric = |t: &Tensor| {
        let t = f64_cpu(t);
        (&t + t.tr()) * 0.5
    };
    let (s1, s2) = (symmetric(&a.cov), symmetric(&b.cov));
    let diff = &mu1 - &mu2;
    let mean_term = diff.dot(&diff).double_value(&[]);
    let root1 = sqrt_psd(&s1);
    let m = root1.matmul(&s2).matmul(&root1);
    let m = (&m + m.tr()) * 0.5;
    let tr_covmean = m
        .linalg_eigvalsh("L")
        .clamp_min(0.0)
        .sqrt()
        .sum(Kind::Double)
        .double_value(&[]);
    let trace = |s: &Tensor| s.trace().double_value(&[]);
    let distance = mean_term + trace(&s1) + trace(&s2) - 2.0 * tr_covmean;
    // Not f64::max, which would turn a NaN from non-finite statistics into 0.
    if distance < 0.0 {
        0.0
    } else {
        distance
    }
}
