// seekline custom ops: GemmGpu and GroupedGemmGpu (declared in ../cc/kernels.h).
//
// Both are one "grouped" GEMM: groups of rows of A and C that each multiply their own B
// (GemmGpu is the one-group case). The row tiles of all groups are numbered consecutively along
// gridDim.x, so a whole MoE layer's expert matmuls are one launch however the tokens are routed;
// a block finds its group by binary search in a small table passed by value (GroupTable).
// Two kernels, both fp32-accumulating whatever the storage type:
//   * GemmTcKernel (bf16 / fp16 storage on compute capability >= 8.0): tensor cores through
//     mma.sync m16n8k16 (PTX wrappers in mma.cuh). A 256-thread block computes a 128 x 128 tile of
//     C; its 8 warps are laid out 2 x 4 and each owns a 64 x 32 sub-tile (4 x 4 MMA tiles held in
//     registers). Slices of depth 32 go through a three-stage cp.async pipeline (16-byte copies;
//     element copies with zero fill at the matrix edges or for unaligned rows), each operand staged
//     in its stored layout and turned into fragments by ldmatrix (.trans for the other layout), so
//     every transpose takes the same path.
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
#include <type_traits>

#include "../cc/kernels.h"
#include "mma.cuh"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int64_t kMaxGridY = 65535;   // CUDA's limit on gridDim.y
constexpr int kMaxGroups = 256;        // groups per launch: GroupTable stays under 4 KiB of parameters

// Group g owns rows [row_off[g], row_off[g + 1]) of A and C (absolute row numbers) and
// B + g * b_stride; its row tiles are blockIdx.x in [tile_off[g], tile_off[g + 1]).
struct GroupTable {
  int64_t row_off[kMaxGroups + 1];
  int32_t tile_off[kMaxGroups + 1];
  int32_t groups;
};

// The group whose tiles contain `tile`: the largest g with tile_off[g] <= tile (empty groups have
// tile_off[g] == tile_off[g + 1] and are never the answer, since tile < tile_off[groups]).
__device__ __forceinline__ int FindGroup(const GroupTable& tab, int64_t tile) {
  int lo = 0;
  int hi = tab.groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tab.tile_off[mid] <= tile) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// ---- CUDA-core kernel (any storage type) ----
constexpr int kBM = 64;                // block tile rows (of C)
constexpr int kBN = 64;                // block tile columns (of C)
constexpr int kBK = 16;                // k slice staged in shared memory per step
constexpr int kThreads = 256;          // 16 x 16 threads, each a 4 x 4 tile: 64 x 64
constexpr int kTM = kBM / 16;          // per-thread rows
constexpr int kTN = kBN / 16;          // per-thread columns

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

// Block (blockIdx.x, y_base + blockIdx.y) computes a 64 x 64 tile of its group's C. Thread
// (tx, ty) = (t % 16, t / 16) owns rows ty + 16 i and columns tx + 16 j (i, j < 4): strided rather
// than contiguous so a warp reads one shared row of `as` (broadcast) and 16 consecutive words of
// `bs`, and its C stores are 16 consecutive columns.
template <typename T, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads)
    GemmKernel(GroupTable tab, int64_t n, int64_t k, const T* __restrict__ a, const T* __restrict__ b,
               int64_t b_stride, T* __restrict__ c, int64_t y_base) {
  // as[kk][r] = op(A)[row0 + r, k0 + kk]; bs[kk][cc] = op(B)[k0 + kk, col0 + cc]. The +1 pads
  // spread the kk-major stores (untransposed A, transposed B) across shared-memory banks.
  __shared__ float as[kBK][kBM + 1];
  __shared__ float bs[kBK][kBN + 1];

  const int g = FindGroup(tab, blockIdx.x);
  const int64_t m = tab.row_off[g + 1] - tab.row_off[g];
  a += tab.row_off[g] * k;  // transposed A only ever comes as one group starting at row 0
  b += g * b_stride;
  c += tab.row_off[g] * n;

  const int t = threadIdx.x;
  const int tx = t % 16;
  const int ty = t / 16;
  // int64 before multiplying: blockIdx is 32-bit unsigned.
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) - tab.tile_off[g]) * kBM;
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

