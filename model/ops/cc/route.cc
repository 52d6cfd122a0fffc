// SeeklineRouteTopK: the MoE router's expert choice (group-limited top-k) in one pass per token.
//
// The pure-TF router (model/layers/moe.py `route`) is top_k over each group (top-2 values, V3's
// noaux_tc) → sum → top_k over the group scores → one_hot → reduce → repeat → where(-inf) →
// top_k over the experts: ~10 ops and three TopKV2 calls over (N, E) tensors, 3% of a prefill on
// CPU for E = 16. Here each token's row is scanned in registers:
//
//   group score  top-2 sum (mode "top2_sum") or max (mode "max") of the group's values
//   keep         the topk_group best groups
//   choice       the top_k best experts among the kept groups' (the others count as -inf)
//
// Ties go to the lower index and the result is in descending order of value — exactly what
// tf.math.top_k returns for the same masked row, so the two paths pick the same experts in the same
// order. Indices only: no gradient (the router's gradient flows through the gathered weights).
#define EIGEN_USE_THREADS

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "op_util.h"

namespace seekline {

REGISTER_OP("SeeklineRouteTopK")
    .Input("choice: float")      // (N, E) selection scores (scores + correction bias)
    .Output("topk_idx: int32")   // (N, top_k)
    .Attr("top_k: int >= 1")
    .Attr("n_group: int >= 1")
    .Attr("topk_group: int >= 1")
    .Attr("group_mode: {'none', 'top2_sum', 'max'}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
      int k;
      TF_RETURN_IF_ERROR(c->GetAttr("top_k", &k));
      c->set_output(0, c->Matrix(c->Dim(x, 0), k));
      return tensorflow::OkStatus();
    })
    .Doc("Group-limited top-k expert choice per row; ties to the lower index, descending order.");

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// a beats b: larger value, or the same value at a lower index (top_k's order)
inline bool Beats(float va, int64_t a, float vb, int64_t b) { return va > vb || (va == vb && a < b); }

// The attributes and the checks both devices make. `max_groups`: the most groups the device's
// kernel handles (the GPU kernel keeps one bit per group).
class RouteTopKBase : public OpKernel {
 public:
  explicit RouteTopKBase(OpKernelConstruction* c, int max_groups) : OpKernel(c), max_groups_(max_groups) {
    OP_REQUIRES_OK(c, c->GetAttr("top_k", &k_));
    OP_REQUIRES_OK(c, c->GetAttr("n_group", &n_group_));
    OP_REQUIRES_OK(c, c->GetAttr("topk_group", &topk_group_));
    std::string mode;
    OP_REQUIRES_OK(c, c->GetAttr("group_mode", &mode));
    mode_ = mode == "top2_sum" ? 1 : mode == "max" ? 2 : 0;
  }

 protected:
  Status Check(const Tensor& choice) const {
    if (choice.dims() != 2) return InvalidArgument("choice must be (N, E), got ", choice.shape().DebugString());
    const int64_t e = choice.dim_size(1);
    if (k_ > e) return InvalidArgument("top_k ", k_, " > number of experts ", e);
    if (mode_ == 0 || n_group_ <= 1) return tensorflow::OkStatus();
    if (e % n_group_ != 0) return InvalidArgument("number of experts ", e, " is not a multiple of n_group ", n_group_);
    if (topk_group_ > n_group_) return InvalidArgument("topk_group ", topk_group_, " > n_group ", n_group_);
    if (mode_ == 1 && e / n_group_ < 2) {
      return InvalidArgument("top2_sum needs at least 2 experts per group, got ", e / n_group_);
    }
    if (n_group_ > max_groups_) return InvalidArgument("n_group ", n_group_, " > ", max_groups_, " on this device");
    return tensorflow::OkStatus();
  }

  int k_, n_group_, topk_group_, mode_;
  int max_groups_;
};

class RouteTopKCpu : public RouteTopKBase {
 public:
  explicit RouteTopKCpu(OpKernelConstruction* c) : RouteTopKBase(c, std::numeric_limits<int>::max()) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& choice = ctx->input(0);
    OP_REQUIRES_OK(ctx, Check(choice));
    const int64_t n = choice.dim_size(0), e = choice.dim_size(1);
    const bool grouped = mode_ != 0 && n_group_ > 1;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, k_}), &out));
    if (n == 0) return;
    const float* xp = choice.flat<float>().data();
    int32_t* op = out->flat<int32_t>().data();
    const int64_t per = grouped ? e / n_group_ : e;
    const int k = k_, ng = n_group_, kg = topk_group_, mode = mode_;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(n, 8 * e * (k + 2), [&](int64_t begin, int64_t end) {
      std::vector<float> v(e), gs(grouped ? ng : 0);
      std::vector<char> kept(grouped ? ng : 0), used(e);
      for (int64_t r = begin; r < end; ++r) {
        const float* x = xp + r * e;
        for (int64_t j = 0; j < e; ++j) v[j] = x[j];
        if (grouped) {
          for (int g = 0; g < ng; ++g) {
            const float* xg = x + g * per;
            float a = kNegInf, b = kNegInf;       // the group's largest two values
            for (int64_t j = 0; j < per; ++j) {
              if (xg[j] > a) { b = a; a = xg[j]; } else if (xg[j] > b) { b = xg[j]; }
            }
            gs[g] = mode == 1 ? a + b : a;
            kept[g] = 0;
          }
          for (int t = 0; t < kg; ++t) {           // the kg best groups, ties to the lower index
            int best = -1;
            for (int g = 0; g < ng; ++g) {
              if (!kept[g] && (best < 0 || Beats(gs[g], g, gs[best], best))) best = g;
            }
            kept[best] = 1;
          }
          for (int g = 0; g < ng; ++g) {
            if (!kept[g]) for (int64_t j = 0; j < per; ++j) v[g * per + j] = kNegInf;
          }
        }
        int32_t* o = op + r * k;
        for (int64_t j = 0; j < e; ++j) used[j] = 0;
        for (int t = 0; t < k; ++t) {             // repeated argmax: descending, ties to the lower index
          int64_t best = -1;
          for (int64_t j = 0; j < e; ++j) {
            if (!used[j] && (best < 0 || Beats(v[j], j, v[best], best))) best = j;
          }
          used[best] = 1;
          o[t] = static_cast<int32_t>(best);
        }
      }
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("SeeklineRouteTopK").Device(DEVICE_CPU), RouteTopKCpu);

#if GOOGLE_CUDA
namespace {

// The same op on a GPU: ../cuda/moe.cu.cc's RouteTopKGpu (one thread per token) on TF's stream.
class RouteTopKGpuOp : public RouteTopKBase {
 public:
  explicit RouteTopKGpuOp(OpKernelConstruction* c) : RouteTopKBase(c, 64) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& choice = ctx->input(0);
    OP_REQUIRES_OK(ctx, Check(choice));
    const int64_t n = choice.dim_size(0), e = choice.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, k_}), &out));
    const int code = RouteTopKGpu(GpuStream(ctx), n, e, k_, n_group_, topk_group_, mode_, choice.flat<float>().data(),
                                  out->flat<int32_t>().data());
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineRouteTopK"));
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("SeeklineRouteTopK").Device(tensorflow::DEVICE_GPU), RouteTopKGpuOp);
#endif  // GOOGLE_CUDA

}  // namespace seekline
