// SeeklineAttention / SeeklineAttentionGrad: fused (flash-style) attention for prefill and training.
//
// The pure-TF path (model/ops/attention.py) materialises (B, H, T, S) scores, an fp32 copy, the
// probabilities and their gradients, and computes every masked (upper-triangle) block: 62% of a
// prefill and 24% of a train step in the CPU profile. Here each (batch, head, query block) walks
// the key blocks with an online softmax, so only a (query block, key block) tile ever exists:
//   z = scale·(q·k) + bias   (fp32),   p = softmax_s(z),   o = p·v,   lse = log Σ_s exp(z)
// Heads share kv heads in groups (head h reads kv head h / (H / Hkv)): GQA, and MLA with Hkv = H.
//
// Skip rule: a (query block, key block) tile whose bias is <= -1e8 everywhere is not computed —
// but a fully masked row (a padding query: every z is -1e9 in fp32) needs every key to give the
// softmax's uniform row, so a tile holding such a row is always computed. Computing a masked tile
// for a row that has visible keys changes nothing (exp(-1e9 - m) is exactly 0 in fp32), so the
// skip is an optimisation only, never a change in the numbers.
//
// Backward (flash): with D = rowsum(do·o) − dlse and p recomputed from q, k and the saved lse,
//   dv = pᵀ·do,  ds = p ⊙ (do·vᵀ − D),  dq = scale·ds·k,  dk = scale·dsᵀ·q
// in two passes so every output row has one writer: dk / dv over (batch, kv head, key block),
// dq over (batch, head, query block). Fixed block sizes and summation order: results do not
// depend on the thread count. CPU only (ops.OPS marks causal_attention CPU-only).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"
#include "Eigen/Core"

#include "op_util.h"

namespace seekline {

namespace {

// q (B, T, H, Dk), k (B, S, Hkv, Dk), v (B, S, Hkv, Dv): the batch, key and head dims must agree.
Status AttentionShapes(InferenceContext* c, ShapeHandle* q, ShapeHandle* k, ShapeHandle* v) {
  ShapeHandle bias;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, q));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, k));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, v));
  DimensionHandle d;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*q, 0), c->Dim(*k, 0), &d));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*q, 3), c->Dim(*k, 3), &d));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*k, 0), c->Dim(*v, 0), &d));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*k, 1), c->Dim(*v, 1), &d));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*k, 2), c->Dim(*v, 2), &d));
  return tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("SeeklineAttention")
    .Input("q: T")         // (B, T, H, Dk)
    .Input("k: T")         // (B, S, Hkv, Dk), H a multiple of Hkv
    .Input("v: T")         // (B, S, Hkv, Dv)
    .Input("bias: float")  // (B|1, 1, T|1, S) additive mask: 0 visible, -1e9 masked
    .Output("o: T")        // (B, T, H, Dv)
    .Output("lse: float")  // (B, H, T) row log-sum-exp of z, for the backward
    .Attr("T: {float, bfloat16, half}")
    .Attr("scale: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle q, k, v, bias;
      TF_RETURN_IF_ERROR(AttentionShapes(c, &q, &k, &v));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &bias));
      DimensionHandle d;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(bias, 3), c->Dim(k, 1), &d));
      c->set_output(0, c->MakeShape({c->Dim(q, 0), c->Dim(q, 1), c->Dim(q, 2), c->Dim(v, 3)}));
      c->set_output(1, c->MakeShape({c->Dim(q, 0), c->Dim(q, 2), c->Dim(q, 1)}));
      return tensorflow::OkStatus();
    })
    .Doc("Fused attention softmax(scale * q.k + bias).v with an online softmax over key blocks.");

