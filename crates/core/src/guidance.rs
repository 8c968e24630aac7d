//! Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any pair of denoisers: the
//! conditional one and the unconditional one (the same network given the null label). The guided
//! output is uncond + w (cond - uncond) in the model's own parameterisation, optionally with the
//! guidance rescale of Lin et al. 2023 (sec. 3.4) that keeps the output's std from growing with w.

use crate::denoiser::Denoiser;
use crate::prediction::PredictionType;
use tch::{Kind, Tensor};

/// A guided denoiser built from a conditional and an unconditional one.
pub struct ClassifierFreeGuidance<'a> {
    pub conditional: &'a dyn Denoiser,
    pub unconditional: &'a dyn Denoiser,
    /// w: 0 unconditional, 1 conditional, above 1 guided.
    pub scale: f64,
    /// phi in [0, 1]: blend of the guided output and its std-rescaled version (0 = off).
    pub rescale: f64,
}

impl Denoiser for ClassifierFreeGuidance<'_> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        let cond = self.conditional.forward(x_t, t);
        if self.scale == 1.0 && self.rescale == 0.0 {
            return cond;
        }
        let uncond = self.unconditional.forward(x_t, t);
        let guided = &uncond + (&cond - &uncond) * self.scale;
        if self.rescale == 0.0 {
            return guided;
        }
        // Lin et al. 2023, eq. 15-16: match the per-example std of the conditional output.
        let dims: Vec<i64> = (1..guided.dim() as i64).collect();
        let std_cond = cond.std_dim(Some(dims.as_slice()), true, true);
        let std_guided = guided
            .std_dim(Some(dims.as_slice()), true, true)
            .clamp_min(1e-12);
        let rescaled = &guided * (std_cond / std_guided);
        rescaled * self.rescale + guided * (1.0 - self.rescale)
    }

    fn prediction_type(&self) -> PredictionType {
        self.conditional.prediction_type()
    }
}

/// Replace a fraction `p_uncond` of class labels by the null label (`null_label`), per example,
/// for training a model that serves both halves of classifier-free guidance.
pub fn drop_labels(labels: &Tensor, p_uncond: f64, null_label: i64) -> Tensor {
    let keep = Tensor::rand(labels.size(), (Kind::Float, labels.device())).ge(p_uncond);
    labels.where_self(&keep, &labels.full_like(null_label))
}
