// Storage type <-> fp32 for the CUDA launchers (all arithmetic is fp32; rounding to bf16 / fp16
// is round-to-nearest-even), and the device query the tensor-core paths share. Included by every
// *.cu.cc here.
#ifndef SEEKLINE_OPS_CUDA_STORAGE_CUH_
#define SEEKLINE_OPS_CUDA_STORAGE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace seekline {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half(v); }

// 16-byte copies (cp.async, uint4) need 16-byte aligned addresses.
__host__ __device__ inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

#ifdef __CUDACC__
// bf16 / fp16 WMMA needs compute capability 8.0 (Ampere) or newer, on the current device.
inline bool TensorCoresUsable() {
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}
#endif

}  // namespace seekline

#endif  // SEEKLINE_OPS_CUDA_STORAGE_CUH_