// ---- tensor-core kernel (bf16 / fp16 storage, sm_80+) ----
constexpr int kTcBM = 128;             // block tile rows (of C)
constexpr int kTcBN = 128;             // block tile columns (of C)
constexpr int kTcThreads = 256;        // 8 warps, 2 (rows) x 4 (columns), each 64 x 32 of C
#ifdef __CUDACC__
constexpr int kTcBK = 32;              // k slice per pipeline stage (two MMA k-steps)
constexpr int kTcStages = 3;           // slices in flight: compute on one while two are copied
constexpr int kTcPad = 8;              // row padding (elements): keeps 16-byte rows, staggers banks
constexpr int kTcNarrow = kTcBK + kTcPad;   // pitch of a slice stored 128 rows x 32
constexpr int kTcWide = kTcBM + kTcPad;     // pitch of a slice stored 32 rows x 128
// One operand slice in either layout (128 x 40 or 32 x 136 elements).
constexpr int kTcSlice = kTcBM * kTcNarrow > kTcBK * kTcWide ? kTcBM * kTcNarrow : kTcBK * kTcWide;
constexpr int kTcChunks = kTcBM * kTcBK / 8;  // 16-byte chunks (8 elements) per slice: 512
constexpr int kTcSmemBytes = kTcStages * 2 * kTcSlice * 2;  // 61440: dynamic, past the 48 KiB default

static_assert(kTcBM == kTcBN, "one slice shape serves A and B");
static_assert(kTcChunks % kTcThreads == 0, "whole chunks per thread");

// Stage rows [r0, r0 + kRows) x columns [c0, c0 + kCols) of a row-major (rows x cols) matrix into
// smem (pitch kCols + kTcPad), zeros outside it. `vec`: the matrix base is 16-byte aligned and cols
// a multiple of 8, so every in-range 8-element chunk is one aligned 16-byte cp.async.
template <typename T, int kRows, int kCols>
__device__ __forceinline__ void StageSlice(T* smem, const T* g, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                                           bool vec) {
  constexpr int kPerRow = kCols / 8;
  const T zero = FromFloat<T>(0.0f);
#pragma unroll
  for (int l = 0; l < kTcChunks / kTcThreads; ++l) {
    const int idx = threadIdx.x + l * kTcThreads;  // consecutive threads: consecutive chunks of a row
    const int r = idx / kPerRow;
    const int cc = (idx % kPerRow) * 8;
    const int64_t gr = r0 + r;
    const int64_t gc = c0 + cc;
    T* dst = smem + r * (kCols + kTcPad) + cc;
    if (vec && gr < rows && gc + 8 <= cols) {
      CpAsync16(dst, g + gr * cols + gc);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = (gr < rows && gc + e < cols) ? g[gr * cols + gc + e] : zero;
    }
  }
}

