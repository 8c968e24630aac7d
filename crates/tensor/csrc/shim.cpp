// libtorch entry points that tch 0.24 does not wrap. Errors cannot cross into Rust, so every
// function catches and reports failure through its return value (0 = success).
//  - CUDA autocast dtype: tch's `autocast` always uses CUDA's default (float16), while diffuse
//    trains in bfloat16.
//  - addcmul_/addcdiv_ with a `value`: tch drops that argument, and AdamW needs it to match
//    PyTorch's optimizer bit for bit (a separate multiply rounds differently).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

extern "C" {

int diffuse_autocast_set_cuda_dtype(int scalar_type) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, static_cast<at::ScalarType>(scalar_type));
    return 0;
  } catch (...) {
    return 1;
  }
}

// The dtype CUDA autocast casts to, as a c10::ScalarType code; -1 on failure.
int diffuse_autocast_get_cuda_dtype() {
  try {
    return static_cast<int>(at::autocast::get_autocast_dtype(at::kCUDA));
  } catch (...) {
    return -1;
  }
}

// self += value * t1 * t2, in place.
int diffuse_addcmul_(at::Tensor* self, const at::Tensor* t1, const at::Tensor* t2, double value) {
  try {
    self->addcmul_(*t1, *t2, value);
    return 0;
  } catch (...) {
    return 1;
  }
}

// self += value * t1 / t2, in place.
int diffuse_addcdiv_(at::Tensor* self, const at::Tensor* t1, const at::Tensor* t2, double value) {
  try {
    self->addcdiv_(*t1, *t2, value);
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"
