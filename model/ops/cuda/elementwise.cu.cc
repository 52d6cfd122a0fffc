// seekline custom ops: SwigluGpu, SwigluGradGpu, RopeGpu and ApplyAdamWGpu (declared in ../cc/kernels.h).
//
// Elementwise kernels, one thread per output element (grid-stride), fp32 arithmetic whatever the
// storage type and one rounding per output — the same formulas as the CPU kernels in
// ../cc/swiglu.cc and ../cc/rope.cc, so both devices agree to fp32 rounding. Memory-bound: what
// they save over the pure-TF path is its intermediate tensors (Swish + Mul forward, Sigmoid and
// four Mul / Add / Sub backward; RoPE's split, unstack, six elementwise ops and two concats), not
// arithmetic. No float atomics, so results are bit-identical run to run. No TensorFlow headers on
// purpose (see kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../cc/kernels.h"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid cap: the kernels grid-stride over what is left

int64_t Blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return b < kMaxBlocks ? b : kMaxBlocks;
}

// σ(g) with exp's argument capped at 88 (e^88 is finite in fp32; σ(−88) ≈ 6e−39 ≈ 0), as on the CPU.
__device__ __forceinline__ float Sigmoid(float g) { return 1.0f / (1.0f + expf(fminf(-g, 88.0f))); }

// h = g · σ(g) · u
template <typename T>
__global__ void SwigluKernel(int64_t n, const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ h) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gv = ToFloat(g[i]);
    h[i] = FromFloat<T>(gv * Sigmoid(gv) * ToFloat(u[i]));
  }
}

// dg = dh · u · σ(g) · (1 + g · (1 − σ(g))),  du = dh · g · σ(g)
template <typename T>
__global__ void SwigluGradKernel(int64_t n, const T* __restrict__ dh, const T* __restrict__ g,
                                 const T* __restrict__ u, T* __restrict__ dg, T* __restrict__ du) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gv = ToFloat(g[i]), uv = ToFloat(u[i]), dv = ToFloat(dh[i]);
    const float s = Sigmoid(gv);
    dg[i] = FromFloat<T>(dv * uv * (s * (1.0f + gv * (1.0f - s))));
    du[i] = FromFloat<T>(dv * (gv * s));
  }
}

// One thread per output element of x viewed as (rows · heads, d); cos / sin (rows, half) fp32.
// Channels below `offset` are copied. Of the rot = d − offset trailing ones, with i < half:
//   forward   y[o+i] = a·c_i − b·s_i,  y[o+half+i] = b·c_i + a·s_i   (a, b: the pair's inputs,
//             (x[o+i], x[o+half+i]), or (x[o+2i], x[o+2i+1]) when interleaved)
//   inverse   from p = x[o+i], q = x[o+half+i]: p·c_i + q·s_i to the pair's first position,
//             q·c_i − p·s_i to its second (the transpose of the forward, its gradient).
template <typename T>
__global__ void RopeKernel(int64_t total, int64_t heads, int64_t d, int64_t offset, int64_t half,
                           bool interleaved, bool inverse, const float* __restrict__ cos,
                           const float* __restrict__ sin, const T* __restrict__ x, T* __restrict__ y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t vec = e / d, j = e - vec * d;  // vec = row · heads + head
    if (j < offset) {
      y[e] = x[e];
      continue;
    }
    const T* xo = x + vec * d + offset;
    const int64_t jr = j - offset;
    const int64_t row = vec / heads;
    float out;
    if (!inverse) {
      const bool second = jr >= half;
      const int64_t i = second ? jr - half : jr;
      const float c = cos[row * half + i], s = sin[row * half + i];
      const float a = ToFloat(interleaved ? xo[2 * i] : xo[i]);
      const float b = ToFloat(interleaved ? xo[2 * i + 1] : xo[i + half]);
      out = second ? b * c + a * s : a * c - b * s;
    } else {
      const bool second = interleaved ? (jr & 1) != 0 : jr >= half;
      const int64_t i = interleaved ? jr / 2 : (second ? jr - half : jr);
      const float c = cos[row * half + i], s = sin[row * half + i];
      const float p = ToFloat(xo[i]), q = ToFloat(xo[i + half]);
      out = second ? q * c - p * s : p * c + q * s;
    }
    y[e] = FromFloat<T>(out);
  }
}

