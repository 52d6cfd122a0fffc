"""The CUDA launchers of model/ops on a real GPU: correctness, sanitizers, and speed against PyTorch.

TensorFlow is not needed (the launchers in model/ops/cuda/*.cu.cc include no TF headers), so this
runs on a GPU machine that has nvcc, g++ and PyTorch but no TF. Steps:
  check      build model/ops/cuda/check_kernels.cc against the launchers and run it: every launcher,
             fp32/bf16/fp16, both transposes, ragged and empty shapes, against double-precision
             CPU references (the same program cuda_build_test.py runs under CPU emulation)
  sanitize   the same program under compute-sanitizer memcheck, racecheck and synccheck
  speed      the launchers through ctypes on PyTorch tensors vs PyTorch's own kernels (cuBLAS for
             matmuls) at model shapes, values checked against PyTorch fp32 first:
               gemm      dense square GEMM (bf16 tensor-core path; fp32 CUDA-core path vs fp32
                         cuBLAS with TF32 off)
               grouped   the MoE expert matmul as the TF op runs it (GroupedGemmGpu: every group
                         in one launch) vs a loop of torch.mm over the same groups, and vs one
                         dense torch.mm of all rows (the ceiling: same FLOPs, one launch)
               rms_norm  forward + backward vs the HF-style PyTorch composition under autograd
               swiglu    silu(g) * u forward + backward vs PyTorch's silu * up under autograd
               rope      RoPE on MLA's query (rotating the trailing 64 of 192 channels) forward +
                         backward vs HF's split / rotate_half / cat under autograd
               mla       absorbed MLA decode attention over the latent cache vs batched PyTorch
                         einsums with an fp32 softmax
               xent      the LM head's sparse softmax cross-entropy forward + backward vs
                         torch.nn.functional.cross_entropy under autograd
               combine   the MoE combine (gather by position, weighted sum) forward + backward vs
                         PyTorch's gather · weights · sum under autograd
               route     DeepSeek-V3's group-limited top-k router choice vs HF's topk composition
               adamw     one AdamW step on fp32 weights vs torch.optim.AdamW(fused=True)
               attention causal prefill / training attention forward + backward (MLA's 192 / 128
                         head widths) vs torch's scaled_dot_product_attention (flash) under autograd
Ratios are PyTorch time / launcher time (> 1: the launcher is faster), medians of interleaved
rounds timed with CUDA events. Writes one JSON (default bench/results/cuda_kernels.json).
Usage: python3 bench/bench_cuda_kernels.py [--out PATH] [--rounds 7] [--skip-sanitizer] [--quick]
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "model" / "ops" / "cuda"
CC_DIR = ROOT / "model" / "ops" / "cc"
OUT = Path(__file__).resolve().parent / "results" / "cuda_kernels.json"
DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2}  # seekline::DType
NO_DEVICE_EXIT = 77  # check_kernels.cc: no usable GPU

# extern "C" entry points over the C++ launchers (ctypes cannot call mangled names).
SHIM = r"""
#include <cstdint>
#include "kernels.h"
using seekline::DType;
extern "C" {
int sl_gemm(void* s, int dt, int ta, int tb, int64_t m, int64_t n, int64_t k, const void* a,
            const void* b, void* c) {
  return seekline::GemmGpu(s, static_cast<DType>(dt), ta, tb, m, n, k, a, b, c);
}
int sl_grouped(void* s, int dt, int tw, int64_t groups, const int64_t* off, int64_t k, int64_t n,
               const void* x, const void* w, void* y) {
  return seekline::GroupedGemmGpu(s, static_cast<DType>(dt), tw, groups, off, k, n, x, w, y);
}
int sl_rms(void* s, int dt, int64_t rows, int64_t dim, float eps, const void* x, const void* w, void* y) {
  return seekline::RmsNormGpu(s, static_cast<DType>(dt), rows, dim, eps, x, w, y);
}
int sl_rms_grad(void* s, int dt, int64_t rows, int64_t dim, float eps, const void* dy, const void* x,
                const void* w, void* dx, void* dw) {
  return seekline::RmsNormGradGpu(s, static_cast<DType>(dt), rows, dim, eps, dy, x, w, dx, dw);
}
int sl_mla(void* s, int dt, int64_t b, int64_t t, int64_t h, int64_t c, int64_t r, int64_t sl, int64_t bb,
           int64_t bt, float scale, const void* q, const void* qpe, const void* cache, const void* kpe,
           const float* bias, void* o) {
  return seekline::MlaLatentAttentionGpu(s, static_cast<DType>(dt), b, t, h, c, r, sl, bb, bt, scale, q, qpe,
                                         cache, kpe, bias, o);
}
int sl_swiglu(void* s, int dt, int64_t n, const void* g, const void* u, void* h) {
  return seekline::SwigluGpu(s, static_cast<DType>(dt), n, g, u, h);
}
int sl_swiglu_grad(void* s, int dt, int64_t n, const void* dh, const void* g, const void* u, void* dg, void* du) {
  return seekline::SwigluGradGpu(s, static_cast<DType>(dt), n, dh, g, u, dg, du);
}
int sl_rope(void* s, int dt, int64_t rows, int64_t heads, int64_t d, int64_t offset, int interleaved, int inverse,
            const float* cos, const float* sin, const void* x, void* y) {
  return seekline::RopeGpu(s, static_cast<DType>(dt), rows, heads, d, offset, interleaved, inverse, cos, sin, x, y);
}
int sl_xent(void* s, int dt, int64_t n, int64_t v, const void* x, const int32_t* y, float* loss, float* lse) {
  return seekline::SoftmaxXentGpu(s, static_cast<DType>(dt), n, v, x, y, loss, lse);
}
int sl_xent_grad(void* s, int dt, int64_t n, int64_t v, const void* x, const int32_t* y, const float* lse,
                 const float* g, const float* h, void* dx) {
  return seekline::SoftmaxXentGradGpu(s, static_cast<DType>(dt), n, v, x, y, lse, g, h, dx);
}
int sl_combine(void* s, int dt, int64_t n, int64_t k, int64_t d, const void* ys, const float* w, const int32_t* pos,
               void* y) {
  return seekline::MoeCombineGpu(s, static_cast<DType>(dt), n, k, d, ys, w, pos, y);
}
int sl_combine_grad(void* s, int dt, int64_t n, int64_t k, int64_t d, const void* dy, const void* ys, const float* w,
                    const int32_t* pos, int32_t* inv, void* dys, float* dw) {
  return seekline::MoeCombineGradGpu(s, static_cast<DType>(dt), n, k, d, dy, ys, w, pos, inv, dys, dw);
}
int sl_route(void* s, int64_t n, int64_t e, int k, int ng, int kg, int mode, const float* x, int32_t* out) {
  return seekline::RouteTopKGpu(s, n, e, k, ng, kg, mode, x, out);
}
int sl_attn(void* s, int dt, int64_t b, int64_t t, int64_t h, int64_t sl, int64_t hkv, int64_t dk, int64_t dv,
            int64_t bb, int64_t bt, float scale, const void* q, const void* k, const void* v, const float* bias,
            void* o, float* lse) {
  return seekline::AttentionGpu(s, static_cast<DType>(dt), b, t, h, sl, hkv, dk, dv, bb, bt, scale, q, k, v, bias, o,
                                lse);
}
int sl_attn_grad(void* s, int dt, int64_t b, int64_t t, int64_t h, int64_t sl, int64_t hkv, int64_t dk, int64_t dv,
                 int64_t bb, int64_t bt, float scale, const void* q, const void* k, const void* v, const float* bias,
                 const void* o, const float* lse, const void* d_o, const float* d_lse, float* scratch, void* dq,
                 void* dkey, void* dval) {
  return seekline::AttentionGradGpu(s, static_cast<DType>(dt), b, t, h, sl, hkv, dk, dv, bb, bt, scale, q, k, v, bias,
                                    o, lse, d_o, d_lse, scratch, dq, dkey, dval);
}
int sl_adamw(void* s, int64_t n, float* w, float* m, float* v, const float* g, float alpha, float decay, float b1,
             float b2, float eps, float gs) {
  return seekline::ApplyAdamWGpu(s, n, w, m, v, g, alpha, decay, b1, b2, eps, gs);
}
}
"""


# ---------------------------------------------------------------------- pure helpers (tested)
def load_build_cuda():
    """model/ops/cuda/build_cuda.py by path: importing the package would pull in TensorFlow."""
    spec = importlib.util.spec_from_file_location("seekline_build_cuda", CUDA_DIR / "build_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def group_sizes(tokens: int, top_k: int, experts: int, seed: int = 0) -> list[int]:
    """Rows per expert for `tokens` tokens each routed to `top_k` distinct experts, drawn with a
    mild popularity skew (a Dirichlet(2) expert preference), as a router produces."""
    import numpy as np
    rng = np.random.default_rng(seed)
    pref = rng.dirichlet(np.full(experts, 2.0))
    counts = np.zeros(experts, dtype=np.int64)
    for _ in range(tokens):
        counts[rng.choice(experts, size=top_k, replace=False, p=pref)] += 1
    return counts.tolist()


def offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12


def ratio(reference_s: float, ours_s: float) -> float:
    """> 1 when ours is faster."""
    return reference_s / ours_s


def parse_check_output(stdout: str) -> dict:
    """check_kernels.cc prints FAIL lines and ends with OK or FAILED <n>; compute-sanitizer's own
    lines (prefixed "=========") are not the program's."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip() and not ln.startswith("=========")]
    fails = [ln for ln in lines if ln.startswith("FAIL ")]
    return {"ok": bool(lines) and lines[-1] == "OK" and not fails, "failures": fails[:20], "last": lines[-1] if lines else ""}


