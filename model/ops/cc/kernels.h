// seekline custom ops: the device-side launchers the op kernels call.
//
// The CPU kernels live in the op files (grouped_matmul.cc, rms_norm.cc). The GPU launchers
// below are implemented in ../cuda/*.cu.cc, compiled by nvcc WITHOUT TensorFlow headers (so a
// CUDA toolkit newer than the one TF was built with still works), and called from the op files'
// GOOGLE_CUDA sections with the stream TF gives the kernel. Every launcher returns 0 on success
// or the cudaError_t value of the first failing CUDA call; it never synchronises the stream.
#ifndef SEEKLINE_OPS_KERNELS_H_
#define SEEKLINE_OPS_KERNELS_H_

#include <cstdint>

namespace seekline {

// Element types the launchers understand (storage type; arithmetic is always fp32).
enum class DType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };

// Row-major GEMM with fp32 accumulation, beta = 0:
//   C[m, n] = sum_k op(A)[m, k] * op(B)[k, n]
// op(A) = A (stored m x k) or A^T (stored k x m) when trans_a; likewise B (k x n, or n x k when
// trans_b). C is m x n, contiguous. k == 0 writes zeros into C; m == 0 or n == 0 does nothing.
int GemmGpu(void* stream, DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n,
            int64_t k, const void* a, const void* b, void* c);

// The MoE expert matmul in one launch: `groups` row blocks of x share nothing but n and k.
//   y[r, :] = x[r, :] · op(w[g])   for r in [row_offsets[g], row_offsets[g + 1])
// x (rows, k) and y (rows, n) contiguous with rows = row_offsets[groups]; w (groups, k, n), or
// (groups, n, k) when trans_w. row_offsets is HOST memory (groups + 1 non-decreasing values from 0);
// empty groups are fine. Same arithmetic as GemmGpu per group.
int GroupedGemmGpu(void* stream, DType dtype, bool trans_w, int64_t groups, const int64_t* row_offsets,
                   int64_t k, int64_t n, const void* x, const void* w, void* y);

// RMSNorm over the last axis of a contiguous (rows, dim) tensor, statistics in fp32:
//   y = w * x * rsqrt(mean(x^2) + eps)        (one rounding to the storage type at the end)
int RmsNormGpu(void* stream, DType dtype, int64_t rows, int64_t dim, float eps, const void* x,
               const void* w, void* y);

// Its gradient, with r = rsqrt(mean(x^2) + eps), g = w * dy:
//   dx = r * g - x * r^3 * mean(g * x)            (per row)
//   dw = sum over rows of dy * x * r               (accumulated in fp32, deterministic order)
int RmsNormGradGpu(void* stream, DType dtype, int64_t rows, int64_t dim, float eps,
                   const void* dy, const void* x, const void* w, void* dx, void* dw);

// MLA absorbed attention over the latent cache (SeeklineMlaLatentAttention), fp32 softmax:
//   o_lat[b,t,h,:] = sum_s p[s] * c[b,s,:],
//   p = softmax_s(scale * (q_lat[b,t,h,:]·c[b,s,:] + q_pe[b,t,h,:]·k_pe[b,s,:]) + bias[bb,0,tt,s])
// q_lat (B,T,H,C), q_pe (B,T,H,R), c (B,S,C), k_pe (B,S,R) in `dtype`, contiguous; bias fp32 of
// shape (bias_b, 1, bias_t, S) with bias_b in {1, B} and bias_t in {1, T} (broadcast: bb = 0 when
// bias_b == 1, tt = 0 when bias_t == 1); o_lat (B,T,H,C) in `dtype`. S == 0 never happens (the op
// rejects it). Rows with every key masked (bias -1e9) give the uniform average, as the softmax does.
int MlaLatentAttentionGpu(void* stream, DType dtype, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r,
                          int64_t s, int64_t bias_b, int64_t bias_t, float scale, const void* q_lat,
                          const void* q_pe, const void* cache, const void* k_pe, const float* bias,
                          void* o_lat);

// SwiGLU over n contiguous elements (SeeklineSwiglu / Grad), fp32 arithmetic, s = sigmoid(g):
//   h = g * s * u;   dg = dh * u * s * (1 + g * (1 - s)),  du = dh * g * s
int SwigluGpu(void* stream, DType dtype, int64_t n, const void* g, const void* u, void* h);
int SwigluGradGpu(void* stream, DType dtype, int64_t n, const void* dh, const void* g, const void* u, void* dg,
                  void* du);

// RoPE on the trailing d - offset channels of x viewed as (rows * heads, d) (SeeklineRope; the
// formulas are in ../cc/rope.cc): leading channels copied, cos / sin (rows, (d - offset) / 2) fp32
// shared by the heads; inverse = the transpose (the gradient). (d - offset) must be even.
int RopeGpu(void* stream, DType dtype, int64_t rows, int64_t heads, int64_t d, int64_t offset, bool interleaved,
            bool inverse, const float* cos, const float* sin, const void* x, void* y);

}  // namespace seekline

#endif  // SEEKLINE_OPS_KERNELS_H_
