// SeeklineRmsNorm / SeeklineRmsNormGrad: RMSNorm over the last axis in one pass.
//
// The pure-TF layer is cast → square → mean → add → rsqrt → mul → cast → mul (8 ops forward,
// more backward) over the full activation each time; this kernel reads x once per row and
// writes y once, statistics in fp32 whatever the storage type.
//
//   y  = w · x · r,  r = rsqrt(mean(x²) + eps)                     (per row; one rounding)
//   dx = r · g − x · r³ · mean(g · x),  g = w · dy
//   dw = Σ_rows dy · x · r                                          (fp32, fixed order)
//
// The pure-TF layer rounds x·r to the storage type before multiplying by w; in fp32 the two
// agree to rounding, in bf16 this kernel is the more accurate of the two.
#define EIGEN_USE_THREADS

#include <cmath>
#include <cstdint>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"

#include "op_util.h"

namespace seekline {

REGISTER_OP("SeeklineRmsNorm")
    .Input("x: T")       // (..., D)
    .Input("w: T")       // (D,)
    .Output("y: T")      // (..., D)
    .Attr("T: {float, bfloat16, half}")
    .Attr("eps: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, w;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &w));
      DimensionHandle d;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, -1), c->Dim(w, 0), &d));
      c->set_output(0, c->input(0));
      return tensorflow::OkStatus();
    })
    .Doc("RMSNorm over the last axis: w * x * rsqrt(mean(x^2) + eps), statistics in fp32.");

REGISTER_OP("SeeklineRmsNormGrad")
    .Input("dy: T")      // (..., D)
    .Input("x: T")       // (..., D)
    .Input("w: T")       // (D,)
    .Output("dx: T")     // (..., D)
    .Output("dw: T")     // (D,)
    .Attr("T: {float, bfloat16, half}")
    .Attr("eps: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle dy, x, w;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &dy));
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &w));
      c->set_output(0, x);
      c->set_output(1, w);
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of SeeklineRmsNorm with respect to x and w.");

namespace {

constexpr int64_t kRowBlock = 32;    // rows per dw partial (fixed: results independent of threads)

template <typename T>
inline float F(T v) { return static_cast<float>(v); }

// Σ_{j<n} term(j) as kLanes interleaved partial sums, added in a fixed order at the end. One
// running sum is a chain of dependent adds (~4 cycles each: a 1024 × 256 forward took 245 µs);
// independent lanes vectorise without letting the compiler reassociate, and the bits still do
// not depend on the thread count.
constexpr int kLanes = 16;
template <typename Term>
inline float LaneSum(int64_t n, Term term) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += term(j + l);
  }
  for (int l = 0; j + l < n; ++l) acc[l] += term(j + l);
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

template <typename T>
Status CheckShapes(const Tensor& x, const Tensor& w, int64_t* rows, int64_t* dim) {
  if (x.dims() < 1) return InvalidArgument("x must have rank >= 1");
  if (w.dims() != 1 || w.dim_size(0) != x.dim_size(x.dims() - 1)) {
    return InvalidArgument("w must be (D,) with D = x's last dim ", x.dim_size(x.dims() - 1), ", got ",
                           w.shape().DebugString());
  }
  *dim = w.dim_size(0);
  *rows = *dim == 0 ? 0 : x.NumElements() / *dim;
  return tensorflow::OkStatus();
}

template <typename T>
class RmsNormCpu : public OpKernel {
 public:
  explicit RmsNormCpu(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("eps", &eps_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& w = ctx->input(1);
    int64_t rows, dim;
    OP_REQUIRES_OK(ctx, CheckShapes<T>(x, w, &rows, &dim));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (rows == 0) return;
    const T* xp = x.flat<T>().data();
    const T* wp = w.flat<T>().data();
    T* yp = y->flat<T>().data();
    const float eps = eps_;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(rows, 6 * dim, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = xp + r * dim;
        T* yr = yp + r * dim;
        const float ss = LaneSum(dim, [xr](int64_t j) { return F(xr[j]) * F(xr[j]); });
        const float inv = 1.f / std::sqrt(ss / static_cast<float>(dim) + eps);
        for (int64_t j = 0; j < dim; ++j) yr[j] = static_cast<T>(F(wp[j]) * (F(xr[j]) * inv));
      }
    });
  }

 private:
  float eps_;
};

