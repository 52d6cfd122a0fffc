// seekline custom ops: MlaLatentAttentionGpu (declared in ../cc/kernels.h).
//
// bf16 / fp16 on compute capability >= 8.0: MlaTcKernel below (tensor cores, flash-decoding: each
// cache row is read once per 16 heads, the cache split across blocks when the batch is small).
// fp32, older GPUs, or a latent too wide for shared memory: MlaLatentAttentionKernel, the CUDA-core
// kernel described next (also what the CPU emulation in cuda_build_test.py runs).
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
#include "mma.cuh"
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

#ifdef __CUDACC__
// ---- tensor-core kernel (bf16 / fp16, sm_80+): flash-decoding over the latent cache ----
// Block (bt, head group, split): 16 heads of one (b, t) query row against the keys of one split of
// the cache, 32 keys per step, 4 warps. Per step, with D = C + R (zero-padded):
//   1. K = [c | k_pe] of the 32 keys into shared memory (cp.async; each cache row is read once for
//      16 heads);
//   2. scores (16 x 32) = Q (16 x D) · K^T with mma.sync m16n8k16, warp w taking keys 8w..8w+7;
//   3. online softmax in fp32 (running max m and sum l per head; P rounded to the storage type and
//      l summed from the rounded values, so numerator and denominator agree);
//   4. O = O · e^(m_old - m_new) + P · V, where V = c is the first C columns of the same K tile
//      (MLA's values are the latent itself). O (16 x C, fp32) lives in registers: warp w owns
//      columns [w C/4, (w + 1) C/4), and the m16n8 accumulator layout (a thread holds rows
//      lane/4 and lane/4 + 8) lets each thread rescale its own rows.
// One split: O / l is the output. Several (short batches, long caches): each writes (O, m, l) to
// scratch and MlaCombineKernel merges them. Masked keys (bias -1e9) give e^(-1e9 - m) = 0 once any
// key is visible; a row with every key masked has every score at -1e9 and gets the uniform
// average, as the softmax does.
// A block holds kGroups head tiles of 16 (the MMA's rows) and 4 warps per head tile, so the K tile
// it loads serves 16 * kGroups heads (DeepSeek-V3's 128 heads: 2 blocks per query row, not 8).
constexpr int kTcHeadTile = 16;   // heads per MMA row tile
constexpr int kTcKeys = 32;       // keys per step: one n8 tile per warp of a head tile
constexpr int kTcWarpsPerTile = 4;
constexpr int kTcPad = 8;         // row padding (elements): 16-byte rows for ldmatrix, staggered banks
constexpr int kTcMaxTiles = 16;   // n8 tiles of O per warp: C <= 4 * 16 * 8 = 512 on this path
static_assert(kTcKeys == 8 * kTcWarpsPerTile, "one n8 key tile per warp of a head tile");
static_assert(32 * kTcWarpsPerTile == kTcHeadTile * 8, "the softmax step gives each head row 8 threads");

struct TcLayout {  // dynamic shared memory carve-up (byte offsets, each 128-byte aligned)
  int64_t dp, cp;  // padded widths: K/Q rows (>= C + R, multiple of 16, >= cp), O columns (multiple of 32)
  int64_t q, k, s, p, stats, bytes;
};

__host__ __device__ inline int64_t Align128(int64_t v) { return (v + 127) / 128 * 128; }

__host__ __device__ inline TcLayout MakeTcLayout(int64_t c, int64_t r, int64_t elem, int groups) {
  const int64_t heads = kTcHeadTile * groups;
  TcLayout l;
  l.cp = (c + 31) / 32 * 32;
  l.dp = (c + r + 15) / 16 * 16;
  if (l.dp < l.cp) l.dp = l.cp;  // P · V reads K columns [0, cp): padding columns hold zeros
  l.q = 0;                                                      // Q [heads][dp + pad] T
  l.k = Align128(l.q + heads * (l.dp + kTcPad) * elem);         // K [32][dp + pad] T
  l.s = Align128(l.k + kTcKeys * (l.dp + kTcPad) * elem);       // scores z [heads][32] fp32
  l.p = Align128(l.s + heads * kTcKeys * 4);                    // P [heads][32 + pad] T
  l.stats = Align128(l.p + heads * (kTcKeys + kTcPad) * elem);  // m, l, corr [3][heads] fp32
  l.bytes = Align128(l.stats + 3 * heads * 4);
  return l;
}