// One AdamW step in place (SeeklineApplyAdamW; the formulas and their order are ../cc/adamw.cc's):
//   g = gs·grad;  w −= decay·w;  m += (g − m)·b1c;  v += (g² − v)·b2c;  w −= alpha·m / (√v + eps)
// fp32 variables and slots; each element read and written by one thread.
__global__ void AdamWKernel(int64_t n, float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                            const float* __restrict__ grad, float alpha, float decay, float b1c, float b2c, float eps,
                            float gs) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = gs * grad[i];
    float wi = w[i];
    wi = wi - decay * wi;
    const float mi = m[i] + (g - m[i]) * b1c;
    const float vi = v[i] + (g * g - v[i]) * b2c;
    w[i] = wi - (alpha * mi) / (sqrtf(vi) + eps);
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename T>
int LaunchSwiglu(cudaStream_t st, int64_t n, const void* g, const void* u, void* h) {
  SwigluKernel<T><<<Blocks(n), kThreads, 0, st>>>(n, static_cast<const T*>(g), static_cast<const T*>(u),
                                                  static_cast<T*>(h));
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchSwigluGrad(cudaStream_t st, int64_t n, const void* dh, const void* g, const void* u, void* dg,
                     void* du) {
  SwigluGradKernel<T><<<Blocks(n), kThreads, 0, st>>>(n, static_cast<const T*>(dh), static_cast<const T*>(g),
                                                      static_cast<const T*>(u), static_cast<T*>(dg),
                                                      static_cast<T*>(du));
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchRope(cudaStream_t st, int64_t rows, int64_t heads, int64_t d, int64_t offset, bool interleaved,
               bool inverse, const float* cos, const float* sin, const void* x, void* y) {
  const int64_t total = rows * heads * d;
  RopeKernel<T><<<Blocks(total), kThreads, 0, st>>>(total, heads, d, offset, (d - offset) / 2, interleaved,
                                                    inverse, cos, sin, static_cast<const T*>(x),
                                                    static_cast<T*>(y));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int SwigluGpu(void* stream, DType dtype, int64_t n, const void* g, const void* u, void* h) {
  if (n <= 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchSwiglu<float>(st, n, g, u, h);
    case DType::kBFloat16: return LaunchSwiglu<__nv_bfloat16>(st, n, g, u, h);
    case DType::kHalf: return LaunchSwiglu<__half>(st, n, g, u, h);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int SwigluGradGpu(void* stream, DType dtype, int64_t n, const void* dh, const void* g, const void* u, void* dg,
                  void* du) {
  if (n <= 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchSwigluGrad<float>(st, n, dh, g, u, dg, du);
    case DType::kBFloat16: return LaunchSwigluGrad<__nv_bfloat16>(st, n, dh, g, u, dg, du);
    case DType::kHalf: return LaunchSwigluGrad<__half>(st, n, dh, g, u, dg, du);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int RopeGpu(void* stream, DType dtype, int64_t rows, int64_t heads, int64_t d, int64_t offset, bool interleaved,
            bool inverse, const float* cos, const float* sin, const void* x, void* y) {
  if (rows <= 0 || heads <= 0 || d <= 0) return 0;
  if (offset < 0 || offset > d || (d - offset) % 2 != 0) return static_cast<int>(cudaErrorInvalidValue);
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchRope<float>(st, rows, heads, d, offset, interleaved, inverse, cos, sin, x, y);
    case DType::kBFloat16:
      return LaunchRope<__nv_bfloat16>(st, rows, heads, d, offset, interleaved, inverse, cos, sin, x, y);
    case DType::kHalf: return LaunchRope<__half>(st, rows, heads, d, offset, interleaved, inverse, cos, sin, x, y);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int ApplyAdamWGpu(void* stream, int64_t n, float* var, float* m, float* v, const float* grad, float alpha,
                  float decay, float beta1, float beta2, float epsilon, float grad_scale) {
  if (n <= 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  AdamWKernel<<<Blocks(n), kThreads, 0, st>>>(
      n, var, m, v, grad, alpha, decay, 1.0f - beta1, 1.0f - beta2, epsilon, grad_scale);
  return static_cast<int>(cudaGetLastError());
}

int DeviceCopyGpu(void* stream, int64_t bytes, const void* src, void* dst) {
  if (bytes <= 0) return 0;
  return static_cast<int>(
      cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
}

}  // namespace seekline
