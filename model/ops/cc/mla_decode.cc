// SeeklineMlaLatentAttention: MLA's absorbed attention over the latent cache, fused.
//
// With W_UK folded into the query (q_lat = q_nope·W_UK) and W_UV applied after, every head
// attends directly over the cache of RMSNorm(c) (B, S, C) and roped k_pe (B, S, R):
//   score[s] = scale · (q_lat·c[s] + q_pe·k_pe[s]) + bias[s]        (fp32)
//   p = softmax(score);  o_lat = Σ_s p[s] · c[s]                     (B, T, H, C)
// The pure-TF path is three einsums with (B, H, T, S) intermediates, a cast and a softmax —
// on a decode step (T = 1) that is almost all per-op overhead and layout transposes (46% of a
// decode step in the CPU profile). Here each (b, t) row reads its cache once for all heads.
// Forward only: the absorbed path serves cached decoding, which is never differentiated.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace seekline {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("SeeklineMlaLatentAttention")
    .Input("q_lat: T")     // (B, T, H, C)  q_nope absorbed through W_UK
    .Input("q_pe: T")      // (B, T, H, R)  roped
    .Input("c: T")         // (B, S, C)     cached RMSNorm(latent)
    .Input("k_pe: T")      // (B, S, R)     cached roped k_pe (one head shared by all heads)
    .Input("bias: float")  // (B|1, 1, T|1, S) additive mask
    .Output("o_lat: T")    // (B, T, H, C)
    .Attr("T: {float, bfloat16, half}")
    .Attr("scale: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle q, qpe, cache, kpe, bias;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &q));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &qpe));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &cache));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 3, &kpe));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 4, &bias));
      DimensionHandle d;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(q, 3), c->Dim(cache, 2), &d));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(qpe, 3), c->Dim(kpe, 2), &d));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(cache, 1), c->Dim(kpe, 1), &d));
      c->set_output(0, q);
      return tensorflow::OkStatus();
    })
    .Doc("Fused MLA absorbed attention over the latent cache (forward only).");

namespace {

template <typename T>
inline float F(T v) { return static_cast<float>(v); }

template <typename T>
class MlaLatentAttentionCpu : public OpKernel {
 public:
  explicit MlaLatentAttentionCpu(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& qpe = ctx->input(1);
    const Tensor& cache = ctx->input(2);
    const Tensor& kpe = ctx->input(3);
    const Tensor& bias = ctx->input(4);
    OP_REQUIRES(ctx, q.dims() == 4 && qpe.dims() == 4 && cache.dims() == 3 && kpe.dims() == 3 && bias.dims() == 4,
                InvalidArgument("ranks must be q_lat 4, q_pe 4, c 3, k_pe 3, bias 4"));
    const int64_t b = q.dim_size(0), t = q.dim_size(1), h = q.dim_size(2), cd = q.dim_size(3);
    const int64_t r = qpe.dim_size(3), s = cache.dim_size(1);
    OP_REQUIRES(ctx, qpe.dim_size(0) == b && qpe.dim_size(1) == t && qpe.dim_size(2) == h,
                InvalidArgument("q_pe ", qpe.shape().DebugString(), " does not match q_lat ", q.shape().DebugString()));
    OP_REQUIRES(ctx, cache.dim_size(0) == b && cache.dim_size(2) == cd && kpe.dim_size(0) == b &&
                         kpe.dim_size(1) == s && kpe.dim_size(2) == r,
                InvalidArgument("cache c ", cache.shape().DebugString(), " / k_pe ", kpe.shape().DebugString(),
                                " do not match q_lat ", q.shape().DebugString(), " / q_pe ",
                                qpe.shape().DebugString()));
    const int64_t bb = bias.dim_size(0), bt = bias.dim_size(2);
    OP_REQUIRES(ctx, (bb == b || bb == 1) && bias.dim_size(1) == 1 && (bt == t || bt == 1) && bias.dim_size(3) == s,
                InvalidArgument("bias must be (B|1, 1, T|1, S) = (", b, "|1, 1, ", t, "|1, ", s, "), got ",
                                bias.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, q.shape(), &out));
    if (out->NumElements() == 0) return;
    const T* qp = q.flat<T>().data();
    const T* qpep = qpe.flat<T>().data();
    const T* cp = cache.flat<T>().data();
    const T* kp = kpe.flat<T>().data();
    const float* bp = bias.flat<float>().data();
    T* op = out->flat<T>().data();
    const float scale = scale_;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    // One work item per (b, t): all H heads, so the item streams its batch row's cache once.
    pool->ParallelFor(b * t, h * s * (4 * cd + 2 * r + 8), [&](int64_t begin, int64_t end) {
      std::vector<float> score(s), acc(cd);
      for (int64_t bt_i = begin; bt_i < end; ++bt_i) {
        const int64_t bi = bt_i / t, ti = bt_i % t;
        const T* c_b = cp + bi * s * cd;                    // (S, C)
        const T* k_b = kp + bi * s * r;                     // (S, R)
        const float* bias_row = bp + ((bb == 1 ? 0 : bi) * bt + (bt == 1 ? 0 : ti)) * s;   // (S,)
        for (int64_t hi = 0; hi < h; ++hi) {
          const T* qv = qp + ((bi * t + ti) * h + hi) * cd;
          const T* qr = qpep + ((bi * t + ti) * h + hi) * r;
          float mx = -INFINITY;
          for (int64_t j = 0; j < s; ++j) {
            const T* cj = c_b + j * cd;
            const T* kj = k_b + j * r;
            float dot = 0.f;
            for (int64_t k = 0; k < cd; ++k) dot += F(qv[k]) * F(cj[k]);
            float dpe = 0.f;
            for (int64_t k = 0; k < r; ++k) dpe += F(qr[k]) * F(kj[k]);
            const float v = scale * (dot + dpe) + bias_row[j];
            score[j] = v;
            mx = std::max(mx, v);
          }
          float denom = 0.f;
          for (int64_t j = 0; j < s; ++j) {
            score[j] = std::exp(score[j] - mx);
            denom += score[j];
          }
          const float inv = 1.f / denom;
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int64_t j = 0; j < s; ++j) {
            const float pj = score[j] * inv;
            const T* cj = c_b + j * cd;
            for (int64_t k = 0; k < cd; ++k) acc[k] += pj * F(cj[k]);
          }
          T* o = op + ((bi * t + ti) * h + hi) * cd;
          for (int64_t k = 0; k < cd; ++k) o[k] = static_cast<T>(acc[k]);
        }
      }
    });
  }

 private:
  float scale_;
};

}  // namespace

#define REGISTER_CPU(T)                                                                          \
  REGISTER_KERNEL_BUILDER(Name("SeeklineMlaLatentAttention").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          MlaLatentAttentionCpu<T>);
REGISTER_CPU(float)
REGISTER_CPU(Eigen::bfloat16)
REGISTER_CPU(Eigen::half)
#undef REGISTER_CPU

}  // namespace seekline
