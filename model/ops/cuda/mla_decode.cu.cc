// seekline custom ops: MlaLatentAttentionGpu (declared in ../cc/kernels.h).
//
// One block per (b, t, h) query row (grid-stride over rows). Per row:
//   1. threads stride over the S keys: score[s] = scale * (q_lat·c[s] + q_pe·k_pe[s]) + bias[s]
//      (fp32 dot products), kept in a scores buffer;
//   2. block-wide max, then exp(score - max) in place and a block-wide sum (warp shuffles plus one
//      shared-memory step, fixed order: deterministic, no float atomics);
//   3. threads stride over the C latent columns: o[k] = (sum_s e[s] * c[s][k]) / sum.
// Same math as the CPU kernel in ../cc/mla_decode.cc (fp32 softmax, a fully masked row gives the
// uniform average because every score equals the same -1e9 in fp32).
//
// The scores buffer is dynamic shared memory when S <= kMaxSharedScores (S floats, under the 48 KiB
// a block gets without an opt-in); for longer caches it is global scratch from cudaMallocAsync on
// the kernel's stream (S floats per resident block, at most kMaxScratchFloats in all), freed with
// cudaFreeAsync right after the launch in stream order. No TensorFlow headers on purpose (see
// kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../cc/kernels.h"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kMaxThreads = 256;                  // threads per row block (a multiple of 32)
constexpr int64_t kMaxBlocks = 1 << 20;           // grid cap (the kernel grid-strides over rows)
constexpr int64_t kMaxSharedScores = 12 * 1024 - 64;  // floats: 48 KiB minus room for the static partials
constexpr int64_t kMaxScratchFloats = 1 << 26;    // global scratch cap (256 MiB) for S > kMaxSharedScores


// Block-wide reduction (blockDim.x a multiple of 32, <= 1024), result in every thread. `partial` is
// 32 floats of shared memory. Every thread combines the warp results in the same order, so all get
// the same bits; the leading barrier makes back-to-back calls safe and also publishes every
// thread's earlier shared-memory writes (the scores) to the whole block.
template <bool kMax>
__device__ float BlockReduce(float v, float* partial) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float total = partial[0];
  for (int i = 1; i < warps; ++i) total = kMax ? fmaxf(total, partial[i]) : total + partial[i];
  return total;
}

// scratch == nullptr: scores live in dynamic shared memory (s floats); otherwise block i uses
// scratch[i * s, (i + 1) * s).
template <typename T>
__global__ void MlaLatentAttentionKernel(int64_t rows, int64_t t, int64_t h, int64_t c, int64_t r, int64_t s,
                                         int64_t bias_b, int64_t bias_t, float scale, const T* q_lat,
                                         const T* q_pe, const T* cache, const T* k_pe, const float* bias,
                                         float* scratch, T* o_lat) {
  extern __shared__ float shared_scores[];
  __shared__ float partial[32];
  float* scores = scratch != nullptr ? scratch + static_cast<int64_t>(blockIdx.x) * s : shared_scores;  // [s]
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // row = (bi * t + ti) * h + hi
    const int64_t bt_row = row / h;
    const int64_t bi = bt_row / t;
    const int64_t ti = bt_row % t;
    const T* q = q_lat + row * c;     // [c]
    const T* qr = q_pe + row * r;     // [r]
    const T* cb = cache + bi * s * c;  // [s, c]
    const T* kb = k_pe + bi * s * r;   // [s, r]
    const float* bias_row = bias + ((bias_b == 1 ? 0 : bi) * bias_t + (bias_t == 1 ? 0 : ti)) * s;  // [s]

    float local_max = -INFINITY;
    for (int64_t j = threadIdx.x; j < s; j += blockDim.x) {
      float dot = 0.0f;
      for (int64_t k = 0; k < c; ++k) dot += ToFloat(q[k]) * ToFloat(cb[j * c + k]);
      float dot_pe = 0.0f;
      for (int64_t k = 0; k < r; ++k) dot_pe += ToFloat(qr[k]) * ToFloat(kb[j * r + k]);
      const float score = scale * (dot + dot_pe) + bias_row[j];
      scores[j] = score;
      local_max = fmaxf(local_max, score);
    }
    const float mx = BlockReduce<true>(local_max, partial);

    float local_sum = 0.0f;
    for (int64_t j = threadIdx.x; j < s; j += blockDim.x) {  // the same j this thread wrote above
      const float e = expf(scores[j] - mx);
      scores[j] = e;
      local_sum += e;
    }
    const float inv_sum = 1.0f / BlockReduce<false>(local_sum, partial);  // its barriers publish scores

    T* o = o_lat + row * c;  // [c]
    for (int64_t k = threadIdx.x; k < c; k += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < s; ++j) acc += scores[j] * ToFloat(cb[j * c + k]);
      o[k] = FromFloat<T>(acc * inv_sum);
    }
    __syncthreads();  // everyone is done reading scores before the next row overwrites them
  }
}

