// seekline CUDA launchers: the host check program (cuda_build_test.py builds it; on a GPU machine
// bench/bench_cuda_kernels.py builds and runs it, also under compute-sanitizer). Built for the CPU
// emulation (-DSEEKLINE_CUDA_EMULATION) it leaves out the shapes that exist for the tensor-core paths.
//
// Host program: random inputs rounded to the storage type, naive double-precision references, every
// output buffer pre-filled with NaN so unwritten elements fail. 16-bit types travel as raw bits:
// bf16 rounded by hand (RNE), fp16 through the compiler's _Float16 (also RNE).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels.h"

using seekline::DType;

static uint32_t g_seed = 12345u;
static float Uniform() {  // [-1, 1)
  g_seed = g_seed * 1664525u + 1013904223u;
  return static_cast<float>(g_seed >> 8) / 8388608.0f - 1.0f;
}

static float Bf16Round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}
static size_t Size(DType t) { return t == DType::kFloat ? 4 : 2; }

static float Round(float f, DType t) {
  if (t == DType::kBFloat16) return Bf16Round(f);
  if (t == DType::kHalf) return static_cast<float>(static_cast<_Float16>(f));
  return f;
}
static uint16_t ToBits(float f, DType t) {  // f is already representable in t
  uint16_t bits;
  if (t == DType::kHalf) {
    const _Float16 h = static_cast<_Float16>(f);
    std::memcpy(&bits, &h, 2);
  } else {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = static_cast<uint16_t>(u >> 16);
  }
  return bits;
}
static float FromBits(uint16_t bits, DType t) {
  if (t == DType::kHalf) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<float>(h);
  }
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static std::vector<float> Random(size_t n, DType t, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = Round(scale * Uniform(), t);
  return v;
}

static void* Upload(const std::vector<float>& v, DType t) {
  void* d = nullptr;
  // Exact sizes (1 byte for empty) so the CPU emulation's AddressSanitizer sees any overrun.
  if (cudaMalloc(&d, v.empty() ? 1 : v.size() * Size(t)) != cudaSuccess) return nullptr;
  if (t == DType::kFloat) {
    cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice);
  } else {
    std::vector<uint16_t> bits(v.size());
    for (size_t i = 0; i < v.size(); ++i) bits[i] = ToBits(v[i], t);
    cudaMemcpy(d, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice);
  }
  return d;
}

static void* NanBuffer(size_t n, DType t) {  // 0xff.. is NaN in fp32, bf16 and fp16
  void* d = nullptr;
  cudaMalloc(&d, n == 0 ? 1 : n * Size(t));
  cudaMemset(d, 0xff, n * Size(t));
  return d;
}

static std::vector<float> Download(const void* d, size_t n, DType t) {
  std::vector<float> v(n);
  if (t == DType::kFloat) {
    cudaMemcpy(v.data(), d, n * 4, cudaMemcpyDeviceToHost);
  } else {
    std::vector<uint16_t> bits(n);
    cudaMemcpy(bits.data(), d, n * 2, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; ++i) v[i] = FromBits(bits[i], t);
  }
  return v;
}

static int Compare(const char* what, const std::vector<float>& got, const std::vector<double>& want, DType t) {
  // Output rounding dominates: bf16 keeps 8 significant bits, fp16 11.
  const double tol = t == DType::kFloat ? 1e-4 : t == DType::kHalf ? 2e-3 : 1.6e-2;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= tol * (1.0 + std::fabs(want[i])))) {
      std::printf("FAIL %s [%zu]: got %g want %g\n", what, i, got[i], want[i]);
      return 1;
    }
  }
  return 0;
}

static int CheckGemm(DType t, bool ta, bool tb, int64_t m, int64_t n, int64_t k) {
  auto a = Random(m * k, t), b = Random(k * n, t);
  std::vector<double> want(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        want[i * n + j] += static_cast<double>(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
  void *da = Upload(a, t), *db = Upload(b, t), *dc = NanBuffer(m * n, t);
  int err = seekline::GemmGpu(nullptr, t, ta, tb, m, n, k, da, db, dc);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[96];
  std::snprintf(what, sizeof what, "gemm dtype=%d ta=%d tb=%d %ldx%ldx%ld", int(t), ta, tb, long(m), long(n), long(k));
  int bad = err ? (std::printf("FAIL %s: cuda error %d\n", what, err), 1) : Compare(what, Download(dc, m * n, t), want, t);
  cudaFree(da); cudaFree(db); cudaFree(dc);
  return bad;
}

// GroupedGemmGpu: group g multiplies rows [off[g], off[g+1]) of x by w[g] (k x n, or n x k when tw).
static int CheckGroupedGemm(DType t, bool tw, const std::vector<int64_t>& sizes, int64_t k, int64_t n) {
  std::vector<int64_t> off(1, 0);
  for (int64_t s : sizes) off.push_back(off.back() + s);
  const int64_t groups = static_cast<int64_t>(sizes.size()), rows = off.back();
  auto x = Random(rows * k, t), w = Random(groups * k * n, t);
  std::vector<double> want(rows * n, 0.0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t i = off[g]; i < off[g + 1]; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t p = 0; p < k; ++p)
          want[i * n + j] += static_cast<double>(x[i * k + p]) * w[g * k * n + (tw ? j * k + p : p * n + j)];
  void *dx = Upload(x, t), *dw = Upload(w, t), *dy = NanBuffer(rows * n, t);
  int err = seekline::GroupedGemmGpu(nullptr, t, tw, groups, off.data(), k, n, dx, dw, dy);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[96];
  std::snprintf(what, sizeof what, "grouped gemm dtype=%d tw=%d groups=%ld rows=%ld k=%ld n=%ld", int(t), tw,
                long(groups), long(rows), long(k), long(n));
  int bad = err ? (std::printf("FAIL %s: cuda error %d\n", what, err), 1) : Compare(what, Download(dy, rows * n, t), want, t);
  cudaFree(dx); cudaFree(dw); cudaFree(dy);
  return bad;
}

// SwigluGpu / SwigluGradGpu over n elements (g spread over [-6, 6] so σ saturates at both ends).
static int CheckSwiglu(DType t, int64_t n) {
  auto g = Random(n, t, 6.0f), u = Random(n, t), dh = Random(n, t);
  std::vector<double> h(n), dg(n), du(n);
  for (int64_t i = 0; i < n; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(g[i])));
    h[i] = g[i] * s * u[i];
    dg[i] = double(dh[i]) * u[i] * s * (1.0 + g[i] * (1.0 - s));
    du[i] = double(dh[i]) * g[i] * s;
  }
  void *dG = Upload(g, t), *dU = Upload(u, t), *dDh = Upload(dh, t);
  void *dH = NanBuffer(n, t), *dDg = NanBuffer(n, t), *dDu = NanBuffer(n, t);
  int err = seekline::SwigluGpu(nullptr, t, n, dG, dU, dH);
  if (err == 0) err = seekline::SwigluGradGpu(nullptr, t, n, dDh, dG, dU, dDg, dDu);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[64];
  std::snprintf(what, sizeof what, "swiglu dtype=%d n=%ld", int(t), long(n));
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    bad |= Compare(what, Download(dH, n, t), h, t);
    bad |= Compare(what, Download(dDg, n, t), dg, t);
    bad |= Compare(what, Download(dDu, n, t), du, t);
  }
  cudaFree(dG); cudaFree(dU); cudaFree(dDh); cudaFree(dH); cudaFree(dDg); cudaFree(dDu);
  return bad;
}