template <typename T, int kGroups>
__global__ void __launch_bounds__(32 * kTcWarpsPerTile * kGroups)
    MlaTcKernel(int64_t t, int64_t h, int64_t c, int64_t r, int64_t s, int64_t split_len, int64_t bias_b,
                int64_t bias_t, float scale, bool vec, const T* __restrict__ q_lat, const T* __restrict__ q_pe,
                const T* __restrict__ cache, const T* __restrict__ k_pe, const float* __restrict__ bias,
                T* __restrict__ o_lat, float* __restrict__ part) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kHeads = kTcHeadTile * kGroups;
  constexpr int kThreads = 32 * kTcWarpsPerTile * kGroups;
  const TcLayout lay = MakeTcLayout(c, r, sizeof(T), kGroups);
  const int dp = static_cast<int>(lay.dp), cp = static_cast<int>(lay.cp), ld = dp + kTcPad;
  T* qs = reinterpret_cast<T*>(smem + lay.q);
  T* ks = reinterpret_cast<T*>(smem + lay.k);
  float* zs = reinterpret_cast<float*>(smem + lay.s);
  T* ps = reinterpret_cast<T*>(smem + lay.p);
  float* row_m = reinterpret_cast<float*>(smem + lay.stats);
  float* row_l = row_m + kHeads;
  float* row_corr = row_l + kHeads;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int ht = warp / kTcWarpsPerTile;    // this warp's head tile: heads [16 ht, 16 ht + 16)
  const int wq = warp % kTcWarpsPerTile;    // its key tile (scores) and column quarter (P · V)
  const int64_t bt = blockIdx.x;  // bi * t + ti
  const int64_t bi = bt / t;
  const int64_t ti = bt % t;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * kHeads;
  const int64_t s_begin = static_cast<int64_t>(blockIdx.z) * split_len;
  const int64_t s_end = s_begin + split_len < s ? s_begin + split_len : s;
  const float* bias_row = bias + ((bias_b == 1 ? 0 : bi) * bias_t + (bias_t == 1 ? 0 : ti)) * s;  // [s]
  const T zero = FromFloat<T>(0.0f);

  // Q = [q_lat | q_pe | 0] for heads h0.. (rows past H are zeros); m = -inf, l = 0.
  for (int hh = 0; hh < kHeads; ++hh) {
    const int64_t row = bt * h + h0 + hh;
    const bool live = h0 + hh < h;
    for (int kk = tid; kk < dp; kk += kThreads) {
      T v = zero;
      if (live && kk < c) v = q_lat[row * c + kk];
      else if (live && kk < c + r) v = q_pe[row * r + (kk - c)];
      qs[hh * ld + kk] = v;
    }
  }
  if (tid < kHeads) {
    row_m[tid] = -INFINITY;
    row_l[tid] = 0.0f;
  }
  float o[kTcMaxTiles][4];  // O rows lane/4 (o[i][0..1]) and lane/4 + 8 (o[i][2..3])
