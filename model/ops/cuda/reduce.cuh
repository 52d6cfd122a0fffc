// Warp- and block-wide fp32 reductions for the row kernels (rms_norm.cu.cc, moe.cu.cc,
// attention.cu.cc): warp shuffles plus one shared-memory step, combined in a fixed order so every
// thread — and every run — gets the same bits (training uses op determinism: no float atomics).
// Every thread of the block calls them together (the CPU emulation's shuffles are block barriers).
#ifndef SEEKLINE_OPS_CUDA_REDUCE_CUH_
#define SEEKLINE_OPS_CUDA_REDUCE_CUH_

#include <cuda_runtime.h>

namespace seekline {

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;  // every lane holds the warp total
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;  // every lane holds the warp maximum
}

// Sum of v over the block (blockDim.x a multiple of 32, <= 1024), returned to every thread.
// `partial` is 32 floats of shared memory. All threads add the warp totals in the same order, so
// they all get the same bits; the leading barrier lets the caller call this again (next row or
// next statistic) without racing the previous call's readers.
__device__ __forceinline__ float BlockSum(float v, float* partial) {
  v = WarpSum(v);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < warps; ++i) total += partial[i];
  return total;
}

}  // namespace seekline

#endif  // SEEKLINE_OPS_CUDA_REDUCE_CUH_
