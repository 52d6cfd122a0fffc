// SeeklineApplyAdamW: one AdamW step for one variable — gradient clipping scale, decoupled weight
// decay and Adam's moment and variable updates — in a single in-place pass.
//
// The engine's optimizer step was, per variable, a Mul (the global-norm clip scale), a Mul and an
// AssignSub (Keras' decoupled decay, matrices only) and TF's fused ResourceApplyAdam: four full
// passes over variable-sized tensors and four op launches, ×115 variables in the `small` preset
// (8% of a training step, docs/performance.md). Here, per element:
//
//   g  = grad_scale · grad                       (clip_by_global_norm's scale; 1 when not clipping)
//   w  = w − decay · w                           (decay = lr · weight_decay, or 0 for excluded vars)
//   m  = m + (g − m) · (1 − β1)
//   v  = v + (g² − v) · (1 − β2)
//   w  = w − alpha · m / (√v + ε)                (alpha = lr · √(1 − β2^t) / (1 − β1^t))
//
// the same order of updates as Keras' AdamW (decay before the Adam step) and the same Adam
// arithmetic as TF's ApplyAdam. fp32 variables and slots (the engine keeps fp32 master weights);
// elementwise, so the result does not depend on the thread count.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/kernels/training_op_helpers.h"
#include "unsupported/Eigen/CXX11/Tensor"

#include "op_util.h"

namespace seekline {

using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("SeeklineApplyAdamW")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("grad: float")
    .Input("alpha: float")        // lr · √(1 − β2^t) / (1 − β1^t)
    .Input("decay: float")        // lr · weight_decay (0: no decay)
    .Input("beta1: float")
    .Input("beta2: float")
    .Input("epsilon: float")
    .Input("grad_scale: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle s;
      for (int i = 4; i < 10; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &s));
      return tensorflow::OkStatus();
    })
    .Doc("AdamW step in place: clip scale, decoupled decay, Adam moments and update in one pass.");

namespace {

constexpr int64_t kBlock = 8192;   // elements per work item

struct Coef {
  float alpha, decay, b1c, b2c, eps, gs;   // b1c = 1 − β1, b2c = 1 − β2
};

inline void Update(float* w, float* m, float* v, const float* g, int64_t n, const Coef& c) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 alpha = _mm512_set1_ps(c.alpha), decay = _mm512_set1_ps(c.decay), b1c = _mm512_set1_ps(c.b1c),
               b2c = _mm512_set1_ps(c.b2c), eps = _mm512_set1_ps(c.eps), gs = _mm512_set1_ps(c.gs);
  for (; j + 16 <= n; j += 16) {
    const __m512 gv = _mm512_mul_ps(gs, _mm512_loadu_ps(g + j));
    __m512 wv = _mm512_loadu_ps(w + j);
    wv = _mm512_sub_ps(wv, _mm512_mul_ps(decay, wv));
    __m512 mv = _mm512_loadu_ps(m + j);
    mv = _mm512_add_ps(mv, _mm512_mul_ps(_mm512_sub_ps(gv, mv), b1c));
    __m512 vv = _mm512_loadu_ps(v + j);
    vv = _mm512_add_ps(vv, _mm512_mul_ps(_mm512_sub_ps(_mm512_mul_ps(gv, gv), vv), b2c));
    wv = _mm512_sub_ps(wv, _mm512_div_ps(_mm512_mul_ps(alpha, mv), _mm512_add_ps(_mm512_sqrt_ps(vv), eps)));
    _mm512_storeu_ps(m + j, mv);
    _mm512_storeu_ps(v + j, vv);
    _mm512_storeu_ps(w + j, wv);
  }
#endif
  for (; j < n; ++j) {   // the same operations, one lane at a time
    const float gj = c.gs * g[j];
    float wj = w[j];
    wj = wj - c.decay * wj;
    const float mj = m[j] + (gj - m[j]) * c.b1c;
    const float vj = v[j] + (gj * gj - v[j]) * c.b2c;
    w[j] = wj - (c.alpha * mj) / (std::sqrt(vj) + c.eps);
    m[j] = mj;
    v[j] = vj;
  }
}

// What both devices check once the variable and slot tensors are in hand; the coefficients.
Status CheckInputs(OpKernelContext* ctx, const Tensor& var, const Tensor& m, const Tensor& v, Coef* c) {
  if (!var.IsInitialized() || !m.IsInitialized() || !v.IsInitialized()) {
    return tensorflow::errors::FailedPrecondition("SeeklineApplyAdamW: uninitialized variable or slot");
  }
  const Tensor& grad = ctx->input(3);
  if (var.dtype() != tensorflow::DT_FLOAT || m.dtype() != tensorflow::DT_FLOAT || v.dtype() != tensorflow::DT_FLOAT) {
    return InvalidArgument("SeeklineApplyAdamW: variable and slots must be float32");
  }
  if (var.shape() != m.shape() || var.shape() != v.shape() || var.shape() != grad.shape()) {
    return InvalidArgument("SeeklineApplyAdamW: var ", var.shape().DebugString(), ", m ", m.shape().DebugString(),
                           ", v ", v.shape().DebugString(), " and grad ", grad.shape().DebugString(),
                           " must have the same shape");
  }
  for (int i = 4; i < 10; ++i) {
    if (ctx->input(i).NumElements() != 1) {
      return InvalidArgument("SeeklineApplyAdamW: input ", i, " must be a scalar, got ",
                             ctx->input(i).shape().DebugString());
    }
  }
  auto s = [&](int i) { return ctx->input(i).flat<float>()(0); };
  *c = Coef{s(4), s(5), 1.f - s(6), 1.f - s(7), s(8), s(9)};
  return tensorflow::OkStatus();
}

