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
// depend on the thread count. GPU builds also register ../cuda/attention.cu.cc's kernels (same math,
// same skip rule; they run only where model/ops/__init__.py's GPU policy picks the op on a GPU).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"
#include "Eigen/Core"

#include "op_util.h"
#include "tile_gemm.h"

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
void ToHeadMajor(OpKernelContext* ctx, const T* src, int64_t b, int64_t l, int64_t hx, int64_t d, float* dst,
                 float scale = 1.f) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(b * l, 2 * hx * d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / l, li = r % l;
      const T* in = src + r * hx * d;
      for (int64_t hi = 0; hi < hx; ++hi) {
        float* out = dst + ((bi * hx + hi) * l + li) * d;
        for (int64_t j = 0; j < d; ++j) out[j] = static_cast<float>(in[hi * d + j]) * scale;   // ×1 is exact
      }
    }
  });
}

// Per (bias row, key block of `block` keys): whether it holds a visible key, and whether its bias
// is exactly 0 everywhere (nothing to add); per bias row: whether it sees any key at all.
struct Visibility {
  int64_t block, k_blocks;
  std::vector<uint8_t> in_block;   // (bias rows, key blocks)
  std::vector<uint8_t> zero_block; // (bias rows, key blocks)
  std::vector<uint8_t> in_row;     // (bias rows,)

  Visibility(OpKernelContext* ctx, const Dims& d, const float* bias, int64_t block_keys)
      : block(block_keys), k_blocks((d.s + block_keys - 1) / block_keys) {
    const int64_t rows = d.bb * d.bt;
    in_block.assign(rows * k_blocks, 0);
    zero_block.assign(rows * k_blocks, 0);
    in_row.assign(rows, 0);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(rows, d.s, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = bias + r * d.s;
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
          const int64_t k0 = kb * block, k1 = std::min(d.s, k0 + block);
          int any = 0, zero = 1;                                  // int: the loop vectorises
          for (int64_t j = k0; j < k1; ++j) {
            any |= static_cast<int>(row[j] > kMasked);
            zero &= static_cast<int>(row[j] == 0.f);
          }
          in_block[r * k_blocks + kb] = any;
          zero_block[r * k_blocks + kb] = zero;
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

  // Whether every row of the tile has bias 0 on every key of block kb (the add can be skipped).
  bool Zero(const Dims& d, int64_t bi, int64_t t0, int64_t t1, int64_t kb) const {
    if (d.bt == 1) t1 = std::min(t1, t0 + 1);
    for (int64_t ti = t0; ti < t1; ++ti) {
      if (!zero_block[d.bias_row(bi, ti) * k_blocks + kb]) return false;
    }
    return true;
  }
};

// z = q_s·k + bias with q_s = scale·q (scaled once, when q is converted to fp32): the forward and
// both backward passes use the same q_s and this one expression, so the recomputed p matches the
// forward's bit for bit. Adding a bias that is exactly 0 changes nothing, so zero tiles skip it.
template <typename Row>
inline void AddBias(Row&& row, const float* bias, int64_t n) {
  row += CRow(bias, n);
}

// (B, L, Hx, D) -> (B, Hx, D, L) fp32: each head's keys contiguous per feature, the layout the
// tile products read a run of keys from (tile::QkRows).
template <typename T>
void ToFeatureMajor(OpKernelContext* ctx, const T* src, int64_t b, int64_t l, int64_t hx, int64_t d, int64_t ldl,
                    float* dst) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(b * hx, 2 * l * d, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t bi = i / hx, hi = i % hx;
      float* out = dst + i * d * ldl;
      // 16 positions at a time: the reads stay in 16 rows (in L1) and each write is one line.
      for (int64_t l0 = 0; l0 < l; l0 += 16) {
        const int64_t n = std::min<int64_t>(16, l - l0);
        const T* in = src + ((bi * l + l0) * hx + hi) * d;
        for (int64_t j = 0; j < d; ++j) {
          float* o = out + j * ldl + l0;
          for (int64_t li = 0; li < n; ++li) o[li] = static_cast<float>(in[li * hx * d + j]);
        }
      }
    }
  });
}

