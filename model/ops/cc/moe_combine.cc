// SeeklineMoeCombine / SeeklineMoeCombineGrad: the MoE layer's weighted sum of each token's K
// expert outputs, read from the expert-major rows by position instead of scattered back.
//
// The dispatch path sorts the N·K (token, expert) pairs by expert, runs the experts on the sorted
// rows ys (N·K, D) and used to combine them as unsorted_segment_sum(ys · w[order], token_of):
// a Mul over (N·K, D), a scatter-add into a zero-filled (N, D), and backward a Gather + Select
// (the segment sum's gradient), a Mul and a Mul + Sum for the weights, plus a Gather of the
// weights by `order` and its scatter gradient (~4% of a training step, docs/performance.md).
// With pos = the inverse of the sort permutation ((N, K): where pair (n, k) landed), every output
// row is a gather:
//
//   forward   y[n]      = Σ_k w[n, k] · ys[pos[n, k]]        (k in ascending pos: expert order,
//                                                             the order the segment sum added them)
//   backward  dys[pos[n, k]] = w[n, k] · dy[n]               (pos is a permutation: one writer/row)
//             dw[n, k]       = Σ_d ys[pos[n, k], d] · dy[n, d]
//
// With w = 1 the forward is also the gradient of the dispatch gather xs = x[token_of]
// (dx[n] = Σ_k dxs[pos[n, k]]), which replaces that gather's scatter-add gradient. fp32
// accumulation whatever the storage type; each output row has one writer and a fixed order, so
// results do not depend on the thread count.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"

#include "op_util.h"

namespace seekline {

REGISTER_OP("SeeklineMoeCombine")
    .Input("ys: T")        // (N*K, D) expert outputs, expert-major
    .Input("w: float")     // (N, K) combine weights
    .Input("pos: int32")   // (N, K) row of ys holding pair (n, k); a permutation of [0, N*K)
    .Output("y: T")        // (N, D)
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle ys, w, pos;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &ys));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &w));
      TF_RETURN_IF_ERROR(c->Merge(w, c->input(2), &pos));
      c->set_output(0, c->Matrix(c->Dim(pos, 0), c->Dim(ys, 1)));
      return tensorflow::OkStatus();
    })
    .Doc("y[n] = sum_k w[n,k] * ys[pos[n,k]], terms in ascending pos; fp32 accumulation.");

REGISTER_OP("SeeklineMoeCombineGrad")
    .Input("dy: T")        // (N, D)
    .Input("ys: T")        // (N*K, D)
    .Input("w: float")     // (N, K)
    .Input("pos: int32")   // (N, K)
    .Output("dys: T")      // (N*K, D)
    .Output("dw: float")   // (N, K)
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of SeeklineMoeCombine with respect to ys and w.");

