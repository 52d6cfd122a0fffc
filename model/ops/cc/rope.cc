// SeeklineRope: rotary position embedding applied to the trailing channels of a projection, in
// place of the pure path's split → (reshape, unstack) → 4 Mul + Sub + Add → concat → concat.
//
// MLA's query projection gives [q_nope | q_pe] per head and its latent projection [c | k_pe]; only
// the trailing `rot` = d − offset channels are rotated. The pure path splits them off, rotates them
// and concatenates them back (and the backward does the same in reverse); this kernel reads each
// row once and writes the whole output once — the leading `offset` channels copied, the trailing
// ones rotated:
//
//   half rotation      pair (x[o+i], x[o+i+h])       -> y[o+i]   = a·cos_i − b·sin_i
//   interleaved        pair (x[o+2i], x[o+2i+1])        y[o+h+i] = b·cos_i + a·sin_i
//
// (h = rot/2; the interleaved layout is written de-interleaved, as model/layers/rope.py does).
// inverse = true applies the transpose (the gradient): a = p·cos + q·sin, b = q·cos − p·sin from
// p = dy[o+i], q = dy[o+h+i], written back to the pair's input positions. cos/sin (B, T, h) fp32,
// shared by every head; fp32 arithmetic whatever x's storage type. Elementwise per row: results
// do not depend on the thread count.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>

#include "unsupported/Eigen/CXX11/Tensor"

#include "op_util.h"

namespace seekline {

REGISTER_OP("SeeklineRope")
    .Input("x: T")          // (B, T, d) or (B, T, H, d)
    .Input("cos: float")    // (B, T, h)
    .Input("sin: float")    // (B, T, h)
    .Output("y: T")         // like x
    .Attr("T: {float, bfloat16, half}")
    .Attr("offset: int >= 0")
    .Attr("interleaved: bool")
    .Attr("inverse: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, cs;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 3, &x));
      TF_RETURN_IF_ERROR(c->WithRankAtMost(x, 4, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &cs));
      TF_RETURN_IF_ERROR(c->Merge(cs, c->input(2), &cs));
      c->set_output(0, x);
      return tensorflow::OkStatus();
    })
    .Doc("Rotary embedding of x's trailing channels (from `offset`), leading channels passed through; "
         "inverse: the transpose (gradient).");

namespace {

template <typename T>
inline float F(T v) { return static_cast<float>(v); }

// x (B, T, d) or (B, T, H, d) with d − offset even and ≥ 0; cos and sin (B, T, (d − offset)/2).
Status CheckRope(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t offset, int64_t* rows,
                 int64_t* heads, int64_t* d) {
  if (x.dims() != 3 && x.dims() != 4) {
    return InvalidArgument("x must be (B, T, d) or (B, T, H, d), got ", x.shape().DebugString());
  }
  const int64_t b = x.dim_size(0), t = x.dim_size(1);
  *rows = b * t;
  *heads = x.dims() == 4 ? x.dim_size(2) : 1;
  *d = x.dim_size(x.dims() - 1);
  const int64_t rot = *d - offset;
  if (rot < 0 || rot % 2 != 0) {
    return InvalidArgument("x's last dim ", *d, " minus offset ", offset, " must be a non-negative even number");
  }
  const int64_t h = rot / 2;
  if (cos.dims() != 3 || cos.dim_size(0) != b || cos.dim_size(1) != t || cos.dim_size(2) != h) {
    return InvalidArgument("cos must be (B, T, rot/2) = (", b, ", ", t, ", ", h, "), got ", cos.shape().DebugString());
  }
  if (sin.shape() != cos.shape()) {
    return InvalidArgument("sin ", sin.shape().DebugString(), " must match cos ", cos.shape().DebugString());
  }
  return tensorflow::OkStatus();
}

// The op's attributes, read once for both devices' kernels.
class RopeKernelBase : public OpKernel {
 public:
  explicit RopeKernelBase(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("offset", &offset_));
    OP_REQUIRES_OK(c, c->GetAttr("interleaved", &interleaved_));
    OP_REQUIRES_OK(c, c->GetAttr("inverse", &inverse_));
  }