// Keys are scanned in runs of consecutive needed blocks of kGran keys, up to kChunk keys per run:
// one (query block x run) GEMM pair per run instead of one per 128 keys, while the causal
// diagonal wastes at most kGran - 1 keys per query block.
constexpr int64_t kGran = 64;
constexpr int64_t kChunk = 512;

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
    // K's feature rows are padded to a stride that is not a multiple of 4 KiB: with S = 1024 the
    // Dk rows a tile product walks down would all map to the same L1 sets.
    const int64_t lds = (d.s + 15) / 16 * 16 + 16;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.dk, lds}), &kf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.s, d.dv}), &vf));
    float* qp = qf.flat<float>().data();
    float* kp = kf.flat<float>().data();
    float* vp = vf.flat<float>().data();
    const float scale = scale_;
    ToHeadMajor(ctx, q.flat<T>().data(), d.b, d.t, d.h, d.dk, qp, scale);  // (B, H, T, Dk)
    ToFeatureMajor(ctx, k.flat<T>().data(), d.b, d.s, d.hkv, d.dk, lds, kp);          // (B, Hkv, Dk, S)
    ToHeadMajor(ctx, v.flat<T>().data(), d.b, d.s, d.hkv, d.dv, vp);             // (B, Hkv, S, Dv)
    const float* bp = bias.flat<float>().data();
    const Visibility vis(ctx, d, bp, kGran);
    T* op = out->flat<T>().data();
    float* lp = lse->flat<float>().data();
    const int64_t nqb = d.q_blocks(), ngr = vis.k_blocks, g = d.group();
    const int64_t run_max = std::min(kChunk, ngr * kGran);

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    // One item per (b, h, query block); the query block is innermost, so a contiguous range of
    // items spans whole heads and the causal triangle's uneven blocks even out across threads.
    // Within an item: for each run of needed keys, each group of tile::kMaxRows query rows gets
    // its logits (kMaxRows x run, in L1), its online-softmax update and its p·v in one go.
    pool->ParallelFor(d.b * d.h * nqb, 2 * kBlockQ * d.s * (d.dk + d.dv) + 8 * kBlockQ * d.s,
                      [&](int64_t begin, int64_t end) {
      Mat tile(tile::kMaxRows, run_max), acc(kBlockQ, d.dv);
      float m[kBlockQ], l[kBlockQ];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / nqb, qb = item % nqb;
        const int64_t bi = bh / d.h, hi = bh % d.h;
        const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, d.t - q0);
        const float* qh = qp + (bh * d.t + q0) * d.dk;                         // (nq, Dk), scaled
        const float* kth = kp + (bi * d.hkv + hi / g) * d.dk * lds;            // (Dk, lds)
        const float* vh = vp + (bi * d.hkv + hi / g) * d.s * d.dv;             // (S, Dv)
        acc.topRows(nq).setZero();                                             // (nq, Dv)
        std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
        std::fill(l, l + nq, 0.f);
        for (int64_t gb = 0; gb < ngr;) {
          if (!vis.Needed(d, bi, q0, q0 + nq, gb)) {
            ++gb;
            continue;
          }
          const int64_t first = gb;
          bool biased[kChunk / kGran];                                         // which granules add a bias
          for (; gb < ngr && (gb - first) * kGran < kChunk && vis.Needed(d, bi, q0, q0 + nq, gb); ++gb) {
            biased[gb - first] = !vis.Zero(d, bi, q0, q0 + nq, gb);
          }
          const int64_t k0 = first * kGran, nk = std::min(gb * kGran, d.s) - k0;
          for (int64_t r0 = 0; r0 < nq; r0 += tile::kMaxRows) {
            const int rows = static_cast<int>(std::min<int64_t>(tile::kMaxRows, nq - r0));
            tile::Qk(rows, qh + r0 * d.dk, d.dk, kth + k0, lds, nk, tile.data(), run_max);   // (rows, nk)
            for (int r = 0; r < rows; ++r) {
              const int64_t i = r0 + r;
              auto row = Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(tile.data() + r * run_max, nk);
              const float* brow = bp + d.bias_row(bi, q0 + i) * d.s + k0;
              for (int64_t c = 0; c < gb - first; ++c) {
                if (!biased[c]) continue;
                const int64_t c0 = c * kGran, w = std::min(kGran, nk - c0);
                AddBias(row.segment(c0, w), brow + c0, w);
              }
              const float mx = std::max(m[i], row.maxCoeff());
              const float s_row = tile::ExpRow(row.data(), nk, mx);
              if (mx != m[i]) {                                              // rescale only when the max moved
                const float corr = std::exp(m[i] - mx);                     // 0 on a row's first run
                l[i] = l[i] * corr + s_row;
                acc.row(i) *= corr;
                m[i] = mx;
              } else {
                l[i] += s_row;
              }
            }
            tile::Pv(rows, tile.data(), run_max, 1, nk, vh + k0 * d.dv, d.dv, d.dv, acc.data() + r0 * d.dv, d.dv);
          }
        }
        for (int64_t i = 0; i < nq; ++i) {
          const float inv = 1.f / l[i];
          T* o = op + ((bi * d.t + q0 + i) * d.h + hi) * d.dv;
          for (int64_t j = 0; j < d.dv; ++j) o[j] = static_cast<T>(acc(i, j) * inv);
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
    Tensor qf, kf, ktf, vtf, dof, rows;
    // K's and V's feature rows padded off a 4 KiB stride (see the forward).
    const int64_t lds = (d.s + 15) / 16 * 16 + 16;
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.h, d.t, d.dk}), &qf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.s, d.dk}), &kf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.dk, lds}), &ktf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.hkv, d.dv, lds}), &vtf));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({d.b, d.h, d.t, d.dv}), &dof));
    // per (b, h, t) row: shift, 1 / l and D, so that p = exp(z − shift) / l and ds = p ⊙ (dp − D)
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({3, d.b, d.h, d.t}), &rows));
    float* qp = qf.flat<float>().data();
    float* kp = kf.flat<float>().data();
    float* ktp = ktf.flat<float>().data();
    float* vtp = vtf.flat<float>().data();
    float* dop = dof.flat<float>().data();
    ToHeadMajor(ctx, q.flat<T>().data(), d.b, d.t, d.h, d.dk, qp, scale_);     // q_s = scale·q
    ToHeadMajor(ctx, k.flat<T>().data(), d.b, d.s, d.hkv, d.dk, kp);                  // (B, Hkv, S, Dk)
    ToFeatureMajor(ctx, k.flat<T>().data(), d.b, d.s, d.hkv, d.dk, lds, ktp);          // (B, Hkv, Dk, lds)
    ToFeatureMajor(ctx, v.flat<T>().data(), d.b, d.s, d.hkv, d.dv, lds, vtp);          // (B, Hkv, Dv, lds)
    ToHeadMajor(ctx, d_o.flat<T>().data(), d.b, d.t, d.h, d.dv, dop);                 // (B, H, T, Dv)
    const float* bp = bias.flat<float>().data();
    const Visibility vis(ctx, d, bp, kBlockK);
    const int64_t n_rows = d.b * d.h * d.t;
    float* shift = rows.flat<float>().data();
    float* inv_l = shift + n_rows;
    float* delta = inv_l + n_rows;
    const float scale = scale_;
    const int64_t nqb = d.q_blocks(), nkb = vis.k_blocks, g = d.group();
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;

    // Row statistics. A row with a visible key: p = exp(z − lse). A fully masked row has
    // lse = −1e9 + log(S), which rounds to −1e9 in fp32, so exp(z − lse) would be 1 instead of
    // 1/S: recompute its max and sum over every key (padding queries only: rare and cheap).
    const T* o_p = o.flat<T>().data();
    const float* lse_p = lse.flat<float>().data();
    const float* dlse_p = d_lse.flat<float>().data();
    pool->ParallelFor(n_rows, 2 * d.dv + 4, [&](int64_t r0, int64_t r1) {
      std::vector<float> z;
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
        tile::Qk(1, qp + r * d.dk, d.dk, ktp + (bi * d.hkv + hi / g) * d.dk * lds, lds, d.s, z.data(), d.s);
        auto zr = Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(z.data(), d.s);
        AddBias(zr, bp + d.bias_row(bi, ti) * d.s, d.s);
        shift[r] = zr.maxCoeff();
        inv_l[r] = 1.f / tile::ExpRow(z.data(), d.s, shift[r]);
      }
    });

    // Recomputes p (nq, nk) for query rows [q0, q0 + nq) of head bh against key block kb into
    // pt, and dp = do·vᵀ into dst turned into ds = p ⊙ (dp − D) in place (both ld kBlockK).
    auto probs_and_ds = [&](int64_t bh, int64_t bi, int64_t bkv, int64_t q0, int64_t nq, int64_t kb, float* pt,
                            float* dst) {
      const int64_t k0 = kb * kBlockK, nk = std::min(kBlockK, d.s - k0);
      const int64_t rq = bh * d.t + q0;
      const float* kth = ktp + bkv * d.dk * lds + k0;
      const float* vth = vtp + bkv * d.dv * lds + k0;
      for (int64_t r0 = 0; r0 < nq; r0 += tile::kMaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(tile::kMaxRows, nq - r0));
        tile::Qk(rows, qp + (rq + r0) * d.dk, d.dk, kth, lds, nk, pt + r0 * kBlockK, kBlockK);
        tile::Qk(rows, dop + (rq + r0) * d.dv, d.dv, vth, lds, nk, dst + r0 * kBlockK, kBlockK);
      }
      const bool zero = vis.Zero(d, bi, q0, q0 + nq, kb);
      for (int64_t i = 0; i < nq; ++i) {
        auto row = Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(pt + i * kBlockK, nk);
        auto ds = Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(dst + i * kBlockK, nk);
        if (!zero) AddBias(row, bp + d.bias_row(bi, q0 + i) * d.s + k0, nk);
        tile::ExpRow(row.data(), nk, shift[rq + i]);
        row *= inv_l[rq + i];
        ds = row * (ds - delta[rq + i]);
      }
    };

    // dk, dv of key block kb of (bi, kv head kvh), summing over the group's heads and the query
    // blocks in order; with dq_acc (the group's (G, T, Dk) fp32 rows) also adds ds·k into dq.
    struct Scratch {
      std::vector<float> pt, dst, dk, dv;
      explicit Scratch(const Dims& d)
          : pt(kBlockQ * kBlockK), dst(kBlockQ * kBlockK), dk(kBlockK * d.dk), dv(kBlockK * d.dv) {}
    };
    T* dkp = dk->flat<T>().data();
    T* dvp = dv->flat<T>().data();
    auto key_block = [&](int64_t bi, int64_t kvh, int64_t kb, float* dq_acc, Scratch* w) {
      const int64_t bkv = bi * d.hkv + kvh;
      const int64_t k0 = kb * kBlockK, nk = std::min(kBlockK, d.s - k0);
      float* dkb = w->dk.data();                                                // (nk, Dk)
      float* dvb = w->dv.data();                                                // (nk, Dv)
      std::fill(dkb, dkb + nk * d.dk, 0.f);
      std::fill(dvb, dvb + nk * d.dv, 0.f);
      for (int64_t gi = 0; gi < g; ++gi) {
        const int64_t bh = bi * d.h + kvh * g + gi;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, d.t - q0);
          if (!vis.Needed(d, bi, q0, q0 + nq, kb)) continue;
          probs_and_ds(bh, bi, bkv, q0, nq, kb, w->pt.data(), w->dst.data());
          const int64_t rq = bh * d.t + q0;
          for (int64_t c0 = 0; c0 < nk; c0 += tile::kMaxRows) {    // key rows: dv += pᵀ·do, dk += dsᵀ·q_s
            const int rows = static_cast<int>(std::min<int64_t>(tile::kMaxRows, nk - c0));
            tile::Pv(rows, w->pt.data() + c0, 1, kBlockK, nq, dop + rq * d.dv, d.dv, d.dv, dvb + c0 * d.dv, d.dv);
            tile::Pv(rows, w->dst.data() + c0, 1, kBlockK, nq, qp + rq * d.dk, d.dk, d.dk, dkb + c0 * d.dk, d.dk);
          }
          if (dq_acc != nullptr) {                                  // query rows: dq += ds·k
            for (int64_t r0 = 0; r0 < nq; r0 += tile::kMaxRows) {
              const int rows = static_cast<int>(std::min<int64_t>(tile::kMaxRows, nq - r0));
              tile::Pv(rows, w->dst.data() + r0 * kBlockK, kBlockK, 1, nk, kp + (bkv * d.s + k0) * d.dk, d.dk, d.dk,
                       dq_acc + (gi * d.t + q0 + r0) * d.dk, d.dk);
            }
          }
        }
      }
      for (int64_t i = 0; i < nk; ++i) {
        T* dkr = dkp + ((bi * d.s + k0 + i) * d.hkv + kvh) * d.dk;
        T* dvr = dvp + ((bi * d.s + k0 + i) * d.hkv + kvh) * d.dv;
        for (int64_t j = 0; j < d.dk; ++j) dkr[j] = static_cast<T>(dkb[i * d.dk + j]);   // q_s carries the scale
        for (int64_t j = 0; j < d.dv; ++j) dvr[j] = static_cast<T>(dvb[i * d.dv + j]);
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
      // while it has ds. Chosen by shape, never by thread count.
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
      Scratch w(d);
      std::vector<float> dqm(kBlockQ * d.dk);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / nqb, qb = item % nqb, bi = bh / d.h, hi = bh % d.h;
        const int64_t bkv = bi * d.hkv + hi / g;
        const int64_t q0 = qb * kBlockQ, nq = std::min(kBlockQ, d.t - q0);
        std::fill(dqm.begin(), dqm.end(), 0.f);
        for (int64_t kb = 0; kb < nkb; ++kb) {
          if (!vis.Needed(d, bi, q0, q0 + nq, kb)) continue;
          const int64_t k0 = kb * kBlockK, nk = std::min(kBlockK, d.s - k0);
          probs_and_ds(bh, bi, bkv, q0, nq, kb, w.pt.data(), w.dst.data());
          for (int64_t r0 = 0; r0 < nq; r0 += tile::kMaxRows) {
            const int rows = static_cast<int>(std::min<int64_t>(tile::kMaxRows, nq - r0));
            tile::Pv(rows, w.dst.data() + r0 * kBlockK, kBlockK, 1, nk, kp + (bkv * d.s + k0) * d.dk, d.dk, d.dk,
                     dqm.data() + r0 * d.dk, d.dk);
          }
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

#if GOOGLE_CUDA
namespace {

// The same ops on a GPU: ../cuda/attention.cu.cc's launchers on TF's stream (shapes checked here,
// on the host, by the CPU kernels' GetDims).
template <typename T>
class AttentionGpuOp : public OpKernel {
 public:
  explicit AttentionGpuOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, c->GetAttr("scale", &scale_)); }

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
    const int code = AttentionGpu(GpuStream(ctx), kDType<T>, d.b, d.t, d.h, d.s, d.hkv, d.dk, d.dv, d.bb, d.bt, scale_,
                                  q.tensor_data().data(), k.tensor_data().data(), v.tensor_data().data(),
                                  bias.flat<float>().data(), const_cast<char*>(out->tensor_data().data()),
                                  lse->flat<float>().data());
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineAttention"));
  }

 private:
  float scale_;
};

