"""Build seekline's custom-op library: `python -m model.ops.build` (what `make ops` runs).

CPU library (always, needs g++): every cc/*.cc compiled with the flags TensorFlow reports
(tf.sysconfig.get_compile_flags / get_link_flags: its headers, ABI and Eigen alignment) plus
-O3 and -march (default `native`: the library is built on the machine that runs it; set
SEEKLINE_OPS_MARCH=x86-64-v3 or similar for an image that runs elsewhere).
GPU library (when nvcc is found and SEEKLINE_OPS_CUDA is not 0): the same .cc files with
GOOGLE_CUDA=1, which adds the GPU kernel registrations, plus cuda/*.cu.cc through nvcc
(model/ops/cuda/build_cuda.py), with the CUDA runtime linked statically. A failing GPU build
does not fail the CPU one.

Each library gets a stamp (<lib>.json: sha256 of the sources, TF version, flags); the loader
refuses a library whose stamp does not match the tree it runs from, so an edited kernel is never
silently run from an old build. Outputs are written to a temporary name and renamed.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPS_DIR = Path(__file__).resolve().parent
CC_DIR = OPS_DIR / "cc"
CUDA_DIR = OPS_DIR / "cuda"
BUILD_DIR = OPS_DIR / "_build"
CPU_LIB = "libseekline_ops.so"
GPU_LIB = "libseekline_ops_gpu.so"


class BuildError(RuntimeError):
    """The compiler failed; the message carries the command's last lines of output."""


def sources(gpu: bool = False) -> list[Path]:
    files = sorted(CC_DIR.glob("*.cc")) + sorted(CC_DIR.glob("*.h"))
    if gpu:
        files += sorted(CUDA_DIR.glob("*.cu.cc")) + sorted(CUDA_DIR.glob("*.cuh"))
    return files


def _tf_flags() -> tuple[list[str], list[str], str]:
    import tensorflow as tf
    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags()), tf.__version__


def march() -> str:
    return os.environ.get("SEEKLINE_OPS_MARCH", "native")


def fingerprint(gpu: bool = False) -> dict:
    """What a library's stamp records: sources hash, TF version, target arch."""
    h = hashlib.sha256()
    for p in sources(gpu):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    import tensorflow as tf
    return {"sources_sha256": h.hexdigest(), "tensorflow": tf.__version__, "march": march(), "gpu": gpu}


def stale_reason(lib: Path) -> str | None:
    """None when `lib`'s stamp matches this tree and TF; otherwise why not."""
    stamp = lib.with_suffix(".json")
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return f"no readable stamp {stamp.name}"
    now = fingerprint(gpu=bool(recorded.get("gpu")))
    if recorded.get("tensorflow") != now["tensorflow"]:
        return f"built for TensorFlow {recorded.get('tensorflow')}, running {now['tensorflow']}"
    if recorded.get("sources_sha256") != now["sources_sha256"]:
        return "sources changed since it was built"
    return None


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _run(cmd: list[str], what: str, verbose: bool) -> None:
    if verbose:
        print("  $", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {r.returncode}):\n{tail}")


def _compile_objects(cxx: str, cflags: list[str], out: Path, gpu: bool, verbose: bool) -> list[Path]:
    defs = ["-DGOOGLE_CUDA=1"] if gpu else []
    jobs = []
    for src in sorted(CC_DIR.glob("*.cc")):
        obj = out / (src.stem + (".gpu.o" if gpu else ".o"))
        cmd = [cxx, "-c", str(src), "-o", str(obj), "-O3", f"-march={march()}", "-fPIC", "-Wno-ignored-attributes",
               *cflags, *defs, f"-I{CC_DIR}"]
        jobs.append((cmd, f"compiling {src.name}", obj))
    with cf.ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        futures = [pool.submit(_run, cmd, what, verbose) for cmd, what, _ in jobs]
        for f in futures:
            f.result()
    return [obj for _, _, obj in jobs]


