// SeeklineSoftmaxXent / SeeklineSoftmaxXentGrad: sparse softmax cross-entropy for the LM and MTP
// heads, one read of the logits per pass.
//
// TF's SparseSoftmaxCrossEntropyWithLogits computes the full (N, V) gradient in its forward (it
// is an output of the op), and the backward then multiplies that stored tensor by the incoming
// gradient: forward = read logits several times + write N·V, backward = read N·V + write N·V.
// With V = 8k-150k and N = batch·sequence those passes cost about as much as the head's matmuls
// on a CPU (docs/performance.md). Here the forward keeps only the per-row log-sum-exp and the
// backward recomputes the softmax from the logits while writing the gradient:
//
//   forward   m = max_j x_j,  lse = m + log Σ_j exp(x_j − m),  loss = lse − x_label     (per row)
//   backward  dx_j = (g + h) · exp(x_j − lse) − g · [j = label]
//             g = dloss, h = dlse (the lse output's gradient; 0 when it is unused)
//
// Rows whose g + h and g are both 0 (targets masked out by the loss) are written as zeros without
// touching their logits. Statistics in fp32 whatever the storage type; labels outside [0, V) are an
// error, as in TF's CPU kernel.
#define EIGEN_USE_THREADS

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"

#include "op_util.h"
#include "tile_gemm.h"

namespace seekline {

REGISTER_OP("SeeklineSoftmaxXent")
    .Input("logits: T")     // (N, V)
    .Input("labels: int32")  // (N,)
    .Output("loss: float")   // (N,)
    .Output("lse: float")    // (N,) log Σ exp(logits) per row
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, y;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &y));
      DimensionHandle n;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 0), c->Dim(y, 0), &n));
      c->set_output(0, c->Vector(n));
      c->set_output(1, c->Vector(n));
      return tensorflow::OkStatus();
    })
    .Doc("Sparse softmax cross-entropy per row, and the row's log-sum-exp; fp32 statistics.");

REGISTER_OP("SeeklineSoftmaxXentGrad")
    .Input("logits: T")     // (N, V)
    .Input("labels: int32")  // (N,)
    .Input("lse: float")     // (N,)
    .Input("dloss: float")   // (N,)
    .Input("dlse: float")    // (N,)
    .Output("dlogits: T")    // (N, V)
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      c->set_output(0, x);
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of SeeklineSoftmaxXent with respect to the logits.");

namespace {

// The row as fp32: the row itself for float storage, else converted into `buf`.
template <typename T>
inline const float* RowF32(const T* row, int64_t v, std::vector<float>* buf) {
  buf->resize(v);
  for (int64_t j = 0; j < v; ++j) (*buf)[j] = static_cast<float>(row[j]);
  return buf->data();
}
template <>
inline const float* RowF32<float>(const float* row, int64_t, std::vector<float>*) { return row; }

#if defined(__AVX512F__)
inline float RowMax(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tile::Lanes(n - j);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + j));
  }
  return _mm512_reduce_max_ps(m);
}

inline float ExpSum(const float* x, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tile::Lanes(n - j);
    acc = _mm512_mask_add_ps(acc, k, acc, tile::Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), s)));
  }
  return _mm512_reduce_add_ps(acc);
}

// out[j] = scale · exp(x[j] − shift), fp32 out
inline void ScaledExp(const float* x, int64_t n, float shift, float scale, float* out) {
  const __m512 s = _mm512_set1_ps(shift), c = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tile::Lanes(n - j);
    _mm512_mask_storeu_ps(out + j, k, _mm512_mul_ps(c, tile::Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), s))));
  }
}
#else
inline float RowMax(const float* x, int64_t n) {
  return Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(x, n).maxCoeff();
}

inline float ExpSum(const float* x, int64_t n, float shift) {
  return (Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(x, n) - shift).exp().sum();
}

inline void ScaledExp(const float* x, int64_t n, float shift, float scale, float* out) {
  Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(out, n) =
      scale * (Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(x, n) - shift).exp();
}
#endif

// logits (N, V), labels (N,): the shape checks both devices make
Status CheckShapes(const Tensor& logits, const Tensor& labels) {
  if (logits.dims() != 2) return InvalidArgument("logits must be (N, V), got ", logits.shape().DebugString());
  const int64_t n = logits.dim_size(0);
  if (labels.dims() != 1 || labels.dim_size(0) != n) {
    return InvalidArgument("labels must be (N,) with N = ", n, ", got ", labels.shape().DebugString());
  }
  return tensorflow::OkStatus();
}

// ... and on the CPU each label in [0, V) (so V = 0 with N > 0 is an error too), as TF's kernel
Status CheckInputs(const Tensor& logits, const Tensor& labels) {
  TF_RETURN_IF_ERROR(CheckShapes(logits, labels));
  const int64_t n = logits.dim_size(0), v = logits.dim_size(1);
  const int32_t* lp = labels.flat<int32_t>().data();
  for (int64_t r = 0; r < n; ++r) {
    if (lp[r] < 0 || lp[r] >= v) {
      return InvalidArgument("Received a label value of ", lp[r], " which is outside the valid range of [0, ", v,
                             ").  Label values: row ", r);
    }
  }
  return tensorflow::OkStatus();
}

