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
// GPU: MlaLatentAttentionGpu (kernels.h, ../cuda/mla_decode.cu.cc) when built with nvcc.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"
#include "Eigen/Core"

#include "op_util.h"

namespace seekline {

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

// The data as fp32: itself for float, converted into `buf` for bf16 / fp16.
template <typename T>
const float* AsF(const T* p, int64_t n, std::vector<float>* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return p;
  } else {
    buf->resize(n);
    for (int64_t i = 0; i < n; ++i) (*buf)[i] = static_cast<float>(p[i]);
    return buf->data();
  }
}

// Validated sizes of one call (CPU and GPU kernels): q_lat (B, T, H, C), q_pe (B, T, H, R),
// c (B, S, C), k_pe (B, S, R), bias (bb, 1, bt, S) with bb in {1, B}, bt in {1, T}, S > 0.
struct MlaDims {
  int64_t b, t, h, cd, r, s, bb, bt;
};

Status GetMlaDims(const Tensor& q, const Tensor& qpe, const Tensor& cache, const Tensor& kpe, const Tensor& bias,
                  MlaDims* d) {
  if (q.dims() != 4 || qpe.dims() != 4 || cache.dims() != 3 || kpe.dims() != 3 || bias.dims() != 4) {
    return InvalidArgument("ranks must be q_lat 4, q_pe 4, c 3, k_pe 3, bias 4");
  }
  const int64_t b = q.dim_size(0), t = q.dim_size(1), h = q.dim_size(2), cd = q.dim_size(3);
  const int64_t r = qpe.dim_size(3), s = cache.dim_size(1);
  if (qpe.dim_size(0) != b || qpe.dim_size(1) != t || qpe.dim_size(2) != h) {
    return InvalidArgument("q_pe ", qpe.shape().DebugString(), " does not match q_lat ", q.shape().DebugString());
  }
  if (cache.dim_size(0) != b || cache.dim_size(2) != cd || kpe.dim_size(0) != b || kpe.dim_size(1) != s ||
      kpe.dim_size(2) != r) {
    return InvalidArgument("cache c ", cache.shape().DebugString(), " / k_pe ", kpe.shape().DebugString(),
                           " do not match q_lat ", q.shape().DebugString(), " / q_pe ", qpe.shape().DebugString());
  }
  if (s == 0) return InvalidArgument("the cache has no positions (S = 0)");
  const int64_t bb = bias.dim_size(0), bt = bias.dim_size(2);
  if (!((bb == b || bb == 1) && bias.dim_size(1) == 1 && (bt == t || bt == 1) && bias.dim_size(3) == s)) {
    return InvalidArgument("bias must be (B|1, 1, T|1, S) = (", b, "|1, 1, ", t, "|1, ", s, "), got ",
                           bias.shape().DebugString());
  }
  *d = {b, t, h, cd, r, s, bb, bt};
  return tensorflow::OkStatus();
}

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
    MlaDims d;
    OP_REQUIRES_OK(ctx, GetMlaDims(q, qpe, cache, kpe, bias, &d));
    const int64_t b = d.b, t = d.t, h = d.h, cd = d.cd, r = d.r, s = d.s, bb = d.bb, bt = d.bt;
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
    // Per (b, t) item all H heads at once as small GEMMs (Eigen, vectorised):
    //   scores (H, S) = Q (H, C)·c_bᵀ + Q_pe (H, R)·k_peᵀ;  fp32 softmax per row;  O (H, C) = P·c_b.
    // (A scalar loop per head and key was slower than the three einsums it replaces.)
    // One item per (b, t) row with all its heads: the row's cache is streamed once. (Splitting the
    // heads into blocks re-reads the cache per block: for the V3 shape, 128 heads over a 4096-token
    // 512-wide latent, that was 1.4x slower; splitting the keys flash-decoding style would
    // parallelise a single row without re-reading — not done yet.)
    pool->ParallelFor(b * t, 2 * h * s * (2 * cd + r) + 8 * h * s, [&](int64_t begin, int64_t end) {
      using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      using CMap = Eigen::Map<const Mat>;
      std::vector<float> cbuf, kbuf, qbuf, qrbuf;           // fp32 copies for bf16 / fp16
      Mat scores(h, s), out_h(h, cd);
      for (int64_t bt_i = begin; bt_i < end; ++bt_i) {
        const int64_t bi = bt_i / t, ti = bt_i % t;
        const int64_t row0 = bt_i * h;                                               // first head row
        const float* c_b = AsF(cp + bi * s * cd, s * cd, &cbuf);                  // (S, C)
        const float* k_b = AsF(kp + bi * s * r, s * r, &kbuf);                    // (S, R)
        const float* qv = AsF(qp + row0 * cd, h * cd, &qbuf);                     // (H, C)
        const float* qr = AsF(qpep + row0 * r, h * r, &qrbuf);                    // (H, R)
        const float* bias_row = bp + ((bb == 1 ? 0 : bi) * bt + (bt == 1 ? 0 : ti)) * s;   // (S,)
        CMap cm(c_b, s, cd), km(k_b, s, r), qm(qv, h, cd), qrm(qr, h, r);
        scores.noalias() = qm * cm.transpose();                                      // (H, S)
        if (r > 0) scores.noalias() += qrm * km.transpose();
        Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>> bias_v(bias_row, s);
        for (int64_t hi = 0; hi < h; ++hi) {
          auto row = scores.row(hi);
          row = row * scale + bias_v;
          const float mx = row.maxCoeff();
          row = (row.array() - mx).exp().matrix();
          row /= row.sum();
        }
        out_h.noalias() = scores * cm;                                                  // (H, C)
        T* o = op + row0 * cd;
        const float* of = out_h.data();
        for (int64_t k = 0; k < h * cd; ++k) o[k] = static_cast<T>(of[k]);
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

#if GOOGLE_CUDA
namespace {

template <typename T>
class MlaLatentAttentionGpuOp : public OpKernel {
 public:
  explicit MlaLatentAttentionGpuOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& qpe = ctx->input(1);
    const Tensor& cache = ctx->input(2);
    const Tensor& kpe = ctx->input(3);
    const Tensor& bias = ctx->input(4);
    MlaDims d;
    OP_REQUIRES_OK(ctx, GetMlaDims(q, qpe, cache, kpe, bias, &d));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, q.shape(), &out));
    if (out->NumElements() == 0) return;
    const int code = MlaLatentAttentionGpu(
        GpuStream(ctx), kDType<T>, d.b, d.t, d.h, d.cd, d.r, d.s, d.bb, d.bt, scale_, q.tensor_data().data(),
        qpe.tensor_data().data(), cache.tensor_data().data(), kpe.tensor_data().data(),
        reinterpret_cast<const float*>(bias.tensor_data().data()), const_cast<char*>(out->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineMlaLatentAttention"));
  }

 private:
  float scale_;
};

}  // namespace

#define REGISTER_GPU(T)                                                                              \
  REGISTER_KERNEL_BUILDER(                                                                           \
      Name("SeeklineMlaLatentAttention").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),      \
      MlaLatentAttentionGpuOp<T>);
REGISTER_GPU(float)
REGISTER_GPU(Eigen::bfloat16)
REGISTER_GPU(Eigen::half)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
