// seekline custom ops: MoeCombineGpu, MoeCombineGradGpu and RouteTopKGpu (declared in ../cc/kernels.h).
//
// The MoE layer's two data-dependent steps with the CPU kernels' formulas (../cc/moe_combine.cc,
// ../cc/route.cc):
//
//   combine   y[n] = Σ_k w[n, k] · ys[pos[n, k]]     terms in ascending pos (expert order)
//   grad      dys[pos[n, k]] = w[n, k] · dy[n],  dw[n, k] = ys[pos[n, k]] · dy[n]
//   route     group-limited top-k: group score (top-2 sum or max), keep the topk_group best
//             groups, then the top_k best experts among them; descending, ties to the lower index
//
// pos lives in device memory, so it is not checked on the host as the CPU kernel does (a copy and
// a stream synchronisation per call). Instead nothing is ever read or written out of bounds and a
// pos that is not a permutation of [0, N·K) shows as NaN: a token with an out-of-range entry gets
// a NaN output row; in the gradient a dys row that no pair points at stays NaN, and so does the dw
// of the lower-indexed pair of two that claim the same row. Each output element has one writer and
// a fixed summation order, so results are bit-identical run to run. No TensorFlow headers (see kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../cc/kernels.h"
#include "reduce.cuh"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kRowThreads = 256;            // threads per row block (a multiple of 32)
constexpr int64_t kMaxRowBlocks = 1 << 20;  // grid cap (the row kernels grid-stride)
constexpr int kThreads = 256;               // elementwise / per-token kernels
constexpr int64_t kMaxBlocks = 4096;

int64_t Blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return b < kMaxBlocks ? b : kMaxBlocks;
}
int64_t RowBlocks(int64_t n) { return n < kMaxRowBlocks ? n : kMaxRowBlocks; }

// y[n, :] = Σ_k w[n, k] · ys[pos[n, k], :], the K terms added in ascending pos. Thread 0 sorts the
// token's K (pos, w) pairs into dynamic shared memory (K floats, then K int32); K is the router's
// top_k (8 for DeepSeek-V3), so the insertion sort is a few dozen steps.
template <typename T>
__global__ void MoeCombineKernel(int64_t n, int64_t k, int64_t d, const T* __restrict__ ys,
                                 const float* __restrict__ w, const int32_t* __restrict__ pos, T* __restrict__ y) {
  extern __shared__ float slot_mem[];
  float* sw = slot_mem;                                   // [k] weights in ascending pos
  int32_t* sp = reinterpret_cast<int32_t*>(slot_mem + k);  // [k] ascending pos
  __shared__ int bad;                                     // an entry of pos out of [0, n·k)
  const int64_t m = n * k;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    __syncthreads();  // the previous row's readers are done with the slots
    if (threadIdx.x == 0) {
      bad = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t p = pos[row * k + j];
        const float wj = w[row * k + j];
        if (p < 0 || p >= m) bad = 1;
        int64_t i = j;
        for (; i > 0 && sp[i - 1] > p; --i) {
          sp[i] = sp[i - 1];
          sw[i] = sw[i - 1];
        }
        sp[i] = p;
        sw[i] = wj;
      }
    }
    __syncthreads();
    T* yr = y + row * d;  // [d]
    if (bad) {
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) yr[c] = FromFloat<T>(NAN);
      continue;
    }
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) acc += sw[j] * ToFloat(ys[static_cast<int64_t>(sp[j]) * d + c]);
      yr[c] = FromFloat<T>(acc);
    }
  }
}

// inv[i] = −1 and dw[i] = NaN for every pair / row i < m: what stays when pos is not a permutation.
__global__ void MoeGradInitKernel(int64_t m, int32_t* __restrict__ inv, float* __restrict__ dw) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m; i += stride) {
    inv[i] = -1;
    dw[i] = NAN;
  }
}

