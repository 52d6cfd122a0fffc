// seekline custom ops: RmsNormGpu and RmsNormGradGpu (declared in ../cc/kernels.h).
//
// Forward and dx: one block per row (grid-stride over rows), statistics reduced in fp32 with warp
// shuffles plus one shared-memory step. dw: one block per 32-column tile that walks all rows in a
// fixed order, so results are bit-identical run to run (training uses op determinism: no float
// atomics anywhere). No TensorFlow headers on purpose (see kernels.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../cc/kernels.h"
#include "reduce.cuh"
#include "storage.cuh"

namespace seekline {
namespace {

constexpr int kMaxRowThreads = 256;       // threads per row block (a multiple of 32)
constexpr int64_t kMaxRowBlocks = 1 << 20;  // grid cap for the per-row kernels (they grid-stride)
constexpr int kDwCols = 32;               // dw: columns per block (threadIdx.x, coalesced)
constexpr int kDwRowLanes = 8;            // dw: row lanes per block (threadIdx.y)


// r = rsqrt(mean(x^2) + eps) of one row, identical in every thread of the block.
template <typename T>
__device__ float RowInvRms(const T* xr, int64_t dim, float eps, float* partial) {
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    const float v = ToFloat(xr[j]);
    ss += v * v;
  }
  ss = BlockSum(ss, partial);
  return rsqrtf(ss / static_cast<float>(dim) + eps);
}

// y[row, :] = w * x[row, :] * r. Each element is read and written by the same thread after the
// row's reduction, so y may even alias x.
template <typename T>
__global__ void RmsNormKernel(int64_t rows, int64_t dim, float eps, const T* x, const T* w, T* y) {
  __shared__ float partial[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * dim;  // [dim]
    T* yr = y + row * dim;        // [dim]
    const float r = RowInvRms(xr, dim, eps, partial);
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      yr[j] = FromFloat<T>(ToFloat(w[j]) * (ToFloat(xr[j]) * r));
    }
  }
}

// inv_rms[row] = r for every row: the per-row factor the dw kernel needs.
template <typename T>
__global__ void RowInvRmsKernel(int64_t rows, int64_t dim, float eps, const T* x, float* inv_rms) {
  __shared__ float partial[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float r = RowInvRms(x + row * dim, dim, eps, partial);
    if (threadIdx.x == 0) inv_rms[row] = r;
  }
}

// dw[j] = sum_i dy[i, j] * x[i, j] * r_i. Block (blockDim 32 x 8) owns columns
// 32 * blockIdx.x + threadIdx.x; row lane ty adds rows ty, ty + 8, ... in increasing order, then
// lane 0 adds the 8 lane sums in order 0..7: a fixed summation order, hence deterministic.
// inv_rms == nullptr (no scratch available) recomputes r_i serially per row; only used when rows
// are tiny (dim * sizeof(T) < 4 bytes), where that costs nothing.
template <typename T>
__global__ void RmsNormDwKernel(int64_t rows, int64_t dim, float eps, const T* dy, const T* x,
                                const float* inv_rms, T* dw) {
  __shared__ float lane_sum[kDwRowLanes][kDwCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kDwCols + threadIdx.x;
  float acc = 0.0f;
  if (col < dim) {
    for (int64_t i = threadIdx.y; i < rows; i += kDwRowLanes) {
      float r;
      if (inv_rms != nullptr) {
        r = inv_rms[i];
      } else {
        float ss = 0.0f;
        for (int64_t j = 0; j < dim; ++j) {
          const float v = ToFloat(x[i * dim + j]);
          ss += v * v;
        }
        r = rsqrtf(ss / static_cast<float>(dim) + eps);
      }
      acc += ToFloat(dy[i * dim + col]) * ToFloat(x[i * dim + col]) * r;
    }
  }
  lane_sum[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < dim) {
    float total = 0.0f;
    for (int l = 0; l < kDwRowLanes; ++l) total += lane_sum[l][threadIdx.x];
    dw[col] = FromFloat<T>(total);  // rows == 0 writes zeros
  }
}

// dx[row, :] = r * g - x * r^3 * mean(g * x), g = w * dy[row, :].
template <typename T>
__global__ void RmsNormDxKernel(int64_t rows, int64_t dim, float eps, const T* dy, const T* x,
                                const T* w, T* dx) {
  __shared__ float partial[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* dyr = dy + row * dim;  // [dim]
    const T* xr = x + row * dim;    // [dim]
    T* dxr = dx + row * dim;        // [dim]
    float ss = 0.0f;
    float gx = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float xv = ToFloat(xr[j]);
      ss += xv * xv;
      gx += ToFloat(w[j]) * ToFloat(dyr[j]) * xv;
    }
    ss = BlockSum(ss, partial);
    gx = BlockSum(gx, partial);
    const float r = rsqrtf(ss / static_cast<float>(dim) + eps);
    const float coef = r * r * r * (gx / static_cast<float>(dim));  // r^3 * mean(g * x)
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float g = ToFloat(w[j]) * ToFloat(dyr[j]);
      dxr[j] = FromFloat<T>(r * g - ToFloat(xr[j]) * coef);
    }
  }
}