# ---------------------------------------------------------------------- build
def build(work: Path, verbose: bool = False) -> dict:
    """Objects for the launchers, the check program and the ctypes shim library."""
    bc = load_build_cuda()
    t0 = time.perf_counter()
    objects = bc.compile_cuda(work / "obj", verbose=verbose)
    link = bc.cudart_link_flags()
    cuda_include = Path(link[0][2:]).parent / "include"
    check = work / "check_kernels"
    _run(["g++", "-std=c++17", "-O1", "-I", str(CC_DIR), "-I", str(cuda_include), str(CUDA_DIR / "check_kernels.cc"),
          *map(str, objects), "-o", str(check), *link])
    shim = work / "shim.cc"
    shim.write_text(SHIM)
    lib = work / "libseekline_cuda_bench.so"
    _run(["g++", "-std=c++17", "-O2", "-fPIC", "-shared", "-Wl,-z,defs", "-I", str(CC_DIR), str(shim),
          *map(str, objects), "-o", str(lib), *link])
    return {"check": check, "lib": lib, "build_s": time.perf_counter() - t0, "nvcc": bc.nvcc_path(),
            "cuda_root": str(bc._cuda_root(bc.nvcc_path()))}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {' '.join(cmd[:3])} ...\n{proc.stderr[-4000:]}")