namespace {

template <typename T>
inline float F(T v) { return static_cast<float>(v); }

// ys (M, D), w and pos (N, K) with M = N·K. The GPU kernels make only these shape checks: pos is
// in device memory there, and ../cuda/moe.cu.cc turns an invalid pos into NaN rows without any
// out-of-bounds access.
Status CheckShapes(const Tensor& ys, const Tensor& w, const Tensor& pos) {
  if (ys.dims() != 2) return InvalidArgument("ys must be (N*K, D), got ", ys.shape().DebugString());
  if (w.dims() != 2 || pos.shape() != w.shape()) {
    return InvalidArgument("w and pos must both be (N, K), got w ", w.shape().DebugString(), " and pos ",
                           pos.shape().DebugString());
  }
  if (w.NumElements() != ys.dim_size(0)) {
    return InvalidArgument("ys has ", ys.dim_size(0), " rows but w / pos hold N*K = ", w.NumElements(), " pairs");
  }
  return tensorflow::OkStatus();
}

// ... and on the CPU pos a permutation of [0, M), checked on every call, serially, on purpose: the
// gradient kernel writes each row of dys exactly once through pos, so a repeated entry would leave
// rows of an uninitialised output unwritten (and race), and an out-of-range one would write out of
// bounds. The pass is one int32 read per routed pair (N·K = 6144 at the bench shape, a few
// microseconds against the milliseconds of the gathers), so it is not worth a parallel or
// debug-only variant.
Status CheckInputs(const Tensor& ys, const Tensor& w, const Tensor& pos) {
  TF_RETURN_IF_ERROR(CheckShapes(ys, w, pos));
  const int64_t m = ys.dim_size(0);
  std::vector<bool> seen(m, false);
  const int32_t* p = pos.flat<int32_t>().data();
  for (int64_t i = 0; i < m; ++i) {
    if (p[i] < 0 || p[i] >= m || seen[p[i]]) {
      return InvalidArgument("pos must be a permutation of [0, ", m, "): entry ", i, " is ", p[i]);
    }
    seen[p[i]] = true;
  }
  return tensorflow::OkStatus();
}

Status CheckDy(const Tensor& dy, int64_t n, int64_t d) {
  if (dy.dims() == 2 && dy.dim_size(0) == n && dy.dim_size(1) == d) return tensorflow::OkStatus();
  return InvalidArgument("dy must be (N, D) = (", n, ", ", d, "), got ", dy.shape().DebugString());
}

// The K (position, k) pairs of token n in ascending position.
inline void SortedSlots(const int32_t* pos_n, int64_t k, std::vector<std::pair<int32_t, int32_t>>* out) {
  out->clear();
  for (int32_t j = 0; j < k; ++j) out->emplace_back(pos_n[j], j);
  std::sort(out->begin(), out->end());
}

template <typename T>
class MoeCombineCpu : public OpKernel {
 public:
  explicit MoeCombineCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ys = ctx->input(0);
    const Tensor& w = ctx->input(1);
    const Tensor& pos = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckInputs(ys, w, pos));
    const int64_t n = w.dim_size(0), k = w.dim_size(1), d = ys.dim_size(1);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, d}), &y));
    if (n == 0 || d == 0) return;
    const T* yp = ys.flat<T>().data();
    const float* wp = w.flat<float>().data();
    const int32_t* pp = pos.flat<int32_t>().data();
    T* out = y->flat<T>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(n, 3 * k * d, [&](int64_t r0, int64_t r1) {
      std::vector<float> acc(d);
      std::vector<std::pair<int32_t, int32_t>> slots;
      for (int64_t r = r0; r < r1; ++r) {
        SortedSlots(pp + r * k, k, &slots);
        std::fill(acc.begin(), acc.end(), 0.f);
        for (const auto& [row, j] : slots) {
          const float wj = wp[r * k + j];
          const T* src = yp + static_cast<int64_t>(row) * d;
          for (int64_t c = 0; c < d; ++c) acc[c] += wj * F(src[c]);
        }
        T* dst = out + r * d;
        for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<T>(acc[c]);
      }
    });
  }
};

template <typename T>
class MoeCombineGradCpu : public OpKernel {
 public:
  explicit MoeCombineGradCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& ys = ctx->input(1);
    const Tensor& w = ctx->input(2);
    const Tensor& pos = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckInputs(ys, w, pos));
    const int64_t n = w.dim_size(0), k = w.dim_size(1), d = ys.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckDy(dy, n, d));
    Tensor *dys = nullptr, *dw = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ys.shape(), &dys));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, w.shape(), &dw));
    if (n == 0) return;
    const T* dyp = dy.flat<T>().data();
    const T* yp = ys.flat<T>().data();
    const float* wp = w.flat<float>().data();
    const int32_t* pp = pos.flat<int32_t>().data();
    T* dysp = dys->flat<T>().data();
    float* dwp = dw->flat<float>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(n, 5 * k * d, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* g = dyp + r * d;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t row = pp[r * k + j];
          const float wj = wp[r * k + j];
          const T* src = yp + row * d;
          T* dst = dysp + row * d;
          float dot = 0.f;
          for (int64_t c = 0; c < d; ++c) {
            const float gc = F(g[c]);
            dst[c] = static_cast<T>(wj * gc);
            dot += F(src[c]) * gc;
          }
          dwp[r * k + j] = dot;
        }
      }
    });
  }
};

}  // namespace

