// SeeklineGroupedMatmul / SeeklineGroupedMatmulWGrad: the ragged expert matmul of MoE dispatch.
//
// The MoE layer sorts its N*K (token, expert) rows by expert, so expert g owns the contiguous
// rows [o_g, o_g + s_g) of x with s = group_sizes. The pure-TF path splits x into E pieces and
// runs E MatMul ops (x 3 projections x forward/backward) — on a small model most of that time is
// per-op overhead and E small GEMMs that each underuse the cores. These ops do all groups in one
// kernel: work is cut into (group, row-block) tiles spread over TF's CPU thread pool, each tile a
// single-threaded Eigen GEMM, so small experts fill the cores together.
//
//   SeeklineGroupedMatmul:      y[o_g:o_g+s_g] = x[o_g:o_g+s_g] · op(w[g])          (M, N)
//                               op(w) = w (K, N), or w^T when transpose_w (w stored (G, N, K))
//   SeeklineGroupedMatmulWGrad: dw[g] = x[o_g:o_g+s_g]^T · dy[o_g:o_g+s_g]          (G, K, N)
//
// Gradients (registered in Python, model/ops/grouped_matmul.py):
//   y = GM(x, w):          dx = GM(dy, w, transpose_w=True),  dw = WGrad(x, dy)
//   y = GM(x, w, T=True):  dx = GM(dy, w),                    dw = WGrad(dy, x)
// Every output element is written by exactly one tile with a fixed summation order, so results
// do not depend on the thread count (training runs with op determinism on).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"
#include "Eigen/Core"

#include "op_util.h"

namespace seekline {

REGISTER_OP("SeeklineGroupedMatmul")
    .Input("x: T")             // (M, K) rows sorted by group
    .Input("w: T")             // (G, K, N), or (G, N, K) when transpose_w
    .Input("group_sizes: int32")  // (G,), sum == M
    .Output("y: T")            // (M, N)
    .Attr("T: {float, bfloat16, half}")
    .Attr("transpose_w: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, w, sizes;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &w));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &sizes));
      bool transpose_w;
      TF_RETURN_IF_ERROR(c->GetAttr("transpose_w", &transpose_w));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 1), c->Dim(w, transpose_w ? 2 : 1), &k));
      DimensionHandle g;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(w, 0), c->Dim(sizes, 0), &g));
      c->set_output(0, c->Matrix(c->Dim(x, 0), c->Dim(w, transpose_w ? 1 : 2)));
      return tensorflow::OkStatus();
    })
    .Doc("Ragged per-group matmul: y[rows of group g] = x[rows of group g] @ op(w[g]).");

REGISTER_OP("SeeklineGroupedMatmulWGrad")
    .Input("x: T")             // (M, K)
    .Input("dy: T")            // (M, N)
    .Input("group_sizes: int32")  // (G,), sum == M
    .Output("dw: T")           // (G, K, N)
    .Attr("T: {float, bfloat16, half}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, dy, sizes;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &dy));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &sizes));
      DimensionHandle m;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 0), c->Dim(dy, 0), &m));
      c->set_output(0, c->MakeShape({c->Dim(sizes, 0), c->Dim(x, 1), c->Dim(dy, 1)}));
      return tensorflow::OkStatus();
    })
    .Doc("Per-group weight gradient: dw[g] = x[rows of g]^T @ dy[rows of g]; empty groups get 0.");

namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapF = Eigen::Map<RowMajor>;
using ConstMapF = Eigen::Map<const RowMajor>;

// Row offsets from group sizes, validated: non-negative and summing to `rows`.
Status GroupOffsets(const Tensor& sizes_t, int64_t rows, std::vector<int64_t>* offsets) {
  auto sizes = sizes_t.flat<int32_t>();
  offsets->assign(sizes.size() + 1, 0);
  for (int64_t g = 0; g < sizes.size(); ++g) {
    if (sizes(g) < 0) {
      return InvalidArgument("group_sizes[", g, "] = ", sizes(g), " is negative");
    }
    (*offsets)[g + 1] = (*offsets)[g] + sizes(g);
  }
  if (offsets->back() != rows) {
    return InvalidArgument("group_sizes sum to ", offsets->back(), " but x has ", rows, " rows");
  }
  return tensorflow::OkStatus();
}

// Validated sizes of one call (both ops, CPU and GPU kernels).
struct GroupedDims {
  int64_t m, k, n, groups;
  std::vector<int64_t> off;   // (G + 1,) row offsets of the groups
};