// RopeGpu forward and inverse on x (rows, heads, d), rotating channels [offset, d); the inverse of
// the forward's output must give x back (a rotation's transpose is its inverse).
static int CheckRope(DType t, int64_t rows, int64_t heads, int64_t d, int64_t offset, bool interleaved) {
  const int64_t half = (d - offset) / 2, n = rows * heads * d;
  auto x = Random(n, t);
  std::vector<float> cs(rows * half), sn(rows * half);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = (r + 1) * std::pow(10000.0, -2.0 * i / std::max<int64_t>(2 * half, 1));
      cs[r * half + i] = static_cast<float>(std::cos(angle));
      sn[r * half + i] = static_cast<float>(std::sin(angle));
    }
  std::vector<double> y(n), back(n);
  for (int64_t v = 0; v < rows * heads; ++v) {
    const int64_t r = v / heads;
    const float* xr = x.data() + v * d;
    for (int64_t j = 0; j < offset; ++j) y[v * d + j] = back[v * d + j] = xr[j];
    for (int64_t i = 0; i < half; ++i) {
      const double c = cs[r * half + i], s = sn[r * half + i];
      const double a = interleaved ? xr[offset + 2 * i] : xr[offset + i];
      const double b = interleaved ? xr[offset + 2 * i + 1] : xr[offset + half + i];
      y[v * d + offset + i] = a * c - b * s;         // written de-interleaved
      y[v * d + offset + half + i] = b * c + a * s;
      back[v * d + offset + (interleaved ? 2 * i : i)] = a;
      back[v * d + offset + (interleaved ? 2 * i + 1 : half + i)] = b;
    }
  }
  void *dX = Upload(x, t), *dY = NanBuffer(n, t), *dBack = NanBuffer(n, t);
  float *dC = nullptr, *dS = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&dC), cs.empty() ? 1 : cs.size() * 4);
  cudaMalloc(reinterpret_cast<void**>(&dS), sn.empty() ? 1 : sn.size() * 4);
  cudaMemcpy(dC, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dS, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice);
  int err = seekline::RopeGpu(nullptr, t, rows, heads, d, offset, interleaved, false, dC, dS, dX, dY);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[96];
  std::snprintf(what, sizeof what, "rope dtype=%d rows=%ld heads=%ld d=%ld offset=%ld interleaved=%d", int(t),
                long(rows), long(heads), long(d), long(offset), int(interleaved));
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    auto got = Download(dY, n, t);
    bad |= Compare(what, got, y, t);
    // The inverse applied to the rounded forward output: x up to that rounding.
    void* dGot = Upload(got, t);
    err = seekline::RopeGpu(nullptr, t, rows, heads, d, offset, interleaved, true, dC, dS, dGot, dBack);
    if (err == 0) err = cudaDeviceSynchronize();
    if (err) {
      std::printf("FAIL %s inverse: cuda error %d\n", what, err);
      bad = 1;
    } else {
      bad |= Compare(what, Download(dBack, n, t), back, t == DType::kFloat ? t : DType::kBFloat16);
    }
    cudaFree(dGot);
  }
  cudaFree(dX); cudaFree(dY); cudaFree(dBack); cudaFree(dC); cudaFree(dS);
  return bad;
}

