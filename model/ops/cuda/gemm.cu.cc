// seekline custom ops: GemmGpu (declared in ../cc/kernels.h).
//
// A plain shared-memory tiled GEMM: each 256-thread block computes a 64 x 64 tile of C, each
// thread a 4 x 4 register tile, fp32 accumulation whatever the storage type. Deliberately simple
// (no tensor cores, no double buffering): it is the correctness baseline for the grouped expert
// matmul, written so every index can be checked by hand. No TensorFlow headers on purpose (see
// kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

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

template <typename T>
int DispatchTranspose(cudaStream_t stream, bool trans_a, bool trans_b, int64_t m, int64_t n,
                      int64_t k, const void* a, const void* b, void* c) {
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
