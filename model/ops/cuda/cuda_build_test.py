"""build_cuda: nvcc discovery, arch filtering, error reporting, and a real compile + link.

The real-nvcc tests build the launchers and a host check program (naive double-precision CPU
references for GEMM, RMSNorm forward/grad, MLA latent attention, causal attention forward/grad,
SwiGLU, RoPE, softmax cross-entropy, MoE combine, router top-k and AdamW). Without a GPU the program is only built (and run
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
    "seekline::GroupedGemmGpu(void*, seekline::DType, bool, long, long const*, long, long, void const*, "
    "void const*, void*)",
    "seekline::RmsNormGpu(void*, seekline::DType, long, long, float, void const*, void const*, void*)",
    "seekline::RmsNormGradGpu(void*, seekline::DType, long, long, float, void const*, void const*, "
    "void const*, void*, void*)",
    "seekline::MlaLatentAttentionGpu(void*, seekline::DType, long, long, long, long, long, long, long, long, "
    "float, void const*, void const*, void const*, void const*, float const*, void*)",
    "seekline::AttentionGpu(void*, seekline::DType, long, long, long, long, long, long, long, long, long, float, "
    "void const*, void const*, void const*, float const*, void*, float*)",
    "seekline::AttentionGradGpu(void*, seekline::DType, long, long, long, long, long, long, long, long, long, float, "
    "void const*, void const*, void const*, float const*, void const*, float const*, void const*, float const*, "
    "float*, void*, void*, void*)",
    "seekline::SwigluGpu(void*, seekline::DType, long, void const*, void const*, void*)",
    "seekline::SwigluGradGpu(void*, seekline::DType, long, void const*, void const*, void const*, void*, void*)",
    "seekline::RopeGpu(void*, seekline::DType, long, long, long, long, bool, bool, float const*, float const*, "
    "void const*, void*)",
    "seekline::SoftmaxXentGpu(void*, seekline::DType, long, long, void const*, int const*, float*, float*)",
    "seekline::SoftmaxXentGradGpu(void*, seekline::DType, long, long, void const*, int const*, float const*, "
    "float const*, float const*, void*)",
    "seekline::MoeCombineGpu(void*, seekline::DType, long, long, long, void const*, float const*, int const*, void*)",
    "seekline::MoeCombineGradGpu(void*, seekline::DType, long, long, long, void const*, void const*, float const*, "
    "int const*, int*, void*, float*)",
    "seekline::RouteTopKGpu(void*, long, long, int, int, int, int, float const*, int*)",
    "seekline::ApplyAdamWGpu(void*, long, float*, float*, float*, float const*, float, float, float, float, float, "
    "float)",
    "seekline::DeviceCopyGpu(void*, long, void const*, void*)",
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
    assert [p.name for p in objects] == ["attention.cu.o", "elementwise.cu.o", "gemm.cu.o", "mla_decode.cu.o",
                                         "moe.cu.o", "rms_norm.cu.o", "softmax_xent.cu.o"]
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
    flags = ["-std=c++20", "-O1", "-g", "-pthread", f"-fsanitize={sanitizer}", *recover, "-Wno-unknown-pragmas",
             "-DSEEKLINE_CUDA_EMULATION",
             "-I", str(shim), "-I", str(build_cuda.CUDA_DIR), "-I", str(build_cuda.CC_DIR)]
    # One g++ per translation unit, all at once, then one link: the same flags and objects as a
    # single `g++ a.cc b.cc ... -o exe` (which compiles them one after another), on every core.
    sources = [tmp_path / "check.cc", *units]
    compiles = [subprocess.Popen(["g++", *flags, "-c", str(src), "-o", str(src.with_suffix(".o"))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for src in sources]
    for src, proc in zip(sources, compiles, strict=True):
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{src.name}: {err[-4000:]}"
    link = subprocess.run(["g++", *flags, *(str(src.with_suffix(".o")) for src in sources), "-o", str(exe)],
                          capture_output=True, text=True)
    assert link.returncode == 0, link.stderr[-4000:]
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "TSAN_OPTIONS": "halt_on_error=1"}
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), (run.stdout + run.stderr)[-4000:]


# Just enough of the CUDA runtime and device language for the launchers and the check program.
CUDA_EMULATION = r"""
#pragma once
#include <atomic>
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
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };

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
inline int atomicMax(int* address, int v) {  // returns the old value, as CUDA's
  std::atomic_ref<int> a(*address);
  int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

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
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(d, s, bytes, kind);  // launches run synchronously here
}
"""


# Host program: naive double-precision references for every launcher (see its header comment).
CHECK_PROGRAM = (build_cuda.CUDA_DIR / "check_kernels.cc").read_text()

