"""seekline's custom TF ops (C++ CPU kernels, CUDA kernels when built with nvcc) and their loader.

The ops replace the model core's hottest pure-TF subgraphs (docs/performance.md says why these):
  grouped_matmul  MoE dispatch: all experts' ragged matmuls in one kernel (model/ops/grouped_matmul.py)
  rms_norm        RMSNorm forward + backward in one pass (model/ops/rms_norm.py)
  mla_latent_attention  MLA's absorbed decode attention over the latent cache (model/ops/mla_attention.py)
  causal_attention  flash-style prefill / training attention (model/ops/attention.py)
  softmax_xent    sparse softmax cross-entropy of the LM / MTP heads (model/ops/softmax_xent.py)
  route_topk      the MoE router's group-limited top-k expert choice (model/layers/moe.py `route`)
  swiglu          the feed-forwards' silu(g) * u gate, forward and backward in one pass (model/ops/swiglu.py)
  rope            rotary embedding of a projection's trailing channels in place (model/layers/rope.py)
  moe_combine     the MoE layer's weighted combine (and dispatch gradient) as gathers (model/ops/moe_combine.py)
  adamw           one AdamW step (clip scale, decoupled decay, Adam) per variable in place (training/optimizer.py)

The pure-TF paths stay and are the fallback, chosen automatically when the compiled library is
missing, stale (built from other sources or another TF), disabled, or the graph is being
XLA-compiled (XLA cannot compile custom ops). SEEKLINE_OPS selects the policy:
  auto (default)  use the library when it loads, else pure TF (one warning)
  on              require it: a missing or stale library is an error naming `make ops`
  off             never use it
`make ops` (python -m model.ops.build) builds the library; `make setup` builds it when a C++
compiler is present.

On a GPU each op runs its CUDA kernel only where that kernel measured faster than the pure-TF path
(cuBLAS / TF's own kernels) on a GPU: bench/bench_cuda_kernels.py on an H200
(bench/results/cuda_kernels.json, docs/performance.md). Today that is RMSNorm; the grouped matmul
and the MLA decode attention keep TF's path on a GPU. SEEKLINE_OPS_GPU=all uses every CUDA kernel
(kernel work and benchmarks), SEEKLINE_OPS_GPU=none none of them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

BUILD_DIR = Path(__file__).resolve().parent / "_build"
CPU_LIB = "libseekline_ops.so"
GPU_LIB = "libseekline_ops_gpu.so"
MODES = ("auto", "on", "off")
OPS = ("grouped_matmul", "rms_norm", "mla_latent_attention", "causal_attention", "softmax_xent",
       "route_topk", "swiglu", "rope", "moe_combine", "adamw")
GPU_KERNELS = frozenset(OPS)  # every op has a CUDA kernel (model/ops/cuda/*.cu.cc)
# CUDA kernels that beat the pure-TF path's kernels on an H200 at every measured shape
# (bench/results/cuda_kernels.json): RMSNorm forward + backward 1.9-3.4x. The grouped GEMM is 1.4x
# per-expert cuBLAS at V2-Lite's expert shapes but 0.47-0.89x at V3's, the MLA decode kernel 1.1x
# batched cuBLAS einsums at 16 heads but 0.54-0.6x at 128, so those ops keep TF's path on a GPU.
# The causal attention, SwiGLU, RoPE, softmax cross-entropy, MoE combine, router top-k and AdamW kernels are checked
# under the CPU emulation only (no GPU lent since they were written): not in GPU_FASTER until
# bench/bench_cuda_kernels.py has timed them on one.
GPU_FASTER = frozenset({"rms_norm"})


class OpsUnavailableError(UserError, RuntimeError):
    """SEEKLINE_OPS=on but the compiled library cannot be used (the CLI prints it as one line)."""


_lock = threading.RLock()
_state: dict = {}            # "lib": loaded module or None, "why": reason it is None
_local = threading.local()   # per-thread disable depth (disabled() scopes)


def mode() -> str:
    m = os.environ.get("SEEKLINE_OPS", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"SEEKLINE_OPS must be one of {', '.join(MODES)}, got {m!r}")
    return m


def _want_gpu_lib() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def _load():
    """Load the library that matches this machine, after checking its stamp against the current
    sources and TF. With a GPU visible only the GPU build will do: the CPU build's ops would be
    placed on the host, copying every activation across."""
    import tensorflow as tf

    from model.ops import build  # local: build imports tensorflow.sysconfig only when asked

    names = [GPU_LIB] if _want_gpu_lib() else [CPU_LIB]
    reasons = []
    for name in names:
        path = BUILD_DIR / name
        if not path.exists():
            reasons.append(f"{path} is missing")
            continue
        stale = build.stale_reason(path)
        if stale:
            reasons.append(f"{path} is stale ({stale})")
            continue
        try:
            lib = tf.load_op_library(str(path))
            _state["path"] = str(path)
            return lib, None
        except Exception as e:  # noqa: BLE001 — any load failure means: fall back
            reasons.append(f"{path} failed to load: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return None, "; ".join(reasons)


def library():
    """The loaded op module (generated wrappers: seekline_grouped_matmul, ...) or None."""
    m = mode()
    if m == "off":
        return None
    with _lock:
        if "lib" not in _state:
            lib, why = _load()
            _state["lib"], _state["why"] = lib, why
            if lib is not None:
                from model.ops import gradients  # registers the ops' gradients once
                gradients.register(lib)
            elif m == "auto":
                log.warning("seekline custom ops not used (pure-TF fallback): %s. Build them with `make ops`.",
                            why)
    if _state["lib"] is None and m == "on":
        raise OpsUnavailableError(f"SEEKLINE_OPS=on but the custom ops cannot be used: {_state['why']}. "
                                  f"Run `make ops` (needs g++), or set SEEKLINE_OPS=auto to fall back to pure TF.")
    return _state["lib"]


def describe() -> dict:
    """What a benchmark records next to its numbers: the policy, whether the library is in use,
    which file and which sources it was built from."""
    info = {"mode": mode(), "available": False, "library": None, "sources_sha256": None}
    try:
        lib = library()
    except OpsUnavailableError as e:
        return {**info, "error": str(e)}
    if lib is not None:
        import json
        path = Path(_state["path"])
        stamp = json.loads(path.with_suffix(".json").read_text())
        info.update(available=True, library=str(path), sources_sha256=stamp.get("sources_sha256"),
                    march=stamp.get("march"))
    return info


def available() -> bool:
    """True when the compiled library is loaded (and SEEKLINE_OPS is not off)."""
    return library() is not None


def _in_xla_context() -> bool:
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def gpu_policy() -> frozenset:
    """The ops whose CUDA kernel is used when the GPU build is loaded (SEEKLINE_OPS_GPU)."""
    v = os.environ.get("SEEKLINE_OPS_GPU", "measured").strip().lower() or "measured"
    if v == "measured":
        return GPU_FASTER
    if v == "all":
        return GPU_KERNELS
    if v == "none":
        return frozenset()
    raise ValueError(f"SEEKLINE_OPS_GPU must be one of measured, all, none, got {v!r}")


def active(op: str | None = None) -> bool:
    """Whether code being traced/run here should use the custom ops: the library is available,
    no disabled() scope is open on this thread, and we are not inside an XLA-compiled function.
    With `op` (one of OPS) also: on a GPU, that op has a CUDA kernel and the policy uses it (an op
    without one would run on the host, copying its inputs across)."""
    if op is not None and op not in OPS:
        raise ValueError(f"unknown seekline op {op!r}; known: {', '.join(OPS)}")
    if getattr(_local, "disabled", 0) or not available():
        return False
    if op is not None and _state.get("path", "").endswith(GPU_LIB) and op not in gpu_policy():
        return False
    return not _in_xla_context()


@contextlib.contextmanager
def disabled():
    """Trace the enclosed code with the pure-TF paths, e.g. for a SavedModel that must load
    without seekline's library (model/export), or to compare ops on vs off in one process."""
    _local.disabled = getattr(_local, "disabled", 0) + 1
    try:
        yield
    finally:
        _local.disabled -= 1


def reset() -> None:
    """Forget the loaded state (tests that flip SEEKLINE_OPS or rebuild the library)."""
    with _lock:
        _state.clear()