def run_check(check: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([str(check)], capture_output=True, text=True, timeout=300)
    out = parse_check_output(proc.stdout)
    out.update(returncode=proc.returncode, seconds=round(time.perf_counter() - t0, 2))
    if proc.returncode == NO_DEVICE_EXIT:
        out["no_device"] = proc.stdout.strip()
    return out


def compute_sanitizer(cuda_root: str) -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for cand in (Path(cuda_root) / "bin" / "compute-sanitizer", Path("/usr/local/cuda/bin/compute-sanitizer")):
        if cand.is_file():
            return str(cand)
    return None


def run_sanitizers(check: Path, tool_path: str, tools=("memcheck", "racecheck", "synccheck")) -> dict:
    results = {}
    for tool in tools:
        t0 = time.perf_counter()
        cmd = [tool_path, "--tool", tool, "--error-exitcode", "3"]
        if tool == "memcheck":
            cmd += ["--leak-check", "full"]
        try:
            proc = subprocess.run([*cmd, str(check)], capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            results[tool] = {"ok": False, "error": "timed out after 240 s"}
            continue
        summary = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
        results[tool] = {"ok": proc.returncode == 0 and parse_check_output(proc.stdout)["ok"],
                         "returncode": proc.returncode, "summary": summary[-2:],
                         "seconds": round(time.perf_counter() - t0, 1),
                         "tail": (proc.stdout + proc.stderr)[-1500:] if proc.returncode else ""}
    return results


# ---------------------------------------------------------------------- speed (needs torch + GPU)
class Launchers:
    def __init__(self, lib: Path):
        self.lib = ctypes.CDLL(str(lib))
        i64, vp, ci = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        self.lib.sl_gemm.argtypes = [vp, ci, ci, ci, i64, i64, i64, vp, vp, vp]
        self.lib.sl_grouped.argtypes = [vp, ci, ci, i64, ctypes.POINTER(i64), i64, i64, vp, vp, vp]
        self.lib.sl_rms.argtypes = [vp, ci, i64, i64, ctypes.c_float, vp, vp, vp]
        self.lib.sl_rms_grad.argtypes = [vp, ci, i64, i64, ctypes.c_float, vp, vp, vp, vp, vp]
        self.lib.sl_mla.argtypes = [vp, ci, i64, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float,
                                    vp, vp, vp, vp, vp, vp]
        self.lib.sl_swiglu.argtypes = [vp, ci, i64, vp, vp, vp]
        self.lib.sl_swiglu_grad.argtypes = [vp, ci, i64, vp, vp, vp, vp, vp]
        self.lib.sl_rope.argtypes = [vp, ci, i64, i64, i64, i64, ci, ci, vp, vp, vp, vp]
        self.lib.sl_xent.argtypes = [vp, ci, i64, i64, vp, vp, vp, vp]
        self.lib.sl_xent_grad.argtypes = [vp, ci, i64, i64, vp, vp, vp, vp, vp, vp]
        self.lib.sl_combine.argtypes = [vp, ci, i64, i64, i64, vp, vp, vp, vp]
        self.lib.sl_combine_grad.argtypes = [vp, ci, i64, i64, i64, vp, vp, vp, vp, vp, vp, vp]
        self.lib.sl_route.argtypes = [vp, i64, i64, ci, ci, ci, ci, vp, vp]
        f32 = ctypes.c_float
        self.lib.sl_adamw.argtypes = [vp, i64, vp, vp, vp, vp, f32, f32, f32, f32, f32, f32]
        self.lib.sl_attn.argtypes = [vp, ci, *[i64] * 9, f32, vp, vp, vp, vp, vp, vp]
        self.lib.sl_attn_grad.argtypes = [vp, ci, *[i64] * 9, f32, *[vp] * 12]

    @staticmethod
    def _ok(err: int, what: str) -> None:
        if err:
            raise RuntimeError(f"{what}: CUDA error {err}")

    def gemm(self, stream, dt, ta, tb, m, n, k, a, b, c):
        self._ok(self.lib.sl_gemm(stream, dt, ta, tb, m, n, k, a.data_ptr(), b.data_ptr(), c.data_ptr()), "gemm")

    def grouped(self, stream, dt, tw, off_arr, k, n, x, w, y):
        groups = len(off_arr) - 1
        self._ok(self.lib.sl_grouped(stream, dt, tw, groups, off_arr, k, n, x.data_ptr(), w.data_ptr(),
                                     y.data_ptr()), "grouped")

    def rms(self, stream, dt, rows, dim, eps, x, w, y):
        self._ok(self.lib.sl_rms(stream, dt, rows, dim, eps, x.data_ptr(), w.data_ptr(), y.data_ptr()), "rms")

    def rms_grad(self, stream, dt, rows, dim, eps, dy, x, w, dx, dw):
        self._ok(self.lib.sl_rms_grad(stream, dt, rows, dim, eps, dy.data_ptr(), x.data_ptr(), w.data_ptr(),
                                      dx.data_ptr(), dw.data_ptr()), "rms_grad")

    def mla(self, stream, dt, b, t, h, c, r, s, scale, q, qpe, cache, kpe, bias, o):
        self._ok(self.lib.sl_mla(stream, dt, b, t, h, c, r, s, bias.shape[0], bias.shape[2], scale, q.data_ptr(),
                                 qpe.data_ptr(), cache.data_ptr(), kpe.data_ptr(), bias.data_ptr(), o.data_ptr()),
                 "mla")

    def swiglu(self, stream, dt, g, u, h):
        self._ok(self.lib.sl_swiglu(stream, dt, g.numel(), g.data_ptr(), u.data_ptr(), h.data_ptr()), "swiglu")

    def swiglu_grad(self, stream, dt, dh, g, u, dg, du):
        self._ok(self.lib.sl_swiglu_grad(stream, dt, g.numel(), dh.data_ptr(), g.data_ptr(), u.data_ptr(),
                                         dg.data_ptr(), du.data_ptr()), "swiglu_grad")

    def rope(self, stream, dt, x, offset, inverse, cos, sin, y):
        rows, heads, d = x.shape[0] * x.shape[1], x.shape[2], x.shape[3]
        self._ok(self.lib.sl_rope(stream, dt, rows, heads, d, offset, 0, int(inverse), cos.data_ptr(),
                                  sin.data_ptr(), x.data_ptr(), y.data_ptr()), "rope")

    def xent(self, stream, dt, x, y, loss, lse):
        self._ok(self.lib.sl_xent(stream, dt, x.shape[0], x.shape[1], x.data_ptr(), y.data_ptr(), loss.data_ptr(),
                                  lse.data_ptr()), "xent")

    def xent_grad(self, stream, dt, x, y, lse, g, h, dx):
        self._ok(self.lib.sl_xent_grad(stream, dt, x.shape[0], x.shape[1], x.data_ptr(), y.data_ptr(),
                                       lse.data_ptr(), g.data_ptr(), h.data_ptr(), dx.data_ptr()), "xent_grad")

    def combine(self, stream, dt, ys, w, pos, y):
        self._ok(self.lib.sl_combine(stream, dt, w.shape[0], w.shape[1], ys.shape[1], ys.data_ptr(), w.data_ptr(),
                                     pos.data_ptr(), y.data_ptr()), "combine")

    def combine_grad(self, stream, dt, dy, ys, w, pos, inv, dys, dw):
        self._ok(self.lib.sl_combine_grad(stream, dt, w.shape[0], w.shape[1], ys.shape[1], dy.data_ptr(),
                                          ys.data_ptr(), w.data_ptr(), pos.data_ptr(), inv.data_ptr(),
                                          dys.data_ptr(), dw.data_ptr()), "combine_grad")

    def route(self, stream, x, k, ng, kg, mode, out):
        self._ok(self.lib.sl_route(stream, x.shape[0], x.shape[1], k, ng, kg, mode, x.data_ptr(), out.data_ptr()),
                 "route")

    def adamw(self, stream, w, m, v, g, alpha, decay, b1, b2, eps, gs):
        self._ok(self.lib.sl_adamw(stream, w.numel(), w.data_ptr(), m.data_ptr(), v.data_ptr(), g.data_ptr(), alpha,
                                   decay, b1, b2, eps, gs), "adamw")

    def attn(self, stream, dt, scale, q, k, v, bias, o, lse):
        (b, t, h, dk), (s, hkv, dv) = q.shape, (k.shape[1], k.shape[2], v.shape[3])
        self._ok(self.lib.sl_attn(stream, dt, b, t, h, s, hkv, dk, dv, bias.shape[0], bias.shape[2], scale,
                                  q.data_ptr(), k.data_ptr(), v.data_ptr(), bias.data_ptr(), o.data_ptr(),
                                  lse.data_ptr()), "attn")

    def attn_grad(self, stream, dt, scale, q, k, v, bias, o, lse, d_o, d_lse, scratch, dq, dk_, dv_):
        (b, t, h, dk), (s, hkv, dv) = q.shape, (k.shape[1], k.shape[2], v.shape[3])
        self._ok(self.lib.sl_attn_grad(stream, dt, b, t, h, s, hkv, dk, dv, bias.shape[0], bias.shape[2], scale,
                                       q.data_ptr(), k.data_ptr(), v.data_ptr(), bias.data_ptr(), o.data_ptr(),
                                       lse.data_ptr(), d_o.data_ptr(), d_lse.data_ptr(), scratch.data_ptr(),
                                       dq.data_ptr(), dk_.data_ptr(), dv_.data_ptr()), "attn_grad")


def time_sides(torch, sides: dict, rounds: int, iters: int) -> dict:
    """Median seconds per call of each side; rounds interleave the sides (rotating order)."""
    names = list(sides)
    for fn in sides.values():  # warm-up (also JIT/cuBLAS heuristics)
        fn()
        fn()
    torch.cuda.synchronize()
    per = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                sides[n]()
            end.record()
            end.synchronize()
            per[n].append(start.elapsed_time(end) / 1e3 / iters)
    return {n: statistics.median(v) for n, v in per.items()} | {
        f"{n}_spread": (min(v), max(v)) for n, v in per.items()}


def max_rel_err(torch, got, want) -> float:
    got, want = got.float(), want.float()
    return float(((got - want).abs() / (1.0 + want.abs())).max())


def bench_gemm(torch, lau, rounds, quick):
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32 cuBLAS, not TF32
    size = 2048 if quick else 4096
    return [_gemm_case(torch, lau, rounds, name, dt, ta, tb, size)
            for name, dt in (("bfloat16", 1), ("float32", 0))
            for ta, tb in ((False, False), (False, True), (True, False))]


def _gemm_case(torch, lau, rounds, name, dt, ta, tb, size):
    m = n = k = size
    dtype = getattr(torch, name)
    a = torch.randn(k if ta else m, m if ta else k, device="cuda", dtype=dtype)
    b = torch.randn(n if tb else k, k if tb else n, device="cuda", dtype=dtype)
    c = torch.empty(m, n, device="cuda", dtype=dtype)
    opa = a.t() if ta else a
    opb = b.t() if tb else b
    lau.gemm(0, dt, ta, tb, m, n, k, a, b, c)
    err = max_rel_err(torch, c, opa.float() @ opb.float())
    t = time_sides(torch, {"ours": lambda: lau.gemm(0, dt, ta, tb, m, n, k, a, b, c),
                           "torch": lambda: torch.matmul(opa, opb, out=c)}, rounds, 3)
    f = 2 * m * n * k
    row = {"dtype": name, "trans_a": ta, "trans_b": tb, "m": m, "n": n, "k": k, "max_rel_err": err,
           "ours_ms": t["ours"] * 1e3, "torch_ms": t["torch"] * 1e3,
           "ours_tflops": tflops(f, t["ours"]), "torch_tflops": tflops(f, t["torch"]),
           "ratio": ratio(t["torch"], t["ours"])}
    print(f"gemm {name} ta={ta:d} tb={tb:d} {m}^3: ours {row['ours_tflops']:.1f} TFLOP/s, "
          f"torch {row['torch_tflops']:.1f}, ratio {row['ratio']:.3f}, err {err:.2e}", flush=True)
    return row


def bench_grouped(torch, lau, rounds, quick):
    shapes = [("v2_lite", 4096, 6, 64, 2048, 1408), ("v3", 4096, 8, 256, 7168, 2048)]
    if quick:
        shapes = [("v2_lite_quick", 1024, 6, 64, 512, 352)]
    return [_grouped_case(torch, lau, rounds, shape, tw) for shape in shapes for tw in (False, True)]


def _grouped_case(torch, lau, rounds, shape, tw):
    """tw False: the forward x @ W_g; True: the dx pass dy @ W_g^T (W_g stored n x k)."""
    name, tokens, top_k, experts, hidden, inter = shape
    sizes = group_sizes(tokens, top_k, experts)
    off = offsets(sizes)
    off_arr = (ctypes.c_int64 * len(off))(*off)
    rows = off[-1]
    k, n = (inter, hidden) if tw else (hidden, inter)
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)                      # (rows, k)
    w = torch.randn(experts, *((n, k) if tw else (k, n)), device="cuda", dtype=torch.bfloat16) / k ** 0.5
    y = torch.empty(rows, n, device="cuda", dtype=torch.bfloat16)                      # (rows, n)
    y_ref = torch.empty_like(y)
    views = [(x[off[g]:off[g + 1]], w[g].t() if tw else w[g], y_ref[off[g]:off[g + 1]])
             for g in range(experts) if sizes[g]]
    w0 = w[0].t() if tw else w[0]

    def torch_loop():
        for xv, wv, yv in views:
            torch.mm(xv, wv, out=yv)

    lau.grouped(0, 1, tw, off_arr, k, n, x, w, y)
    torch_loop()
    err = max_rel_err(torch, y, y_ref)
    t = time_sides(torch, {"ours": lambda: lau.grouped(0, 1, tw, off_arr, k, n, x, w, y),
                           "torch_loop": torch_loop,
                           "torch_dense": lambda: torch.mm(x, w0, out=y_ref)}, rounds, 3)
    f = 2 * rows * k * n
    row = {"shape": name, "transpose_w": tw, "rows": rows, "experts": experts, "k": k, "n": n,
           "rows_per_expert_min_max": [min(sizes), max(sizes)], "max_rel_err": err,
           "ours_ms": t["ours"] * 1e3, "torch_loop_ms": t["torch_loop"] * 1e3,
           "torch_dense_ms": t["torch_dense"] * 1e3, "ours_tflops": tflops(f, t["ours"]),
           "torch_loop_tflops": tflops(f, t["torch_loop"]), "torch_dense_tflops": tflops(f, t["torch_dense"]),
           "ratio_vs_loop": ratio(t["torch_loop"], t["ours"]), "ratio_vs_dense": ratio(t["torch_dense"], t["ours"])}
    print(f"grouped {name} tw={tw:d} rows={rows}: ours {row['ours_tflops']:.1f} TFLOP/s, torch loop "
          f"{row['torch_loop_tflops']:.1f}, dense {row['torch_dense_tflops']:.1f}; vs loop "
          f"{row['ratio_vs_loop']:.3f}, err {err:.2e}", flush=True)
    return row


def bench_rms(torch, lau, rounds, quick):
    shapes = [(4096, 2048)] if quick else [(16384, 2048), (16384, 7168)]
    return [_rms_case(torch, lau, rounds, rows, dim) for rows, dim in shapes]


def _rms_case(torch, lau, rounds, rows, dim, eps=1e-6):
    x = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)                    # (rows, dim)
    w = (1 + 0.1 * torch.randn(dim, device="cuda")).to(torch.bfloat16)                # (dim,)
    dy = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
    y, dx, dw = torch.empty_like(x), torch.empty_like(x), torch.empty_like(w)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()

    def torch_fb():  # HF LlamaRMSNorm-style: fp32 statistics, weight applied in the storage dtype
        xf = xr.float()
        out = wr * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(torch.bfloat16)
        return torch.autograd.grad(out, (xr, wr), dy)

    def ours_fb():
        lau.rms(0, 1, rows, dim, eps, x, w, y)
        lau.rms_grad(0, 1, rows, dim, eps, dy, x, w, dx, dw)

    ours_fb()
    xf, wf = x.float().requires_grad_(), w.float().requires_grad_()
    out = wf * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    gx, gw = torch.autograd.grad(out, (xf, wf), dy.float())
    errs = {"y": max_rel_err(torch, y, out), "dx": max_rel_err(torch, dx, gx), "dw": max_rel_err(torch, dw, gw)}
    t = time_sides(torch, {"ours": ours_fb, "torch": torch_fb}, rounds, 5)
    moved = 2 * (2 * rows * dim) + 2 * (3 * rows * dim)  # bf16 bytes: fwd x in, y out; bwd dy, x in, dx out
    row = {"rows": rows, "dim": dim, "max_rel_err": errs, "ours_ms": t["ours"] * 1e3, "torch_ms": t["torch"] * 1e3,
           "ours_gbps": moved / t["ours"] / 1e9, "ratio": ratio(t["torch"], t["ours"])}
    print(f"rms_norm fwd+bwd {rows}x{dim}: ours {row['ours_ms']:.3f} ms ({row['ours_gbps']:.0f} GB/s), "
          f"torch {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, errs {errs}", flush=True)
    return row