static int CheckRmsNorm(DType t, int64_t rows, int64_t dim) {
  const float eps = 1e-6f;
  auto x = Random(rows * dim, t, 2.0f), w = Random(dim, t), dy = Random(rows * dim, t);
  std::vector<double> y(rows * dim), dx(rows * dim), dw(dim, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    double ss = 0.0, gx = 0.0;
    for (int64_t j = 0; j < dim; ++j) {
      ss += double(x[i * dim + j]) * x[i * dim + j];
      gx += double(w[j]) * dy[i * dim + j] * x[i * dim + j];
    }
    const double r = 1.0 / std::sqrt(ss / dim + eps), mean_gx = gx / dim;
    for (int64_t j = 0; j < dim; ++j) {
      const double xv = x[i * dim + j], g = double(w[j]) * dy[i * dim + j];
      y[i * dim + j] = w[j] * xv * r;
      dx[i * dim + j] = r * g - xv * r * r * r * mean_gx;
      dw[j] += dy[i * dim + j] * xv * r;
    }
  }
  void *dX = Upload(x, t), *dW = Upload(w, t), *dDy = Upload(dy, t);
  void *dY = NanBuffer(rows * dim, t), *dDx = NanBuffer(rows * dim, t), *dDw = NanBuffer(dim, t);
  int err = seekline::RmsNormGpu(nullptr, t, rows, dim, eps, dX, dW, dY);
  if (err == 0) err = seekline::RmsNormGradGpu(nullptr, t, rows, dim, eps, dDy, dX, dW, dDx, dDw);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[80];
  std::snprintf(what, sizeof what, "rms_norm dtype=%d %ldx%ld", int(t), long(rows), long(dim));
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    bad |= Compare(what, Download(dY, rows * dim, t), y, t);
    bad |= Compare(what, Download(dDx, rows * dim, t), dx, t);
    auto dw1 = Download(dDw, dim, t);
    bad |= Compare(what, dw1, dw, t);
    // Determinism: a second gradient run must give the same dw bits.
    err = seekline::RmsNormGradGpu(nullptr, t, rows, dim, eps, dDy, dX, dW, dDx, dDw);
    cudaDeviceSynchronize();
    if (err || std::memcmp(dw1.data(), Download(dDw, dim, t).data(), dim * sizeof(float)) != 0) {
      std::printf("FAIL %s: dw not reproducible\n", what);
      bad = 1;
    }
  }
  cudaFree(dX); cudaFree(dW); cudaFree(dDy); cudaFree(dY); cudaFree(dDx); cudaFree(dDw);
  return bad;
}

// MLA latent attention. Masked keys get bias -1e9; `full_mask_row` >= 0 masks every key of that bias
// row, whose reference is then the plain average of c over s (the fp32 softmax of equal scores). The
// scores buffer holds S floats: S above the launcher's shared-memory limit (~12K) takes the
// global-scratch path.
static int CheckMla(DType t, int64_t B, int64_t T, int64_t H, int64_t C, int64_t R, int64_t S, int64_t bias_b,
                    int64_t bias_t, int64_t full_mask_row) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(C + R));
  auto q = Random(B * T * H * C, t), qpe = Random(B * T * H * R, t);
  auto c = Random(B * S * C, t), kpe = Random(B * S * R, t);
  std::vector<float> bias(bias_b * bias_t * S);
  for (int64_t i = 0; i < static_cast<int64_t>(bias.size()); ++i) {
    const bool masked = i / S == full_mask_row || (i * 7 + 3) % 5 == 0;  // ~1 key in 5 (all of a row only when S == 1)
    bias[i] = masked ? -1e9f : 0.5f * Uniform();
  }
  std::vector<double> want(B * T * H * C, 0.0);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t ti = 0; ti < T; ++ti) {
      const int64_t brow = (bias_b == 1 ? 0 : bi) * bias_t + (bias_t == 1 ? 0 : ti);
      const float* bias_row = bias.data() + brow * S;
      for (int64_t hi = 0; hi < H; ++hi) {
        const int64_t row = (bi * T + ti) * H + hi;
        std::vector<double> p(S);
        if (brow == full_mask_row) {
          for (auto& v : p) v = 1.0 / S;
        } else {
          double mx = -INFINITY, sum = 0.0;
          for (int64_t s = 0; s < S; ++s) {
            double dot = 0.0;
            for (int64_t k = 0; k < C; ++k) dot += double(q[row * C + k]) * c[(bi * S + s) * C + k];
            for (int64_t k = 0; k < R; ++k) dot += double(qpe[row * R + k]) * kpe[(bi * S + s) * R + k];
            p[s] = scale * dot + bias_row[s];
            mx = std::fmax(mx, p[s]);
          }
          for (auto& v : p) sum += (v = std::exp(v - mx));
          for (auto& v : p) v /= sum;
        }
        for (int64_t s = 0; s < S; ++s)
          for (int64_t k = 0; k < C; ++k) want[row * C + k] += p[s] * c[(bi * S + s) * C + k];
      }
    }
  void *dQ = Upload(q, t), *dQpe = Upload(qpe, t), *dC = Upload(c, t), *dK = Upload(kpe, t);
  void* dBias = Upload(bias, DType::kFloat);
  void* dO = NanBuffer(B * T * H * C, t);
  int err = seekline::MlaLatentAttentionGpu(nullptr, t, B, T, H, C, R, S, bias_b, bias_t, scale, dQ, dQpe, dC, dK,
                                            static_cast<const float*>(dBias), dO);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[128];
  std::snprintf(what, sizeof what, "mla dtype=%d B=%ld T=%ld H=%ld C=%ld R=%ld S=%ld bias=(%ld,1,%ld,S)", int(t),
                long(B), long(T), long(H), long(C), long(R), long(S), long(bias_b), long(bias_t));
  int bad = err ? (std::printf("FAIL %s: cuda error %d\n", what, err), 1)
                : Compare(what, Download(dO, B * T * H * C, t), want, t);
  cudaFree(dQ); cudaFree(dQpe); cudaFree(dC); cudaFree(dK); cudaFree(dBias); cudaFree(dO);
  return bad;
}

static void* UploadInt(const std::vector<int32_t>& v) {
  void* d = nullptr;
  cudaMalloc(&d, v.empty() ? 1 : v.size() * 4);
  cudaMemcpy(d, v.data(), v.size() * 4, cudaMemcpyHostToDevice);
  return d;
}

static std::vector<int32_t> DownloadInt(const void* d, size_t n) {
  std::vector<int32_t> v(n);
  cudaMemcpy(v.data(), d, n * 4, cudaMemcpyDeviceToHost);
  return v;
}

// got[i] must be NaN exactly where want[i] is NaN, else within Compare's tolerance.
static int CompareNan(const char* what, const std::vector<float>& got, const std::vector<double>& want, DType t) {
  std::vector<float> g2(got);
  std::vector<double> w2(want);
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]) != std::isnan(got[i])) {
      std::printf("FAIL %s [%zu]: got %g want %g\n", what, i, got[i], want[i]);
      return 1;
    }
    if (std::isnan(want[i])) g2[i] = 0.0f, w2[i] = 0.0;
  }
  return Compare(what, g2, w2, t);
}

