// Helpers shared by the op files: the TF names every op file uses, the storage-type tag the GPU
// launchers take, and (GPU builds) TF's CUDA stream for a kernel plus the launcher-code-to-Status
// mapping.
#ifndef SEEKLINE_OPS_OP_UTIL_H_
#define SEEKLINE_OPS_OP_UTIL_H_

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "kernels.h"

#if GOOGLE_CUDA
#include "xla/stream_executor/stream.h"
#endif

namespace seekline {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

template <typename T> constexpr DType kDType = DType::kFloat;
template <> constexpr DType kDType<Eigen::bfloat16> = DType::kBFloat16;
template <> constexpr DType kDType<Eigen::half> = DType::kHalf;

#if GOOGLE_CUDA
inline void* GpuStream(tensorflow::OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

// A launcher's return code (0 or a cudaError_t) as a Status naming the op.
inline tensorflow::Status CudaStatus(int code, const char* what) {
  if (code == 0) return tensorflow::OkStatus();
  return tensorflow::errors::Internal(what, ": CUDA error ", code);
}
#endif

}  // namespace seekline

#endif  // SEEKLINE_OPS_OP_UTIL_H_