class ApplyAdamWCpu : public OpKernel {
 public:
  explicit ApplyAdamWCpu(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const bool sparse = false;
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, float>(ctx, /*do_lock=*/true, sparse,
                                                                                  {0, 1, 2});
    Tensor var, m, v;
    OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, float>(ctx, 0, true, sparse, &var));
    OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, float>(ctx, 1, true, sparse, &m));
    OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<CPUDevice, float>(ctx, 2, true, sparse, &v));
    Coef c;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, var, m, v, &c));
    const int64_t n = var.NumElements();
    if (n == 0) return;
    float* wp = var.flat<float>().data();
    float* mp = m.flat<float>().data();
    float* vp = v.flat<float>().data();
    const float* gp = ctx->input(3).flat<float>().data();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor((n + kBlock - 1) / kBlock, 16 * kBlock, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t off = b * kBlock, len = std::min(kBlock, n - off);
        Update(wp + off, mp + off, vp + off, gp + off, len, c);
      }
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("SeeklineApplyAdamW").Device(DEVICE_CPU), ApplyAdamWCpu);

#if GOOGLE_CUDA
namespace {

// A resource variable's tensor, ready to be updated in place on the GPU: what TF's
// GetInputTensorFromVariable does for a dense update (copy the buffer first when a read still
// shares it, or in copy-on-read mode), with the device copy done by our launcher — the Eigen GPU
// copy functor TF uses there lives inside TF's own library, not in the ABI an op library links to.
// The caller holds the variable's lock.
Status GpuTensorForUpdate(OpKernelContext* ctx, int input, Tensor* out) {
  tensorflow::core::RefCountPtr<tensorflow::Var> var;
  TF_RETURN_IF_ERROR(tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, input), &var));
  Tensor* t = var->tensor();
  if (t->IsInitialized() && (var->copy_on_read_mode.load() || !t->RefCountIsOne())) {
    Tensor tmp;
    tensorflow::AllocatorAttributes attr;
    attr.set_gpu_compatible(true);
    TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &tmp, attr));
    const int code = DeviceCopyGpu(GpuStream(ctx), static_cast<int64_t>(t->TotalBytes()), t->tensor_data().data(),
                                   const_cast<char*>(tmp.tensor_data().data()));
    TF_RETURN_IF_ERROR(CudaStatus(code, "SeeklineApplyAdamW (copying a shared variable buffer)"));
    *t = tmp;
  }
  *out = *t;
  return tensorflow::OkStatus();
}

// The same step on a GPU: ../cuda/elementwise.cu.cc's ApplyAdamWGpu on TF's stream. The six
// scalars are host memory (see the registration), so the coefficients are plain kernel arguments.
class ApplyAdamWGpuOp : public OpKernel {
 public:
  explicit ApplyAdamWGpuOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    // The device type only matters for sparse access, which a dense update never takes.
    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<CPUDevice, float>(ctx, /*do_lock=*/true,
                                                                                  /*sparse=*/false, {0, 1, 2});
    Tensor var, m, v;
    OP_REQUIRES_OK(ctx, GpuTensorForUpdate(ctx, 0, &var));
    OP_REQUIRES_OK(ctx, GpuTensorForUpdate(ctx, 1, &m));
    OP_REQUIRES_OK(ctx, GpuTensorForUpdate(ctx, 2, &v));
    Coef c;
    OP_REQUIRES_OK(ctx, CheckInputs(ctx, var, m, v, &c));
    // Coef holds 1 − β; the launcher takes β as the op does.
    const int code = ApplyAdamWGpu(GpuStream(ctx), var.NumElements(), var.flat<float>().data(),
                                   m.flat<float>().data(), v.flat<float>().data(), ctx->input(3).flat<float>().data(),
                                   c.alpha, c.decay, ctx->input(6).flat<float>()(0), ctx->input(7).flat<float>()(0),
                                   c.eps, c.gs);
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineApplyAdamW"));
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("SeeklineApplyAdamW")
                            .Device(tensorflow::DEVICE_GPU)
                            .HostMemory("alpha")
                            .HostMemory("decay")
                            .HostMemory("beta1")
                            .HostMemory("beta2")
                            .HostMemory("epsilon")
                            .HostMemory("grad_scale"),
                        ApplyAdamWGpuOp);
#endif  // GOOGLE_CUDA

}  // namespace seekline
