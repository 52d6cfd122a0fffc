// seekline custom ops: GemmGpu (declared in ../cc/kernels.h).
//
// Two kernels, both fp32-accumulating whatever the storage type:
//   * GemmTcKernel (bf16 / fp16 storage on compute capability >= 8.0): tensor cores through the
//     WMMA API. A 256-thread block computes a 128 x 128 tile of C; its 8 warps are laid out 2 x 4
//     and each owns a 64 x 32 sub-tile (4 x 2 WMMA 16x16x16 accumulators). op(A) and op(B) slices
//     of depth 32 are staged in shared memory with zero fill at the edges, so any m, n, k and both
//     transposes take the same code path.
//   * GemmKernel (fp32 storage, or a GPU without bf16/fp16 WMMA): a plain shared-memory tiled
//     GEMM, each 256-thread block a 64 x 64 tile of C, each thread a 4 x 4 register tile, on the
//     CUDA cores. fp32 stays on it (not TF32) so fp32 results keep fp32 accuracy.
// The CPU emulation in cuda_build_test.py compiles this file with g++ (no __CUDACC__), where only
// GemmKernel exists; the tensor-core kernel is checked by the check program on a real GPU
// (bench/bench_cuda_kernels.py). No TensorFlow headers on purpose (see kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#ifdef __CUDACC__
#include <mma.h>
#endif

#include "../cc/kernels.h"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kBM = 64;                // block tile rows (of C)
constexpr int kBN = 64;                // block tile columns (of C)
constexpr int kBK = 16;                // k slice staged in shared memory per step
constexpr int kThreads = 256;          // 16 x 16 threads, each a 4 x 4 tile: 64 x 64
constexpr int kTM = kBM / 16;          // per-thread rows
constexpr int kTN = kBN / 16;          // per-thread columns
constexpr int64_t kMaxGridY = 65535;   // CUDA's limit on gridDim.y

static_assert(kBM * kBK == 4 * kThreads, "A tile load: 4 elements per thread");
static_assert(kBK * kBN == 4 * kThreads, "B tile load: 4 elements per thread");


// op(A)[i, kk]: A is m x k row-major, or k x m when transposed.
template <typename T, bool kTransA>
__device__ __forceinline__ float LoadA(const T* a, int64_t m, int64_t k, int64_t i, int64_t kk) {
  return ToFloat(kTransA ? a[kk * m + i] : a[i * k + kk]);
}

// op(B)[kk, j]: B is k x n row-major, or n x k when transposed.
template <typename T, bool kTransB>
__device__ __forceinline__ float LoadB(const T* b, int64_t n, int64_t k, int64_t kk, int64_t j) {
  return ToFloat(kTransB ? b[j * k + kk] : b[kk * n + j]);
}

// Block (blockIdx.x, y_base + blockIdx.y) computes C[64 bx : 64 bx + 64, 64 by : 64 by + 64].
// Thread (tx, ty) = (t % 16, t / 16) owns rows ty + 16 i and columns tx + 16 j (i, j < 4): strided
// rather than contiguous so a warp reads one shared row of `as` (broadcast) and 16 consecutive
// words of `bs`, and its C stores are 16 consecutive columns.
template <typename T, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads)
    GemmKernel(int64_t m, int64_t n, int64_t k, const T* __restrict__ a, const T* __restrict__ b,
               T* __restrict__ c, int64_t y_base) {
  // as[kk][r] = op(A)[row0 + r, k0 + kk]; bs[kk][cc] = op(B)[k0 + kk, col0 + cc]. The +1 pads
  // spread the kk-major stores (untransposed A, transposed B) across shared-memory banks.
  __shared__ float as[kBK][kBM + 1];
  __shared__ float bs[kBK][kBN + 1];

  const int t = threadIdx.x;
  const int tx = t % 16;
  const int ty = t / 16;
  // int64 before multiplying: blockIdx is 32-bit unsigned.
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t col0 = (y_base + static_cast<int64_t>(blockIdx.y)) * kBN;

  float acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = 0.0f;
  }

  // k == 0: no iterations, C gets the zeros above.
  for (int64_t k0 = 0; k0 < k; k0 += kBK) {
    // Stage the 64 x 16 slice of op(A) and 16 x 64 slice of op(B), 4 elements per thread, with
    // consecutive threads walking the dimension that is contiguous in memory (coalesced loads).
    // Out-of-range elements load as 0 so the inner loop needs no bounds checks.
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int idx = t + l * kThreads;  // [0, 1024)
      const int r = kTransA ? idx % kBM : idx / kBK;
      const int kk = kTransA ? idx / kBM : idx % kBK;
      const int64_t gi = row0 + r;
      const int64_t gk = k0 + kk;
      as[kk][r] = (gi < m && gk < k) ? LoadA<T, kTransA>(a, m, k, gi, gk) : 0.0f;
    }
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int idx = t + l * kThreads;
      const int cc = kTransB ? idx / kBK : idx % kBN;
      const int kk = kTransB ? idx % kBK : idx / kBN;
      const int64_t gj = col0 + cc;
      const int64_t gk = k0 + kk;
      bs[kk][cc] = (gj < n && gk < k) ? LoadB<T, kTransB>(b, n, k, gk, gj) : 0.0f;
    }
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[kTM];
      float bv[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kTN; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();  // before the next slice overwrites as/bs
  }

