// Register-blocked fp32 tile products for the fused attention kernel (attention.cc).
//
// Why not Eigen here: the attention tiles are small (R query rows x a run of <= 512 keys, depth
// Dk or the run length) and Eigen's general product packs both operands on every call — in the
// profile of the fused forward, packing was 8% and the GEMM kernel ran at ~60% of the machine's
// fp32 peak. These kernels read the operands in place (K stored transposed, Dk-major, so a key
// run is contiguous), keep an R x 32 block of results in registers and write it once.
//
//   QkRows<R>:  z (R, nk)  = q (R, Dk) · kt[:, 0:nk]        kt (Dk, lds), keys contiguous
//   PvRows<R>:  a (R, Dv) += p (R, nk) · v (nk, Dv)          v rows contiguous (ld ldv);
//               p's element (r, j) at p[r·prs + j·pcs], so pᵀ (a tile read by columns) works too
//
// With AVX-512 (the library is built with -march of the machine that runs it) 32 columns are two
// zmm registers per row and ragged edges use masked loads/stores; without it (AVX2 machines) the
// same products go through Eigen on strided maps — the speed the op had before these kernels.
#ifndef SEEKLINE_OPS_CC_TILE_GEMM_H_
#define SEEKLINE_OPS_CC_TILE_GEMM_H_

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "Eigen/Core"

namespace seekline {
namespace tile {

#if defined(__AVX512F__)

// Lanes [0, w) of a 16-wide vector, for w in [0, 16+).
inline __mmask16 Lanes(int64_t w) {
  return w >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << std::max<int64_t>(w, 0)) - 1);
}