template <typename T>
int Launch(cudaStream_t stream, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r, int64_t s, int64_t bias_b,
           int64_t bias_t, float scale, const void* q_lat, const void* q_pe, const void* cache, const void* k_pe,
           const float* bias, void* o_lat) {
  const int64_t rows = b * t * h;
  const int64_t wanted = (s > c ? s : c) + 31;  // enough threads for the longer of the two strided loops
  const int threads = static_cast<int>(wanted / 32 * 32 < kMaxThreads ? wanted / 32 * 32 : kMaxThreads);
  int64_t blocks = rows < kMaxBlocks ? rows : kMaxBlocks;
  float* scratch = nullptr;
  size_t shared_bytes = 0;
  if (s <= kMaxSharedScores) {
    shared_bytes = static_cast<size_t>(s) * sizeof(float);
  } else {
    const int64_t fit = kMaxScratchFloats / s > 0 ? kMaxScratchFloats / s : 1;  // blocks whose scores fit the cap
    if (blocks > fit) blocks = fit;
    const cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch),
                                            static_cast<size_t>(blocks * s) * sizeof(float), stream);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const unsigned grid = static_cast<unsigned>(blocks);
  MlaLatentAttentionKernel<T><<<grid, threads, shared_bytes, stream>>>(
      rows, t, h, c, r, s, bias_b, bias_t, scale, static_cast<const T*>(q_lat), static_cast<const T*>(q_pe),
      static_cast<const T*>(cache), static_cast<const T*>(k_pe), bias, scratch, static_cast<T*>(o_lat));
  const cudaError_t launch_err = cudaGetLastError();
  if (scratch != nullptr) {
    const cudaError_t free_err = cudaFreeAsync(scratch, stream);  // after the kernel, in stream order
    if (launch_err == cudaSuccess) return static_cast<int>(free_err);
  }
  return static_cast<int>(launch_err);
}

}  // namespace

int MlaLatentAttentionGpu(void* stream, DType dtype, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r,
                          int64_t s, int64_t bias_b, int64_t bias_t, float scale, const void* q_lat,
                          const void* q_pe, const void* cache, const void* k_pe, const float* bias,
                          void* o_lat) {
  if (b < 0 || t < 0 || h < 0 || c < 0 || r < 0 || s <= 0) return static_cast<int>(cudaErrorInvalidValue);
  if ((bias_b != 1 && bias_b != b) || (bias_t != 1 && bias_t != t)) return static_cast<int>(cudaErrorInvalidValue);
  if (b == 0 || t == 0 || h == 0 || c == 0) return 0;  // o_lat is empty
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return Launch<float>(st, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias, o_lat);
    case DType::kBFloat16:
      return Launch<__nv_bfloat16>(st, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias,
                                   o_lat);
    case DType::kHalf:
      return Launch<__half>(st, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias, o_lat);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace seekline