// SeeklineGroupedMatmul: x (M, K), w (G, K, N) or (G, N, K) when transpose_w, group_sizes (G,).
Status ForwardDims(const Tensor& x, const Tensor& w, const Tensor& sizes, bool transpose_w, GroupedDims* d) {
  if (x.dims() != 2) return InvalidArgument("x must be (M, K), got ", x.shape().DebugString());
  if (w.dims() != 3) return InvalidArgument("w must be (G, K, N), got ", w.shape().DebugString());
  if (sizes.dims() != 1 || sizes.dim_size(0) != w.dim_size(0)) {
    return InvalidArgument("group_sizes must be (G,) with G = ", w.dim_size(0), ", got ", sizes.shape().DebugString());
  }
  d->m = x.dim_size(0), d->k = x.dim_size(1), d->groups = w.dim_size(0);
  d->n = w.dim_size(transpose_w ? 1 : 2);
  const int64_t wk = w.dim_size(transpose_w ? 2 : 1);
  if (wk != d->k) return InvalidArgument("x has K = ", d->k, " columns but w's contracted dim is ", wk);
  return GroupOffsets(sizes, d->m, &d->off);
}

// SeeklineGroupedMatmulWGrad: x (M, K), dy (M, N), group_sizes (G,).
Status WGradDims(const Tensor& x, const Tensor& dy, const Tensor& sizes, GroupedDims* d) {
  if (x.dims() != 2 || dy.dims() != 2 || x.dim_size(0) != dy.dim_size(0)) {
    return InvalidArgument("x (M, K) and dy (M, N) must share M, got ", x.shape().DebugString(), " and ",
                           dy.shape().DebugString());
  }
  if (sizes.dims() != 1) return InvalidArgument("group_sizes must be a vector");
  d->m = x.dim_size(0), d->k = x.dim_size(1), d->n = dy.dim_size(1), d->groups = sizes.dim_size(0);
  return GroupOffsets(sizes, d->m, &d->off);
}

// fp32 view of a tensor: the data itself for float, a converted copy for bf16 / fp16
// (converted in parallel: Eigen's half-precision GEMM would be far slower than convert + sgemm).
template <typename T>
const float* AsFloat(OpKernelContext* ctx, const Tensor& t, Tensor* scratch, Status* st) {
  if constexpr (std::is_same_v<T, float>) {
    return t.flat<float>().data();
  } else {
    *st = ctx->allocate_temp(tensorflow::DT_FLOAT, t.shape(), scratch);
    if (!st->ok()) return nullptr;
    scratch->flat<float>().device(ctx->eigen_cpu_device()) = t.flat<T>().template cast<float>();
    return scratch->flat<float>().data();
  }
}

// Where the result is computed: straight into the output for float, into a fp32 scratch
// that is rounded once into the output for bf16 / fp16.
template <typename T>
float* OutFloat(OpKernelContext* ctx, Tensor* out, Tensor* scratch, Status* st) {
  if constexpr (std::is_same_v<T, float>) {
    return out->flat<float>().data();
  } else {
    *st = ctx->allocate_temp(tensorflow::DT_FLOAT, out->shape(), scratch);
    return st->ok() ? scratch->flat<float>().data() : nullptr;
  }
}

template <typename T>
void FinishOut(OpKernelContext* ctx, Tensor* out, const Tensor& scratch) {
  if constexpr (!std::is_same_v<T, float>) {
    out->flat<T>().device(ctx->eigen_cpu_device()) = scratch.flat<float>().template cast<T>();
  }
}

// A unit of work: `rows` rows starting at `row0` of group `g` (forward), or a block of dw[g]'s
// K rows (weight gradient). Tiles are sized so each is a few hundred kFLOP at least.
struct Tile {
  int64_t g, row0, rows;
};

void ShardTiles(OpKernelContext* ctx, const std::vector<Tile>& tiles, int64_t cost_per_tile,
                const std::function<void(const Tile&)>& fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  // ParallelFor over tile indices; the pool chooses how many tiles each thread takes.
  pool->ParallelFor(static_cast<int64_t>(tiles.size()), cost_per_tile,
                    [&](int64_t begin, int64_t end) {
                      for (int64_t i = begin; i < end; ++i) fn(tiles[i]);
                    });
}