template <int R>
inline void QkRows(const float* q, int64_t dk, const float* kt, int64_t lds, int64_t nk, float* z, int64_t ldz) {
  for (int64_t j = 0; j < nk; j += 32) {
    const __mmask16 m0 = Lanes(nk - j), m1 = Lanes(nk - j - 16);
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm512_setzero_ps();
      a1[r] = _mm512_setzero_ps();
    }
    const float* kc = kt + j;
    for (int64_t d = 0; d < dk; ++d, kc += lds) {
      const __m512 k0 = _mm512_maskz_loadu_ps(m0, kc), k1 = _mm512_maskz_loadu_ps(m1, kc + 16);
      for (int r = 0; r < R; ++r) {
        const __m512 qb = _mm512_set1_ps(q[r * dk + d]);
        a0[r] = _mm512_fmadd_ps(qb, k0, a0[r]);
        a1[r] = _mm512_fmadd_ps(qb, k1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(z + r * ldz + j, m0, a0[r]);
      _mm512_mask_storeu_ps(z + r * ldz + j + 16, m1, a1[r]);
    }
  }
}

template <int R>
inline void PvRows(const float* p, int64_t prs, int64_t pcs, int64_t nk, const float* v, int64_t ldv, int64_t dv,
                   float* a, int64_t lda) {
  for (int64_t c = 0; c < dv; c += 32) {
    const __mmask16 m0 = Lanes(dv - c), m1 = Lanes(dv - c - 16);
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm512_maskz_loadu_ps(m0, a + r * lda + c);
      a1[r] = _mm512_maskz_loadu_ps(m1, a + r * lda + c + 16);
    }
    const float* vc = v + c;
    for (int64_t j = 0; j < nk; ++j, vc += ldv) {
      const __m512 v0 = _mm512_maskz_loadu_ps(m0, vc), v1 = _mm512_maskz_loadu_ps(m1, vc + 16);
      for (int r = 0; r < R; ++r) {
        const __m512 pb = _mm512_set1_ps(p[r * prs + j * pcs]);
        a0[r] = _mm512_fmadd_ps(pb, v0, a0[r]);
        a1[r] = _mm512_fmadd_ps(pb, v1, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(a + r * lda + c, m0, a0[r]);
      _mm512_mask_storeu_ps(a + r * lda + c + 16, m1, a1[r]);
    }
  }
}


#else  // without AVX-512 (AVX2 machines): Eigen's general product on strided maps, on tiles of
      // up to 64 rows (kMaxRows below), where its packing pays off — the op's speed before
      // these kernels

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline void Qk(int rows, const float* q, int64_t dk, const float* kt, int64_t lds, int64_t nk, float* z, int64_t ldz) {
  Eigen::Map<RowMat, 0, Eigen::OuterStride<>>(z, rows, nk, Eigen::OuterStride<>(ldz)).noalias() =
      Eigen::Map<const RowMat>(q, rows, dk) *
      Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>(kt, dk, nk, Eigen::OuterStride<>(lds));
}

inline void Pv(int rows, const float* p, int64_t prs, int64_t pcs, int64_t nk, const float* v, int64_t ldv, int64_t dv,
               float* a, int64_t lda) {
  // p is either row-major (pcs == 1) or a transposed view (prs == 1): both unit-stride maps, so
  // Eigen takes its packed GEMM path.
  using ColMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  auto out = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>(a, rows, dv, Eigen::OuterStride<>(lda));
  const auto vm = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>(v, nk, dv, Eigen::OuterStride<>(ldv));
  if (pcs == 1) {
    out.noalias() += Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>(p, rows, nk, Eigen::OuterStride<>(prs)) * vm;
  } else {
    out.noalias() += Eigen::Map<const ColMat, 0, Eigen::OuterStride<>>(p, rows, nk, Eigen::OuterStride<>(pcs)) * vm;
  }
}

constexpr int kMaxRows = 64;

#endif

// row[j] = exp(row[j] - shift) for j < n, returning the sum of the new values. shift is the
// row's max (or its log-sum-exp), so every argument is <= 0 (or a little above it for the lse);
// arguments below -120 give exactly 0, as the reference's exp(-1e9) does for masked keys.
#if defined(__AVX512F__)
inline __m512 Exp(__m512 x) {
  // e^x = 2^n · e^r with n = round(x / ln 2), r = x - n·ln 2 in [-ln2/2, ln2/2] (ln 2 split in a
  // high and a low part so r is exact to fp32), e^r by its degree-6 Taylor polynomial (relative
  // error < 2e-7 on that interval), 2^n applied by vscalefps (no exponent-bit arithmetic: n far
  // below the fp32 range gives 0).
  x = _mm512_max_ps(x, _mm512_set1_ps(-120.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline float ExpRow(float* row, int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = Lanes(n - j);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), s));
    _mm512_mask_storeu_ps(row + j, m, e);
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}
#else
inline float ExpRow(float* row, int64_t n, float shift) {
  auto r = Eigen::Map<Eigen::Array<float, 1, Eigen::Dynamic>>(row, n);
  r = (r - shift).exp();
  return r.sum();
}
#endif

#if defined(__AVX512F__)
// Runtime row count (1..kMaxRows) -> the kernel instantiated for it.
constexpr int kMaxRows = 8;

inline void Qk(int rows, const float* q, int64_t dk, const float* kt, int64_t lds, int64_t nk, float* z, int64_t ldz) {
  switch (rows) {
    case 8: QkRows<8>(q, dk, kt, lds, nk, z, ldz); break;
    case 7: QkRows<7>(q, dk, kt, lds, nk, z, ldz); break;
    case 6: QkRows<6>(q, dk, kt, lds, nk, z, ldz); break;
    case 5: QkRows<5>(q, dk, kt, lds, nk, z, ldz); break;
    case 4: QkRows<4>(q, dk, kt, lds, nk, z, ldz); break;
    case 3: QkRows<3>(q, dk, kt, lds, nk, z, ldz); break;
    case 2: QkRows<2>(q, dk, kt, lds, nk, z, ldz); break;
    default: QkRows<1>(q, dk, kt, lds, nk, z, ldz); break;
  }
}

inline void Pv(int rows, const float* p, int64_t prs, int64_t pcs, int64_t nk, const float* v, int64_t ldv, int64_t dv,
               float* a, int64_t lda) {
  switch (rows) {
    case 8: PvRows<8>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    case 7: PvRows<7>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    case 6: PvRows<6>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    case 5: PvRows<5>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    case 4: PvRows<4>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    case 3: PvRows<3>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    case 2: PvRows<2>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
    default: PvRows<1>(p, prs, pcs, nk, v, ldv, dv, a, lda); break;
  }
}
#endif

}  // namespace tile
}  // namespace seekline

#endif  // SEEKLINE_OPS_CC_TILE_GEMM_H_