#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t gi = row0 + ty + 16 * i;
    if (gi >= m) continue;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int64_t gj = col0 + tx + 16 * j;
      if (gj < n) c[gi * n + gj] = FromFloat<T>(acc[i][j]);
    }
  }
}

template <typename T, bool kTransA, bool kTransB>
int LaunchGemm(cudaStream_t stream, int64_t m, int64_t n, int64_t k, const void* a, const void* b,
               void* c) {
  const int64_t row_tiles = (m + kBM - 1) / kBM;  // gridDim.x allows 2^31 - 1: ample
  const int64_t col_tiles = (n + kBN - 1) / kBN;
  // gridDim.y is capped at 65535, so very wide C is covered by several launches.
  for (int64_t y_base = 0; y_base < col_tiles; y_base += kMaxGridY) {
    const int64_t ny = col_tiles - y_base < kMaxGridY ? col_tiles - y_base : kMaxGridY;
    const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(ny));
    GemmKernel<T, kTransA, kTransB><<<grid, kThreads, 0, stream>>>(
        m, n, k, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), y_base);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

#ifdef __CUDACC__
// ---- tensor-core kernel (bf16 / fp16 storage, sm_80+) ----
constexpr int kTcBM = 128;             // block tile rows (of C)
constexpr int kTcBN = 128;             // block tile columns (of C)
constexpr int kTcBK = 32;              // k slice staged per step (two WMMA k-steps)
constexpr int kTcThreads = 256;        // 8 warps, 2 (rows) x 4 (columns), each 64 x 32 of C
constexpr int kTcLdA = kTcBK + 8;      // shared row pitch (elements) of the A slice: a multiple of 8
constexpr int kTcLdB = kTcBN + 8;      // (WMMA's rule for 16-bit types) that also staggers banks
constexpr int kTcPerThread = kTcBM * kTcBK / kTcThreads;  // 16 elements of each slice per thread

static_assert(kTcBK * kTcBN == kTcBM * kTcBK, "A and B slices hold the same number of elements");

// Block (blockIdx.x, y_base + blockIdx.y) computes C[128 bx : +128, 128 by : +128].
template <typename T, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kTcThreads)
    GemmTcKernel(int64_t m, int64_t n, int64_t k, const T* __restrict__ a, const T* __restrict__ b,
                 T* __restrict__ c, int64_t y_base) {
#if __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  // as[r][kk] = op(A)[row0 + r, k0 + kk]; bs[kk][cc] = op(B)[k0 + kk, col0 + cc]. 128-byte
  // alignment covers WMMA's 256-bit pointer rule: every fragment offset below is a multiple of
  // 32 bytes (row pitches 80 and 272 bytes, fragment steps of 16 rows / 16 columns).
  __shared__ __align__(128) T as[kTcBM][kTcLdA];
  __shared__ __align__(128) T bs[kTcBK][kTcLdB];
  __shared__ __align__(128) float stage[kTcThreads / 32][16 * 16];  // per-warp epilogue tile

  const int t = threadIdx.x;
  const int warp = t / 32;
  const int lane = t % 32;
  const int wm = warp / 4;  // which 64-row half of the block tile
  const int wn = warp % 4;  // which 32-column quarter
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTcBM;
  const int64_t col0 = (y_base + static_cast<int64_t>(blockIdx.y)) * kTcBN;
  const T zero = FromFloat<T>(0.0f);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  for (int64_t k0 = 0; k0 < k; k0 += kTcBK) {
    // Consecutive threads walk the dimension that is contiguous in global memory (coalesced);
    // out-of-range elements are zeros, which add nothing to the products.
#pragma unroll
    for (int l = 0; l < kTcPerThread; ++l) {
      const int idx = t + l * kTcThreads;  // [0, 4096)
      const int r = kTransA ? idx % kTcBM : idx / kTcBK;
      const int kk = kTransA ? idx / kTcBM : idx % kTcBK;
      const int64_t gi = row0 + r;
      const int64_t gk = k0 + kk;
      as[r][kk] = (gi < m && gk < k) ? (kTransA ? a[gk * m + gi] : a[gi * k + gk]) : zero;
    }
#pragma unroll
    for (int l = 0; l < kTcPerThread; ++l) {
      const int idx = t + l * kTcThreads;
      const int cc = kTransB ? idx / kTcBK : idx % kTcBN;
      const int kk = kTransB ? idx % kTcBK : idx / kTcBN;
      const int64_t gj = col0 + cc;
      const int64_t gk = k0 + kk;
      bs[kk][cc] = (gj < n && gk < k) ? (kTransB ? b[gj * k + gk] : b[gk * n + gj]) : zero;
    }
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < kTcBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(af[i], &as[wm * 64 + i * 16][kk], kTcLdA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(bf[j], &bs[kk][wn * 32 + j * 16], kTcLdB);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
      }
    }
    __syncthreads();  // before the next slice overwrites as/bs
  }

  // Epilogue: each 16 x 16 accumulator goes through the warp's fp32 staging tile (the fragment's
  // element layout is opaque), then out with one rounding to T and bounds checks.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(stage[warp], acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t gi = row0 + wm * 64 + i * 16 + e / 16;
        const int64_t gj = col0 + wn * 32 + j * 16 + e % 16;
        if (gi < m && gj < n) c[gi * n + gj] = FromFloat<T>(stage[warp][e]);
      }
      __syncwarp();  // before the next store_matrix_sync overwrites the staging tile
    }
  }
