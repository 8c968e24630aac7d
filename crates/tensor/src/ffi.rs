//! Safe wrappers over the C++ shim (`csrc/shim.cpp`) for the libtorch calls tch does not expose.

use tch::{Kind, Tensor};

extern "C" {
    fn diffuse_autocast_set_cuda_dtype(scalar_type: i32) -> i32;
    fn diffuse_autocast_get_cuda_dtype() -> i32;
    fn diffuse_addcmul_(
        s: *mut std::ffi::c_void,
        t1: *const std::ffi::c_void,
        t2: *const std::ffi::c_void,
        value: f64,
    ) -> i32;
    fn diffuse_addcdiv_(
        s: *mut std::ffi::c_void,
        t1: *const std::ffi::c_void,
        t2: *const std::ffi::c_void,
        value: f64,
    ) -> i32;
}

/// c10::ScalarType codes of the kinds autocast can cast to.
fn scalar_type_code(kind: Kind) -> Option<i32> {
    match kind {
        Kind::Half => Some(5),
        Kind::Float => Some(6),
        Kind::BFloat16 => Some(15),
        _ => None,
    }
}

/// Set the dtype that CUDA autocast regions compute in (bf16 or f16). Returns false if libtorch refused.
pub fn set_cuda_autocast_kind(kind: Kind) -> bool {
    match scalar_type_code(kind) {
        Some(code) => unsafe { diffuse_autocast_set_cuda_dtype(code) == 0 },
        None => false,
    }
}

/// The dtype CUDA autocast regions compute in.
pub fn cuda_autocast_kind() -> Option<Kind> {
    let code = unsafe { diffuse_autocast_get_cuda_dtype() };
    [Kind::Half, Kind::Float, Kind::BFloat16]
        .into_iter()
        .find(|k| scalar_type_code(*k) == Some(code))
}

/// `dst += value * t1 * t2` in place (PyTorch's `addcmul_` with its `value` argument).
/// Panics on shape or device mismatch, like tch's own in-place ops.
pub fn addcmul_(dst: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) {
    let rc = unsafe {
        diffuse_addcmul_(
            dst.as_mut_ptr().cast(),
            t1.as_ptr().cast(),
            t2.as_ptr().cast(),
            value,
        )
    };
    assert_eq!(rc, 0, "addcmul_: libtorch rejected the operands");
}

/// `dst += value * t1 / t2` in place (PyTorch's `addcdiv_` with its `value` argument).
pub fn addcdiv_(dst: &mut Tensor, t1: &Tensor, t2: &Tensor, value: f64) {
    let rc = unsafe {
        diffuse_addcdiv_(
            dst.as_mut_ptr().cast(),
            t1.as_ptr().cast(),
            t2.as_ptr().cast(),
            value,
        )
    };
    assert_eq!(rc, 0, "addcdiv_: libtorch rejected the operands");
}
