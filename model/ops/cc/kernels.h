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

// Fused attention (SeeklineAttention / Grad; the math is in ../cc/attention.cc), fp32 softmax:
//   z = scale·q[b,t,h]·k[b,s,h/G] + bias[bb,0,tt,s],  o[b,t,h] = softmax_s(z)·v[b,s,h/G],
//   lse[b,h,t] = log Σ_s exp(z)
// q (B,T,H,Dk), k (B,S,Hkv,Dk), v (B,S,Hkv,Dv), o (B,T,H,Dv) in `dtype`; bias fp32 (bias_b,1,bias_t,S)
// broadcast as in MlaLatentAttentionGpu; lse fp32 (B,H,T). H a multiple of Hkv (G = H / Hkv), S > 0.
// The gradient takes the forward's o and lse, d_o (B,T,H,Dv), d_lse (B,H,T) fp32 and `scratch`,
// 4·B·H·T floats of device memory, and writes dq, dk, dv (the shapes of q, k, v). Dk and Dv up to
// 256 always fit (wider heads: cudaErrorInvalidValue, see ../cuda/attention.cu.cc).
int AttentionGpu(void* stream, DType dtype, int64_t b, int64_t t, int64_t h, int64_t s, int64_t hkv, int64_t dk,
                 int64_t dv, int64_t bias_b, int64_t bias_t, float scale, const void* q, const void* k, const void* v,
                 const float* bias, void* o, float* lse);
int AttentionGradGpu(void* stream, DType dtype, int64_t b, int64_t t, int64_t h, int64_t s, int64_t hkv, int64_t dk,
                     int64_t dv, int64_t bias_b, int64_t bias_t, float scale, const void* q, const void* k,
                     const void* v, const float* bias, const void* o, const float* lse, const void* d_o,
                     const float* d_lse, float* scratch, void* dq, void* dkey, void* dval);

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

// Sparse softmax cross-entropy (SeeklineSoftmaxXent / Grad; ../cc/softmax_xent.cc), fp32 statistics:
//   lse[r] = log sum_j exp(x[r, j]),  loss[r] = lse[r] - x[r, labels[r]]
//   dx[r, j] = (dloss[r] + dlse[r]) * exp(x[r, j] - lse[r]) - dloss[r] * [j == labels[r]]
// logits (n, v) in `dtype`, labels int32 (n,), loss / lse / dloss / dlse fp32 (n,), all device memory.
// A label outside [0, v) gives a NaN loss and a NaN gradient row (labels are not read on the host).
int SoftmaxXentGpu(void* stream, DType dtype, int64_t n, int64_t v, const void* logits, const int32_t* labels,
                   float* loss, float* lse);
int SoftmaxXentGradGpu(void* stream, DType dtype, int64_t n, int64_t v, const void* logits, const int32_t* labels,
                       const float* lse, const float* dloss, const float* dlse, void* dlogits);

// MoE combine (SeeklineMoeCombine / Grad; ../cc/moe_combine.cc): ys (n*k, d) in `dtype`, w fp32
// (n, k), pos int32 (n, k) a permutation of [0, n*k):
//   y[t] = sum_j w[t, j] * ys[pos[t, j]]     (terms in ascending pos), y (n, d)
//   dys[pos[t, j]] = w[t, j] * dy[t],  dw[t, j] = ys[pos[t, j]] . dy[t]
// `inv` is n*k int32 of device scratch. pos is not validated on the host: an invalid pos shows as
// NaN rows (see ../cuda/moe.cu.cc), never as an out-of-bounds access. 1 <= k <= 4096.
int MoeCombineGpu(void* stream, DType dtype, int64_t n, int64_t k, int64_t d, const void* ys, const float* w,
                  const int32_t* pos, void* y);
int MoeCombineGradGpu(void* stream, DType dtype, int64_t n, int64_t k, int64_t d, const void* dy, const void* ys,
                      const float* w, const int32_t* pos, int32_t* inv, void* dys, float* dw);

// Group-limited router top-k (SeeklineRouteTopK; ../cc/route.cc): choice fp32 (n, e) -> topk_idx
// int32 (n, top_k), descending, ties to the lower index (NaN ranks as -inf). group_mode 0 none,
// 1 top-2 sum, 2 max; grouped (mode != 0, n_group > 1) needs n_group <= 64 dividing e.
int RouteTopKGpu(void* stream, int64_t n, int64_t e, int top_k, int n_group, int topk_group, int group_mode,
                 const float* choice, int32_t* topk_idx);

// One AdamW step in place on fp32 var / m / v (n elements each; SeeklineApplyAdamW, ../cc/adamw.cc):
//   g = grad_scale * grad; var -= decay * var; m += (g - m)(1 - beta1); v += (g^2 - v)(1 - beta2);
//   var -= alpha * m / (sqrt(v) + epsilon)
int ApplyAdamWGpu(void* stream, int64_t n, float* var, float* m, float* v, const float* grad, float alpha,
                  float decay, float beta1, float beta2, float epsilon, float grad_scale);

// bytes from src to dst, both device memory (cudaMemcpyAsync on the stream).
int DeviceCopyGpu(void* stream, int64_t bytes, const void* src, void* dst);

}  // namespace seekline

#endif  // SEEKLINE_OPS_KERNELS_H_