REGISTER_OP("SeeklineAttentionGrad")
    .Input("q: T")         // (B, T, H, Dk)
    .Input("k: T")         // (B, S, Hkv, Dk)
    .Input("v: T")         // (B, S, Hkv, Dv)
    .Input("bias: float")  // (B|1, 1, T|1, S)
    .Input("o: T")         // (B, T, H, Dv)   the forward's output
    .Input("lse: float")   // (B, H, T)       the forward's log-sum-exp
    .Input("d_o: T")       // (B, T, H, Dv)   gradient of o
    .Input("d_lse: float") // (B, H, T)       gradient of lse (zeros when unused)
    .Output("dq: T")
    .Output("dk: T")
    .Output("dv: T")
    .Attr("T: {float, bfloat16, half}")
    .Attr("scale: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle q, k, v;
      TF_RETURN_IF_ERROR(AttentionShapes(c, &q, &k, &v));
      c->set_output(0, q);
      c->set_output(1, k);
      c->set_output(2, v);
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of SeeklineAttention with respect to q, k and v (none for the bias).");

namespace {

constexpr int64_t kBlockQ = 64;     // query rows per work item / tile
constexpr int64_t kBlockK = 128;    // keys per tile
constexpr float kMasked = -1e8f;    // bias at or below this hides a key (the layers use -1e9)
// The backward runs in one pass per (batch, kv head) when there are at least this many of them
// (enough items to share out across cores), else in two passes with finer items.
constexpr int64_t kOnePassItems = 8;
// The backward runs in one pass per (batch, kv head) when there are at least this many of them
// (enough items to share out across cores), else in two passes with finer items.


using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const Mat>;
using CRow = Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>;

// Validated sizes of one call: q (B, T, H, Dk), k (B, S, Hkv, Dk), v (B, S, Hkv, Dv),
// bias (bb, 1, bt, S) with bb in {1, B}, bt in {1, T}; S > 0, H a multiple of Hkv.
struct Dims {
  int64_t b, t, h, dk, s, hkv, dv, bb, bt;
  int64_t group() const { return h / hkv; }
  int64_t q_blocks() const { return (t + kBlockQ - 1) / kBlockQ; }
  int64_t k_blocks() const { return (s + kBlockK - 1) / kBlockK; }
  int64_t bias_row(int64_t bi, int64_t ti) const { return (bb == 1 ? 0 : bi) * bt + (bt == 1 ? 0 : ti); }
};

Status GetDims(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, Dims* d) {
  if (q.dims() != 4 || k.dims() != 4 || v.dims() != 4 || bias.dims() != 4) {
    return InvalidArgument("ranks must be q 4, k 4, v 4, bias 4; got ", q.dims(), ", ", k.dims(), ", ", v.dims(),
                           ", ", bias.dims());
  }
  const int64_t b = q.dim_size(0), t = q.dim_size(1), h = q.dim_size(2), dk = q.dim_size(3);
  const int64_t s = k.dim_size(1), hkv = k.dim_size(2), dv = v.dim_size(3);
  if (k.dim_size(0) != b || k.dim_size(3) != dk) {
    return InvalidArgument("k ", k.shape().DebugString(), " does not match q ", q.shape().DebugString(),
                           ": need (B, S, Hkv, Dk)");
  }
  if (v.dim_size(0) != b || v.dim_size(1) != s || v.dim_size(2) != hkv) {
    return InvalidArgument("v ", v.shape().DebugString(), " does not match k ", k.shape().DebugString(),
                           ": need (B, S, Hkv, Dv)");
  }
  if (hkv == 0 || h % hkv != 0) {
    return InvalidArgument("q's ", h, " heads are not a multiple of k's ", hkv, " kv heads");
  }
  if (s == 0) return InvalidArgument("k has no positions (S = 0)");
  const int64_t bb = bias.dim_size(0), bt = bias.dim_size(2);
  if (!((bb == b || bb == 1) && bias.dim_size(1) == 1 && (bt == t || bt == 1) && bias.dim_size(3) == s)) {
    return InvalidArgument("bias must be (B|1, 1, T|1, S) = (", b, "|1, 1, ", t, "|1, ", s, "), got ",
                           bias.shape().DebugString());
  }
  *d = {b, t, h, dk, s, hkv, dv, bb, bt};
  return tensorflow::OkStatus();
}

using Pool = Eigen::ThreadPoolInterface;

// (B, L, Hx, D) in the storage type -> (B, Hx, L, D) fp32: each head's rows contiguous for the
// tile GEMMs, converted once instead of once per tile.
template <typename T>
void ToHeadMajor(OpKernelContext* ctx, const T* src, int64_t b, int64_t l, int64_t hx, int64_t d, float* dst) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(b * l, 2 * hx * d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / l, li = r % l;
      const T* in = src + r * hx * d;
      for (int64_t hi = 0; hi < hx; ++hi) {
        float* out = dst + ((bi * hx + hi) * l + li) * d;
        for (int64_t j = 0; j < d; ++j) out[j] = static_cast<float>(in[hi * d + j]);
      }
    }
  });
}