// 256 rows per tile: on the small preset's expert shapes (4096 rows, 256 -> 128, 16 experts, 2 cores)
// the forward ran at 0.9x the pure-TF path with 64-row tiles and 1.6x with 256 (same-run ratios;
// Eigen's packing cost is amortised over more rows).
constexpr int64_t kRowBlock = 256;

template <typename T>
class GroupedMatmulCpu : public OpKernel {
 public:
  explicit GroupedMatmulCpu(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("transpose_w", &transpose_w_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& w = ctx->input(1);
    const Tensor& sizes = ctx->input(2);
    GroupedDims d;
    OP_REQUIRES_OK(ctx, ForwardDims(x, w, sizes, transpose_w_, &d));
    const int64_t m = d.m, k = d.k, n = d.n, groups = d.groups;
    const std::vector<int64_t>& off = d.off;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, n}), &y));
    if (m == 0 || n == 0) return;
    if (k == 0) {
      y->flat<T>().setZero();
      return;
    }
    Status st;
    Tensor xs, ws, ys;
    const float* xf = AsFloat<T>(ctx, x, &xs, &st);
    OP_REQUIRES_OK(ctx, st);
    const float* wf = AsFloat<T>(ctx, w, &ws, &st);
    OP_REQUIRES_OK(ctx, st);
    float* yf = OutFloat<T>(ctx, y, &ys, &st);
    OP_REQUIRES_OK(ctx, st);

    std::vector<Tile> tiles;
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = off[g]; r < off[g + 1]; r += kRowBlock)
        tiles.push_back({g, r, std::min(kRowBlock, off[g + 1] - r)});
    const bool tw = transpose_w_;
    ShardTiles(ctx, tiles, 2 * kRowBlock * k * n, [&](const Tile& t) {
      ConstMapF xb(xf + t.row0 * k, t.rows, k);                        // (rows, K)
      MapF yb(yf + t.row0 * n, t.rows, n);                             // (rows, N)
      if (tw) {
        ConstMapF wg(wf + t.g * n * k, n, k);                          // (N, K)
        yb.noalias() = xb * wg.transpose();
      } else {
        ConstMapF wg(wf + t.g * k * n, k, n);                          // (K, N)
        yb.noalias() = xb * wg;
      }
    });
    FinishOut<T>(ctx, y, ys);
  }

 private:
  bool transpose_w_ = false;
};

template <typename T>
class GroupedMatmulWGradCpu : public OpKernel {
 public:
  explicit GroupedMatmulWGradCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    const Tensor& sizes = ctx->input(2);
    GroupedDims d;
    OP_REQUIRES_OK(ctx, WGradDims(x, dy, sizes, &d));
    const int64_t m = d.m, k = d.k, n = d.n, groups = d.groups;
    const std::vector<int64_t>& off = d.off;
    Tensor* dw = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({groups, k, n}), &dw));
    if (groups == 0 || k == 0 || n == 0) return;
    Status st;
    Tensor xs, dys, dws;
    const float* xf = AsFloat<T>(ctx, x, &xs, &st);
    OP_REQUIRES_OK(ctx, st);
    const float* dyf = AsFloat<T>(ctx, dy, &dys, &st);
    OP_REQUIRES_OK(ctx, st);
    float* dwf = OutFloat<T>(ctx, dw, &dws, &st);
    OP_REQUIRES_OK(ctx, st);

    // Tiles over dw[g]'s K rows (not over x's rows): each dw element is one tile's dot product
    // over the group's rows in row order — deterministic, no cross-thread reduction.
    std::vector<Tile> tiles;
    int64_t max_rows = 1;
    for (int64_t g = 0; g < groups; ++g) {
      max_rows = std::max(max_rows, off[g + 1] - off[g]);
      for (int64_t r = 0; r < k; r += kRowBlock) tiles.push_back({g, r, std::min(kRowBlock, k - r)});
    }
    ShardTiles(ctx, tiles, 2 * kRowBlock * n * std::max<int64_t>(1, m / std::max<int64_t>(1, groups)),
               [&](const Tile& t) {
                 const int64_t s = off[t.g + 1] - off[t.g];
                 MapF dwb(dwf + (t.g * k + t.row0) * n, t.rows, n);      // (rows of K, N)
                 if (s == 0) {
                   dwb.setZero();
                   return;
                 }
                 // x_g[:, row0:row0+rows] as a strided view: (s, rows) with row stride K.
                 Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>> xg(
                     xf + off[t.g] * k + t.row0, s, t.rows, Eigen::OuterStride<>(k));
                 ConstMapF dyg(dyf + off[t.g] * n, s, n);                 // (s, N)
                 dwb.noalias() = xg.transpose() * dyg;
               });
    FinishOut<T>(ctx, dw, dws);
  }
};

}  // namespace

