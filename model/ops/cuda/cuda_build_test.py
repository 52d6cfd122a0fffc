"""build_cuda: nvcc discovery, arch filtering, error reporting, and a real compile + link.

The real-nvcc tests build the launchers and a host check program (naive double-precision CPU
references for GEMM, RMSNorm forward/grad and MLA latent attention). Without a GPU the program is only built (and run
to see that it reports the missing device instead of crashing); with one it also checks numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from model.ops.cuda import build_cuda

needs_nvcc = pytest.mark.skipif(build_cuda.nvcc_path() is None, reason="nvcc not installed")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

LAUNCHERS = (
    "seekline::GemmGpu(void*, seekline::DType, bool, bool, long, long, long, void const*, void const*, void*)",
    "seekline::RmsNormGpu(void*, seekline::DType, long, long, float, void const*, void const*, void*)",
    "seekline::RmsNormGradGpu(void*, seekline::DType, long, long, float, void const*, void const*, "
    "void const*, void*, void*)",
    "seekline::MlaLatentAttentionGpu(void*, seekline::DType, long, long, long, long, long, long, long, long, "
    "float, void const*, void const*, void const*, void const*, float const*, void*)",
)
NO_DEVICE_EXIT = 77  # the check program's "no usable GPU" exit status


def _fake_nvcc(directory: Path, script: str) -> Path:
    """An executable `nvcc` shell script in directory."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nvcc"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_nvcc_path_falls_back_to_cuda_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    assert build_cuda.nvcc_path() is None
    fake = _fake_nvcc(tmp_path / "cuda" / "bin", "exit 0\n")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert build_cuda.nvcc_path() == str(fake)


def test_missing_nvcc_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    with pytest.raises(build_cuda.CudaBuildError, match="nvcc not found"):
        build_cuda.compile_cuda(tmp_path / "out")