// Which (bias row, key block) tiles hold a visible key, and which bias rows hold any at all.
struct Visibility {
  int64_t k_blocks;
  std::vector<uint8_t> in_block;   // (bias rows, key blocks)
  std::vector<uint8_t> in_row;     // (bias rows,)

  Visibility(OpKernelContext* ctx, const Dims& d, const float* bias) : k_blocks(d.k_blocks()) {
    const int64_t rows = d.bb * d.bt;
    in_block.assign(rows * k_blocks, 0);
    in_row.assign(rows, 0);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(rows, d.s, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = bias + r * d.s;
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
          const int64_t k0 = kb * kBlockK, k1 = std::min(d.s, k0 + kBlockK);
          uint8_t any = 0;
          for (int64_t j = k0; j < k1; ++j) any |= row[j] > kMasked;
          in_block[r * k_blocks + kb] = any;
          in_row[r] |= any;
        }
      }
    });
  }

  // Whether the tile (query rows [t0, t1) of batch bi, key block kb) must be computed: some row
  // sees a key in it, or some row is fully masked (it needs every key).
  bool Needed(const Dims& d, int64_t bi, int64_t t0, int64_t t1, int64_t kb) const {
    if (d.bt == 1) t1 = std::min(t1, t0 + 1);           // one bias row for every query
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t r = d.bias_row(bi, ti);
      if (!in_row[r] || in_block[r * k_blocks + kb]) return true;
    }
    return false;
  }
};

// z = scale·s + bias over one tile row, in place: the forward and both backward passes use this
// one expression so the recomputed p matches the forward's bit for bit.
template <typename Row>
inline void Logits(Row&& row, float scale, const float* bias, int64_t n) {
  row = row * scale + CRow(bias, n);
}