// inv[pos[p]] = p: for each row of ys, the (token, k) pair it belongs to. A valid pos has one
// writer per row; atomicMax only matters for an invalid one, where two pairs claim a row: the
// larger index wins, the same every run, and the write is not a data race.
__global__ void MoeInvertKernel(int64_t m, const int32_t* __restrict__ pos, int32_t* __restrict__ inv) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < m; p += stride) {
    const int32_t q = pos[p];
    if (q >= 0 && q < m) atomicMax(inv + q, static_cast<int>(p));
  }
}

// One block per row r of ys: with p = inv[r] (token p / k), dys[r] = w[p] · dy[token] and
// dw[p] = ys[r] · dy[token] (fp32 block sum). dw[p] is written only when pos[p] is r itself, so a
// pair that lost a duplicate entry keeps its NaN.
template <typename T>
__global__ void __launch_bounds__(kRowThreads) MoeCombineGradKernel(
    int64_t m, int64_t k, int64_t d, const T* __restrict__ dy, const T* __restrict__ ys, const float* __restrict__ w,
    const int32_t* __restrict__ pos, const int32_t* __restrict__ inv, T* __restrict__ dys, float* __restrict__ dw) {
  __shared__ float partial[32];
  for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
    const int32_t p = inv[r];
    T* out = dys + r * d;  // [d]
    if (p < 0) {
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) out[c] = FromFloat<T>(NAN);
      continue;
    }
    const T* g = dy + (p / k) * d;  // [d]
    const T* src = ys + r * d;      // [d]
    const float wp = w[p];
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const float gc = ToFloat(g[c]);
      out[c] = FromFloat<T>(wp * gc);
      dot += ToFloat(src[c]) * gc;
    }
    dot = BlockSum(dot, partial);
    if (threadIdx.x == 0 && pos[p] == r) dw[p] = dot;
  }
}

// a beats b: larger value, or the same value at a lower index (tf.math.top_k's order)
__device__ __forceinline__ bool Beats(float va, int64_t a, float vb, int64_t b) {
  return va > vb || (va == vb && a < b);
}

// NaN ranks as −inf here, so the order stays total and every pick finds an element.
__device__ __forceinline__ float Rank(float v) { return v == v ? v : -INFINITY; }

// One thread per token. Each pick is the best element that the previous pick beats, so the picks
// come out in top_k's order without a "used" array. Groups: a bit per group (n_group <= 64, which
// the launcher checks). mode 0 none, 1 top-2 sum, 2 max.
__global__ void RouteTopKKernel(int64_t n, int64_t e, int top_k, int n_group, int topk_group, int mode,
                                const float* __restrict__ choice, int32_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool grouped = mode != 0 && n_group > 1;
  const int64_t per = grouped ? e / n_group : e;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < n; row += stride) {
    const float* x = choice + row * e;  // [e]
    uint64_t kept = ~0ull;
    if (grouped) {
      kept = 0;
      float last_v = 0.0f;
      int last_g = -1;
      for (int t = 0; t < topk_group; ++t) {
        float best_v = 0.0f;
        int best = -1;
        for (int g = 0; g < n_group; ++g) {
          const float* xg = x + g * per;
          float a = -INFINITY, b = -INFINITY;  // the group's largest two values
          for (int64_t j = 0; j < per; ++j) {
            const float v = Rank(xg[j]);
            if (v > a) {
              b = a;
              a = v;
            } else if (v > b) {
              b = v;
            }
          }
          const float score = Rank(mode == 1 ? a + b : a);
          if (last_g >= 0 && !Beats(last_v, last_g, score, g)) continue;  // already taken
          if (best < 0 || Beats(score, g, best_v, best)) {
            best = g;
            best_v = score;
          }
        }
        kept |= 1ull << best;
        last_g = best;
        last_v = best_v;
      }
    }
    float last_v = 0.0f;
    int64_t last = -1;
    for (int t = 0; t < top_k; ++t) {
      float best_v = 0.0f;
      int64_t best = -1;
      for (int64_t j = 0; j < e; ++j) {
        const float v = ((kept >> (j / per)) & 1ull) ? Rank(x[j]) : -INFINITY;
        if (last >= 0 && !Beats(last_v, last, v, j)) continue;
        if (best < 0 || Beats(v, j, best_v, best)) {
          best = j;
          best_v = v;
        }
      }
      out[row * top_k + t] = static_cast<int32_t>(best);
      last = best;
      last_v = best_v;
    }
  }
}