// Block (blockIdx.x, y_base + blockIdx.y) computes a 128 x 128 tile of its group's C with
// mma.sync m16n8k16: warp (wm, wn) owns rows 64 wm.. and columns 32 wn.., 4 x 4 MMA tiles in
// registers. Slices are staged in each operand's stored layout; ldmatrix (.trans where the stored
// layout is the other one, see mma.cuh) turns them into fragments.
template <typename T, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kTcThreads)
    GemmTcKernel(GroupTable tab, int64_t n, int64_t k, const T* __restrict__ a, const T* __restrict__ b,
                 int64_t b_stride, T* __restrict__ c, int64_t y_base) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);  // [stage][A slice, B slice]

  const int g = FindGroup(tab, blockIdx.x);
  const int64_t m = tab.row_off[g + 1] - tab.row_off[g];
  a += tab.row_off[g] * k;  // transposed A only ever comes as one group starting at row 0
  b += g * b_stride;
  c += tab.row_off[g] * n;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) - tab.tile_off[g]) * kTcBM;
  const int64_t col0 = (y_base + static_cast<int64_t>(blockIdx.y)) * kTcBN;
  // 16-byte copies need aligned rows: an aligned base and a row length that is a multiple of 8.
  const bool vec_a = Aligned16(a) && (kTransA ? m : k) % 8 == 0;
  const bool vec_b = Aligned16(b) && (kTransB ? k : n) % 8 == 0;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int wm = warp / 4;  // which 64-row half of the block tile
  const int wn = warp % 4;  // which 32-column quarter

  // Slice at k0 into stage s: A (m x k) as 128 x 32, A^T (k x m) as 32 x 128, B (k x n) as
  // 32 x 128, B^T (n x k) as 128 x 32. One commit group per slice.
  auto stage = [&](int s, int64_t k0) {
    T* sa = smem + (2 * s) * kTcSlice;
    T* sb = sa + kTcSlice;
    if (kTransA) {
      StageSlice<T, kTcBK, kTcBM>(sa, a, k, m, k0, row0, vec_a);
    } else {
      StageSlice<T, kTcBM, kTcBK>(sa, a, m, k, row0, k0, vec_a);
    }
    if (kTransB) {
      StageSlice<T, kTcBN, kTcBK>(sb, b, n, k, col0, k0, vec_b);
    } else {
      StageSlice<T, kTcBK, kTcBN>(sb, b, k, n, k0, col0, vec_b);
    }
    CpAsyncCommit();
  };

  float acc[4][4][4];  // [16-row tile][8-column tile][fragment]
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
  }

  const int64_t slices = (k + kTcBK - 1) / kTcBK;  // k == 0: none, C gets zeros
  for (int s = 0; s < kTcStages - 1 && s < slices; ++s) stage(s, s * kTcBK);
  for (int64_t kt = 0; kt < slices; ++kt) {
    if (kt + 1 < slices) {
      CpAsyncWait<1>();  // slice kt has landed; kt + 1 may still be in flight
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // slice kt visible to all; every warp is done computing on slice kt - 1
    if (kt + kTcStages - 1 < slices) stage((kt + kTcStages - 1) % kTcStages, (kt + kTcStages - 1) * kTcBK);

    const T* sa = smem + (2 * (kt % kTcStages)) * kTcSlice;
    const T* sb = sa + kTcSlice;
#pragma unroll
    for (int kk = 0; kk < kTcBK; kk += 16) {
      unsigned af[4][4];
      unsigned bf[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m0 = wm * 64 + i * 16;
        if (kTransA) {  // stored [k][m]: transposed 8x8 loads
          LdMatrixX4Trans(af[i], sa + (kk + lane % 8 + (lane / 16) * 8) * kTcWide + m0 + ((lane / 8) % 2) * 8);
        } else {        // stored [m][k]
          LdMatrixX4(af[i], sa + (m0 + lane % 16) * kTcNarrow + kk + (lane / 16) * 8);
        }
      }
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {  // two 8-column tiles per ldmatrix.x4
        const int n0 = wn * 32 + jj * 16;
        unsigned r4[4];
        if (kTransB) {  // stored [n][k]
          LdMatrixX4(r4, sb + (n0 + lane % 8 + (lane / 16) * 8) * kTcNarrow + kk + ((lane / 8) % 2) * 8);
        } else {        // stored [k][n]: transposed 8x8 loads
          LdMatrixX4Trans(r4, sb + (kk + lane % 8 + ((lane / 8) % 2) * 8) * kTcWide + n0 + (lane / 16) * 8);
        }
        bf[2 * jj][0] = r4[0];
        bf[2 * jj][1] = r4[1];
        bf[2 * jj + 1][0] = r4[2];
        bf[2 * jj + 1][1] = r4[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) Mma16816<T>(acc[i][j], af[i], bf[j]);
      }
    }
  }

  // Epilogue: the accumulator layout is known (mma.cuh), so each thread writes its own elements.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t gi = row0 + wm * 64 + i * 16 + lane / 4 + (e / 2) * 8;
        const int64_t gj = col0 + wn * 32 + j * 8 + (lane % 4) * 2 + e % 2;
        if (gi < m && gj < n) c[gi * n + gj] = FromFloat<T>(acc[i][j][e]);
      }
    }
  }
#endif  // __CUDA_ARCH__ >= 800
}
#endif  // __CUDACC__