// SoftmaxXentGpu / SoftmaxXentGradGpu on (n, v) logits. Row 1 is masked out (dloss = dlse = 0:
// zeros), row 2 also has a dlse, row 3 holds a −inf logit, the last row's label is out of range
// (NaN loss and NaN gradient row). The gradient is checked from the reference lse, so it does
// not depend on the forward.
static int CheckSoftmaxXent(DType t, int64_t n, int64_t v) {
  auto x = Random(n * v, t, 8.0f);
  if (n > 3 && v > 1) x[3 * v + 1] = -INFINITY;
  std::vector<int32_t> labels(n);
  std::vector<float> dloss(n), dlse(n, 0.0f), lse_ref(n);
  for (int64_t r = 0; r < n; ++r) {
    labels[r] = static_cast<int32_t>((r * 7919) % v);
    dloss[r] = Uniform();
  }
  if (n > 1) dloss[1] = 0.0f;
  if (n > 2) dlse[2] = 0.5f;
  if (n > 4) labels[n - 1] = static_cast<int32_t>(v);  // one past the last class
  std::vector<double> loss(n), lse(n), dx(n * v);
  for (int64_t r = 0; r < n; ++r) {
    double m = -INFINITY, s = 0.0;
    for (int64_t j = 0; j < v; ++j) m = std::max(m, double(x[r * v + j]));
    for (int64_t j = 0; j < v; ++j) s += std::exp(double(x[r * v + j]) - m);
    lse[r] = m + std::log(s);
    lse_ref[r] = static_cast<float>(lse[r]);
    const bool ok = labels[r] >= 0 && labels[r] < v;
    loss[r] = ok ? lse[r] - x[r * v + labels[r]] : NAN;
    const double g = dloss[r], scale = double(dloss[r]) + dlse[r];
    for (int64_t j = 0; j < v; ++j) {
      double d = (g == 0.0 && scale == 0.0) ? 0.0 : !ok ? NAN : scale * std::exp(double(x[r * v + j]) - lse_ref[r]);
      if (ok && j == labels[r] && !(g == 0.0 && scale == 0.0)) d -= g;
      dx[r * v + j] = d;
    }
  }
  void *dX = Upload(x, t), *dL = UploadInt(labels), *dG = Upload(dloss, DType::kFloat);
  void *dH = Upload(dlse, DType::kFloat), *dLseRef = Upload(lse_ref, DType::kFloat);
  void *dLoss = NanBuffer(n, DType::kFloat), *dLse = NanBuffer(n, DType::kFloat), *dDx = NanBuffer(n * v, t);
  int err = seekline::SoftmaxXentGpu(nullptr, t, n, v, dX, static_cast<const int32_t*>(dL),
                                     static_cast<float*>(dLoss), static_cast<float*>(dLse));
  if (err == 0) {
    err = seekline::SoftmaxXentGradGpu(nullptr, t, n, v, dX, static_cast<const int32_t*>(dL),
                                       static_cast<const float*>(dLseRef), static_cast<const float*>(dG),
                                       static_cast<const float*>(dH), dDx);
  }
  if (err == 0) err = cudaDeviceSynchronize();
  char what[64];
  std::snprintf(what, sizeof what, "softmax_xent dtype=%d n=%ld v=%ld", int(t), long(n), long(v));
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    bad |= CompareNan(what, Download(dLoss, n, DType::kFloat), loss, DType::kFloat);
    bad |= CompareNan(what, Download(dLse, n, DType::kFloat), lse, DType::kFloat);
    bad |= CompareNan(what, Download(dDx, n * v, t), dx, t);
  }
  cudaFree(dX); cudaFree(dL); cudaFree(dG); cudaFree(dH); cudaFree(dLseRef); cudaFree(dLoss); cudaFree(dLse);
  cudaFree(dDx);
  return bad;
}

// A random permutation of [0, m) (Fisher–Yates on the check's generator).
static std::vector<int32_t> Permutation(int64_t m) {
  std::vector<int32_t> p(m);
  for (int64_t i = 0; i < m; ++i) p[i] = static_cast<int32_t>(i);
  for (int64_t i = m - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>((Uniform() + 1.0f) * 0.5f * (i + 1)) % (i + 1);
    std::swap(p[i], p[j]);
  }
  return p;
}

