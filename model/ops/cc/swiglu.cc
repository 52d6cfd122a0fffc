// SeeklineSwiglu / SeeklineSwigluGrad: the SwiGLU gate silu(g) ⊙ u of every feed-forward
// (dense MLP, shared experts, routed experts) in one pass each way.
//
// The pure-TF path is Swish + Mul forward and, backward, Sigmoid plus four Muls / Adds / Subs
// over (tokens, intermediate) tensors — each a full read and write (7.5% of a training step in
// the profile, docs/performance.md). Here:
//
//   forward   s = 1 / (1 + exp(−g)),  h = g · s · u
//   backward  dg = dh · u · s · (1 + g · (1 − s)),  du = dh · g · s
//
// fp32 arithmetic whatever the storage type (one rounding per output); elementwise, so results do
// not depend on the thread count. A NaN in g or u propagates as in the pure path.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>

#include "unsupported/Eigen/CXX11/Tensor"

#include "op_util.h"
#include "tile_gemm.h"

namespace seekline {

REGISTER_OP("SeeklineSwiglu")
    .Input("g: T")       // (...)  gate pre-activation
    .Input("u: T")       // (...)  up projection, same shape
    .Output("h: T")      // (...)  silu(g) * u
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle s;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &s));
      c->set_output(0, s);
      return tensorflow::OkStatus();
    })
    .Doc("SwiGLU gate: silu(g) * u elementwise, fp32 arithmetic.");

REGISTER_OP("SeeklineSwigluGrad")
    .Input("dh: T")      // (...)
    .Input("g: T")       // (...)
    .Input("u: T")       // (...)
    .Output("dg: T")     // (...)
    .Output("du: T")     // (...)
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle s;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &s));
      TF_RETURN_IF_ERROR(c->Merge(s, c->input(2), &s));
      c->set_output(0, s);
      c->set_output(1, s);
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of SeeklineSwiglu with respect to g and u.");

namespace {

constexpr int64_t kBlock = 2048;   // elements per work item (and per fp32 staging buffer)

// The fp32 kernels over n contiguous elements.
#if defined(__AVX512F__)
// σ(g) for 16 lanes; exp's argument capped at 88 (e^88 is finite in fp32, σ(−88) ≈ 6e−39 ≈ 0).
inline __m512 Sigmoid(__m512 g) {
  const __m512 e = tile::Exp(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), g), _mm512_set1_ps(88.f)));
  return _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), e));
}

inline void Forward(const float* g, const float* u, float* h, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tile::Lanes(n - j);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + j);
    const __m512 uv = _mm512_maskz_loadu_ps(m, u + j);
    _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(_mm512_mul_ps(gv, Sigmoid(gv)), uv));
  }
}

inline void Backward(const float* dh, const float* g, const float* u, float* dg, float* du, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = tile::Lanes(n - j);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + j);
    const __m512 uv = _mm512_maskz_loadu_ps(m, u + j);
    const __m512 dv = _mm512_maskz_loadu_ps(m, dh + j);
    const __m512 s = Sigmoid(gv);
    const __m512 silu = _mm512_mul_ps(gv, s);
    // silu'(g) = s + g·s·(1 − s) = s·(1 + g·(1 − s))
    const __m512 dsilu = _mm512_mul_ps(s, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one));
    _mm512_mask_storeu_ps(dg + j, m, _mm512_mul_ps(_mm512_mul_ps(dv, uv), dsilu));
    _mm512_mask_storeu_ps(du + j, m, _mm512_mul_ps(dv, silu));
  }
}
#else
using Row = Eigen::Array<float, 1, Eigen::Dynamic>;
using CMap = Eigen::Map<const Row>;
using Map = Eigen::Map<Row>;

inline void Forward(const float* g, const float* u, float* h, int64_t n) {
  const CMap gv(g, n);
  Map(h, n) = gv / (1.f + (-gv).min(88.f).exp()) * CMap(u, n);
}

inline void Backward(const float* dh, const float* g, const float* u, float* dg, float* du, int64_t n) {
  const CMap gv(g, n), uv(u, n), dv(dh, n);
  const Row s = 1.f / (1.f + (-gv).min(88.f).exp());
  Map(dg, n) = dv * uv * s * (1.f + gv * (1.f - s));
  Map(du, n) = dv * gv * s;
}
#endif

// g and u (and dh, for the gradient) must have one shape: both devices' kernels check it here.
Status CheckShapes(const Tensor& g, const Tensor& u, const Tensor* dh = nullptr) {
  if (g.shape() == u.shape() && (dh == nullptr || dh->shape() == g.shape())) return tensorflow::OkStatus();
  if (dh == nullptr) {
    return InvalidArgument("g ", g.shape().DebugString(), " and u ", u.shape().DebugString(),
                           " must have the same shape");
  }
  return InvalidArgument("dh ", dh->shape().DebugString(), ", g ", g.shape().DebugString(), " and u ",
                         u.shape().DebugString(), " must have the same shape");
}