#define REGISTER_CPU(T)                                                                     \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("SeeklineGroupedMatmul").Device(DEVICE_CPU).TypeConstraint<T>("T"),              \
      GroupedMatmulCpu<T>);                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("SeeklineGroupedMatmulWGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
      GroupedMatmulWGradCpu<T>);
REGISTER_CPU(float)
REGISTER_CPU(Eigen::bfloat16)
REGISTER_CPU(Eigen::half)
#undef REGISTER_CPU

#if GOOGLE_CUDA
// GPU kernels: the forward (and the dx pass, transpose_w) is one GroupedGemmGpu launch for all
// groups; the weight gradient one GemmGpu per group (its groups differ in the reduction length).
// group_sizes lives in host memory, so the offsets are known on the host and no device-side scan
// is needed.
namespace {

template <typename T>
class GroupedMatmulGpu : public OpKernel {
 public:
  explicit GroupedMatmulGpu(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("transpose_w", &transpose_w_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& w = ctx->input(1);
    const Tensor& sizes = ctx->input(2);
    GroupedDims d;
    OP_REQUIRES_OK(ctx, ForwardDims(x, w, sizes, transpose_w_, &d));
    const int64_t m = d.m, k = d.k, n = d.n, groups = d.groups;
    const std::vector<int64_t>& off = d.off;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, n}), &y));
    const auto* xp = reinterpret_cast<const T*>(x.tensor_data().data());
    const auto* wp = reinterpret_cast<const T*>(w.tensor_data().data());
    auto* yp = reinterpret_cast<T*>(const_cast<char*>(y->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(GroupedGemmGpu(GpuStream(ctx), kDType<T>, transpose_w_, groups, off.data(), k, n,
                                                  xp, wp, yp),
                                   "SeeklineGroupedMatmul GEMM"));
  }

 private:
  bool transpose_w_ = false;
};

template <typename T>
class GroupedMatmulWGradGpu : public OpKernel {
 public:
  explicit GroupedMatmulWGradGpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    const Tensor& sizes = ctx->input(2);
    GroupedDims d;
    OP_REQUIRES_OK(ctx, WGradDims(x, dy, sizes, &d));
    const int64_t k = d.k, n = d.n, groups = d.groups;
    const std::vector<int64_t>& off = d.off;
    Tensor* dw = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({groups, k, n}), &dw));
    const auto* xp = reinterpret_cast<const T*>(x.tensor_data().data());
    const auto* dyp = reinterpret_cast<const T*>(dy.tensor_data().data());
    auto* dwp = reinterpret_cast<T*>(const_cast<char*>(dw->tensor_data().data()));
    for (int64_t g = 0; g < groups; ++g) {
      // dw[g] (K, N) = x_g^T (K, s) · dy_g (s, N); s == 0 → the launcher writes zeros.
      OP_REQUIRES_OK(ctx, CudaStatus(GemmGpu(GpuStream(ctx), kDType<T>, true, false, k, n, off[g + 1] - off[g],
                                             xp + off[g] * k, dyp + off[g] * n, dwp + g * k * n),
                                     "SeeklineGroupedMatmulWGrad GEMM"));
    }
  }
};

}  // namespace

#define REGISTER_GPU(T)                                                                     \
  REGISTER_KERNEL_BUILDER(Name("SeeklineGroupedMatmul")                                     \
                              .Device(tensorflow::DEVICE_GPU)                               \
                              .HostMemory("group_sizes")                                    \
                              .TypeConstraint<T>("T"),                                      \
                          GroupedMatmulGpu<T>);                                             \
  REGISTER_KERNEL_BUILDER(Name("SeeklineGroupedMatmulWGrad")                                \
                              .Device(tensorflow::DEVICE_GPU)                               \
                              .HostMemory("group_sizes")                                    \
                              .TypeConstraint<T>("T"),                                      \
                          GroupedMatmulWGradGpu<T>);
REGISTER_GPU(float)
REGISTER_GPU(Eigen::bfloat16)
REGISTER_GPU(Eigen::half)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