// MoeCombineGpu / MoeCombineGradGpu: n tokens, k experts each, rows of width d. `corrupt`:
// 0 a valid permutation; 1 entry 0 duplicated into entry 1 (row pos[1] unclaimed: a NaN dys row;
// pair 1 owns the shared row, pair 0's dw NaN); 2 entry 0 out of range (token 0's output row NaN, pair 0's dw NaN).
static int CheckMoeCombine(DType t, int64_t n, int64_t k, int64_t d, int corrupt = 0) {
  const int64_t m = n * k;
  auto ys = Random(m * d, t), dy = Random(n * d, t);
  std::vector<float> w(m);
  for (auto& x : w) x = Uniform();
  auto pos = Permutation(m);
  int32_t lost_row = -1;
  if (corrupt == 1) lost_row = pos[1], pos[1] = pos[0];
  if (corrupt == 2) pos[0] = static_cast<int32_t>(m);
  std::vector<double> y(n * d, 0.0), dys(m * d, NAN), dw(m, NAN);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t p = pos[r * k + j];
      if (p < 0 || p >= m) {
        for (int64_t c = 0; c < d; ++c) y[r * d + c] = NAN;
        continue;
      }
      double dot = 0.0;
      for (int64_t c = 0; c < d; ++c) {
        if (!std::isnan(y[r * d + c])) y[r * d + c] += double(w[r * k + j]) * ys[p * d + c];
        dys[p * d + c] = double(w[r * k + j]) * dy[r * d + c];
        dot += double(ys[p * d + c]) * dy[r * d + c];
      }
      dw[r * k + j] = dot;  // (corrupt == 1 checks pairs 0 and 1 by hand below)
    }
  void *dYs = Upload(ys, t), *dDy = Upload(dy, t), *dW = Upload(w, DType::kFloat), *dP = UploadInt(pos);
  void *dY = NanBuffer(n * d, t), *dDys = NanBuffer(m * d, t), *dDw = NanBuffer(m, DType::kFloat);
  void* dInv = nullptr;
  cudaMalloc(&dInv, m == 0 ? 1 : m * 4);
  int err = seekline::MoeCombineGpu(nullptr, t, n, k, d, dYs, static_cast<const float*>(dW),
                                    static_cast<const int32_t*>(dP), dY);
  if (err == 0) {
    err = seekline::MoeCombineGradGpu(nullptr, t, n, k, d, dDy, dYs, static_cast<const float*>(dW),
                                      static_cast<const int32_t*>(dP), static_cast<int32_t*>(dInv), dDys,
                                      static_cast<float*>(dDw));
  }
  if (err == 0) err = cudaDeviceSynchronize();
  char what[80];
  std::snprintf(what, sizeof what, "moe_combine dtype=%d n=%ld k=%ld d=%ld corrupt=%d", int(t), long(n), long(k),
                long(d), corrupt);
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    bad |= CompareNan(what, Download(dY, n * d, t), y, t);
    if (corrupt != 1) bad |= CompareNan(what, Download(dDys, m * d, t), dys, t);
    if (corrupt == 1) {  // the unclaimed row, and which pair owns the shared one
      auto got = Download(dDys, m * d, t);
      for (int64_t c = 0; c < d; ++c) {
        if (!std::isnan(got[lost_row * d + c])) {
          std::printf("FAIL %s: unclaimed dys row %d not NaN\n", what, lost_row);
          bad = 1;
          break;
        }
      }
      // The higher-indexed pair (1) owns the duplicated row: its dw is the dot product, pair 0's NaN.
      auto gw = Download(dDw, m, DType::kFloat);
      double want1 = 0.0;
      for (int64_t c = 0; c < d; ++c) want1 += double(ys[pos[1] * d + c]) * dy[c];
      if (!std::isnan(gw[0]) || !(std::fabs(gw[1] - want1) <= 1e-4 * (1.0 + std::fabs(want1)))) {
        std::printf("FAIL %s: duplicated pairs' dw: got %g, %g want nan, %g\n", what, gw[0], gw[1], want1);
        bad = 1;
      }
    } else {
      bad |= CompareNan(what, Download(dDw, m, DType::kFloat), dw, DType::kFloat);
    }
  }
  cudaFree(dYs); cudaFree(dDy); cudaFree(dW); cudaFree(dP); cudaFree(dY); cudaFree(dDys); cudaFree(dDw);
  cudaFree(dInv);
  return bad;
}

// RouteTopKGpu against a sort-based reference: groups ranked by (score desc, index asc), the
// kept groups' experts by (value desc, index asc). `levels` > 0 quantises the scores so ties occur.
static int CheckRoute(int64_t n, int64_t e, int top_k, int n_group, int topk_group, int mode, int levels) {
  std::vector<float> x(n * e);
  for (auto& v : x) v = levels > 0 ? std::round(Uniform() * levels) / levels : Uniform();
  if (n > 1) x[e + 1] = NAN;  // ranks as −inf
  const bool grouped = mode != 0 && n_group > 1;
  const int64_t per = grouped ? e / n_group : e;
  std::vector<int32_t> want(n * top_k);
  auto rank = [](float v) { return std::isnan(v) ? -INFINITY : v; };
  for (int64_t r = 0; r < n; ++r) {
    std::vector<float> v(e);
    for (int64_t j = 0; j < e; ++j) v[j] = rank(x[r * e + j]);
    if (grouped) {
      std::vector<float> score(n_group);
      for (int g = 0; g < n_group; ++g) {
        std::vector<float> vals(v.begin() + g * per, v.begin() + (g + 1) * per);
        std::sort(vals.begin(), vals.end(), std::greater<float>());
        score[g] = rank(mode == 1 ? vals[0] + vals[1] : vals[0]);
      }
      std::vector<int> order(n_group);
      for (int g = 0; g < n_group; ++g) order[g] = g;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
      for (int i = topk_group; i < n_group; ++i)
        for (int64_t j = 0; j < per; ++j) v[order[i] * per + j] = -INFINITY;
    }
    std::vector<int32_t> order(e);
    for (int64_t j = 0; j < e; ++j) order[j] = static_cast<int32_t>(j);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return v[a] > v[b]; });
    for (int i = 0; i < top_k; ++i) want[r * top_k + i] = order[i];
  }
  void* dX = Upload(x, DType::kFloat);
  void* dOut = nullptr;
  cudaMalloc(&dOut, n * top_k == 0 ? 1 : n * top_k * 4);
  cudaMemset(dOut, 0xff, n * top_k * 4);
  int err = seekline::RouteTopKGpu(nullptr, n, e, top_k, n_group, topk_group, mode, static_cast<const float*>(dX),
                                   static_cast<int32_t*>(dOut));
  if (err == 0) err = cudaDeviceSynchronize();
  int bad = 0;
  if (err) {
    std::printf("FAIL route n=%ld e=%ld: cuda error %d\n", long(n), long(e), err);
    bad = 1;
  } else {
    auto got = DownloadInt(dOut, n * top_k);
    for (int64_t i = 0; i < n * top_k && !bad; ++i) {
      if (got[i] != want[i]) {
        std::printf("FAIL route n=%ld e=%ld k=%d groups=%d/%d mode=%d levels=%d [%ld]: got %d want %d\n", long(n),
                    long(e), top_k, topk_group, n_group, mode, levels, long(i), got[i], want[i]);
        bad = 1;
      }
    }
  }
  cudaFree(dX); cudaFree(dOut);
  return bad;
}

