// seekline custom ops: AttentionGpu / AttentionGradGpu (declared in ../cc/kernels.h), the CUDA
// kernels of SeeklineAttention / SeeklineAttentionGrad (../cc/attention.cc has the math).
//
// CUDA-core kernels, fp32 arithmetic, tiles of n queries x n keys (n = 32, 16 or 8: the largest
// whose shared memory fits in 48 KiB and whose accumulators fit kMaxAcc per thread):
//   forward   block per (b, h, query tile): q tile (scaled) in shared memory; per key tile, the
//             n x n logits z (thread per (query, key) pair), an online-softmax update (thread per
//             row: running max m, sum l, rescale factor), then o += p·V with each thread owning
//             fixed (row, column) accumulators. o = acc / l, lse = m + log l.
//   backward  1. rows: per (b, h, t) row D = do·o − dlse, whether the row sees any key, and the
//                softmax shift / 1/l — lse and 1 for a row that sees a key; for a fully masked row
//                (lse = −1e9 + log S rounds to −1e9, so exp(z − lse) would be 1, not 1/S) the max
//                and sum recomputed over every key, as on the CPU;
//             2. dq: block per (b, h, query tile): ds = p ⊙ (do·vᵀ − D), dq = scale·Σ ds·k;
//             3. dk / dv: block per (b, kv head, key tile), summing over the group's heads and the
//                query tiles in order: dv = Σ pᵀ·do, dk = Σ dsᵀ·q_s.
//   Every output element has one writer and a fixed summation order: deterministic, no atomics.
// z = q_s·k + bias with q_s = scale·q rounded to fp32 first, in every kernel (the same expression,
// so the backward's p matches the forward's). A tile whose every (valid) logit is masked
// (bias <= -1e8) is skipped unless one of its rows sees no key at all (that row's softmax is the
// uniform average over every key): an optimisation only, exp(-1e9 - m) is exactly 0 in fp32.
// No TensorFlow headers on purpose (see kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../cc/kernels.h"
#include "reduce.cuh"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kThreads = 128;               // threads per tile block (4 warps)
constexpr int kMaxAcc = 64;                 // fp32 accumulators per thread
constexpr int64_t kMaxSharedFloats = 12 * 1024 - 64;  // 48 KiB minus room for the static partials
constexpr int64_t kMaxRowBlocks = 1 << 20;  // grid cap of the rows kernel (grid-stride)
constexpr float kMasked = -1e8f;            // bias at or below this hides a key (the layers use -1e9)

// One call's sizes: q (B, T, H, Dk), k (B, S, Hkv, Dk), v (B, S, Hkv, Dv), bias (bias_b, 1, bias_t, S).
struct Geom {
  int64_t b, t, h, s, hkv, dk, dv, bias_b, bias_t;
  float scale;
  __host__ __device__ int64_t Group() const { return h / hkv; }
  __host__ __device__ int64_t BiasRow(int64_t bi, int64_t ti) const {
    return (bias_b == 1 ? 0 : bi) * bias_t + (bias_t == 1 ? 0 : ti);
  }
};

// Shared-memory floats of each kernel at tile size n (rows padded by one float: the pair loops
// read n rows at a stride, and an odd stride keeps them in different banks).
__host__ __device__ inline int64_t FwdFloats(int64_t n, const Geom& g) {
  return n * (g.dk + 1) * 2 + n * (g.dv + 1) + n * (n + 1) + 4 * n;  // q, k, v, z/p, m l corr vis
}
__host__ __device__ inline int64_t GradFloats(int64_t n, const Geom& g) {
  return n * (g.dk + 1) * 2 + n * (g.dv + 1) * 2 + 2 * n * (n + 1) + 4 * n;  // q k, do v, p ds, stats
}

// The largest tile size whose shared memory and accumulators (acc_width per row) fit, or 0.
int TileSize(const Geom& g, bool grad, int64_t acc_width) {
  for (int n : {32, 16, 8}) {
    const int64_t floats = grad ? GradFloats(n, g) : FwdFloats(n, g);
    if (floats <= kMaxSharedFloats && n * acc_width <= int64_t{kThreads} * kMaxAcc) return n;
  }
  return 0;
}