#define SEEKLINE_REGISTER_MOE_COMBINE(T)                                                                   \
  REGISTER_KERNEL_BUILDER(Name("SeeklineMoeCombine").Device(DEVICE_CPU).TypeConstraint<T>("T"), MoeCombineCpu<T>); \
  REGISTER_KERNEL_BUILDER(Name("SeeklineMoeCombineGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),             \
                          MoeCombineGradCpu<T>);
SEEKLINE_REGISTER_MOE_COMBINE(float)
SEEKLINE_REGISTER_MOE_COMBINE(Eigen::bfloat16)
SEEKLINE_REGISTER_MOE_COMBINE(Eigen::half)
#undef SEEKLINE_REGISTER_MOE_COMBINE

#if GOOGLE_CUDA
namespace {

// The same ops on a GPU: ../cuda/moe.cu.cc's launchers on TF's stream.
template <typename T>
class MoeCombineGpuOp : public OpKernel {
 public:
  explicit MoeCombineGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ys = ctx->input(0);
    const Tensor& w = ctx->input(1);
    const Tensor& pos = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckShapes(ys, w, pos));
    const int64_t n = w.dim_size(0), k = w.dim_size(1), d = ys.dim_size(1);
    OP_REQUIRES(ctx, n == 0 || d == 0 || (k >= 1 && k <= 4096),
                InvalidArgument("SeeklineMoeCombine on a GPU takes 1 to 4096 experts per token, got ", k));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, d}), &y));
    const int code = MoeCombineGpu(GpuStream(ctx), kDType<T>, n, k, d, ys.tensor_data().data(),
                                   w.flat<float>().data(), pos.flat<int32_t>().data(),
                                   const_cast<char*>(y->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineMoeCombine"));
  }
};

template <typename T>
class MoeCombineGradGpuOp : public OpKernel {
 public:
  explicit MoeCombineGradGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& ys = ctx->input(1);
    const Tensor& w = ctx->input(2);
    const Tensor& pos = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckShapes(ys, w, pos));
    const int64_t n = w.dim_size(0), k = w.dim_size(1), d = ys.dim_size(1);
    OP_REQUIRES_OK(ctx, CheckDy(dy, n, d));
    Tensor *dys = nullptr, *dw = nullptr, inv;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ys.shape(), &dys));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, w.shape(), &dw));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT32, TensorShape({n * k}), &inv));  // row -> pair
    const int code = MoeCombineGradGpu(GpuStream(ctx), kDType<T>, n, k, d, dy.tensor_data().data(),
                                       ys.tensor_data().data(), w.flat<float>().data(), pos.flat<int32_t>().data(),
                                       inv.flat<int32_t>().data(), const_cast<char*>(dys->tensor_data().data()),
                                       dw->flat<float>().data());
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineMoeCombineGrad"));
  }
};

}  // namespace

#define SEEKLINE_REGISTER_MOE_COMBINE_GPU(T)                                                                  \
  REGISTER_KERNEL_BUILDER(Name("SeeklineMoeCombine").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),     \
                          MoeCombineGpuOp<T>);                                                                \
  REGISTER_KERNEL_BUILDER(Name("SeeklineMoeCombineGrad").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
                          MoeCombineGradGpuOp<T>);
SEEKLINE_REGISTER_MOE_COMBINE_GPU(float)
SEEKLINE_REGISTER_MOE_COMBINE_GPU(Eigen::bfloat16)
SEEKLINE_REGISTER_MOE_COMBINE_GPU(Eigen::half)
#undef SEEKLINE_REGISTER_MOE_COMBINE_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