def test_gencode_keeps_only_supported_archs(tmp_path):
    # An nvcc that no longer knows compute_80: only sm_90 SASS + compute_90 PTX remain.
    fake = _fake_nvcc(tmp_path, 'echo compute_75; echo compute_90; echo compute_100\n')
    assert build_cuda._gencode_flags(str(fake)) == ["-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
    both = _fake_nvcc(tmp_path / "new", "printf 'compute_80\\ncompute_86\\ncompute_90\\n'\n")
    assert build_cuda._gencode_flags(str(both)) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=[sm_90,compute_90]"]
    old = _fake_nvcc(tmp_path / "old", "echo compute_60\n")
    with pytest.raises(build_cuda.CudaBuildError, match="supports none"):
        build_cuda._gencode_flags(str(old))


def test_compile_failure_carries_stderr_tail(tmp_path, monkeypatch):
    # Arch listing works, compiling fails with a message that must reach the exception.
    _fake_nvcc(tmp_path / "bin", 'case "$1" in --list-gpu-arch) echo compute_90;; '
               '*) echo "gemm.cu.cc(12): error: boom" >&2; exit 2;; esac\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    with pytest.raises(build_cuda.CudaBuildError, match=r"(?s)exit 2.*error: boom"):
        build_cuda.compile_cuda(tmp_path / "out")


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    return build_cuda.compile_cuda(tmp_path_factory.mktemp("cuda_objs"))


@needs_nvcc
def test_compile_defines_the_launchers(objects):
    assert [p.name for p in objects] == ["gemm.cu.o", "mla_decode.cu.o", "rms_norm.cu.o"]
    nm = subprocess.run(["nm", "-C", *map(str, objects)], capture_output=True, text=True, check=True).stdout
    defined = {line.split(" ", 2)[2] for line in nm.splitlines() if line.count(" ") >= 2 and line.split(" ")[1] == "T"}
    for symbol in LAUNCHERS:
        assert symbol in defined, f"{symbol} not defined; got {sorted(d for d in defined if 'seekline' in d)}"


@needs_nvcc
def test_link_flags_point_at_static_cudart():
    flags = build_cuda.cudart_link_flags()
    assert flags[1:] == ["-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    assert flags[0].startswith("-L") and (Path(flags[0][2:]) / "libcudart_static.a").is_file()


@needs_nvcc
@needs_gxx
def test_shared_library_links_with_no_undefined_symbols(objects, tmp_path):
    # What the op library link does: PIC objects + static cudart into a .so, every symbol resolved.
    lib = tmp_path / "libseekline_cuda_check.so"
    cmd = ["g++", "-shared", "-Wl,-z,defs", "-o", str(lib), *map(str, objects), *build_cuda.cudart_link_flags()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    deps = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    assert "libcudart" not in deps  # the runtime is inside the library, not a loader dependency


@needs_nvcc
@needs_gxx
def test_check_program_builds_and_runs(objects, tmp_path):
    src = tmp_path / "check.cc"
    src.write_text(CHECK_PROGRAM)
    exe = tmp_path / "check"
    link = build_cuda.cudart_link_flags()
    cuda_include = Path(link[0][2:]).parent / "include"  # lib64 or targets/<arch>/lib -> its include
    cmd = ["g++", "-std=c++17", "-O1", "-I", str(build_cuda.CC_DIR), "-I", str(cuda_include), str(src),
           *map(str, objects), "-o", str(exe), *link]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    if run.returncode == NO_DEVICE_EXIT:
        pytest.skip(f"built; no GPU to run it on ({run.stdout.strip()})")
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stdout + run.stderr


def _rewrite_launches(source: str) -> str:
    """`K<<<grid, block, shmem, stream>>>(args)` -> `::emu::Launch(dim3(grid), dim3(block), shmem, &K, args)`,
    and `extern __shared__ T name[];` -> a pointer to the launch's dynamic shared memory."""
    def launch(match: re.Match) -> str:
        config = [part.strip() for part in match.group(2).split(",")]
        assert len(config) == 4, f"unexpected launch configuration {config}"
        return f"::emu::Launch(dim3({config[0]}), dim3({config[1]}), {config[2]}, &{match.group(1)}, "
    out, count = re.subn(r"([A-Za-z_]\w*(?:<[^<>]*>)?)<<<([^>]*)>>>\(", launch, source)
    assert count > 0, "no kernel launches found"
    return re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* \2 = static_cast<\1*>(::emu::dynamic_shared);", out)


@needs_gxx
@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", ["address,undefined", "thread"])
def test_kernels_on_cpu_emulation(tmp_path, sanitizer):
    # The real .cu.cc sources, compiled by g++ against a CUDA emulation (one std::thread per CUDA
    # thread, std::barrier for __syncthreads and warp shuffles, blocks run one after another), run
    # the check program: index math, bounds checks, the scratch-in-dx trick and the reductions are
    # all exercised without a GPU. AddressSanitizer catches out-of-bounds loads and stores,
    # ThreadSanitizer a missing __syncthreads around shared memory. Float rounding differs from a
    # GPU only by FMA contraction, far inside the tolerances.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "cuda_emu.h").write_text(CUDA_EMULATION)
    for header in ("cuda_runtime.h", "cuda_bf16.h", "cuda_fp16.h"):
        (shim / header).write_text('#include "cuda_emu.h"\n')
    units = []
    for src in build_cuda.sources():
        unit = tmp_path / (src.name[: -len(".cu.cc")] + "_emu.cc")
        unit.write_text(_rewrite_launches(src.read_text()))
        units.append(unit)
    (tmp_path / "check.cc").write_text(CHECK_PROGRAM)
    exe = tmp_path / "check_emu"
    # -I shim first so its cuda_*.h win; the sources' "../cc/kernels.h" resolves via CUDA_DIR.
    recover = ["-fno-sanitize-recover=undefined"] if "undefined" in sanitizer else []
    cmd = ["g++", "-std=c++20", "-O1", "-g", "-pthread", f"-fsanitize={sanitizer}", *recover, "-Wno-unknown-pragmas",
           "-I", str(shim), "-I", str(build_cuda.CUDA_DIR), "-I", str(build_cuda.CC_DIR), str(tmp_path / "check.cc"),
           *map(str, units), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "TSAN_OPTIONS": "halt_on_error=1"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), (run.stdout + run.stderr)[-4000:]


# Just enough of the CUDA runtime and device language for the launchers and the check program.
CUDA_EMULATION = r"""
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // one block runs at a time, so a static is that block's shared memory
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef struct EmuStream* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidConfiguration = 9
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* barrier = nullptr;
inline std::vector<float> exchange;  // one slot per thread for __shfl_xor_sync
inline cudaError_t last_error = cudaSuccess;
inline void* dynamic_shared = nullptr;  // the running launch's dynamic shared memory (exact size, for ASan)

template <typename... P, typename... A>
void Launch(dim3 grid, dim3 block, size_t shared_bytes, void (*kernel)(P...), A... args) {
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || grid.x > 2147483647u || shared_bytes > 48 * 1024) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  std::vector<float> dyn(shared_bytes / sizeof(float), std::nanf(""));  // garbage until written
  dynamic_shared = dyn.empty() ? nullptr : dyn.data();
  grid_dim = grid;
  block_dim = block;
  std::barrier<> sync(threads);
  barrier = &sync;
  exchange.assign(threads + 32, std::nanf(""));
  // One std::thread per CUDA thread of a block; together they run the blocks one after another,
  // meeting at a barrier between blocks so the static "shared memory" is never used by two.
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      thread_idx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            block_idx = dim3(bx, by, bz);
            kernel(args...);
            sync.arrive_and_wait();
          }
    });
  }
  for (auto& th : pool) th.join();
}
}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncthreads() { emu::barrier->arrive_and_wait(); }
inline unsigned EmuLinearThread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
// Every thread of the block must call this together (true of the kernels' warp reductions).
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  const unsigned t = EmuLinearThread();
  emu::exchange[t] = v;
  __syncthreads();
  const float other = emu::exchange[t ^ static_cast<unsigned>(lane_mask)];
  __syncthreads();
  return other;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

struct __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}
struct __half { _Float16 v; };
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half(float f) { return {static_cast<_Float16>(f)}; }

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorName(cudaError_t) { return "emulated"; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes);
  if (*p) std::memset(*p, 0xa5, bytes);  // garbage, like fresh device memory
  return *p ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMemset(void* p, int v, size_t bytes) { std::memset(p, v, bytes); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t bytes, cudaMemcpyKind) {
  if (bytes > 0) std::memcpy(d, s, bytes);  // empty vectors may hand over nullptr
  return cudaSuccess;
}
"""


# Host program: random inputs rounded to the storage type, naive double-precision references, every
# output buffer pre-filled with NaN so unwritten elements fail. 16-bit types travel as raw bits:
# bf16 rounded by hand (RNE), fp16 through the compiler's _Float16 (also RNE).
CHECK_PROGRAM = r"""
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
      }
  bad += CheckGemm(DType::kFloat, false, false, 0, 7, 5);  // nothing to do
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckRmsNorm(t, 5, 77);
    bad += CheckRmsNorm(t, 9, 1000);  // dim > threads per row: strided loop
    bad += CheckRmsNorm(t, 37, 1);    // 16-bit types: no room for the r scratch in dx
  }
  for (DType t : {DType::kFloat, DType::kBFloat16, DType::kHalf}) {
    bad += CheckMla(t, 2, 3, 3, 37, 5, 77, 1, 1, -1);  // bias (1,1,1,S), odd C/R/S, T > 1
    bad += CheckMla(t, 2, 3, 3, 37, 5, 77, 2, 3, 5);   // bias (B,1,T,S); bias row (b=1, t=2) fully masked
    bad += CheckMla(t, 3, 1, 2, 300, 7, 1, 3, 1, 1);   // decode: S == 1 (its only key masked), C > threads
  }
  bad += CheckMla(DType::kFloat, 1, 2, 2, 3, 0, 40, 1, 2, -1);      // R == 0, bias (1,1,T,S)
  bad += CheckMla(DType::kBFloat16, 1, 1, 2, 3, 1, 13001, 1, 1, -1);  // S past shared memory: global scratch
  std::printf(bad ? "FAILED %d\n" : "OK\n", bad);
  return bad ? 1 : 0;
}
"""