__device__ __forceinline__ float Dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// rows x width of src (row r at src + r * stride, `width` contiguous elements) into dst[r][ld] as
// fp32 times mul; rows in [rows, n) are zeros.
template <typename T>
__device__ void LoadRows(float* dst, int ld, int n, int rows, int64_t width, const T* src, int64_t stride,
                         float mul) {
  for (int64_t e = threadIdx.x; e < n * width; e += blockDim.x) {
    const int64_t r = e / width, c = e % width;
    dst[r * ld + c] = r < rows ? mul * ToFloat(src[r * stride + c]) : 0.0f;
  }
}

// Whether the (query tile, key tile) block must be computed: some valid pair is visible, or some
// valid row sees no key at all. Every thread calls this (it holds block barriers).
__device__ bool TileNeeded(int n, int nq, int nk, const float* bias, const Geom& g, int64_t bi, int64_t q0, int64_t k0,
                           const float* row_vis, float* partial) {
  float need = 0.0f;
  for (int p = threadIdx.x; p < n * n; p += blockDim.x) {
    const int r = p / n, i = p % n;
    if (r < nq && i < nk) {
      need += (row_vis[r] == 0.0f || bias[g.BiasRow(bi, q0 + r) * g.s + k0 + i] > kMasked) ? 1.0f : 0.0f;
    }
  }
  return BlockSum(need, partial) > 0.0f;
}

// ---- forward: block per (b, h, query tile) ----
template <typename T>
__global__ void __launch_bounds__(kThreads)
    AttnFwdKernel(Geom g, int n, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const float* __restrict__ bias, T* __restrict__ o, float* __restrict__ lse) {
  extern __shared__ float smem[];
  __shared__ float partial[32];
  const int ldk = static_cast<int>(g.dk) + 1, ldv = static_cast<int>(g.dv) + 1, ldz = n + 1;
  float* qs = smem;               // [n][ldk]  q_s = scale·q
  float* ks = qs + n * ldk;       // [n][ldk]
  float* vs = ks + n * ldk;       // [n][ldv]
  float* zs = vs + n * ldv;       // [n][ldz]  z, then p
  float* row_m = zs + n * ldz;    // [n] running max
  float* row_l = row_m + n;       // [n] running sum
  float* row_c = row_l + n;       // [n] this tile's rescale factor
  float* row_vis = row_c + n;     // [n] 1 when the row sees some key
  const int tid = threadIdx.x;
  const int64_t tiles = (g.t + n - 1) / n;
  const int64_t bh = blockIdx.x / tiles, qt = blockIdx.x % tiles;
  const int64_t bi = bh / g.h, hi = bh % g.h, kvh = hi / g.Group();
  const int64_t q0 = qt * n;
  const int nq = static_cast<int>(g.t - q0 < n ? g.t - q0 : n);
  const int64_t q_stride = g.h * g.dk, k_stride = g.hkv * g.dk, v_stride = g.hkv * g.dv;

  LoadRows(qs, ldk, n, nq, g.dk, q + ((bi * g.t + q0) * g.h + hi) * g.dk, q_stride, g.scale);
  if (tid < n) {
    row_m[tid] = -INFINITY;
    row_l[tid] = 0.0f;
    float vis = 1.0f;  // rows past T count as seeing keys: they never force a tile
    if (tid < nq) {
      const float* brow = bias + g.BiasRow(bi, q0 + tid) * g.s;
      vis = 0.0f;
      for (int64_t j = 0; j < g.s; ++j) vis = brow[j] > kMasked ? 1.0f : vis;
    }
    row_vis[tid] = vis;
  }
  float acc[kMaxAcc];  // element e = tid + j * kThreads of the (n, Dv) output tile
#pragma unroll
  for (int j = 0; j < kMaxAcc; ++j) acc[j] = 0.0f;
  const int64_t width = n * g.dv;
  __syncthreads();

  for (int64_t k0 = 0; k0 < g.s; k0 += n) {
    const int nk = static_cast<int>(g.s - k0 < n ? g.s - k0 : n);
    if (!TileNeeded(n, nq, nk, bias, g, bi, q0, k0, row_vis, partial)) continue;
    LoadRows(ks, ldk, n, nk, g.dk, k + ((bi * g.s + k0) * g.hkv + kvh) * g.dk, k_stride, 1.0f);
    LoadRows(vs, ldv, n, nk, g.dv, v + ((bi * g.s + k0) * g.hkv + kvh) * g.dv, v_stride, 1.0f);
    __syncthreads();
    for (int p = tid; p < n * n; p += kThreads) {  // z (n queries x n keys); -inf past S
      const int r = p / n, i = p % n;
      float z = -INFINITY;
      if (i < nk) {
        z = r < nq ? Dot(qs + r * ldk, ks + i * ldk, g.dk) + bias[g.BiasRow(bi, q0 + r) * g.s + k0 + i] : 0.0f;
      }
      zs[r * ldz + i] = z;
    }
    __syncthreads();
    if (tid < n) {  // online softmax: row tid's new max, its p in place, the rescale of what came before
      float* zr = zs + tid * ldz;
      float mx = row_m[tid];
      for (int i = 0; i < n; ++i) mx = fmaxf(mx, zr[i]);
      const float corr = expf(row_m[tid] - mx);  // 0 on the row's first tile
      float sum = 0.0f;
      for (int i = 0; i < n; ++i) {
        const float p = expf(zr[i] - mx);
        zr[i] = p;
        sum += p;
      }
      row_l[tid] = row_l[tid] * corr + sum;
      row_m[tid] = mx;
      row_c[tid] = corr;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMaxAcc; ++j) {  // acc = acc·corr + p·V
      const int64_t e = tid + int64_t{j} * kThreads;
      if (e < width) {
        const int64_t r = e / g.dv, c = e % g.dv;
        float a = acc[j] * row_c[r];
        for (int i = 0; i < n; ++i) a += zs[r * ldz + i] * vs[i * ldv + c];
        acc[j] = a;
      }
    }
    __syncthreads();  // everyone is done with ks / vs / zs before the next tile overwrites them
  }
#pragma unroll
  for (int j = 0; j < kMaxAcc; ++j) {
    const int64_t e = tid + int64_t{j} * kThreads;
    if (e < width) {
      const int64_t r = e / g.dv, c = e % g.dv;
      if (r < nq) o[((bi * g.t + q0 + r) * g.h + hi) * g.dv + c] = FromFloat<T>(acc[j] / row_l[r]);
    }
  }
  if (tid < nq) lse[bh * g.t + q0 + tid] = row_m[tid] + logf(row_l[tid]);
}