// ApplyAdamWGpu: one step in place, against the formulas in double.
static int CheckAdamW(int64_t n, float decay, float grad_scale) {
  auto w = Random(n, DType::kFloat), m = Random(n, DType::kFloat, 0.1f), g = Random(n, DType::kFloat);
  std::vector<float> v(n);
  for (auto& x : v) x = 0.01f * std::fabs(Uniform());
  const float alpha = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
  std::vector<double> w2(n), m2(n), v2(n);
  for (int64_t i = 0; i < n; ++i) {
    const double gi = double(grad_scale) * g[i];
    const double wi = w[i] - double(decay) * w[i];
    m2[i] = m[i] + (gi - m[i]) * (1.0 - double(b1));
    v2[i] = v[i] + (gi * gi - v[i]) * (1.0 - double(b2));
    w2[i] = wi - double(alpha) * m2[i] / (std::sqrt(v2[i]) + eps);
  }
  void *dW = Upload(w, DType::kFloat), *dM = Upload(m, DType::kFloat), *dV = Upload(v, DType::kFloat);
  void* dG = Upload(g, DType::kFloat);
  int err = seekline::ApplyAdamWGpu(nullptr, n, static_cast<float*>(dW), static_cast<float*>(dM),
                                    static_cast<float*>(dV), static_cast<const float*>(dG), alpha, decay, b1, b2, eps,
                                    grad_scale);
  // DeviceCopyGpu (the GPU op's copy of a variable buffer a read still shares): the updated w.
  void* dCopy = NanBuffer(n, DType::kFloat);
  if (err == 0) err = seekline::DeviceCopyGpu(nullptr, n * 4, dW, dCopy);
  if (err == 0) err = cudaDeviceSynchronize();
  char what[64];
  std::snprintf(what, sizeof what, "adamw n=%ld decay=%g scale=%g", long(n), decay, grad_scale);
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    bad |= Compare(what, Download(dW, n, DType::kFloat), w2, DType::kFloat);
    bad |= Compare(what, Download(dCopy, n, DType::kFloat), w2, DType::kFloat);
    bad |= Compare(what, Download(dM, n, DType::kFloat), m2, DType::kFloat);
    bad |= Compare(what, Download(dV, n, DType::kFloat), v2, DType::kFloat);
  }
  cudaFree(dW); cudaFree(dM); cudaFree(dV); cudaFree(dG); cudaFree(dCopy);
  return bad;
}