def bench_swiglu(torch, lau, rounds, quick):
    shapes = [(4096, 2048)] if quick else [(16384, 2048), (16384, 18432)]  # V3: 2048 expert, 18432 dense
    return [_swiglu_case(torch, lau, rounds, rows, width) for rows, width in shapes]


def _swiglu_case(torch, lau, rounds, rows, width):
    g = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)       # (tokens, intermediate)
    u = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
    dh = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
    h, dg, du = torch.empty_like(g), torch.empty_like(g), torch.empty_like(g)
    gr, ur = g.clone().requires_grad_(), u.clone().requires_grad_()

    def torch_fb():  # what HF's MLP runs: act_fn(gate) * up under autograd
        return torch.autograd.grad(torch.nn.functional.silu(gr) * ur, (gr, ur), dh)

    def ours_fb():
        lau.swiglu(0, 1, g, u, h)
        lau.swiglu_grad(0, 1, dh, g, u, dg, du)

    ours_fb()
    gf, uf = g.float().requires_grad_(), u.float().requires_grad_()
    out = torch.nn.functional.silu(gf) * uf
    wg, wu = torch.autograd.grad(out, (gf, uf), dh.float())
    errs = {"h": max_rel_err(torch, h, out), "dg": max_rel_err(torch, dg, wg), "du": max_rel_err(torch, du, wu)}
    t = time_sides(torch, {"ours": ours_fb, "torch": torch_fb}, rounds, 5)
    moved = 2 * rows * width * (3 + 5)  # bf16 bytes: fwd g, u in, h out; bwd dh, g, u in, dg, du out
    row = {"rows": rows, "width": width, "max_rel_err": errs, "ours_ms": t["ours"] * 1e3,
           "torch_ms": t["torch"] * 1e3, "ours_gbps": moved / t["ours"] / 1e9, "ratio": ratio(t["torch"], t["ours"])}
    print(f"swiglu fwd+bwd {rows}x{width}: ours {row['ours_ms']:.3f} ms ({row['ours_gbps']:.0f} GB/s), "
          f"torch {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, errs {errs}", flush=True)
    return row