// Storage ↔ fp32 for one block: float storage is used in place, other types are staged.
template <typename T>
struct Stage {
  float buf[kBlock];
  const float* In(const T* p, int64_t n) {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(p[j]);
    return buf;
  }
  float* Out(T*) { return buf; }
  void Store(T* p, int64_t n) const {
    for (int64_t j = 0; j < n; ++j) p[j] = static_cast<T>(buf[j]);
  }
};
template <>
struct Stage<float> {
  const float* In(const float* p, int64_t) { return p; }
  float* Out(float* p) { return p; }
  void Store(float*, int64_t) const {}
};

template <typename T>
class SwigluCpu : public OpKernel {
 public:
  explicit SwigluCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& g = ctx->input(0);
    const Tensor& u = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckShapes(g, u));
    Tensor* h = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &h));
    const int64_t n = g.NumElements();
    if (n == 0) return;
    const T* gp = g.flat<T>().data();
    const T* up = u.flat<T>().data();
    T* hp = h->flat<T>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor((n + kBlock - 1) / kBlock, 24 * kBlock, [&](int64_t b0, int64_t b1) {
      Stage<T> sg, su, sh;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t off = b * kBlock, len = std::min(kBlock, n - off);
        Forward(sg.In(gp + off, len), su.In(up + off, len), sh.Out(hp + off), len);
        sh.Store(hp + off, len);
      }
    });
  }
};

template <typename T>
class SwigluGradCpu : public OpKernel {
 public:
  explicit SwigluGradCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dh = ctx->input(0);
    const Tensor& g = ctx->input(1);
    const Tensor& u = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckShapes(g, u, &dh));
    Tensor *dg = nullptr, *du = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &dg));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, g.shape(), &du));
    const int64_t n = g.NumElements();
    if (n == 0) return;
    const T* dhp = dh.flat<T>().data();
    const T* gp = g.flat<T>().data();
    const T* up = u.flat<T>().data();
    T* dgp = dg->flat<T>().data();
    T* dup = du->flat<T>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor((n + kBlock - 1) / kBlock, 40 * kBlock, [&](int64_t b0, int64_t b1) {
      Stage<T> sd, sg, su, sdg, sdu;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t off = b * kBlock, len = std::min(kBlock, n - off);
        Backward(sd.In(dhp + off, len), sg.In(gp + off, len), su.In(up + off, len), sdg.Out(dgp + off),
                 sdu.Out(dup + off), len);
        sdg.Store(dgp + off, len);
        sdu.Store(dup + off, len);
      }
    });
  }
};

}  // namespace

#define SEEKLINE_REGISTER_SWIGLU(T)                                                                   \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSwiglu").Device(DEVICE_CPU).TypeConstraint<T>("T"), SwigluCpu<T>); \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSwigluGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), SwigluGradCpu<T>);
SEEKLINE_REGISTER_SWIGLU(float)
SEEKLINE_REGISTER_SWIGLU(Eigen::bfloat16)
SEEKLINE_REGISTER_SWIGLU(Eigen::half)
#undef SEEKLINE_REGISTER_SWIGLU

#if GOOGLE_CUDA
namespace {

// The same op on a GPU: ../cuda/elementwise.cu.cc's launchers on TF's stream.
template <typename T>
class SwigluGpuOp : public OpKernel {
 public:
  explicit SwigluGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& g = ctx->input(0);
    const Tensor& u = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckShapes(g, u));
    Tensor* h = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &h));
    const int code = SwigluGpu(GpuStream(ctx), kDType<T>, g.NumElements(), g.tensor_data().data(),
                               u.tensor_data().data(), const_cast<char*>(h->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineSwiglu"));
  }
};

template <typename T>
class SwigluGradGpuOp : public OpKernel {
 public:
  explicit SwigluGradGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dh = ctx->input(0);
    const Tensor& g = ctx->input(1);
    const Tensor& u = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckShapes(g, u, &dh));
    Tensor *dg = nullptr, *du = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, g.shape(), &dg));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, g.shape(), &du));
    const int code = SwigluGradGpu(GpuStream(ctx), kDType<T>, g.NumElements(), dh.tensor_data().data(),
                                   g.tensor_data().data(), u.tensor_data().data(),
                                   const_cast<char*>(dg->tensor_data().data()),
                                   const_cast<char*>(du->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineSwigluGrad"));
  }
};

}  // namespace

#define SEEKLINE_REGISTER_SWIGLU_GPU(T)                                                                  \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSwiglu").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),     \
                          SwigluGpuOp<T>);                                                                \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSwigluGrad").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
                          SwigluGradGpuOp<T>);
SEEKLINE_REGISTER_SWIGLU_GPU(float)
SEEKLINE_REGISTER_SWIGLU_GPU(Eigen::bfloat16)
SEEKLINE_REGISTER_SWIGLU_GPU(Eigen::half)
#undef SEEKLINE_REGISTER_SWIGLU_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