 protected:
  int64_t offset_;
  bool interleaved_, inverse_;
};

template <typename T>
class RopeCpu : public RopeKernelBase {
 public:
  using RopeKernelBase::RopeKernelBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& cos = ctx->input(1);
    const Tensor& sin = ctx->input(2);
    int64_t rows, heads, d;
    OP_REQUIRES_OK(ctx, CheckRope(x, cos, sin, offset_, &rows, &heads, &d));
    const int64_t h = (d - offset_) / 2;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (rows == 0 || heads == 0 || d == 0) return;
    const T* xp = x.flat<T>().data();
    const float* cp = cos.flat<float>().data();
    const float* sp = sin.flat<float>().data();
    T* yp = y->flat<T>().data();
    const int64_t off = offset_;
    const bool il = interleaved_, inv = inverse_;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(rows, 4 * heads * d, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* c = cp + r * h;
        const float* s = sp + r * h;
        for (int64_t k = 0; k < heads; ++k) {
          const T* xr = xp + (r * heads + k) * d;
          T* yr = yp + (r * heads + k) * d;
          std::copy(xr, xr + off, yr);
          const T* xo = xr + off;
          T* yo = yr + off;
          if (!inv) {
            for (int64_t i = 0; i < h; ++i) {
              const float a = F(il ? xo[2 * i] : xo[i]), bb = F(il ? xo[2 * i + 1] : xo[i + h]);
              yo[i] = static_cast<T>(a * c[i] - bb * s[i]);
              yo[h + i] = static_cast<T>(bb * c[i] + a * s[i]);
            }
          } else {
            for (int64_t i = 0; i < h; ++i) {
              const float p = F(xo[i]), q = F(xo[h + i]);
              const T a = static_cast<T>(p * c[i] + q * s[i]), bb = static_cast<T>(q * c[i] - p * s[i]);
              if (il) {
                yo[2 * i] = a;
                yo[2 * i + 1] = bb;
              } else {
                yo[i] = a;
                yo[i + h] = bb;
              }
            }
          }
        }
      }
    });
  }
};

}  // namespace

#define SEEKLINE_REGISTER_ROPE(T) \
  REGISTER_KERNEL_BUILDER(Name("SeeklineRope").Device(DEVICE_CPU).TypeConstraint<T>("T"), RopeCpu<T>);
SEEKLINE_REGISTER_ROPE(float)
SEEKLINE_REGISTER_ROPE(Eigen::bfloat16)
SEEKLINE_REGISTER_ROPE(Eigen::half)
#undef SEEKLINE_REGISTER_ROPE

#if GOOGLE_CUDA
namespace {

// The same op on a GPU: ../cuda/elementwise.cu.cc's RopeGpu on TF's stream (cos / sin on the device).
template <typename T>
class RopeGpuOp : public RopeKernelBase {
 public:
  using RopeKernelBase::RopeKernelBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& cos = ctx->input(1);
    const Tensor& sin = ctx->input(2);
    int64_t rows, heads, d;
    OP_REQUIRES_OK(ctx, CheckRope(x, cos, sin, offset_, &rows, &heads, &d));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int code = RopeGpu(GpuStream(ctx), kDType<T>, rows, heads, d, offset_, interleaved_, inverse_,
                             cos.flat<float>().data(), sin.flat<float>().data(), x.tensor_data().data(),
                             const_cast<char*>(y->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineRope"));
  }
};

}  // namespace

#define SEEKLINE_REGISTER_ROPE_GPU(T) \
  REGISTER_KERNEL_BUILDER(Name("SeeklineRope").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), RopeGpuOp<T>);
SEEKLINE_REGISTER_ROPE_GPU(float)
SEEKLINE_REGISTER_ROPE_GPU(Eigen::bfloat16)
SEEKLINE_REGISTER_ROPE_GPU(Eigen::half)
#undef SEEKLINE_REGISTER_ROPE_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