template <typename T>
class AttentionGradGpuOp : public OpKernel {
 public:
  explicit AttentionGradGpuOp(OpKernelConstruction* c) : OpKernel(c) {
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
    Tensor *dq = nullptr, *dk = nullptr, *dv = nullptr, scratch;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, q.shape(), &dq));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, k.shape(), &dk));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, v.shape(), &dv));
    // per (b, h, t) row: softmax shift, 1 / l, D and whether the row sees a key
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({4, d.b, d.h, d.t}), &scratch));
    const int code = AttentionGradGpu(
        GpuStream(ctx), kDType<T>, d.b, d.t, d.h, d.s, d.hkv, d.dk, d.dv, d.bb, d.bt, scale_, q.tensor_data().data(),
        k.tensor_data().data(), v.tensor_data().data(), bias.flat<float>().data(), o.tensor_data().data(),
        lse.flat<float>().data(), d_o.tensor_data().data(), d_lse.flat<float>().data(),
        scratch.flat<float>().data(), const_cast<char*>(dq->tensor_data().data()),
        const_cast<char*>(dk->tensor_data().data()), const_cast<char*>(dv->tensor_data().data()));
    OP_REQUIRES_OK(ctx, CudaStatus(code, "SeeklineAttentionGrad"));
  }

 private:
  float scale_;
};

}  // namespace

#define REGISTER_GPU(T)                                                                                         \
  REGISTER_KERNEL_BUILDER(Name("SeeklineAttention").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"),     \
                          AttentionGpuOp<T>);                                                                   \
  REGISTER_KERNEL_BUILDER(Name("SeeklineAttentionGrad").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), \
                          AttentionGradGpuOp<T>);
REGISTER_GPU(float)
REGISTER_GPU(Eigen::bfloat16)
REGISTER_GPU(Eigen::half)
#undef REGISTER_GPU
#endif  // GOOGLE_CUDA

}  // namespace seekline
