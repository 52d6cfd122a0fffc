// seekline custom ops: SoftmaxXentGpu and SoftmaxXentGradGpu (declared in ../cc/kernels.h).
//
// The LM / MTP heads' sparse softmax cross-entropy with the CPU kernel's split (../cc/softmax_xent.cc):
// the forward keeps only each row's log-sum-exp, the backward recomputes the softmax from the
// logits while writing the gradient — one read of the logits per pass, no stored (N, V) softmax.
//
//   forward   lse = log Σ_j exp(x_j),  loss = lse − x_label                          (per row)
//   backward  dx_j = (g + h) · exp(x_j − lse) − g · [j = label]
//
// One block per row (grid-stride over rows). The forward reads the row once: each thread keeps a
// running (max, Σ exp(x − max)) pair over its columns (rescaled when the max grows), and the block
// merges the pairs with warp shuffles plus one shared-memory step in a fixed order, so the bits do
// not depend on scheduling. fp32 statistics whatever the storage type.
//
// Labels live in device memory, so they are not checked against [0, V) on the host as the CPU
// kernel does (that would cost a copy and a stream synchronisation per call): an out-of-range
// label gives a NaN loss and a NaN gradient row — TF's own GPU kernel's behaviour. No TensorFlow
// headers on purpose (see kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../cc/kernels.h"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kRowThreads = 256;            // threads per row block (a multiple of 32)
constexpr int64_t kMaxRowBlocks = 1 << 20;  // grid cap (the kernels grid-stride over rows)

__device__ __forceinline__ bool Finite(float v) { return v - v == 0.0f; }  // false for ±inf and NaN

// (m, s) ⊕ (m2, s2) = (M, s·e^(m−M) + s2·e^(m2−M)), M = max(m, m2). A pair with m = −inf holds no
// term (s = 0) and must not produce e^(−inf + inf) = NaN.
__device__ __forceinline__ void Merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  const float mx = fmaxf(m, m2);
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// The row's log Σ exp, identical in every thread of the block. `pm` / `ps`: 32 floats of shared
// memory each. The leading barrier lets the caller reuse them for the next row.
template <typename T>
__device__ float RowLse(const T* __restrict__ xr, int64_t v, float* pm, float* ps) {
  float m = -INFINITY, s = 0.0f;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    const float x = ToFloat(xr[j]);
    if (x == -INFINITY) continue;            // exp(−inf) = 0: no term
    if (!(x <= m)) {                         // a new max (or NaN, which then poisons the sum)
      s = (m == -INFINITY ? 0.0f : s * expf(m - x)) + 1.0f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
    Merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) {
    pm[warp] = m;
    ps[warp] = s;
  }
  __syncthreads();
  m = -INFINITY;
  s = 0.0f;
  for (int i = 0; i < warps; ++i) Merge(m, s, pm[i], ps[i]);
  // All −inf: lse = −inf (loss NaN, as the reference gives); +inf or NaN in the row carry through.
  return Finite(m) ? m + logf(s) : m;
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) SoftmaxXentKernel(int64_t n, int64_t v, const T* __restrict__ x,
                                                                 const int32_t* __restrict__ labels,
                                                                 float* __restrict__ loss, float* __restrict__ lse) {
  __shared__ float pm[32], ps[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xr = x + row * v;  // [v]
    const float l = RowLse(xr, v, pm, ps);
    if (threadIdx.x == 0) {
      const int32_t y = labels[row];
      lse[row] = l;
      loss[row] = (y >= 0 && y < v) ? l - ToFloat(xr[y]) : NAN;
    }
  }
}

// dx[row, j] = (g + h) · exp(x − lse) − g · [j = label]; rows with g = g + h = 0 (masked-out
// targets) are zeros without reading their logits, as on the CPU.
template <typename T>
__global__ void SoftmaxXentGradKernel(int64_t n, int64_t v, const T* __restrict__ x,
                                      const int32_t* __restrict__ labels, const float* __restrict__ lse,
                                      const float* __restrict__ dloss, const float* __restrict__ dlse,
                                      T* __restrict__ dx) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xr = x + row * v;  // [v]
    T* dr = dx + row * v;       // [v]
    const float g = dloss[row], scale = g + dlse[row], l = lse[row];
    const int32_t y = labels[row];
    if (g == 0.0f && scale == 0.0f) {
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) dr[j] = FromFloat<T>(0.0f);
    } else if (y < 0 || y >= v) {
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) dr[j] = FromFloat<T>(NAN);
    } else {
      for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
        float d = scale * expf(ToFloat(xr[j]) - l);
        if (j == y) d -= g;
        dr[j] = FromFloat<T>(d);
      }
    }
  }
}

int64_t RowBlocks(int64_t n) { return n < kMaxRowBlocks ? n : kMaxRowBlocks; }

template <typename T>
int LaunchXent(cudaStream_t st, int64_t n, int64_t v, const void* x, const int32_t* labels, float* loss,
               float* lse) {
  SoftmaxXentKernel<T><<<RowBlocks(n), kRowThreads, 0, st>>>(n, v, static_cast<const T*>(x), labels, loss, lse);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchXentGrad(cudaStream_t st, int64_t n, int64_t v, const void* x, const int32_t* labels, const float* lse,
                   const float* dloss, const float* dlse, void* dx) {
  SoftmaxXentGradKernel<T><<<RowBlocks(n), kRowThreads, 0, st>>>(n, v, static_cast<const T*>(x), labels, lse, dloss,
                                                                 dlse, static_cast<T*>(dx));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int SoftmaxXentGpu(void* stream, DType dtype, int64_t n, int64_t v, const void* logits, const int32_t* labels,
                   float* loss, float* lse) {
  if (n <= 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchXent<float>(st, n, v, logits, labels, loss, lse);
    case DType::kBFloat16: return LaunchXent<__nv_bfloat16>(st, n, v, logits, labels, loss, lse);
    case DType::kHalf: return LaunchXent<__half>(st, n, v, logits, labels, loss, lse);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int SoftmaxXentGradGpu(void* stream, DType dtype, int64_t n, int64_t v, const void* logits, const int32_t* labels,
                       const float* lse, const float* dloss, const float* dlse, void* dlogits) {
  if (n <= 0 || v <= 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchXentGrad<float>(st, n, v, logits, labels, lse, dloss, dlse, dlogits);
    case DType::kBFloat16:
      return LaunchXentGrad<__nv_bfloat16>(st, n, v, logits, labels, lse, dloss, dlse, dlogits);
    case DType::kHalf: return LaunchXentGrad<__half>(st, n, v, logits, labels, lse, dloss, dlse, dlogits);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace seekline
