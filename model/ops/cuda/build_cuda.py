"""Compile the seekline CUDA launchers (model/ops/cuda/*.cu.cc) with nvcc.

The .cu.cc files include no TensorFlow headers, so any installed nvcc can build them (here CUDA
13.0, newer than the 12.x TF 2.16 was built with). The objects are linked into the op library
together with a static CUDA runtime (`cudart_link_flags`), so the library does not depend on
which libcudart.so, if any, is on the loader path.

Public API: `nvcc_path`, `compile_cuda`, `cudart_link_flags`, `CudaBuildError`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent
CC_DIR = CUDA_DIR.parent / "cc"  # kernels.h

# (compute capability, also embed PTX). sm_80 SASS also runs on sm_86/87/89 (same major); the
# compute_90 PTX lets newer GPUs (sm_100, sm_120) JIT-compile the kernels.
_ARCHS = ((80, False), (90, True))
_NVCC_FLAGS = ["-std=c++17", "-O3", "-x", "cu", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr"]
_STDERR_TAIL = 4000  # characters of nvcc's stderr kept in a CudaBuildError


class CudaBuildError(RuntimeError):
    """nvcc is missing or failed; the message carries the tail of its stderr."""


def nvcc_path() -> str | None:
    """nvcc on PATH, else $CUDA_HOME/bin/nvcc, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME")
    if home and os.access(Path(home) / "bin" / "nvcc", os.X_OK):
        return str(Path(home) / "bin" / "nvcc")
    return None


def _require_nvcc() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        raise CudaBuildError("nvcc not found on PATH or in $CUDA_HOME/bin")
    return nvcc


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:  # e.g. nvcc deleted between which() and here
        raise CudaBuildError(f"could not run {cmd[0]}: {e}") from e


def _supported_archs(nvcc: str) -> set[int]:
    """Compute capabilities this nvcc accepts (`--list-gpu-arch` prints compute_XX lines)."""
    proc = _run([nvcc, "--list-gpu-arch"])
    if proc.returncode != 0:
        raise CudaBuildError(f"nvcc --list-gpu-arch failed:\n{proc.stderr[-_STDERR_TAIL:]}")
    return {int(x) for x in re.findall(r"compute_(\d+)", proc.stdout)}


def _gencode_flags(nvcc: str) -> list[str]:
    """-gencode flags for the wanted architectures this nvcc still supports (CUDA 13 dropped <= sm_70)."""
    supported = _supported_archs(nvcc)
    flags = []
    for cc, ptx in _ARCHS:
        if cc not in supported:
            continue
        code = f"[sm_{cc},compute_{cc}]" if ptx else f"sm_{cc}"
        flags += ["-gencode", f"arch=compute_{cc},code={code}"]
    if not flags:
        wanted = ", ".join(f"sm_{cc}" for cc, _ in _ARCHS)
        raise CudaBuildError(f"{nvcc} supports none of {wanted} (it lists {sorted(supported)})")
    return flags


def sources() -> list[Path]:
    """The CUDA translation units, in a stable order."""
    return sorted(CUDA_DIR.glob("*.cu.cc"))


def compile_cuda(out_dir: Path, verbose: bool = False) -> list[Path]:
    """Compile every model/ops/cuda/*.cu.cc to out_dir/<name>.o; returns the object paths.

    Raises CudaBuildError (with the tail of nvcc's stderr) when nvcc is missing or fails.
    """
    nvcc = _require_nvcc()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gencode = _gencode_flags(nvcc)
    objects = []
    for src in sources():
        obj = out_dir / (src.name[: -len(".cc")] + ".o")  # gemm.cu.cc -> gemm.cu.o
        cmd = [nvcc, *_NVCC_FLAGS, *gencode, "-I", str(CC_DIR), "-c", str(src), "-o", str(obj)]
        if verbose:
            print(" ".join(cmd), flush=True)
        proc = _run(cmd)
        if proc.returncode != 0:
            raise CudaBuildError(
                f"nvcc failed on {src.name} (exit {proc.returncode}):\n{proc.stderr[-_STDERR_TAIL:]}"
            )
        if verbose and proc.stderr:
            print(proc.stderr, flush=True)
        objects.append(obj)
    return objects


def _cuda_root(nvcc: str) -> Path:
    """The toolkit root. nvcc may be a wrapper script (here /usr/local/bin/nvcc execs
    /usr/local/cuda-13.0/bin/nvcc), so ask nvcc itself: a `--dryrun` compile (which runs nothing)
    prints `#$ TOP=<root>`."""
    proc = _run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull])
    match = re.search(r"^#\$ TOP=(.+)$", proc.stdout + proc.stderr, re.MULTILINE)
    if match:
        return Path(match.group(1).strip()).resolve()
    return Path(nvcc).resolve().parent.parent


def cudart_link_flags() -> list[str]:
    """Flags the final g++ link needs to link the CUDA runtime statically into the op library.

    Put them after the objects: [-L<dir with libcudart_static.a>, -lcudart_static, -ldl, -lrt, -lpthread].
    """
    nvcc = _require_nvcc()
    root = _cuda_root(nvcc)
    for lib_dir in (root / "lib64", root / "targets" / "x86_64-linux" / "lib", root / "lib"):
        if (lib_dir / "libcudart_static.a").is_file():
            return [f"-L{lib_dir}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    raise CudaBuildError(f"libcudart_static.a not found under {root} (lib64, targets/x86_64-linux/lib, lib)")