// Launch groups [0, groups) (row_off has groups + 1 entries) in chunks of kMaxGroups, each chunk
// one launch per 65535 column tiles.
template <typename T, bool kTransA, bool kTransB>
int LaunchGroups(cudaStream_t stream, bool tensor_cores, int64_t groups, const int64_t* row_off, int64_t n,
                 int64_t k, const void* a, const void* b, int64_t b_stride, void* c) {
  const int bm = tensor_cores ? kTcBM : kBM;
  const int bn = tensor_cores ? kTcBN : kBN;
  const int threads = tensor_cores ? kTcThreads : kThreads;
  const int64_t col_tiles = (n + bn - 1) / bn;
  for (int64_t g0 = 0; g0 < groups; g0 += kMaxGroups) {
    const int64_t count = groups - g0 < kMaxGroups ? groups - g0 : kMaxGroups;
    GroupTable tab;
    tab.groups = static_cast<int32_t>(count);
    int64_t tiles = 0;
    for (int64_t i = 0; i <= count; ++i) {
      tab.row_off[i] = row_off[g0 + i];
      tab.tile_off[i] = static_cast<int32_t>(tiles);
      if (i < count) tiles += (row_off[g0 + i + 1] - row_off[g0 + i] + bm - 1) / bm;
      if (tiles > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
    }
    if (tiles == 0) continue;
    const T* bg = static_cast<const T*>(b) + g0 * b_stride;
    for (int64_t y_base = 0; y_base < col_tiles; y_base += kMaxGridY) {
      const int64_t ny = col_tiles - y_base < kMaxGridY ? col_tiles - y_base : kMaxGridY;
      const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(ny));
#ifdef __CUDACC__
      if constexpr (sizeof(T) == 2) {
        if (tensor_cores) {
          const cudaError_t attr = cudaFuncSetAttribute(GemmTcKernel<T, kTransA, kTransB>,
                                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kTcSmemBytes);
          if (attr != cudaSuccess) return static_cast<int>(attr);
          GemmTcKernel<T, kTransA, kTransB><<<grid, threads, kTcSmemBytes, stream>>>(
              tab, n, k, static_cast<const T*>(a), bg, b_stride, static_cast<T*>(c), y_base);
          const cudaError_t err = cudaGetLastError();
          if (err != cudaSuccess) return static_cast<int>(err);
          continue;
        }
      }
#endif
      GemmKernel<T, kTransA, kTransB><<<grid, threads, 0, stream>>>(
          tab, n, k, static_cast<const T*>(a), bg, b_stride, static_cast<T*>(c), y_base);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return static_cast<int>(err);
    }
  }
  return 0;
}

template <typename T>
int DispatchTranspose(cudaStream_t stream, bool trans_a, bool trans_b, int64_t groups, const int64_t* row_off,
                      int64_t n, int64_t k, const void* a, const void* b, int64_t b_stride, void* c) {
  bool tc = false;
#ifdef __CUDACC__
  tc = sizeof(T) == 2 && TensorCoresUsable();
#endif
  if (trans_a) {
    return trans_b ? LaunchGroups<T, true, true>(stream, tc, groups, row_off, n, k, a, b, b_stride, c)
                   : LaunchGroups<T, true, false>(stream, tc, groups, row_off, n, k, a, b, b_stride, c);
  }
  return trans_b ? LaunchGroups<T, false, true>(stream, tc, groups, row_off, n, k, a, b, b_stride, c)
                 : LaunchGroups<T, false, false>(stream, tc, groups, row_off, n, k, a, b, b_stride, c);
}

int Dispatch(void* stream, DType dtype, bool trans_a, bool trans_b, int64_t groups, const int64_t* row_off,
             int64_t n, int64_t k, const void* a, const void* b, int64_t b_stride, void* c) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return DispatchTranspose<float>(s, trans_a, trans_b, groups, row_off, n, k, a, b, b_stride, c);
    case DType::kBFloat16:
      return DispatchTranspose<__nv_bfloat16>(s, trans_a, trans_b, groups, row_off, n, k, a, b, b_stride, c);
    case DType::kHalf:
      return DispatchTranspose<__half>(s, trans_a, trans_b, groups, row_off, n, k, a, b, b_stride, c);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

int GemmGpu(void* stream, DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
            const void* a, const void* b, void* c) {
  if (m < 0 || n < 0 || k < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (m == 0 || n == 0) return 0;
  const int64_t rows[2] = {0, m};
  return Dispatch(stream, dtype, trans_a, trans_b, 1, rows, n, k, a, b, 0, c);
}

int GroupedGemmGpu(void* stream, DType dtype, bool trans_w, int64_t groups, const int64_t* row_offsets,
                   int64_t k, int64_t n, const void* x, const void* w, void* y) {
  if (groups < 0 || k < 0 || n < 0 || row_offsets == nullptr || row_offsets[0] != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  for (int64_t g = 0; g < groups; ++g) {
    if (row_offsets[g + 1] < row_offsets[g]) return static_cast<int>(cudaErrorInvalidValue);
  }
  if (groups == 0 || n == 0 || row_offsets[groups] == 0) return 0;
  return Dispatch(stream, dtype, false, trans_w, groups, row_offsets, n, k, x, w, k * n, y);
}

}  // namespace seekline