template <typename T>
class AttentionCpu : public OpKernel {
 public:
  explicit AttentionCpu(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("scale", &scale_)); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& k = ctx->input(1);
    const Tensor& v = ctx->input(2);
    const Tensor& bias = ctx->input(3);
    Dims d;
    OP_REQUIRES_OK(ctx, GetDims(q, k, v, bias, &d));
    Tensor *out = nullptr, *lse = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.b, d.t, d.h, d.dv}), &out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({d.b, d.h, d.t}), &lse));
    if (d.b * d.t * d.h == 0) return;
    Tensor qf, kf, vf;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.h, d.t, d.dk}), &qf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.s, d.dk}), &kf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.s, d.dv}), &vf));
    float* qp = qf.flat<float>().data();
    float* kp = kf.flat<float>().data();
    float* vp = vf.flat<float>().data();
    ToHeadMajor(ctx, q.flat<T>().data(), d.b, d.t, d.h, d.dk, qp);
    ToHeadMajor(ctx, k.flat<T>().data(), d.b, d.s, d.hkv, d.dk, kp);
    ToHeadMajor(ctx, v.flat<T>().data(), d.b, d.s, d.hkv, d.dv, vp);
    const float* bp = bias.flat<float>().data();
    const Visibility vis(ctx, d, bp);
    T* op = out->flat<T>().data();
    float* lp = lse->flat<float>().data();
    const float scale = scale_;
    const int64_t nqb = d.q_blocks(), nkb = d.k_blocks(), g = d.group();

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    // One item per (b, h, query block); the query block is innermost, so a contiguous range of
    // items spans whole heads and the causal triangle's uneven blocks even out across threads.
    pool->ParallelFor(d.b * d.h * nqb, 2 * kBlockQ * d.s * (d.dk + d.dv) + 8 * kBlockQ * d.s,
                      [&](int64_t begin, int64_t end) {
      Mat tile(kBlockQ, kBlockK), acc(kBlockQ, d.dv);
      float m[kBlockQ], l[kBlockQ];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / nqb, qb = item % nqb;
        const int64_t bi = bh / d.h, hi = bh % d.h;
        const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, d.t - q0);
        const CMap qm(qp + (bh * d.t + q0) * d.dk, nq, d.dk);                  // (nq, Dk)
        const float* kh = kp + (bi * d.hkv + hi / g) * d.s * d.dk;             // (S, Dk)
        const float* vh = vp + (bi * d.hkv + hi / g) * d.s * d.dv;             // (S, Dv)
        auto a = acc.topRows(nq);                                              // (nq, Dv)
        a.setZero();
        std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
        std::fill(l, l + nq, 0.f);
        for (int64_t kb = 0; kb < nkb; ++kb) {
          if (!vis.Needed(d, bi, q0, q0 + nq, kb)) continue;
          const int64_t k0 = kb * kBlockK, nk = std::min(kBlockK, d.s - k0);
          auto z = tile.topLeftCorner(nq, nk);                                 // (nq, nk)
          z.noalias() = qm * CMap(kh + k0 * d.dk, nk, d.dk).transpose();
          for (int64_t i = 0; i < nq; ++i) {
            auto row = z.row(i).array();
            Logits(row, scale, bp + d.bias_row(bi, q0 + i) * d.s + k0, nk);
            const float mx = std::max(m[i], row.maxCoeff());
            const float corr = std::exp(m[i] - mx);                           // 0 on a row's first tile
            row = (row - mx).exp();
            l[i] = l[i] * corr + row.sum();
            a.row(i) *= corr;
            m[i] = mx;
          }
          a.noalias() += z * CMap(vh + k0 * d.dv, nk, d.dv);
        }
        for (int64_t i = 0; i < nq; ++i) {
          const float inv = 1.f / l[i];
          T* o = op + ((bi * d.t + q0 + i) * d.h + hi) * d.dv;
          for (int64_t j = 0; j < d.dv; ++j) o[j] = static_cast<T>(a(i, j) * inv);
          lp[bh * d.t + q0 + i] = m[i] + std::log(l[i]);
        }
      }
    });
  }

 private:
  float scale_;
};