#pragma unroll
  for (int i = 0; i < kTcMaxTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  const int tiles = cp / 32;             // n8 tiles per warp
  const int col_base = wq * (cp / 4);   // this warp's O columns

  for (int64_t s0 = s_begin; s0 < s_end; s0 += kTcKeys) {
    __syncthreads();  // the previous step is done with ks and ps; Q and the stats are initialised
    // 1. K tile, rows past s_end zero (their scores are excluded below).
    if (vec) {  // C and R multiples of 8, 16-byte aligned bases: 16-byte chunks
      const int per_row = dp / 8;
      for (int i = tid; i < kTcKeys * per_row; i += kThreads) {
        const int j = i / per_row;
        const int kk = (i - j * per_row) * 8;
        const int64_t sj = s0 + j;
        T* dst = ks + j * ld + kk;
        if (sj < s_end && kk < c) {
          CpAsync16(dst, cache + (bi * s + sj) * c + kk);
        } else if (sj < s_end && kk < c + r) {
          CpAsync16(dst, k_pe + (bi * s + sj) * r + (kk - c));
        } else {
          *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
        }
      }
      CpAsyncCommit();
      CpAsyncWait<0>();
    } else {
      for (int j = 0; j < kTcKeys; ++j) {
        const int64_t sj = s0 + j;
        for (int kk = tid; kk < dp; kk += kThreads) {
          T v = zero;
          if (sj < s_end && kk < c) v = cache[(bi * s + sj) * c + kk];
          else if (sj < s_end && kk < c + r) v = k_pe[(bi * s + sj) * r + (kk - c)];
          ks[j * ld + kk] = v;
        }
      }
    }
    __syncthreads();

    // 2. z = scale * Q·K^T + bias for this warp's head tile and keys 8 wq..8 wq + 7 (-inf past s_end).
    {
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const int n0 = wq * 8;
      for (int k0 = 0; k0 < dp; k0 += 16) {
        unsigned a[4];
        unsigned b[2];
        LdMatrixX4(a, qs + (ht * 16 + lane % 16) * ld + k0 + (lane / 16) * 8);
        LdMatrixX2(b, ks + (n0 + lane % 8) * ld + k0 + ((lane / 8) % 2) * 8);
        Mma16816<T>(acc, a, b);
      }
      const int row = ht * 16 + lane / 4;
      const int key = n0 + (lane % 4) * 2;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int rr = row + (e / 2) * 8;
        const int kj = key + e % 2;
        const int64_t sj = s0 + kj;
        zs[rr * kTcKeys + kj] = sj < s_end ? scale * acc[e] + bias_row[sj] : -INFINITY;
      }
    }
    __syncthreads();

    // 3. online softmax: 8 threads per head row (a warp holds 4 rows), 4 keys per thread.
    {
      const int hh = tid / 8;
      const int j0 = (tid % 8) * 4;
      float tile_max = -INFINITY;
#pragma unroll
      for (int e = 0; e < 4; ++e) tile_max = fmaxf(tile_max, zs[hh * kTcKeys + j0 + e]);
#pragma unroll
      for (int off = 4; off > 0; off /= 2) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      const float m_old = row_m[hh];
      const float m_new = fmaxf(m_old, tile_max);  // finite: every step has a key inside the split
      float sum = 0.0f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float z = zs[hh * kTcKeys + j0 + e];
        const T pv = FromFloat<T>(z == -INFINITY ? 0.0f : __expf(z - m_new));
        ps[hh * (kTcKeys + kTcPad) + j0 + e] = pv;
        sum += ToFloat(pv);
      }
#pragma unroll
      for (int off = 4; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      __syncwarp();  // every lane has read row_m before lane 0 of the row updates it
      if (tid % 8 == 0) {
        const float corr = __expf(m_old - m_new);  // m_old = -inf on the first step: 0
        row_corr[hh] = corr;
        row_l[hh] = row_l[hh] * corr + sum;
        row_m[hh] = m_new;
      }
    }
    __syncthreads();

    // 4. O = O * corr + P · V over this warp's head tile and columns.
    {
      const float corr_lo = row_corr[ht * 16 + lane / 4];
      const float corr_hi = row_corr[ht * 16 + lane / 4 + 8];
      unsigned a[2][4];
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        LdMatrixX4(a[kk], ps + (ht * 16 + lane % 16) * (kTcKeys + kTcPad) + kk * 16 + (lane / 16) * 8);
      }
#pragma unroll
      for (int i = 0; i < kTcMaxTiles; ++i) {
        if (i >= tiles) break;
        o[i][0] *= corr_lo;
        o[i][1] *= corr_lo;
        o[i][2] *= corr_hi;
        o[i][3] *= corr_hi;
        const int n = col_base + i * 8;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          unsigned b[2];
          LdMatrixX2Trans(b, ks + (kk * 16 + lane % 16) * ld + n);
          Mma16816<T>(o[i], a[kk], b);
        }
      }
    }
  }
  __syncthreads();  // the stats of the last step are visible

  // Out: O / l (one split), or (O, m, l) for MlaCombineKernel.
  const int64_t splits = gridDim.z;
#pragma unroll
  for (int i = 0; i < kTcMaxTiles; ++i) {
    if (i >= tiles) break;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int hh = ht * 16 + lane / 4 + (e / 2) * 8;
      const int64_t col = col_base + i * 8 + (lane % 4) * 2 + e % 2;
      if (h0 + hh >= h || col >= c) continue;
      const int64_t row = bt * h + h0 + hh;
      if (splits == 1) {
        o_lat[row * c + col] = FromFloat<T>(o[i][e] / row_l[hh]);
      } else {
        part[(row * splits + blockIdx.z) * (c + 2) + col] = o[i][e];
      }
    }
  }
  if (splits > 1 && tid < kHeads && h0 + tid < h) {
    float* ml = part + ((bt * h + h0 + tid) * splits + blockIdx.z) * (c + 2) + c;
    ml[0] = row_m[tid];
    ml[1] = row_l[tid];
  }
#endif  // __CUDA_ARCH__ >= 800
}

// Merge the splits of one (b, t, h) row: o = sum_j e^(m_j - m) O_j / sum_j e^(m_j - m) l_j.
template <typename T>
__global__ void MlaCombineKernel(int64_t rows, int64_t c, int64_t splits, const float* __restrict__ part,
                                 T* __restrict__ o_lat) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* pr = part + row * splits * (c + 2);
    float m = -INFINITY;
    for (int64_t j = 0; j < splits; ++j) m = fmaxf(m, pr[j * (c + 2) + c]);
    float l = 0.0f;
    for (int64_t j = 0; j < splits; ++j) l += __expf(pr[j * (c + 2) + c] - m) * pr[j * (c + 2) + c + 1];
    for (int64_t kk = threadIdx.x; kk < c; kk += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < splits; ++j) acc += __expf(pr[j * (c + 2) + c] - m) * pr[j * (c + 2) + kk];
      o_lat[row * c + kk] = FromFloat<T>(acc / l);
    }
  }
}