#endif  // __CUDA_ARCH__ >= 800
}

template <typename T, bool kTransA, bool kTransB>
int LaunchGemmTc(cudaStream_t stream, int64_t m, int64_t n, int64_t k, const void* a, const void* b,
                 void* c) {
  const int64_t row_tiles = (m + kTcBM - 1) / kTcBM;
  const int64_t col_tiles = (n + kTcBN - 1) / kTcBN;
  for (int64_t y_base = 0; y_base < col_tiles; y_base += kMaxGridY) {
    const int64_t ny = col_tiles - y_base < kMaxGridY ? col_tiles - y_base : kMaxGridY;
    const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(ny));
    GemmTcKernel<T, kTransA, kTransB><<<grid, kTcThreads, 0, stream>>>(
        m, n, k, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), y_base);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

// bf16 / fp16 WMMA needs compute capability 8.0 (Ampere) or newer, on the current device.
bool TensorCoresUsable() {
  int device = 0;
  int major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}
#endif  // __CUDACC__

template <typename T>
int DispatchTranspose(cudaStream_t stream, bool trans_a, bool trans_b, int64_t m, int64_t n,
                      int64_t k, const void* a, const void* b, void* c) {
#ifdef __CUDACC__
  if constexpr (sizeof(T) == 2) {
    if (TensorCoresUsable()) {
      if (trans_a) {
        return trans_b ? LaunchGemmTc<T, true, true>(stream, m, n, k, a, b, c)
                       : LaunchGemmTc<T, true, false>(stream, m, n, k, a, b, c);
      }
      return trans_b ? LaunchGemmTc<T, false, true>(stream, m, n, k, a, b, c)
                     : LaunchGemmTc<T, false, false>(stream, m, n, k, a, b, c);
    }
  }
#endif
  if (trans_a) {
    return trans_b ? LaunchGemm<T, true, true>(stream, m, n, k, a, b, c)
                   : LaunchGemm<T, true, false>(stream, m, n, k, a, b, c);
  }
  return trans_b ? LaunchGemm<T, false, true>(stream, m, n, k, a, b, c)
                 : LaunchGemm<T, false, false>(stream, m, n, k, a, b, c);
}

}  // namespace

int GemmGpu(void* stream, DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n,
            int64_t k, const void* a, const void* b, void* c) {
  if (m < 0 || n < 0 || k < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (m == 0 || n == 0) return 0;
  if ((m + kBM - 1) / kBM > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return DispatchTranspose<float>(s, trans_a, trans_b, m, n, k, a, b, c);
    case DType::kBFloat16:
      return DispatchTranspose<__nv_bfloat16>(s, trans_a, trans_b, m, n, k, a, b, c);
    case DType::kHalf:
      return DispatchTranspose<__half>(s, trans_a, trans_b, m, n, k, a, b, c);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace seekline