// ---- backward 1: per-row statistics, one warp-sized block per (b, h, t) row ----
// stats (4, B·H·T): shift, 1/l, D, sees-a-key (1 / 0); p = exp(z − shift) / l.
template <typename T>
__global__ void AttnRowsKernel(Geom g, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ o,
                               const float* __restrict__ lse, const T* __restrict__ d_o,
                               const float* __restrict__ d_lse, const float* __restrict__ bias,
                               float* __restrict__ stats) {
  const int lane = threadIdx.x;  // blockDim.x == 32: the block is one warp
  const int64_t rows = g.b * g.h * g.t;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // row = (bi * H + hi) * T + ti
    const int64_t bh = row / g.t, ti = row % g.t, bi = bh / g.h, hi = bh % g.h, kvh = hi / g.Group();
    const int64_t at = ((bi * g.t + ti) * g.h + hi) * g.dv;
    float dot = 0.0f;
    for (int64_t c = lane; c < g.dv; c += 32) dot += ToFloat(d_o[at + c]) * ToFloat(o[at + c]);
    const float delta = WarpSum(dot) - d_lse[row];
    const float* brow = bias + g.BiasRow(bi, ti) * g.s;
    float vis = 0.0f;
    for (int64_t j = lane; j < g.s; j += 32) vis = brow[j] > kMasked ? 1.0f : vis;
    vis = WarpMax(vis);
    float shift = lse[row], inv_l = 1.0f;
    if (vis == 0.0f) {  // the same in every lane: a fully masked row, rare (padding queries)
      const T* qr = q + ((bi * g.t + ti) * g.h + hi) * g.dk;
      const T* kb = k + (bi * g.s * g.hkv + kvh) * g.dk;  // key j at kb + j * hkv * dk
      float mx = -INFINITY;
      for (int64_t j = lane; j < g.s; j += 32) {
        float z = 0.0f;
        for (int64_t c = 0; c < g.dk; ++c) z += (g.scale * ToFloat(qr[c])) * ToFloat(kb[j * g.hkv * g.dk + c]);
        mx = fmaxf(mx, z + brow[j]);
      }
      mx = WarpMax(mx);
      float sum = 0.0f;
      for (int64_t j = lane; j < g.s; j += 32) {
        float z = 0.0f;
        for (int64_t c = 0; c < g.dk; ++c) z += (g.scale * ToFloat(qr[c])) * ToFloat(kb[j * g.hkv * g.dk + c]);
        sum += expf(z + brow[j] - mx);
      }
      shift = mx;
      inv_l = 1.0f / WarpSum(sum);
    }
    if (lane == 0) {
      stats[row] = shift;
      stats[rows + row] = inv_l;
      stats[2 * rows + row] = delta;
      stats[3 * rows + row] = vis;
    }
  }
}