// AttentionGpu / AttentionGradGpu against a double-precision reference. mode 0: causal bias
// (B|1, 1, T, S) with the queries at the last T of S positions; mode 1: ~1 key in 5 masked, other
// biases random; `full_row` >= 0 masks every key of that bias row (its softmax is the uniform
// average, as in fp32, and its gradient the formula's with p = 1/S). The backward is fed the
// reference o (rounded to the storage type) and lse, so it is checked apart from the forward, with
// D = Σ d_o·o − d_lse from the o it is given.
static int CheckAttention(DType t, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t S, int64_t Dk, int64_t Dv,
                          int64_t bias_b, int64_t bias_t, int mode, int64_t full_row) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dk));
  const int64_t G = H / Hkv;
  auto q = Random(B * T * H * Dk, t), k = Random(B * S * Hkv * Dk, t), v = Random(B * S * Hkv * Dv, t);
  auto d_o = Random(B * T * H * Dv, t);
  std::vector<float> d_lse(B * H * T), bias(bias_b * bias_t * S);
  for (auto& x : d_lse) x = 0.3f * Uniform();
  for (int64_t i = 0; i < static_cast<int64_t>(bias.size()); ++i) {
    const int64_t row = i / S, j = i % S, ti = row % bias_t;
    bool masked = mode == 0 ? j > ti + (S - T) : (i * 7 + 3) % 5 == 0;
    if (row == full_row) masked = true;
    bias[i] = masked ? -1e9f : (mode == 0 ? 0.0f : 0.5f * Uniform());
  }
  auto qi = [&](int64_t bi, int64_t ti, int64_t hi) { return ((bi * T + ti) * H + hi); };
  auto ki = [&](int64_t bi, int64_t j, int64_t kvh) { return ((bi * S + j) * Hkv + kvh); };
  std::vector<double> o(B * T * H * Dv, 0.0), lse(B * H * T), dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  std::vector<std::vector<double>> probs(B * H * T);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi)
      for (int64_t ti = 0; ti < T; ++ti) {
        const int64_t brow = (bias_b == 1 ? 0 : bi) * bias_t + (bias_t == 1 ? 0 : ti);
        std::vector<double>& p = probs[(bi * H + hi) * T + ti];
        p.assign(S, 0.0);
        double mx = -INFINITY, sum = 0.0;
        if (brow == full_row) {
          for (auto& x : p) x = 1.0 / S;
          lse[(bi * H + hi) * T + ti] = -1e9;
        } else {
          for (int64_t j = 0; j < S; ++j) {
            double dot = 0.0;
            for (int64_t c = 0; c < Dk; ++c) dot += double(q[qi(bi, ti, hi) * Dk + c]) * k[ki(bi, j, hi / G) * Dk + c];
            p[j] = scale * dot + bias[brow * S + j];
            mx = std::fmax(mx, p[j]);
          }
          for (auto& x : p) sum += (x = std::exp(x - mx));
          for (auto& x : p) x /= sum;
          lse[(bi * H + hi) * T + ti] = mx + std::log(sum);
        }
        for (int64_t j = 0; j < S; ++j)
          for (int64_t c = 0; c < Dv; ++c) o[qi(bi, ti, hi) * Dv + c] += p[j] * v[ki(bi, j, hi / G) * Dv + c];
      }
  std::vector<float> o_in(o.size()), lse_in(lse.size());
  for (size_t i = 0; i < o.size(); ++i) o_in[i] = Round(static_cast<float>(o[i]), t);
  for (size_t i = 0; i < lse.size(); ++i) lse_in[i] = static_cast<float>(lse[i]);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t hi = 0; hi < H; ++hi)
      for (int64_t ti = 0; ti < T; ++ti) {
        const std::vector<double>& p = probs[(bi * H + hi) * T + ti];
        const int64_t r = qi(bi, ti, hi), kvh = hi / G;
        double delta = -d_lse[(bi * H + hi) * T + ti];
        for (int64_t c = 0; c < Dv; ++c) delta += double(d_o[r * Dv + c]) * o_in[r * Dv + c];
        for (int64_t j = 0; j < S; ++j) {
          double dp = 0.0;
          for (int64_t c = 0; c < Dv; ++c) dp += double(d_o[r * Dv + c]) * v[ki(bi, j, kvh) * Dv + c];
          const double ds = p[j] * (dp - delta);
          for (int64_t c = 0; c < Dv; ++c) dv[ki(bi, j, kvh) * Dv + c] += p[j] * d_o[r * Dv + c];
          for (int64_t c = 0; c < Dk; ++c) {
            dq[r * Dk + c] += scale * ds * k[ki(bi, j, kvh) * Dk + c];
            dk[ki(bi, j, kvh) * Dk + c] += scale * ds * q[r * Dk + c];
          }
        }
      }
  void *dQ = Upload(q, t), *dK = Upload(k, t), *dV = Upload(v, t), *dBias = Upload(bias, DType::kFloat);
  void *dO = NanBuffer(o.size(), t), *dLse = NanBuffer(lse.size(), DType::kFloat);
  void *dOin = Upload(o_in, t), *dLsein = Upload(lse_in, DType::kFloat), *dDo = Upload(d_o, t);
  void *dDlse = Upload(d_lse, DType::kFloat), *dScratch = NanBuffer(4 * B * H * T, DType::kFloat);
  void *dDq = NanBuffer(q.size(), t), *dDk = NanBuffer(k.size(), t), *dDv = NanBuffer(v.size(), t);
  const float* fb = static_cast<const float*>(dBias);
  int err = seekline::AttentionGpu(nullptr, t, B, T, H, S, Hkv, Dk, Dv, bias_b, bias_t, scale, dQ, dK, dV, fb, dO,
                                   static_cast<float*>(dLse));
  if (err == 0) {
    err = seekline::AttentionGradGpu(nullptr, t, B, T, H, S, Hkv, Dk, Dv, bias_b, bias_t, scale, dQ, dK, dV, fb, dOin,
                                     static_cast<const float*>(dLsein), dDo, static_cast<const float*>(dDlse),
                                     static_cast<float*>(dScratch), dDq, dDk, dDv);
  }
  if (err == 0) err = cudaDeviceSynchronize();
  char what[160];
  std::snprintf(what, sizeof what, "attention dtype=%d B=%ld T=%ld H=%ld Hkv=%ld S=%ld Dk=%ld Dv=%ld bias=(%ld,1,%ld,S) "
                "mode=%d", int(t), long(B), long(T), long(H), long(Hkv), long(S), long(Dk), long(Dv), long(bias_b),
                long(bias_t), mode);
  int bad = 0;
  if (err) {
    std::printf("FAIL %s: cuda error %d\n", what, err);
    bad = 1;
  } else {
    std::vector<double> lse_want(lse);
    for (auto& x : lse_want) x = x < -1e8 ? -1e9 : x;  // a masked row's lse is -1e9 in fp32
    bad |= Compare(what, Download(dO, o.size(), t), o, t);
    bad |= Compare(what, Download(dLse, lse.size(), DType::kFloat), lse_want, DType::kFloat);
    bad |= Compare(what, Download(dDq, q.size(), t), dq, t);
    bad |= Compare(what, Download(dDk, k.size(), t), dk, t);
    bad |= Compare(what, Download(dDv, v.size(), t), dv, t);
  }
  for (void* p : {dQ, dK, dV, dBias, dO, dLse, dOin, dLsein, dDo, dDlse, dScratch, dDq, dDk, dDv}) cudaFree(p);
  return bad;
}

int main() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("NO_DEVICE (%s)\n", e != cudaSuccess ? cudaGetErrorName(e) : "0 devices");
    return 77;
  }
  int bad = 0;
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        bad += CheckGemm(t, ta, tb, 67, 45, 33);   // ragged in every dimension
        bad += CheckGemm(t, ta, tb, 130, 3, 1);
        bad += CheckGemm(t, ta, tb, 5, 70, 0);      // k == 0: zeros
        bad += CheckGemm(t, ta, tb, 200, 150, 70);  // several 128-tiles and k slices, ragged edges
#ifndef SEEKLINE_CUDA_EMULATION  // tensor-core paths (16-byte copies); the CPU emulation runs CUDA-core kernels only
        bad += CheckGemm(t, ta, tb, 256, 136, 96);  // multiples of 8: 16-byte copies, a partial column tile
        bad += CheckGemm(t, ta, tb, 130, 264, 40);  // 16-byte copies with ragged row and column tiles