// Threads for a per-row block: dim rounded up to a warp, at most kMaxRowThreads.
int RowThreads(int64_t dim) {
  const int64_t rounded = (dim + 31) / 32 * 32;
  return static_cast<int>(rounded < kMaxRowThreads ? rounded : kMaxRowThreads);
}

unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>(rows < kMaxRowBlocks ? rows : kMaxRowBlocks);
}

template <typename T>
int LaunchForward(cudaStream_t stream, int64_t rows, int64_t dim, float eps, const void* x,
                  const void* w, void* y) {
  RmsNormKernel<T><<<RowBlocks(rows), RowThreads(dim), 0, stream>>>(
      rows, dim, eps, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y));
  return static_cast<int>(cudaGetLastError());
}

// Three launches, in stream order: r per row -> dw -> dx. The r values live in dx's buffer
// (rows floats fit in rows * dim elements of T when dim * sizeof(T) >= 4): kernels.h gives no
// workspace, and allocating one here would bypass TF's allocator. dx is written last, after the dw
// kernel has finished reading r. This is why dx must not alias dy, x or w.
template <typename T>
int LaunchGrad(cudaStream_t stream, int64_t rows, int64_t dim, float eps, const void* dy,
               const void* x, const void* w, void* dx, void* dw) {
  const T* dy_t = static_cast<const T*>(dy);
  const T* x_t = static_cast<const T*>(x);
  const bool scratch_fits = dim * static_cast<int64_t>(sizeof(T)) >= static_cast<int64_t>(sizeof(float)) &&
                            reinterpret_cast<uintptr_t>(dx) % alignof(float) == 0;
  float* inv_rms = (scratch_fits && rows > 0) ? static_cast<float*>(dx) : nullptr;
  if (inv_rms != nullptr) {
    RowInvRmsKernel<T><<<RowBlocks(rows), RowThreads(dim), 0, stream>>>(rows, dim, eps, x_t, inv_rms);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  const dim3 dw_block(kDwCols, kDwRowLanes);
  const unsigned dw_grid = static_cast<unsigned>((dim + kDwCols - 1) / kDwCols);
  RmsNormDwKernel<T><<<dw_grid, dw_block, 0, stream>>>(rows, dim, eps, dy_t, x_t, inv_rms,
                                                       static_cast<T*>(dw));
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  if (rows > 0) {
    RmsNormDxKernel<T><<<RowBlocks(rows), RowThreads(dim), 0, stream>>>(
        rows, dim, eps, dy_t, x_t, static_cast<const T*>(w), static_cast<T*>(dx));
    err = cudaGetLastError();
  }
  return static_cast<int>(err);
}

}  // namespace

int RmsNormGpu(void* stream, DType dtype, int64_t rows, int64_t dim, float eps, const void* x,
               const void* w, void* y) {
  if (rows < 0 || dim < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (rows == 0 || dim == 0) return 0;  // y is empty
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return LaunchForward<float>(s, rows, dim, eps, x, w, y);
    case DType::kBFloat16:
      return LaunchForward<__nv_bfloat16>(s, rows, dim, eps, x, w, y);
    case DType::kHalf:
      return LaunchForward<__half>(s, rows, dim, eps, x, w, y);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int RmsNormGradGpu(void* stream, DType dtype, int64_t rows, int64_t dim, float eps,
                   const void* dy, const void* x, const void* w, void* dx, void* dw) {
  if (rows < 0 || dim < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (dim == 0) return 0;  // dx and dw are empty; rows == 0 still zero-fills dw
  if ((dim + kDwCols - 1) / kDwCols > 0x7fffffff) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat:
      return LaunchGrad<float>(s, rows, dim, eps, dy, x, w, dx, dw);
    case DType::kBFloat16:
      return LaunchGrad<__nv_bfloat16>(s, rows, dim, eps, dy, x, w, dx, dw);
    case DType::kHalf:
      return LaunchGrad<__half>(s, rows, dim, eps, dy, x, w, dx, dw);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace seekline
