//! Gradient utilities: global-norm clipping as `torch.nn.utils.clip_grad_norm_` computes it.

use tch::Tensor;

/// Total 2-norm of the gradients of `params` (the norm of the per-tensor norms, as PyTorch).
/// Parameters without a gradient are skipped. Returns 0 when none has one.
pub fn grad_norm<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> f64 {
    let norms: Vec<Tensor> = params
        .into_iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .map(|g| g.norm())
        .collect();
    if norms.is_empty() {
        return 0.0;
    }
    Tensor::stack(&norms, 0).norm().double_value(&[])
}

/// Scale gradients so their global norm is at most `max_norm`; returns the norm before clipping
/// (possibly NaN or infinite: the caller decides what that means).
pub fn clip_grad_norm<'a>(params: impl IntoIterator<Item = &'a Tensor>, max_norm: f64) -> f64 {
    let grads: Vec<Tensor> = params
        .into_iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
    let total = Tensor::stack(&norms, 0).norm();
    // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped at 1, always multiplied.
    let clip_coef = (&total + 1e-6).reciprocal() * max_norm;
    let clip_coef = clip_coef.clamp_max(1.0);
    tch::no_grad(|| {
        for mut g in grads {
            let _ = g.g_mul_(&clip_coef.to_device(g.device()).to_kind(g.kind()));
        }
    });
    total.double_value(&[])
}