#endif
      }
  bad += CheckGemm(DType::kFloat, false, false, 0, 7, 5);  // nothing to do
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf})
    for (int tw = 0; tw < 2; ++tw) {
      bad += CheckGroupedGemm(t, tw, {3, 0, 150, 1, 0, 64}, 33, 45);  // empty groups, one past a 128-tile
      bad += CheckGroupedGemm(t, tw, {0, 129, 7, 0}, 64, 136);        // 16-byte copies, empty first and last
      bad += CheckGroupedGemm(t, tw, {0, 0}, 8, 8);                   // no rows at all
    }
  {
    std::vector<int64_t> many(300);  // more groups than one launch's table holds
    for (size_t g = 0; g < many.size(); ++g) many[g] = static_cast<int64_t>((g * 7) % 5);
    bad += CheckGroupedGemm(DType::kBFloat16, false, many, 24, 16);
    bad += CheckGroupedGemm(DType::kFloat, true, many, 24, 16);
  }
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckRmsNorm(t, 5, 77);
    bad += CheckRmsNorm(t, 9, 1000);  // dim > threads per row: strided loop
    bad += CheckRmsNorm(t, 37, 1);    // 16-bit types: no room for the r scratch in dx
  }
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckSwiglu(t, 1000);   // several blocks, a partial last one
    bad += CheckSwiglu(t, 1);
    bad += CheckRope(t, 3, 4, 48, 32, false);  // MLA's q: [nope 32 | rope 16] per head
    bad += CheckRope(t, 3, 4, 48, 32, true);
    bad += CheckRope(t, 5, 1, 80, 64, true);   // MLA's latent row [c | k_pe], no head axis
    bad += CheckRope(t, 2, 3, 16, 0, false);   // GQA: every channel rotated
    bad += CheckRope(t, 2, 2, 6, 6, false);    // nothing to rotate: a copy
  }
  bad += CheckSwiglu(DType::kFloat, 0);  // nothing to do
  bad += CheckRope(DType::kFloat, 0, 4, 48, 32, false);
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckMla(t, 2, 3, 3, 37, 5, 77, 1, 1, -1);  // bias (1,1,1,S), odd C/R/S, T > 1
    bad += CheckMla(t, 2, 3, 3, 37, 5, 77, 2, 3, 5);   // bias (B,1,T,S); bias row (b=1, t=2) fully masked
    bad += CheckMla(t, 3, 1, 2, 300, 7, 1, 3, 1, 1);   // decode: S == 1 (its only key masked), C > threads
  }
  bad += CheckMla(DType::kFloat, 1, 2, 2, 3, 0, 40, 1, 2, -1);      // R == 0, bias (1,1,T,S)
  bad += CheckMla(DType::kBFloat16, 1, 1, 2, 3, 1, 13001, 1, 1, -1);  // S past shared memory: global scratch
#ifndef SEEKLINE_CUDA_EMULATION
  // Tensor-core path shapes (16-head groups, 32-key steps, cache splits merged by the combine kernel):
  bad += CheckMla(DType::kBFloat16, 2, 1, 20, 64, 16, 300, 2, 1, 1);   // 2 head groups (one partial), 2 splits,
                                                                     // batch 1 fully masked
  bad += CheckMla(DType::kHalf, 1, 2, 16, 512, 64, 700, 1, 2, -1);    // DeepSeek-V3's C and R, T = 2
  bad += CheckMla(DType::kBFloat16, 1, 1, 40, 64, 16, 200, 1, 1, -1);  // 64-head blocks, 24 of them empty
  bad += CheckMla(DType::kBFloat16, 1, 1, 128, 512, 64, 100, 1, 1, -1); // DeepSeek-V3's 128 heads: 2 blocks
#endif
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckSoftmaxXent(t, 6, 1000);  // v > threads per row: strided, a partial last stride
    bad += CheckSoftmaxXent(t, 6, 7);     // most threads hold no column
    bad += CheckMoeCombine(t, 9, 4, 300);  // d > threads per row
    bad += CheckMoeCombine(t, 3, 8, 5);
  }
  bad += CheckSoftmaxXent(DType::kFloat, 0, 50);  // nothing to do
  bad += CheckMoeCombine(DType::kFloat, 0, 4, 16);
  bad += CheckMoeCombine(DType::kFloat, 5, 1, 0);   // empty rows: dw = 0
  bad += CheckMoeCombine(DType::kFloat, 6, 3, 40, 1);  // duplicated pos entry
  bad += CheckMoeCombine(DType::kFloat, 6, 3, 40, 2);  // out-of-range pos entry
  bad += CheckRoute(300, 16, 4, 4, 2, 1, 0);   // the small preset's router: top-2 sum groups
  bad += CheckRoute(300, 16, 4, 4, 2, 1, 2);   // ties in values and group scores
  bad += CheckRoute(40, 64, 6, 8, 3, 2, 3);    // max-mode groups
  bad += CheckRoute(40, 256, 8, 8, 4, 1, 0);   // DeepSeek-V3's 256 experts, 8 groups, top-8
  bad += CheckRoute(300, 10, 3, 1, 1, 0, 2);   // no groups, ties
  bad += CheckRoute(0, 16, 4, 4, 2, 1, 0);     // no tokens
  bad += CheckAdamW(1000, 1e-4f, 1.0f);
  bad += CheckAdamW(77, 0.0f, 0.25f);          // no decay, a clip scale
  bad += CheckAdamW(0, 1e-4f, 1.0f);
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckAttention(t, 2, 70, 2, 1, 70, 24, 16, 1, 70, 0, -1);   // causal, 3x3 tiles of 32 (skips), GQA 2:1
    bad += CheckAttention(t, 2, 5, 3, 3, 37, 40, 24, 2, 5, 1, 7);      // random mask, bias row (b=1, t=2) fully masked
  }
  bad += CheckAttention(DType::kFloat, 1, 12, 2, 2, 30, 24, 16, 1, 1, 1, -1);   // bias (1,1,1,S), S > T
  bad += CheckAttention(DType::kHalf, 2, 70, 2, 1, 70, 24, 16, 2, 70, 0, 3);    // causal + a fully masked row: no skips for it
  bad += CheckAttention(DType::kBFloat16, 1, 20, 2, 1, 20, 192, 128, 1, 20, 0, -1);  // DeepSeek-V3's Dk / Dv: 16-tiles
  bad += CheckAttention(DType::kFloat, 1, 9, 1, 1, 9, 256, 256, 1, 9, 0, -1);   // widest heads: 8-tiles
  bad += CheckAttention(DType::kFloat, 1, 0, 2, 1, 5, 8, 8, 1, 1, 1, -1);      // no queries: dk = dv = 0
  std::printf(bad ? "FAILED %d\n" : "OK\n", bad);
  return bad ? 1 : 0;
}