def bench_rope(torch, lau, rounds, quick):
    shapes = [(2, 1024, 16)] if quick else [(4, 4096, 128), (1, 16384, 16)]  # (B, T, heads)
    return [_rope_case(torch, lau, rounds, b, t, heads) for b, t, heads in shapes]


def _rope_case(torch, lau, rounds, b, t, heads, nope=128, rot=64):
    """RoPE on MLA's query (B, T, H, nope + rope), DeepSeek-V3's head dims, forward + backward: the op
    rotates the trailing channels in place of torch's split / rotate-half / cat."""
    d, half = nope + rot, rot // 2
    x = torch.randn(b, t, heads, d, device="cuda", dtype=torch.bfloat16)      # (B, T, H, d)
    dy = torch.randn_like(x)
    ang = torch.arange(t, device="cuda", dtype=torch.float32)[:, None] * (
        10000.0 ** (-torch.arange(half, device="cuda", dtype=torch.float32) / half))
    cos = ang.cos()[None].expand(b, t, half).contiguous()                      # (B, T, half)
    sin = ang.sin()[None].expand(b, t, half).contiguous()
    y, dx = torch.empty_like(x), torch.empty_like(x)
    xr = x.clone().requires_grad_()
    c4, s4 = torch.cat([cos, cos], -1)[:, :, None].to(x.dtype), torch.cat([sin, sin], -1)[:, :, None].to(x.dtype)

    def rotate(v, c, s):  # HF's apply_rotary_pos_emb on the rope part: v·cos + rotate_half(v)·sin
        v1, v2 = v[..., :half], v[..., half:]
        return v * c + torch.cat([-v2, v1], -1) * s

    def torch_fb():
        q_nope, q_pe = torch.split(xr, [nope, rot], dim=-1)
        return torch.autograd.grad(torch.cat([q_nope, rotate(q_pe, c4, s4)], -1), xr, dy)

    def ours_fb():
        lau.rope(0, 1, x, nope, False, cos, sin, y)
        lau.rope(0, 1, dy, nope, True, cos, sin, dx)

    ours_fb()
    xf = x.float().requires_grad_()
    c4f, s4f = torch.cat([cos, cos], -1)[:, :, None], torch.cat([sin, sin], -1)[:, :, None]
    want = torch.cat([xf[..., :nope], rotate(xf[..., nope:], c4f, s4f)], -1)
    (wdx,) = torch.autograd.grad(want, xf, dy.float())
    errs = {"y": max_rel_err(torch, y, want), "dx": max_rel_err(torch, dx, wdx)}
    t_s = time_sides(torch, {"ours": ours_fb, "torch": torch_fb}, rounds, 5)
    moved = 2 * x.numel() * 4  # bf16 bytes: fwd x in, y out; bwd dy in, dx out
    row = {"batch": b, "seq": t, "heads": heads, "max_rel_err": errs, "ours_ms": t_s["ours"] * 1e3,
           "torch_ms": t_s["torch"] * 1e3, "ours_gbps": moved / t_s["ours"] / 1e9,
           "ratio": ratio(t_s["torch"], t_s["ours"])}
    print(f"rope fwd+bwd B={b} T={t} H={heads}: ours {row['ours_ms']:.3f} ms ({row['ours_gbps']:.0f} GB/s), "
          f"torch {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, errs {errs}", flush=True)
    return row