template <typename T>
int LaunchCombine(cudaStream_t st, int64_t n, int64_t k, int64_t d, const void* ys, const float* w,
                  const int32_t* pos, void* y) {
  const size_t shared = static_cast<size_t>(k) * (sizeof(float) + sizeof(int32_t));
  MoeCombineKernel<T><<<RowBlocks(n), kRowThreads, shared, st>>>(n, k, d, static_cast<const T*>(ys), w, pos,
                                                                 static_cast<T*>(y));
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchCombineGrad(cudaStream_t st, int64_t m, int64_t k, int64_t d, const void* dy, const void* ys,
                      const float* w, const int32_t* pos, int32_t* inv, void* dys, float* dw) {
  MoeGradInitKernel<<<Blocks(m), kThreads, 0, st>>>(m, inv, dw);
  MoeInvertKernel<<<Blocks(m), kThreads, 0, st>>>(m, pos, inv);
  MoeCombineGradKernel<T><<<RowBlocks(m), kRowThreads, 0, st>>>(m, k, d, static_cast<const T*>(dy),
                                                                static_cast<const T*>(ys), w, pos, inv,
                                                                static_cast<T*>(dys), dw);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int MoeCombineGpu(void* stream, DType dtype, int64_t n, int64_t k, int64_t d, const void* ys, const float* w,
                  const int32_t* pos, void* y) {
  if (n <= 0 || d <= 0) return 0;
  if (k <= 0 || k > 4096) return static_cast<int>(cudaErrorInvalidValue);  // 8·k bytes of shared memory
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchCombine<float>(st, n, k, d, ys, w, pos, y);
    case DType::kBFloat16: return LaunchCombine<__nv_bfloat16>(st, n, k, d, ys, w, pos, y);
    case DType::kHalf: return LaunchCombine<__half>(st, n, k, d, ys, w, pos, y);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int MoeCombineGradGpu(void* stream, DType dtype, int64_t n, int64_t k, int64_t d, const void* dy, const void* ys,
                      const float* w, const int32_t* pos, int32_t* inv, void* dys, float* dw) {
  const int64_t m = n * k;
  if (m <= 0) return 0;
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchCombineGrad<float>(st, m, k, d, dy, ys, w, pos, inv, dys, dw);
    case DType::kBFloat16: return LaunchCombineGrad<__nv_bfloat16>(st, m, k, d, dy, ys, w, pos, inv, dys, dw);
    case DType::kHalf: return LaunchCombineGrad<__half>(st, m, k, d, dy, ys, w, pos, inv, dys, dw);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int RouteTopKGpu(void* stream, int64_t n, int64_t e, int top_k, int n_group, int topk_group, int group_mode,
                 const float* choice, int32_t* topk_idx) {
  if (n <= 0) return 0;
  const bool grouped = group_mode != 0 && n_group > 1;
  if (top_k < 1 || top_k > e || group_mode < 0 || group_mode > 2 ||
      (grouped && (n_group > 64 || e % n_group != 0 || topk_group < 1 || topk_group > n_group ||
                   (group_mode == 1 && e / n_group < 2)))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto st = static_cast<cudaStream_t>(stream);
  RouteTopKKernel<<<Blocks(n), kThreads, 0, st>>>(
      n, e, top_k, n_group, topk_group, group_mode, choice, topk_idx);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace seekline