// The gradient's lse, dloss and dlse inputs (2, 3, 4): each (N,)
Status CheckRowInputs(OpKernelContext* ctx, int64_t n) {
  for (int i = 2; i < 5; ++i) {
    if (ctx->input(i).dims() != 1 || ctx->input(i).dim_size(0) != n) {
      return InvalidArgument("input ", i, " must be (N,) with N = ", n, ", got ", ctx->input(i).shape().DebugString());
    }
  }
  return tensorflow::OkStatus();
}

template <typename T>
class SoftmaxXentCpu : public OpKernel {
 public:
  explicit SoftmaxXentCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckInputs(logits, labels));
    const int64_t n = logits.dim_size(0), v = logits.dim_size(1);
    Tensor *loss = nullptr, *lse = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n}), &lse));
    if (n == 0) return;
    const int32_t* lp = labels.flat<int32_t>().data();
    const T* xp = logits.flat<T>().data();
    float* lossp = loss->flat<float>().data();
    float* lsep = lse->flat<float>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(n, 8 * v, [&](int64_t begin, int64_t end) {
      std::vector<float> buf;
      for (int64_t r = begin; r < end; ++r) {
        const float* x = RowF32<T>(xp + r * v, v, &buf);
        const float m = RowMax(x, v);
        // an all -inf row has no finite max: lse = -inf, loss = nan (as the reference gives)
        const float s = std::isfinite(m) ? m + std::log(ExpSum(x, v, m)) : m;
        lsep[r] = s;
        lossp[r] = s - x[lp[r]];
      }
    });
  }
};

template <typename T>
class SoftmaxXentGradCpu : public OpKernel {
 public:
  explicit SoftmaxXentGradCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckInputs(logits, labels));
    const int64_t n = logits.dim_size(0), v = logits.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckRowInputs(ctx, n));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, logits.shape(), &dx));
    if (n == 0) return;
    const int32_t* lp = labels.flat<int32_t>().data();
    const T* xp = logits.flat<T>().data();
    const float* lsep = ctx->input(2).flat<float>().data();
    const float* gp = ctx->input(3).flat<float>().data();
    const float* hp = ctx->input(4).flat<float>().data();
    T* dxp = dx->flat<T>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(n, 6 * v, [&](int64_t begin, int64_t end) {
      std::vector<float> buf, out;
      for (int64_t r = begin; r < end; ++r) {
        T* d = dxp + r * v;
        const float g = gp[r], scale = gp[r] + hp[r];
        if (g == 0.f && scale == 0.f) {            // a masked-out target: no logit is read
          std::memset(static_cast<void*>(d), 0, sizeof(T) * v);
          continue;
        }
        const float* x = RowF32<T>(xp + r * v, v, &buf);
        if constexpr (std::is_same_v<T, float>) {
          ScaledExp(x, v, lsep[r], scale, d);
          d[lp[r]] -= g;
        } else {
          out.resize(v);
          ScaledExp(x, v, lsep[r], scale, out.data());
          out[lp[r]] -= g;
          for (int64_t j = 0; j < v; ++j) d[j] = static_cast<T>(out[j]);
        }
      }
    });
  }
};

}  // namespace

#define REGISTER_CPU(T)                                                                                         \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSoftmaxXent").Device(DEVICE_CPU).TypeConstraint<T>("T"),             \
                          SoftmaxXentCpu<T>);                                                                 \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSoftmaxXentGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
                          SoftmaxXentGradCpu<T>);
REGISTER_CPU(float)
REGISTER_CPU(Eigen::bfloat16)
REGISTER_CPU(Eigen::half)
#undef REGISTER_CPU

#if GOOGLE_CUDA
namespace {

// The same ops on a GPU: ../cuda/softmax_xent.cu.cc's launchers on TF's stream. Labels stay in
// device memory (no range check on the host: an out-of-range label gives NaN, as TF's GPU kernel).
template <typename T>
class SoftmaxXentGpuOp : public OpKernel {
 public:
  explicit SoftmaxXentGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckShapes(logits, labels));
    const int64_t n = logits.dim_size(0), v = logits.dim_size(1);
    Tensor *loss = nullptr, *lse = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n}), &lse));
    const int code = SoftmaxXentGpu(GpuStream(ctx), kDType<T>, n, v, logits.tensor_data().data(),
                                    labels.flat<int32_t>().data(), loss->flat<float>().data(),
                                    lse->flat<float>().data());
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineSoftmaxXent"));
  }
};

template <typename T>
class SoftmaxXentGradGpuOp : public OpKernel {
 public:
  explicit SoftmaxXentGradGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckShapes(logits, labels));
    const int64_t n = logits.dim_size(0), v = logits.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckRowInputs(ctx, n));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, logits.shape(), &dx));
    const int code = SoftmaxXentGradGpu(GpuStream(ctx), kDType<T>, n, v, logits.tensor_data().data(),
                                        labels.flat<int32_t>().data(), ctx->input(2).flat<float>().data(),
                                        ctx->input(3).flat<float>().data(), ctx->input(4).flat<float>().data(),
                                        const_cast<char*>(dx->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineSoftmaxXentGrad"));
  }
};

}  // namespace

#define REGISTER_GPU(T)                                                                                         \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSoftmaxXent").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),    \
                          SoftmaxXentGpuOp<T>);                                                                \
  REGISTER_KERNEL_BUILDER(Name("SeeklineSoftmaxXentGrad").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
                          SoftmaxXentGradGpuOp<T>);
REGISTER_GPU(float)
REGISTER_GPU(Eigen::bfloat16)
REGISTER_GPU(Eigen::half)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