def bench_mla(torch, lau, rounds, quick):
    shapes = [(8, 16, 1024)] if quick else [(32, 16, 4096), (32, 128, 4096), (8, 128, 16384)]
    return [_mla_case(torch, lau, rounds, b, h, s) for b, h, s in shapes]


def _mla_case(torch, lau, rounds, b, h, s, c_dim=512, r_dim=64):
    """One decode step (T = 1) of h heads over a cache of s positions, the last s/8 masked."""
    scale = (128 + 64) ** -0.5  # DeepSeek-V3's qk_nope + qk_rope head dims
    q = torch.randn(b, 1, h, c_dim, device="cuda", dtype=torch.bfloat16)      # (B, T, H, C)
    qpe = torch.randn(b, 1, h, r_dim, device="cuda", dtype=torch.bfloat16)    # (B, T, H, R)
    cache = torch.randn(b, s, c_dim, device="cuda", dtype=torch.bfloat16)     # (B, S, C)
    kpe = torch.randn(b, s, r_dim, device="cuda", dtype=torch.bfloat16)       # (B, S, R)
    bias = torch.zeros(b, 1, 1, s, device="cuda", dtype=torch.float32)        # (B, 1, T, S)
    bias[..., s - s // 8:] = -1e9
    o = torch.empty_like(q)

    def torch_mla():
        scores = torch.einsum("bthc,bsc->bths", q, cache) + torch.einsum("bthr,bsr->bths", qpe, kpe)
        p = torch.softmax(scores.float() * scale + bias.transpose(1, 2), dim=-1).to(torch.bfloat16)
        return torch.einsum("bths,bsc->bthc", p, cache)

    def ours():
        lau.mla(0, 1, b, 1, h, c_dim, r_dim, s, scale, q, qpe, cache, kpe, bias, o)

    ours()
    sc = (torch.einsum("bthc,bsc->bths", q.float(), cache.float())
          + torch.einsum("bthr,bsr->bths", qpe.float(), kpe.float()))
    want = torch.einsum("bths,bsc->bthc", torch.softmax(sc * scale + bias.transpose(1, 2), -1), cache.float())
    err = max_rel_err(torch, o, want)
    t = time_sides(torch, {"ours": ours, "torch": torch_mla}, rounds, 5)
    cache_bytes = b * s * (c_dim + r_dim) * 2
    row = {"batch": b, "heads": h, "cache_len": s, "max_rel_err": err, "ours_ms": t["ours"] * 1e3,
           "torch_ms": t["torch"] * 1e3, "ours_cache_gbps": cache_bytes / t["ours"] / 1e9,
           "torch_cache_gbps": cache_bytes / t["torch"] / 1e9, "ratio": ratio(t["torch"], t["ours"])}
    print(f"mla decode B={b} H={h} S={s}: ours {row['ours_ms']:.3f} ms ({row['ours_cache_gbps']:.0f} GB/s of cache), "
          f"torch {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, err {err:.2e}", flush=True)
    return row


def bench_xent(torch, lau, rounds, quick):
    shapes = [(1024, 32768)] if quick else [(4096, 129280), (16384, 32768)]  # (tokens, vocab): V3's vocab
    return [_xent_case(torch, lau, rounds, n, v) for n, v in shapes]


def _xent_case(torch, lau, rounds, n, v):
    x = torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 4                # (N, V) logits
    y = torch.randint(0, v, (n,), device="cuda", dtype=torch.int32)
    loss, lse = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    g, h, dx = torch.ones(n, device="cuda"), torch.zeros(n, device="cuda"), torch.empty_like(x)
    xr, y64 = x.clone().requires_grad_(), y.long()

    def torch_fb():  # summed loss: dloss = 1 per row
        return torch.autograd.grad(torch.nn.functional.cross_entropy(xr, y64, reduction="sum"), xr)

    def ours_fb():
        lau.xent(0, 1, x, y, loss, lse)
        lau.xent_grad(0, 1, x, y, lse, g, h, dx)

    ours_fb()
    xf = x.float().requires_grad_()
    want = torch.nn.functional.cross_entropy(xf, y64, reduction="none")
    (wdx,) = torch.autograd.grad(want.sum(), xf)
    errs = {"loss": max_rel_err(torch, loss, want), "dx": max_rel_err(torch, dx, wdx)}
    t = time_sides(torch, {"ours": ours_fb, "torch": torch_fb}, rounds, 3)
    moved = 2 * n * v * 3  # bf16 bytes: forward reads the logits, backward reads them and writes dx
    row = {"tokens": n, "vocab": v, "max_rel_err": errs, "ours_ms": t["ours"] * 1e3, "torch_ms": t["torch"] * 1e3,
           "ours_gbps": moved / t["ours"] / 1e9, "ratio": ratio(t["torch"], t["ours"])}
    print(f"xent fwd+bwd {n}x{v}: ours {row['ours_ms']:.3f} ms ({row['ours_gbps']:.0f} GB/s), "
          f"torch {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, errs {errs}", flush=True)
    return row


def bench_combine(torch, lau, rounds, quick):
    shapes = [(2048, 8, 1024)] if quick else [(16384, 8, 7168), (16384, 6, 2048)]  # (tokens, top_k, hidden)
    return [_combine_case(torch, lau, rounds, n, k, d) for n, k, d in shapes]


def _combine_case(torch, lau, rounds, n, k, d):
    m = n * k
    ys = torch.randn(m, d, device="cuda", dtype=torch.bfloat16)                   # (N·K, D) expert-major rows
    dy = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(n, k, device="cuda")                                           # (N, K) fp32 weights
    pos = torch.randperm(m, device="cuda").to(torch.int32).view(n, k)             # (N, K) row of each pair
    y, dys, dw = torch.empty_like(dy), torch.empty_like(ys), torch.empty_like(w)
    inv = torch.empty(m, device="cuda", dtype=torch.int32)
    ysr, wr, pos64 = ys.clone().requires_grad_(), w.clone().requires_grad_(), pos.long()

    def torch_fb():  # gather the K rows per token, weight them, sum; autograd scatters the gradient back
        out = (ysr[pos64] * wr[..., None].to(ysr.dtype)).sum(1)
        return torch.autograd.grad(out, (ysr, wr), dy)

    def ours_fb():
        lau.combine(0, 1, ys, w, pos, y)
        lau.combine_grad(0, 1, dy, ys, w, pos, inv, dys, dw)

    ours_fb()
    ysf, wf = ys.float().requires_grad_(), w.clone().requires_grad_()
    want = (ysf[pos64] * wf[..., None]).sum(1)
    wdys, wdw = torch.autograd.grad(want, (ysf, wf), dy.float())
    errs = {"y": max_rel_err(torch, y, want), "dys": max_rel_err(torch, dys, wdys),
            "dw": float(((dw - wdw).abs() / (1 + wdw.abs())).max())}
    t = time_sides(torch, {"ours": ours_fb, "torch": torch_fb}, rounds, 3)
    moved = 2 * (m * d * 3 + n * d * 2)  # bf16 bytes: fwd ys in, y out; bwd dy and ys in, dys out
    row = {"tokens": n, "top_k": k, "hidden": d, "max_rel_err": errs, "ours_ms": t["ours"] * 1e3,
           "torch_ms": t["torch"] * 1e3, "ours_gbps": moved / t["ours"] / 1e9, "ratio": ratio(t["torch"], t["ours"])}
    print(f"moe combine fwd+bwd N={n} K={k} D={d}: ours {row['ours_ms']:.3f} ms ({row['ours_gbps']:.0f} GB/s), "
          f"torch {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, errs {errs}", flush=True)
    return row


def bench_route(torch, lau, rounds, quick):
    shapes = [(4096, 256, 8, 8, 4)] if quick else [(16384, 256, 8, 8, 4), (16384, 64, 6, 1, 1)]
    return [_route_case(torch, lau, rounds, *shape) for shape in shapes]


def _route_case(torch, lau, rounds, n, e, k, ng, kg):
    """(tokens, experts, top_k, n_group, topk_group): V3's 256 experts in 8 groups, top-4 groups, top-8;
    V2-Lite's 64 experts ungrouped, top-6."""
    x = torch.rand(n, e, device="cuda")                                            # (N, E) scores + bias
    out = torch.empty(n, k, device="cuda", dtype=torch.int32)
    mode = 1 if ng > 1 else 0

    def torch_route():  # HF DeepseekV3 get_topk_indices: group top-2 sums, top groups, masked top-k
        if ng == 1:
            return torch.topk(x, k, dim=-1, sorted=True)[1]
        gs = x.view(n, ng, -1).topk(2, dim=-1)[0].sum(-1)
        gi = torch.topk(gs, kg, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(gs).scatter_(1, gi, 1).unsqueeze(-1).expand(n, ng, e // ng).reshape(n, e)
        return torch.topk(x.masked_fill(~mask.bool(), 0.0), k, dim=-1, sorted=True)[1]

    def ours():
        lau.route(0, x, k, ng, kg, mode, out)

    ours()
    # Continuous random scores have no ties: the same experts in the same order.
    agree = float((out.long() == torch_route()).all(-1).float().mean())
    t = time_sides(torch, {"ours": ours, "torch": torch_route}, rounds, 5)
    row = {"tokens": n, "experts": e, "top_k": k, "n_group": ng, "topk_group": kg, "rows_identical": agree,
           "ours_ms": t["ours"] * 1e3, "torch_ms": t["torch"] * 1e3, "ratio": ratio(t["torch"], t["ours"])}
    print(f"route N={n} E={e} k={k} groups {kg}/{ng}: ours {row['ours_ms']:.3f} ms, torch {row['torch_ms']:.3f} ms, "
          f"ratio {row['ratio']:.3f}, rows identical {agree:.4f}", flush=True)
    return row


def bench_adamw(torch, lau, rounds, quick):
    return [_adamw_case(torch, lau, rounds, (1 << 22) if quick else (1 << 27))]


def _adamw_case(torch, lau, rounds, n):
    """One step on n fp32 weights (one tensor: the kernel, not launch overhead) vs PyTorch's fused AdamW."""
    lr, wd, b1, b2, eps = 1e-3, 0.1, 0.9, 0.95, 1e-8
    p = torch.nn.Parameter(torch.randn(n, device="cuda"))
    p.grad = torch.randn(n, device="cuda") * 1e-2
    opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, fused=True)
    w, m, v = p.detach().clone(), torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
    g = p.grad.clone()
    step = [0]

    def ours():
        step[0] += 1
        t = step[0]
        alpha = lr * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t)
        lau.adamw(0, w, m, v, g, alpha, lr * wd, b1, b2, eps, 1.0)

    ours()
    opt.step()
    err = max_rel_err(torch, w, p.detach())  # step 1 from the same state: the same update
    t = time_sides(torch, {"ours": ours, "torch": opt.step}, rounds, 5)
    moved = 4 * n * 7  # fp32 bytes: w, m, v read and written, g read
    row = {"elements": n, "max_rel_err_step1": err, "ours_ms": t["ours"] * 1e3, "torch_ms": t["torch"] * 1e3,
           "ours_gbps": moved / t["ours"] / 1e9, "ratio": ratio(t["torch"], t["ours"])}
    print(f"adamw {n} fp32: ours {row['ours_ms']:.3f} ms ({row['ours_gbps']:.0f} GB/s), torch fused "
          f"{row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, step-1 err {err:.2e}", flush=True)
    return row


def bench_attention(torch, lau, rounds, quick):
    shapes = [(1, 512, 8)] if quick else [(1, 4096, 16), (4, 1024, 16)]  # (batch, tokens, heads), MLA widths
    return [_attention_case(torch, lau, rounds, b, t, h) for b, t, h in shapes]


def _attention_case(torch, lau, rounds, b, t, h, dk=192, dv=128):
    scale = dk ** -0.5
    q = torch.randn(b, t, h, dk, device="cuda", dtype=torch.bfloat16)          # (B, T, H, Dk)
    k = torch.randn(b, t, h, dk, device="cuda", dtype=torch.bfloat16)          # (B, S, H, Dk): MLA, Hkv = H
    v = torch.randn(b, t, h, dv, device="cuda", dtype=torch.bfloat16)
    d_o = torch.randn(b, t, h, dv, device="cuda", dtype=torch.bfloat16)
    causal = torch.ones(t, t, device="cuda", dtype=torch.bool).tril()
    bias = torch.where(causal, 0.0, -1e9).reshape(1, 1, t, t).contiguous()     # (1, 1, T, S) fp32
    o, lse = torch.empty_like(d_o), torch.empty(b, h, t, device="cuda")
    d_lse, scratch = torch.zeros(b, h, t, device="cuda"), torch.empty(4, b, h, t, device="cuda")
    dq, dk_, dv_ = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qt, kt, vt = (x.transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))  # (B, H, L, D)
    dot = d_o.transpose(1, 2).contiguous()

    def torch_fb():
        out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
        return torch.autograd.grad(out, (qt, kt, vt), dot)

    def ours_fb():
        lau.attn(0, 1, scale, q, k, v, bias, o, lse)
        lau.attn_grad(0, 1, scale, q, k, v, bias, o, lse, d_o, d_lse, scratch, dq, dk_, dv_)

    ours_fb()
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (qt, kt, vt))
    want = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, is_causal=True, scale=scale)
    wq, wk, wv = torch.autograd.grad(want, (qf, kf, vf), dot.float())
    errs = {"o": max_rel_err(torch, o, want.transpose(1, 2)), "dq": max_rel_err(torch, dq, wq.transpose(1, 2)),
            "dk": max_rel_err(torch, dk_, wk.transpose(1, 2)), "dv": max_rel_err(torch, dv_, wv.transpose(1, 2))}
    tm = time_sides(torch, {"ours": ours_fb, "torch": torch_fb}, rounds, 2)
    flops = 3.5 * 2 * b * h * (t * (t + 1) / 2) * (dk + dv)  # causal half; forward 2 products, backward 5
    row = {"batch": b, "tokens": t, "heads": h, "max_rel_err": errs, "ours_ms": tm["ours"] * 1e3,
           "torch_ms": tm["torch"] * 1e3, "ours_tflops": flops / tm["ours"] / 1e12, "ratio": ratio(tm["torch"], tm["ours"])}
    print(f"attention fwd+bwd B={b} T={t} H={h}: ours {row['ours_ms']:.3f} ms ({row['ours_tflops']:.1f} TFLOP/s), "
          f"torch sdpa {row['torch_ms']:.3f} ms, ratio {row['ratio']:.3f}, errs {errs}", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--skip-sanitizer", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    ap.add_argument("--work", type=Path, default=None, help="build folder (default: a temporary one)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="seekline_cuda_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"host": platform.node(), "python": sys.version.split()[0]}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        tmp.replace(args.out)

    built = build(work)
    result["build"] = {k: str(v) for k, v in built.items()}
    result["check"] = check = run_check(built["check"])
    print(f"check program: {check}", flush=True)
    save()
    if check.get("no_device"):
        print("no GPU: built the launchers and the check program only")
        return 0
    if not args.skip_sanitizer:
        tool = compute_sanitizer(built["cuda_root"])
        result["sanitizers"] = run_sanitizers(built["check"], tool) if tool else {"error": "compute-sanitizer not found"}
        print(f"sanitizers: {json.dumps(result['sanitizers'], indent=1)}", flush=True)
        save()
    import torch
    result["gpu"] = torch.cuda.get_device_name(0)
    result["torch"] = torch.__version__
    lau = Launchers(built["lib"])
    torch.manual_seed(0)
    for name, fn in (("gemm", bench_gemm), ("grouped", bench_grouped), ("rms_norm", bench_rms),
                     ("swiglu", bench_swiglu), ("rope", bench_rope), ("mla", bench_mla), ("xent", bench_xent),
                     ("combine", bench_combine), ("route", bench_route), ("adamw", bench_adamw),
                     ("attention", bench_attention)):
        try:
            result[name] = fn(torch, lau, args.rounds, args.quick)
        except Exception as e:  # keep what the other sections measured
            result[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name} failed: {e}", flush=True)
        save()
    ok = check["ok"] and all(v.get("ok", False) for v in result.get("sanitizers", {}).values() if isinstance(v, dict))
    print(f"wrote {args.out}; checks {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