// Rows [q0, q0 + nq) of head bh's statistics into shared memory (rows past T: p = 0, no tile forced).
__device__ void LoadStats(int n, int nq, const float* stats, int64_t rows, int64_t first, float* shift, float* inv_l,
                          float* delta, float* vis) {
  for (int r = threadIdx.x; r < n; r += blockDim.x) {
    const bool in = r < nq;
    shift[r] = in ? stats[first + r] : 0.0f;
    inv_l[r] = in ? stats[rows + first + r] : 0.0f;
    delta[r] = in ? stats[2 * rows + first + r] : 0.0f;
    vis[r] = in ? stats[3 * rows + first + r] : 1.0f;
  }
}

// p and ds of query row r against key i (both valid) from the shared tiles.
__device__ __forceinline__ void ProbAndDs(const Geom& g, const float* qr, const float* kr, const float* dor,
                                          const float* vr, float b, float shift, float inv_l, float delta, float* p,
                                          float* ds) {
  const float z = Dot(qr, kr, g.dk) + b;
  *p = expf(z - shift) * inv_l;
  *ds = *p * (Dot(dor, vr, g.dv) - delta);
}

// ---- backward 2: dq, block per (b, h, query tile) ----
template <typename T>
__global__ void __launch_bounds__(kThreads)
    AttnDqKernel(Geom g, int n, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                 const float* __restrict__ bias, const T* __restrict__ d_o, const float* __restrict__ stats,
                 T* __restrict__ dq) {
  extern __shared__ float smem[];
  __shared__ float partial[32];
  const int ldk = static_cast<int>(g.dk) + 1, ldv = static_cast<int>(g.dv) + 1, ldz = n + 1;
  float* qs = smem;             // [n][ldk] q_s rows
  float* ks = qs + n * ldk;     // [n][ldk] key tile
  float* dos = ks + n * ldk;    // [n][ldv] do rows
  float* vs = dos + n * ldv;    // [n][ldv] value tile
  float* dss = vs + n * ldv;    // [n][ldz] ds (query-major)
  float* st = dss + 2 * n * ldz;  // shift, 1/l, D, vis: [4][n]
  const int tid = threadIdx.x;
  const int64_t rows = g.b * g.h * g.t;
  const int64_t tiles = (g.t + n - 1) / n;
  const int64_t bh = blockIdx.x / tiles, qt = blockIdx.x % tiles;
  const int64_t bi = bh / g.h, hi = bh % g.h, kvh = hi / g.Group();
  const int64_t q0 = qt * n;
  const int nq = static_cast<int>(g.t - q0 < n ? g.t - q0 : n);
  const int64_t row0 = ((bi * g.t + q0) * g.h + hi);
  LoadRows(qs, ldk, n, nq, g.dk, q + row0 * g.dk, g.h * g.dk, g.scale);
  LoadRows(dos, ldv, n, nq, g.dv, d_o + row0 * g.dv, g.h * g.dv, 1.0f);
  LoadStats(n, nq, stats, rows, bh * g.t + q0, st, st + n, st + 2 * n, st + 3 * n);
  float acc[kMaxAcc];  // element e = tid + j * kThreads of the (n, Dk) dq tile
#pragma unroll
  for (int j = 0; j < kMaxAcc; ++j) acc[j] = 0.0f;
  const int64_t width = n * g.dk;
  __syncthreads();

  for (int64_t k0 = 0; k0 < g.s; k0 += n) {
    const int nk = static_cast<int>(g.s - k0 < n ? g.s - k0 : n);
    if (!TileNeeded(n, nq, nk, bias, g, bi, q0, k0, st + 3 * n, partial)) continue;
    LoadRows(ks, ldk, n, nk, g.dk, k + ((bi * g.s + k0) * g.hkv + kvh) * g.dk, g.hkv * g.dk, 1.0f);
    LoadRows(vs, ldv, n, nk, g.dv, v + ((bi * g.s + k0) * g.hkv + kvh) * g.dv, g.hkv * g.dv, 1.0f);
    __syncthreads();
    for (int p = tid; p < n * n; p += kThreads) {
      const int r = p / n, i = p % n;
      float prob = 0.0f, ds = 0.0f;
      if (r < nq && i < nk) {
        ProbAndDs(g, qs + r * ldk, ks + i * ldk, dos + r * ldv, vs + i * ldv,
                  bias[g.BiasRow(bi, q0 + r) * g.s + k0 + i], st[r], st[n + r], st[2 * n + r], &prob, &ds);
      }
      dss[r * ldz + i] = ds;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kMaxAcc; ++j) {  // dq_tile += ds · K
      const int64_t e = tid + int64_t{j} * kThreads;
      if (e < width) {
        const int64_t r = e / g.dk, c = e % g.dk;
        float a = acc[j];
        for (int i = 0; i < n; ++i) a += dss[r * ldz + i] * ks[i * ldk + c];
        acc[j] = a;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kMaxAcc; ++j) {
    const int64_t e = tid + int64_t{j} * kThreads;
    if (e < width) {
      const int64_t r = e / g.dk, c = e % g.dk;
      if (r < nq) dq[((bi * g.t + q0 + r) * g.h + hi) * g.dk + c] = FromFloat<T>(g.scale * acc[j]);
    }
  }
}

// ---- backward 3: dk and dv, block per (b, kv head, key tile) ----
template <typename T>
__global__ void __launch_bounds__(kThreads)
    AttnDkvKernel(Geom g, int n, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                  const float* __restrict__ bias, const T* __restrict__ d_o, const float* __restrict__ stats,
                  T* __restrict__ dk, T* __restrict__ dv) {
  extern __shared__ float smem[];
  __shared__ float partial[32];
  const int ldk = static_cast<int>(g.dk) + 1, ldv = static_cast<int>(g.dv) + 1, ldz = n + 1;
  float* ks = smem;             // [n][ldk] this block's keys
  float* qs = ks + n * ldk;     // [n][ldk] q_s rows of the current query tile
  float* vs = qs + n * ldk;     // [n][ldv] this block's values
  float* dos = vs + n * ldv;    // [n][ldv] do rows
  float* ps = dos + n * ldv;    // [n][ldz] p (key-major)
  float* dss = ps + n * ldz;    // [n][ldz] ds (key-major)
  float* st = dss + n * ldz;    // shift, 1/l, D, vis: [4][n]
  const int tid = threadIdx.x;
  const int64_t rows = g.b * g.h * g.t;
  const int64_t tiles = (g.s + n - 1) / n;
  const int64_t bkv = blockIdx.x / tiles, kt = blockIdx.x % tiles;
  const int64_t bi = bkv / g.hkv, kvh = bkv % g.hkv, group = g.Group();
  const int64_t k0 = kt * n;
  const int nk = static_cast<int>(g.s - k0 < n ? g.s - k0 : n);
  LoadRows(ks, ldk, n, nk, g.dk, k + ((bi * g.s + k0) * g.hkv + kvh) * g.dk, g.hkv * g.dk, 1.0f);
  LoadRows(vs, ldv, n, nk, g.dv, v + ((bi * g.s + k0) * g.hkv + kvh) * g.dv, g.hkv * g.dv, 1.0f);
  float acc[kMaxAcc];  // element e = tid + j * kThreads of [dk tile (n, Dk) | dv tile (n, Dv)]
#pragma unroll
  for (int j = 0; j < kMaxAcc; ++j) acc[j] = 0.0f;
  const int64_t width_k = n * g.dk, width = width_k + n * g.dv;

  for (int64_t gi = 0; gi < group; ++gi) {
    const int64_t hi = kvh * group + gi, bh = bi * g.h + hi;
    for (int64_t q0 = 0; q0 < g.t; q0 += n) {
      const int nq = static_cast<int>(g.t - q0 < n ? g.t - q0 : n);
      __syncthreads();  // the previous tile's readers are done with qs / dos / st / ps / dss
      LoadStats(n, nq, stats, rows, bh * g.t + q0, st, st + n, st + 2 * n, st + 3 * n);
      __syncthreads();
      if (!TileNeeded(n, nq, nk, bias, g, bi, q0, k0, st + 3 * n, partial)) continue;
      const int64_t row0 = (bi * g.t + q0) * g.h + hi;
      LoadRows(qs, ldk, n, nq, g.dk, q + row0 * g.dk, g.h * g.dk, g.scale);
      LoadRows(dos, ldv, n, nq, g.dv, d_o + row0 * g.dv, g.h * g.dv, 1.0f);
      __syncthreads();
      for (int p = tid; p < n * n; p += kThreads) {
        const int i = p / n, r = p % n;  // key i, query r
        float prob = 0.0f, ds = 0.0f;
        if (r < nq && i < nk) {
          ProbAndDs(g, qs + r * ldk, ks + i * ldk, dos + r * ldv, vs + i * ldv,
                    bias[g.BiasRow(bi, q0 + r) * g.s + k0 + i], st[r], st[n + r], st[2 * n + r], &prob, &ds);
        }
        ps[i * ldz + r] = prob;
        dss[i * ldz + r] = ds;
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kMaxAcc; ++j) {  // dk_tile += dsᵀ · q_s,  dv_tile += pᵀ · do
        const int64_t e = tid + int64_t{j} * kThreads;
        if (e < width_k) {
          const int64_t i = e / g.dk, c = e % g.dk;
          float a = acc[j];
          for (int r = 0; r < n; ++r) a += dss[i * ldz + r] * qs[r * ldk + c];
          acc[j] = a;
        } else if (e < width) {
          const int64_t i = (e - width_k) / g.dv, c = (e - width_k) % g.dv;
          float a = acc[j];
          for (int r = 0; r < n; ++r) a += ps[i * ldz + r] * dos[r * ldv + c];
          acc[j] = a;
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxAcc; ++j) {
    const int64_t e = tid + int64_t{j} * kThreads;
    if (e < width_k) {
      const int64_t i = e / g.dk, c = e % g.dk;
      if (i < nk) dk[((bi * g.s + k0 + i) * g.hkv + kvh) * g.dk + c] = FromFloat<T>(acc[j]);  // q_s has the scale
    } else if (e < width) {
      const int64_t i = (e - width_k) / g.dv, c = (e - width_k) % g.dv;
      if (i < nk) dv[((bi * g.s + k0 + i) * g.hkv + kvh) * g.dv + c] = FromFloat<T>(acc[j]);
    }
  }
}

template <typename T>
int LaunchFwd(cudaStream_t st, const Geom& g, const void* q, const void* k, const void* v, const float* bias, void* o,
              float* lse) {
  const int n = TileSize(g, false, g.dv);
  if (n == 0) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t blocks = g.b * g.h * ((g.t + n - 1) / n);
  const size_t shmem = FwdFloats(n, g) * sizeof(float);
  AttnFwdKernel<T><<<blocks, kThreads, shmem, st>>>(g, n, static_cast<const T*>(q), static_cast<const T*>(k),
                                                    static_cast<const T*>(v), bias, static_cast<T*>(o), lse);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchGrad(cudaStream_t st, const Geom& g, const void* q, const void* k, const void* v, const float* bias,
               const void* o, const float* lse, const void* d_o, const float* d_lse, float* stats, void* dq, void* dk,
               void* dv) {
  const int n_dq = TileSize(g, true, g.dk), n_kv = TileSize(g, true, g.dk + g.dv);
  if (n_dq == 0 || n_kv == 0) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t rows = g.b * g.h * g.t;
  if (rows > 0) {
    const int64_t row_blocks = rows < kMaxRowBlocks ? rows : kMaxRowBlocks;
    AttnRowsKernel<T><<<row_blocks, 32, 0, st>>>(g, static_cast<const T*>(q), static_cast<const T*>(k),
                                                 static_cast<const T*>(o), lse, static_cast<const T*>(d_o), d_lse,
                                                 bias, stats);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return static_cast<int>(e);
    const int64_t dq_blocks = g.b * g.h * ((g.t + n_dq - 1) / n_dq);
    const size_t dq_shmem = GradFloats(n_dq, g) * sizeof(float);
    AttnDqKernel<T><<<dq_blocks, kThreads, dq_shmem, st>>>(g, n_dq, static_cast<const T*>(q),
                                                          static_cast<const T*>(k), static_cast<const T*>(v), bias,
                                                          static_cast<const T*>(d_o), stats, static_cast<T*>(dq));
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return static_cast<int>(e);
  }
  const int64_t kv_blocks = g.b * g.hkv * ((g.s + n_kv - 1) / n_kv);
  if (kv_blocks == 0) return 0;
  const size_t kv_shmem = GradFloats(n_kv, g) * sizeof(float);
  AttnDkvKernel<T><<<kv_blocks, kThreads, kv_shmem, st>>>(g, n_kv, static_cast<const T*>(q), static_cast<const T*>(k),
                                                         static_cast<const T*>(v), bias, static_cast<const T*>(d_o),
                                                         stats, static_cast<T*>(dk), static_cast<T*>(dv));
  return static_cast<int>(cudaGetLastError());
}

Geom MakeGeom(int64_t b, int64_t t, int64_t h, int64_t s, int64_t hkv, int64_t dk, int64_t dv, int64_t bias_b,
              int64_t bias_t, float scale) {
  return Geom{b, t, h, s, hkv, dk, dv, bias_b, bias_t, scale};
}

}  // namespace

int AttentionGpu(void* stream, DType dtype, int64_t b, int64_t t, int64_t h, int64_t s, int64_t hkv, int64_t dk,
                 int64_t dv, int64_t bias_b, int64_t bias_t, float scale, const void* q, const void* k, const void* v,
                 const float* bias, void* o, float* lse) {
  if (b * t * h == 0) return 0;
  if (s <= 0 || hkv <= 0 || h % hkv != 0) return static_cast<int>(cudaErrorInvalidValue);
  const Geom g = MakeGeom(b, t, h, s, hkv, dk, dv, bias_b, bias_t, scale);
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return LaunchFwd<float>(st, g, q, k, v, bias, o, lse);
    case DType::kBFloat16: return LaunchFwd<__nv_bfloat16>(st, g, q, k, v, bias, o, lse);
    case DType::kHalf: return LaunchFwd<__half>(st, g, q, k, v, bias, o, lse);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int AttentionGradGpu(void* stream, DType dtype, int64_t b, int64_t t, int64_t h, int64_t s, int64_t hkv, int64_t dk,
                     int64_t dv, int64_t bias_b, int64_t bias_t, float scale, const void* q, const void* k,
                     const void* v, const float* bias, const void* o, const float* lse, const void* d_o,
                     const float* d_lse, float* scratch, void* dq, void* dkey, void* dval) {
  if (b * s * hkv == 0) return 0;
  if (s <= 0 || hkv <= 0 || h % hkv != 0) return static_cast<int>(cudaErrorInvalidValue);
  const Geom g = MakeGeom(b, t, h, s, hkv, dk, dv, bias_b, bias_t, scale);
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return LaunchGrad<float>(st, g, q, k, v, bias, o, lse, d_o, d_lse, scratch, dq, dkey, dval);
    case DType::kBFloat16:
      return LaunchGrad<__nv_bfloat16>(st, g, q, k, v, bias, o, lse, d_o, d_lse, scratch, dq, dkey, dval);
    case DType::kHalf:
      return LaunchGrad<__half>(st, g, q, k, v, bias, o, lse, d_o, d_lse, scratch, dq, dkey, dval);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace seekline
