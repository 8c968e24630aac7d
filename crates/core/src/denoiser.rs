//! The network as losses and samplers see it.

use crate::prediction::PredictionType;
use tch::Tensor;

/// A denoising network: given x_t `[B, C, ...]` and timesteps `t` `[B]` (f32, in the training
/// schedule's units, possibly fractional), returns its prediction in [`Denoiser::prediction_type`]
/// (with learned variance: 2C channels, the second half the variance output).
/// Conditioning (class labels, guidance) lives in the implementing type.
pub trait Denoiser {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor;
    fn prediction_type(&self) -> PredictionType;

    /// Whether the network also takes its own previous estimate of x0 (self-conditioning,
    /// Chen et al. 2022, "Analog Bits", sec. 3.2). Samplers and the objective then call
    /// [`Denoiser::forward_self_cond`] instead of [`Denoiser::forward`].
    fn self_conditioning(&self) -> bool {
        false
    }

    /// Forward given the previous x0 estimate `x0_prev` (zeros when there is none yet).
    fn forward_self_cond(&self, x_t: &Tensor, t: &Tensor, _x0_prev: &Tensor) -> Tensor {
        self.forward(x_t, t)
    }
}

/// A borrowed denoiser is one, so wrappers that own their inner denoiser (chunking, guidance)
/// can hold `&dyn Denoiser`.
impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        (**self).forward(x_t, t)
    }
    fn prediction_type(&self) -> PredictionType {
        (**self).prediction_type()
    }
    fn self_conditioning(&self) -> bool {
        (**self).self_conditioning()
    }
    fn forward_self_cond(&self, x_t: &Tensor, t: &Tensor, x0_prev: &Tensor) -> Tensor {
        (**self).forward_self_cond(x_t, t, x0_prev)
    }
}

/// A denoiser from a closure, for tests, examples and wrapping models.
pub struct FnDenoiser<F: Fn(&Tensor, &Tensor) -> Tensor> {
    pub f: F,
    pub prediction_type: PredictionType,
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> Denoiser for FnDenoiser<F> {
    fn forward(&self, x_t: &Tensor, t: &Tensor) -> Tensor {
        (self.f)(x_t, t)
    }
    fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }
}