def _link(cxx: str, objs: list[Path], lflags: list[str], extra: list[str], dest: Path, stamp: dict,
          verbose: bool) -> Path:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    _run([cxx, "-shared", "-o", str(tmp), *map(str, objs), *lflags, *extra], f"linking {dest.name}", verbose)
    os.replace(tmp, dest)                                   # never a half-written library
    stamp_tmp = dest.with_suffix(f".json.tmp{os.getpid()}")
    stamp_tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(stamp_tmp, dest.with_suffix(".json"))
    return dest


def build(gpu: bool | None = None, force: bool = False, verbose: bool = False) -> dict:
    """Build what is missing or stale. Returns {"cpu": path | None, "gpu": path | None,
    "gpu_error": str | None, "skipped": [...]}. Raises BuildError when the CPU build fails."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (install g++ or set CXX); the pure-TF fallback stays in use")
    cflags, lflags, _ = _tf_flags()
    result: dict = {"cpu": None, "gpu": None, "gpu_error": None, "skipped": []}
    with tempfile.TemporaryDirectory(prefix="seekline-ops-") as td:
        out = Path(td)
        cpu_dest = BUILD_DIR / CPU_LIB
        if force or not cpu_dest.exists() or stale_reason(cpu_dest):
            t0 = time.perf_counter()
            objs = _compile_objects(cxx, cflags, out, gpu=False, verbose=verbose)
            _link(cxx, objs, lflags, [], cpu_dest, fingerprint(gpu=False), verbose)
            print(f"built {cpu_dest} in {time.perf_counter() - t0:.0f} s", flush=True)
        else:
            result["skipped"].append(str(cpu_dest))
        result["cpu"] = cpu_dest

        want_gpu = gpu if gpu is not None else os.environ.get("SEEKLINE_OPS_CUDA", "1") != "0"
        if want_gpu:
            from model.ops.cuda import build_cuda
        if want_gpu and build_cuda.nvcc_path() is None:
            if gpu:
                raise BuildError("--gpu asked for but nvcc was not found (PATH or CUDA_HOME)")
            want_gpu = False
        if want_gpu:
            gpu_dest = BUILD_DIR / GPU_LIB
            if force or not gpu_dest.exists() or stale_reason(gpu_dest):
                t0 = time.perf_counter()
                try:
                    objs = _compile_objects(cxx, cflags, out, gpu=True, verbose=verbose)
                    objs += build_cuda.compile_cuda(out, verbose=verbose)
                    _link(cxx, objs, lflags, build_cuda.cudart_link_flags(), gpu_dest, fingerprint(gpu=True),
                          verbose)
                    result["gpu"] = gpu_dest
                    print(f"built {gpu_dest} in {time.perf_counter() - t0:.0f} s", flush=True)
                except (BuildError, build_cuda.CudaBuildError) as e:
                    result["gpu_error"] = str(e)
                    if gpu:
                        raise BuildError(f"GPU build failed: {e}") from e
                    print(f"warning: GPU kernels not built ({str(e).splitlines()[0]}); CPU library is fine",
                          file=sys.stderr, flush=True)
            else:
                result["gpu"] = gpu_dest
                result["skipped"].append(str(gpu_dest))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.ops.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the stamps match")
    ap.add_argument("--gpu", dest="gpu", action="store_true", default=None,
                    help="require the CUDA build (default: build it when nvcc is found)")
    ap.add_argument("--no-gpu", dest="gpu", action="store_false", help="CPU library only")
    ap.add_argument("--if-compiler", action="store_true",
                    help="exit 0 with a note when no compiler is present or the build fails (setup uses it)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        r = build(gpu=args.gpu, force=args.force, verbose=args.verbose)
    except BuildError as e:
        print(f"error: custom ops not built: {e}", file=sys.stderr)
        return 0 if args.if_compiler else 1
    for p in r["skipped"]:
        print(f"up to date: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