template <typename T>
class RmsNormGradCpu : public OpKernel {
 public:
  explicit RmsNormGradCpu(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("eps", &eps_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& w = ctx->input(2);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("dy ", dy.shape().DebugString(), " and x ", x.shape().DebugString(), " differ"));
    int64_t rows, dim;
    OP_REQUIRES_OK(ctx, CheckShapes<T>(x, w, &rows, &dim));
    Tensor *dx = nullptr, *dw = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, w.shape(), &dw));
    if (dim == 0) return;
    const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
    // dw partial sums per block of kRowBlock rows, summed in block order afterwards: the
    // result is the same for any thread count.
    Tensor partial;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({std::max<int64_t>(blocks, 1), dim}),
                                           &partial));
    float* pp = partial.flat<float>().data();
    const T* dyp = dy.flat<T>().data();
    const T* xp = x.flat<T>().data();
    const T* wp = w.flat<T>().data();
    T* dxp = dx->flat<T>().data();
    const float eps = eps_;
    const float inv_dim = 1.f / static_cast<float>(dim);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(blocks, 12 * dim * kRowBlock, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        float* pb = pp + b * dim;
        for (int64_t j = 0; j < dim; ++j) pb[j] = 0.f;
        const int64_t r_end = std::min(rows, (b + 1) * kRowBlock);
        for (int64_t r = b * kRowBlock; r < r_end; ++r) {
          const T* xr = xp + r * dim;
          const T* dyr = dyp + r * dim;
          T* dxr = dxp + r * dim;
          const float ss = LaneSum(dim, [xr](int64_t j) { return F(xr[j]) * F(xr[j]); });
          const float gx = LaneSum(dim, [xr, dyr, wp](int64_t j) { return F(wp[j]) * F(dyr[j]) * F(xr[j]); });
          const float inv = 1.f / std::sqrt(ss * inv_dim + eps);
          const float c = inv * inv * inv * gx * inv_dim;
          for (int64_t j = 0; j < dim; ++j) {
            const float xv = F(xr[j]);
            dxr[j] = static_cast<T>(inv * F(wp[j]) * F(dyr[j]) - xv * c);
            pb[j] += F(dyr[j]) * xv * inv;
          }
        }
      }
    });
    T* dwp = dw->flat<T>().data();
    for (int64_t j = 0; j < dim; ++j) {
      float acc = 0.f;
      for (int64_t b = 0; b < blocks; ++b) acc += pp[b * dim + j];
      dwp[j] = static_cast<T>(acc);
    }
  }

 private:
  float eps_;
};

}  // namespace

#define REGISTER_CPU(T)                                                                                  \
  REGISTER_KERNEL_BUILDER(Name("SeeklineRmsNorm").Device(DEVICE_CPU).TypeConstraint<T>("T"), RmsNormCpu<T>); \
  REGISTER_KERNEL_BUILDER(Name("SeeklineRmsNormGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
                          RmsNormGradCpu<T>);
REGISTER_CPU(float)
REGISTER_CPU(Eigen::bfloat16)
REGISTER_CPU(Eigen::half)
#undef REGISTER_CPU

#if GOOGLE_CUDA
namespace {

template <typename T>
class RmsNormGpuOp : public OpKernel {
 public:
  explicit RmsNormGpuOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("eps", &eps_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& w = ctx->input(1);
    int64_t rows, dim;
    OP_REQUIRES_OK(ctx, CheckShapes<T>(x, w, &rows, &dim));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (rows == 0) return;
    const int code = RmsNormGpu(GpuStream(ctx), kDType<T>, rows, dim, eps_, x.tensor_data().data(),
                                w.tensor_data().data(), const_cast<char*>(y->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineRmsNorm"));
  }

 private:
  float eps_;
};

template <typename T>
class RmsNormGradGpuOp : public OpKernel {
 public:
  explicit RmsNormGradGpuOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("eps", &eps_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& w = ctx->input(2);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("dy ", dy.shape().DebugString(), " and x ", x.shape().DebugString(), " differ"));
    int64_t rows, dim;
    OP_REQUIRES_OK(ctx, CheckShapes<T>(x, w, &rows, &dim));
    Tensor *dx = nullptr, *dw = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, w.shape(), &dw));
    const int code = RmsNormGradGpu(GpuStream(ctx), kDType<T>, rows, dim, eps_, dy.tensor_data().data(),
                                    x.tensor_data().data(), w.tensor_data().data(),
                                    const_cast<char*>(dx->tensor_data().data()),
                                    const_cast<char*>(dw->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineRmsNormGrad"));
  }

 private:
  float eps_;
};

}  // namespace

#define REGISTER_GPU(T)                                                                               \
  REGISTER_KERNEL_BUILDER(Name("SeeklineRmsNorm").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
                          RmsNormGpuOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("SeeklineRmsNormGrad").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
                          RmsNormGradGpuOp<T>);
REGISTER_GPU(float)
REGISTER_GPU(Eigen::bfloat16)
REGISTER_GPU(Eigen::half)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