// Launch the tensor-core path with kGroups head tiles per block; -1 when it does not apply.
template <typename T, int kGroups>
int LaunchTcGroups(cudaStream_t stream, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r, int64_t s,
                   int64_t bias_b, int64_t bias_t, float scale, const void* q_lat, const void* q_pe,
                   const void* cache, const void* k_pe, const float* bias, void* o_lat) {
  int device = 0, optin = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return -1;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const TcLayout lay = MakeTcLayout(c, r, sizeof(T), kGroups);
  const int64_t heads = kTcHeadTile * kGroups;
  const int64_t head_groups = (h + heads - 1) / heads;
  if (c > kTcWarpsPerTile * kTcMaxTiles * 8 || lay.bytes > optin || b * t > 0x7fffffff || head_groups > 65535) {
    return -1;
  }
  const bool vec = c % 8 == 0 && r % 8 == 0 && Aligned16(cache) && Aligned16(k_pe);
  // Splits of the cache so the grid fills the GPU about twice, each split >= 4 steps of keys.
  const int64_t base = b * t * head_groups;
  int64_t splits = (2 * static_cast<int64_t>(sms) + base - 1) / base;
  const int64_t max_splits = s / (4 * kTcKeys) > 1 ? s / (4 * kTcKeys) : 1;
  splits = splits < 1 ? 1 : splits > max_splits ? max_splits : splits;
  if (splits > 65535) splits = 65535;
  const int64_t split_len = ((s + splits - 1) / splits + kTcKeys - 1) / kTcKeys * kTcKeys;
  splits = (s + split_len - 1) / split_len;  // every split non-empty

  cudaError_t err = cudaFuncSetAttribute(MlaTcKernel<T, kGroups>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(lay.bytes));
  if (err != cudaSuccess) return static_cast<int>(err);
  float* part = nullptr;
  const int64_t rows = b * t * h;
  if (splits > 1) {
    err = cudaMallocAsync(reinterpret_cast<void**>(&part), static_cast<size_t>(rows * splits * (c + 2)) * sizeof(float),
                          stream);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const dim3 grid(static_cast<unsigned>(b * t), static_cast<unsigned>(head_groups), static_cast<unsigned>(splits));
  MlaTcKernel<T, kGroups><<<grid, 32 * kTcWarpsPerTile * kGroups, lay.bytes, stream>>>(
      t, h, c, r, s, split_len, bias_b, bias_t, scale, vec, static_cast<const T*>(q_lat), static_cast<const T*>(q_pe),
      static_cast<const T*>(cache), static_cast<const T*>(k_pe), bias, static_cast<T*>(o_lat), part);
  err = cudaGetLastError();
  if (err == cudaSuccess && splits > 1) {
    const unsigned blocks = static_cast<unsigned>(rows < kMaxBlocks ? rows : kMaxBlocks);
    MlaCombineKernel<T><<<blocks, 128, 0, stream>>>(rows, c, splits, part, static_cast<T*>(o_lat));
    err = cudaGetLastError();
  }
  if (part != nullptr) {
    const cudaError_t free_err = cudaFreeAsync(part, stream);  // after the kernels, in stream order
    if (err == cudaSuccess) err = free_err;
  }
  return static_cast<int>(err);
}

// The tensor-core path: as many heads per block as the query has (up to 64, the rest in more
// blocks), fewer when shared memory is short. -1: the CUDA-core kernel must do it.
template <typename T>
int LaunchTc(cudaStream_t stream, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r, int64_t s,
             int64_t bias_b, int64_t bias_t, float scale, const void* q_lat, const void* q_pe, const void* cache,
             const void* k_pe, const float* bias, void* o_lat) {
  if (!TensorCoresUsable()) return -1;
  int rc = -1;
  if (h > 2 * kTcHeadTile) {
    rc = LaunchTcGroups<T, 4>(stream, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias, o_lat);
  }
  if (rc < 0 && h > kTcHeadTile) {
    rc = LaunchTcGroups<T, 2>(stream, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias, o_lat);
  }
  if (rc < 0) {
    rc = LaunchTcGroups<T, 1>(stream, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias, o_lat);
  }
  return rc;
}
#endif  // __CUDACC__

template <typename T>
int Launch(cudaStream_t stream, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r, int64_t s, int64_t bias_b,
           int64_t bias_t, float scale, const void* q_lat, const void* q_pe, const void* cache, const void* k_pe,
           const float* bias, void* o_lat) {
#ifdef __CUDACC__
  if constexpr (sizeof(T) == 2) {
    const int tc = LaunchTc<T>(stream, b, t, h, c, r, s, bias_b, bias_t, scale, q_lat, q_pe, cache, k_pe, bias, o_lat);
    if (tc >= 0) return tc;
  }
#endif
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