template <typename T>
class AttentionGradCpu : public OpKernel {
 public:
  explicit AttentionGradCpu(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& q = ctx->input(0);
    const Tensor& k = ctx->input(1);
    const Tensor& v = ctx->input(2);
    const Tensor& bias = ctx->input(3);
    const Tensor& o = ctx->input(4);
    const Tensor& lse = ctx->input(5);
    const Tensor& d_o = ctx->input(6);
    const Tensor& d_lse = ctx->input(7);
    Dims d;
    OP_REQUIRES_OK(ctx, GetDims(q, k, v, bias, &d));
    const TensorShape o_shape({d.b, d.t, d.h, d.dv}), lse_shape({d.b, d.h, d.t});
    OP_REQUIRES(ctx, o.shape() == o_shape && d_o.shape() == o_shape,
                InvalidArgument("o ", o.shape().DebugString(), " and d_o ", d_o.shape().DebugString(),
                                " must be ", o_shape.DebugString()));
    OP_REQUIRES(ctx, lse.shape() == lse_shape && d_lse.shape() == lse_shape,
                InvalidArgument("lse ", lse.shape().DebugString(), " and d_lse ", d_lse.shape().DebugString(),
                                " must be ", lse_shape.DebugString()));
    Tensor *dq = nullptr, *dk = nullptr, *dv = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, q.shape(), &dq));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, k.shape(), &dk));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, v.shape(), &dv));
    if (d.b * d.t * d.h == 0) {           // no queries: k and v get no gradient
      dk->flat<T>().setZero();
      dv->flat<T>().setZero();
      return;
    }
    Tensor qf, kf, vf, dof, rows;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.h, d.t, d.dk}), &qf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.s, d.dk}), &kf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.s, d.dv}), &vf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.h, d.t, d.dv}), &dof));
    // per (b, h, t) row: shift, 1 / l and D, so that p = exp(z − shift) / l and ds = p ⊙ (dp − D)
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({3, d.b, d.h, d.t}), &rows));
    float* qp = qf.flat<float>().data();
    float* kp = kf.flat<float>().data();
    float* vp = vf.flat<float>().data();
    float* dop = dof.flat<float>().data();
    ToHeadMajor(ctx, q.flat<T>().data(), d.b, d.t, d.h, d.dk, qp);
    ToHeadMajor(ctx, k.flat<T>().data(), d.b, d.s, d.hkv, d.dk, kp);
    ToHeadMajor(ctx, v.flat<T>().data(), d.b, d.s, d.hkv, d.dv, vp);
    ToHeadMajor(ctx, d_o.flat<T>().data(), d.b, d.t, d.h, d.dv, dop);
    const float* bp = bias.flat<float>().data();
    const Visibility vis(ctx, d, bp);
    const int64_t n_rows = d.b * d.h * d.t;
    float* shift = rows.flat<float>().data();
    float* inv_l = shift + n_rows;
    float* delta = inv_l + n_rows;
    const float scale = scale_;
    const int64_t nqb = d.q_blocks(), nkb = d.k_blocks(), g = d.group();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;

    // Row statistics. A row with a visible key: p = exp(z − lse). A fully masked row has
    // lse = −1e9 + log(S), which rounds to −1e9 in fp32, so exp(z − lse) would be 1 instead of
    // 1/S: recompute its max and sum over every key (padding queries only: rare and cheap).
    const T* o_p = o.flat<T>().data();
    const float* lse_p = lse.flat<float>().data();
    const float* dlse_p = d_lse.flat<float>().data();
    pool->ParallelFor(n_rows, 2 * d.dv + 4, [&](int64_t r0, int64_t r1) {
      Eigen::Array<float, 1, Eigen::Dynamic> z;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t bh = r / d.t, ti = r % d.t, bi = bh / d.h, hi = bh % d.h;
        const float* dor = dop + r * d.dv;
        const T* orow = o_p + ((bi * d.t + ti) * d.h + hi) * d.dv;
        float acc = 0.f;
        for (int64_t j = 0; j < d.dv; ++j) acc += dor[j] * static_cast<float>(orow[j]);
        delta[r] = acc - dlse_p[r];
        shift[r] = lse_p[r];
        inv_l[r] = 1.f;
        if (vis.in_row[d.bias_row(bi, ti)]) continue;
        z.resize(d.s);
        z.matrix().noalias() = CMap(qp + r * d.dk, 1, d.dk) *
                               CMap(kp + (bi * d.hkv + hi / g) * d.s * d.dk, d.s, d.dk).transpose();
        Logits(z, scale, bp + d.bias_row(bi, ti) * d.s, d.s);
        shift[r] = z.maxCoeff();
        inv_l[r] = 1.f / (z - shift[r]).exp().sum();
      }
    });

    // Recomputes p (nq, nk) for query rows [q0, q0 + nq) of head bh against key block k0 into z,
    // and turns dp = do·vᵀ into ds = p ⊙ (dp − D) in place.
    auto probs_and_ds = [&](int64_t bh, int64_t bi, const float* kh, const float* vh, int64_t q0, int64_t nq,
                            int64_t k0, int64_t nk, Mat* tile, Mat* dtile) {
      auto z = tile->topLeftCorner(nq, nk);
      auto ds = dtile->topLeftCorner(nq, nk);
      const int64_t r0 = bh * d.t + q0;
      z.noalias() = CMap(qp + r0 * d.dk, nq, d.dk) * CMap(kh + k0 * d.dk, nk, d.dk).transpose();
      ds.noalias() = CMap(dop + r0 * d.dv, nq, d.dv) * CMap(vh + k0 * d.dv, nk, d.dv).transpose();
      for (int64_t i = 0; i < nq; ++i) {
        auto row = z.row(i).array();
        Logits(row, scale, bp + d.bias_row(bi, q0 + i) * d.s + k0, nk);
        row = (row - shift[r0 + i]).exp() * inv_l[r0 + i];
        ds.row(i).array() = row * (ds.row(i).array() - delta[r0 + i]);
      }
    };

    // dk, dv of key block kb of (bi, kv head kvh), summing over the group's heads and the query
    // blocks in order; with dq_acc (the group's (G, T, Dk) fp32 rows) also adds ds·k into dq.
    struct Scratch {
      Mat tile, dtile, dk, dv;
      explicit Scratch(const Dims& d) : tile(kBlockQ, kBlockK), dtile(kBlockQ, kBlockK), dk(kBlockK, d.dk),
                                        dv(kBlockK, d.dv) {}
    };
    T* dkp = dk->flat<T>().data();
    T* dvp = dv->flat<T>().data();
    auto key_block = [&](int64_t bi, int64_t kvh, int64_t kb, float* dq_acc, Scratch* w) {
      const int64_t bkv = bi * d.hkv + kvh;
      const int64_t k0 = kb * kBlockK, nk = std::min(kBlockK, d.s - k0);
      const float* kh = kp + bkv * d.s * d.dk;
      const float* vh = vp + bkv * d.s * d.dv;
      auto dkb = w->dk.topRows(nk);
      auto dvb = w->dv.topRows(nk);
      dkb.setZero();
      dvb.setZero();
      for (int64_t gi = 0; gi < g; ++gi) {
        const int64_t bh = bi * d.h + kvh * g + gi;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, d.t - q0);
          if (!vis.Needed(d, bi, q0, q0 + nq, kb)) continue;
          probs_and_ds(bh, bi, kh, vh, q0, nq, k0, nk, &w->tile, &w->dtile);
          const int64_t r0 = bh * d.t + q0;
          const auto ds = w->dtile.topLeftCorner(nq, nk);
          dvb.noalias() += w->tile.topLeftCorner(nq, nk).transpose() * CMap(dop + r0 * d.dv, nq, d.dv);
          dkb.noalias() += ds.transpose() * CMap(qp + r0 * d.dk, nq, d.dk);
          if (dq_acc != nullptr) {
            Eigen::Map<Mat>(dq_acc + (gi * d.t + q0) * d.dk, nq, d.dk).noalias() +=
                ds * CMap(kh + k0 * d.dk, nk, d.dk);
          }
        }
      }
      for (int64_t i = 0; i < nk; ++i) {
        T* dkr = dkp + ((bi * d.s + k0 + i) * d.hkv + kvh) * d.dk;
        T* dvr = dvp + ((bi * d.s + k0 + i) * d.hkv + kvh) * d.dv;
        for (int64_t j = 0; j < d.dk; ++j) dkr[j] = static_cast<T>(dkb(i, j) * scale);
        for (int64_t j = 0; j < d.dv; ++j) dvr[j] = static_cast<T>(dvb(i, j));
      }
    };
    T* dqp = dq->flat<T>().data();
    auto write_dq = [&](int64_t bh, int64_t q0, int64_t nq, const float* acc) {   // acc (nq, Dk) rows
      const int64_t bi = bh / d.h, hi = bh % d.h;
      for (int64_t i = 0; i < nq; ++i) {
        T* dqr = dqp + ((bi * d.t + q0 + i) * d.h + hi) * d.dk;
        for (int64_t j = 0; j < d.dk; ++j) dqr[j] = static_cast<T>(acc[i * d.dk + j] * scale);
      }
    };

    if (d.b * d.hkv >= kOnePassItems) {
      // One pass per (b, kv head): the item owns its group's dq rows, so it adds ds·k there
      // while it has ds — 5 tile GEMMs instead of 7. Chosen by shape, never by thread count.
      Tensor dq_f;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.h, d.t, d.dk}), &dq_f));
      float* dqf = dq_f.flat<float>().data();
      pool->ParallelFor(d.b * d.hkv, 5 * g * d.t * d.s * (d.dk + d.dv), [&](int64_t begin, int64_t end) {
        Scratch w(d);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t bi = item / d.hkv, kvh = item % d.hkv;
          const int64_t bh0 = bi * d.h + kvh * g;                                   // first head of the group
          float* acc = dqf + bh0 * d.t * d.dk;                                       // (G, T, Dk)
          std::fill(acc, acc + g * d.t * d.dk, 0.f);
          for (int64_t kb = 0; kb < nkb; ++kb) key_block(bi, kvh, kb, acc, &w);
          for (int64_t gi = 0; gi < g; ++gi) write_dq(bh0 + gi, 0, d.t, acc + gi * d.t * d.dk);
        }
      });
      return;
    }

    // Two passes (few batch x kv-head items to share out): dk, dv per (b, kv head, key block) ...
    pool->ParallelFor(d.b * d.hkv * nkb, 4 * g * d.t * kBlockK * (d.dk + d.dv),
                      [&](int64_t begin, int64_t end) {
      Scratch w(d);
      for (int64_t item = begin; item < end; ++item) {
        key_block(item / nkb / d.hkv, (item / nkb) % d.hkv, item % nkb, nullptr, &w);
      }
    });

    // ... and dq per (b, head, query block), summing over key blocks in order.
    pool->ParallelFor(d.b * d.h * nqb, 6 * kBlockQ * d.s * (d.dk + d.dv), [&](int64_t begin, int64_t end) {
      Mat tile(kBlockQ, kBlockK), dtile(kBlockQ, kBlockK), dqm(kBlockQ, d.dk);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / nqb, qb = item % nqb, bi = bh / d.h, hi = bh % d.h;
        const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, d.t - q0);
        const float* kh = kp + (bi * d.hkv + hi / g) * d.s * d.dk;
        const float* vh = vp + (bi * d.hkv + hi / g) * d.s * d.dv;
        auto dqb = dqm.topRows(nq);
        dqb.setZero();
        for (int64_t kb = 0; kb < nkb; ++kb) {
          if (!vis.Needed(d, bi, q0, q0 + nq, kb)) continue;
          const int64_t k0 = kb * kBlockK, nk = std::min(kBlockK, d.s - k0);
          probs_and_ds(bh, bi, kh, vh, q0, nq, k0, nk, &tile, &dtile);
          dqb.noalias() += dtile.topLeftCorner(nq, nk) * CMap(kh + k0 * d.dk, nk, d.dk);
        }
        write_dq(bh, q0, nq, dqm.data());
      }
    });
  }

 private:
  float scale_;
};

}  // namespace

#define REGISTER_CPU(T)                                                                                    \
  REGISTER_KERNEL_BUILDER(Name("SeeklineAttention").Device(DEVICE_CPU).TypeConstraint<T>("T"), AttentionCpu<T>); \
  REGISTER_KERNEL_BUILDER(Name("SeeklineAttentionGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
                          AttentionGradCpu<T>);
REGISTER_CPU(float)
REGISTER_CPU(Eigen::bfloat16)
REGISTER_CPU(Eigen::half)
#undef REGISTER_CPU

}  // namespace seekline
