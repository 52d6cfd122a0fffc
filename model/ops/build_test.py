"""The build + loader contract: stamps catch stale libraries, SEEKLINE_OPS selects the policy, and
the pure-TF fallback is what runs when the library is missing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model import ops
from model.ops import build

REPO = Path(__file__).resolve().parents[2]


def _py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


@pytest.mark.skipif(build.compiler() is None, reason="no C++ compiler: the pure-TF fallback is expected")
def test_library_is_built_and_loads_where_a_compiler_exists():
    """`make test` / `make run` build the ops first when g++ is present: a failed or stale build
    must not silently leave every op test skipped."""
    lib = ops.BUILD_DIR / ops.CPU_LIB
    assert lib.exists(), f"{lib} missing: `make ops` did not run or failed"
    assert build.stale_reason(lib) is None
    if ops.mode() != "off":
        assert ops.available()


def test_stamp_detects_changed_sources_and_tf_version(tmp_path):
    lib = tmp_path / "libx.so"
    lib.write_bytes(b"")
    assert "no readable stamp" in build.stale_reason(lib)
    stamp = build.fingerprint()
    lib.with_suffix(".json").write_text(json.dumps(stamp))
    assert build.stale_reason(lib) is None
    lib.with_suffix(".json").write_text(json.dumps({**stamp, "sources_sha256": "0" * 64}))
    assert build.stale_reason(lib) == "sources changed since it was built"
    lib.with_suffix(".json").write_text(json.dumps({**stamp, "tensorflow": "2.0.0"}))
    assert "built for TensorFlow 2.0.0" in build.stale_reason(lib)


def test_fingerprint_covers_every_kernel_source():
    names = {p.name for p in build.sources(gpu=True)}
    assert {"grouped_matmul.cc", "rms_norm.cc", "kernels.h"} <= names
    assert any(n.endswith(".cu.cc") for n in names)


MISSING = ("import model.ops as o, pathlib, tempfile; o.BUILD_DIR = pathlib.Path(tempfile.mkdtemp()); "
           "import tensorflow as tf; from model.layers.moe import MoE; from model.layers.rmsnorm import RMSNorm; ")


def test_missing_library_falls_back_to_pure_tf_in_auto_mode():
    code = MISSING + (
        "print('available', o.available());"
        "m = MoE(8, 4, 4, 1, 2); n = RMSNorm(8);"
        "g = tf.function(lambda x: m(n(x))).get_concrete_function(tf.TensorSpec([2, 3, 8])).graph;"
        "print('types', sorted({op.type for op in g.get_operations() if op.type.startswith('Seekline')}))")
    r = _py(code, SEEKLINE_OPS="auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "available False" in r.stdout and "types []" in r.stdout
    assert "pure-TF fallback" in r.stderr and "is missing" in r.stderr


def test_on_mode_with_missing_library_is_a_one_line_error_naming_make_ops():
    r = _py(MISSING + "o.library()", SEEKLINE_OPS="on")
    assert r.returncode != 0
    assert "OpsUnavailableError: SEEKLINE_OPS=on but the custom ops cannot be used" in r.stderr
    assert "make ops" in r.stderr


def test_bad_mode_is_rejected():
    r = _py("import model.ops as o; o.mode()", SEEKLINE_OPS="fast")
    assert r.returncode != 0 and "SEEKLINE_OPS must be one of auto, on, off, got 'fast'" in r.stderr


@pytest.mark.skipif(not ops.available(), reason="custom ops not built")
def test_stale_library_is_refused(tmp_path):
    """A library whose stamp names other sources is not loaded (auto: fallback with the reason)."""
    shutil.copy(ops.BUILD_DIR / ops.CPU_LIB, tmp_path / ops.CPU_LIB)
    stamp = json.loads((ops.BUILD_DIR / ops.CPU_LIB).with_suffix(".json").read_text())
    (tmp_path / ops.CPU_LIB).with_suffix(".json").write_text(json.dumps({**stamp, "sources_sha256": "f" * 64}))
    r = _py(f"import model.ops as o, pathlib; o.BUILD_DIR = pathlib.Path({str(tmp_path)!r}); "
            "print('available', o.available())", SEEKLINE_OPS="auto")
    assert "available False" in r.stdout and "sources changed since it was built" in r.stderr


@pytest.mark.skipif(not ops.available(), reason="custom ops not built")
def test_off_mode_uses_pure_tf_even_when_built():
    r = _py("import model.ops as o; print('available', o.available())", SEEKLINE_OPS="off")
    assert r.returncode == 0 and "available False" in r.stdout


def test_build_without_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(build, "compiler", lambda: None)
    with pytest.raises(build.BuildError, match=r"no C\+\+ compiler found"):
        build.build()
    assert build.main(["--if-compiler"]) == 0


def test_describe_records_policy_and_build():
    info = ops.describe()
    assert info["mode"] == ops.mode() and info["available"] == ops.available()
    if info["available"]:
        assert info["library"].endswith((ops.CPU_LIB, ops.GPU_LIB)) and len(info["sources_sha256"]) == 64
    r = _py("import model.ops as o; print(o.describe())", SEEKLINE_OPS="off")
    assert "'mode': 'off', 'available': False" in r.stdout


@pytest.mark.skipif(not ops.available(), reason="custom ops not built")
def test_gpu_build_uses_only_the_cuda_kernels_the_policy_names(monkeypatch):
    """With the GPU build loaded, an op runs its CUDA kernel only when SEEKLINE_OPS_GPU allows it:
    by default the kernels measured faster than TF's path on a GPU (RMSNorm), `all`, or `none`.
    The CPU build is not affected. (Faked here by the loaded path; no GPU needed.)"""
    monkeypatch.setitem(ops._state, "path", str(ops.BUILD_DIR / ops.GPU_LIB))
    monkeypatch.delenv("SEEKLINE_OPS_GPU", raising=False)
    assert ops.active("rms_norm") and ops.active()
    assert not ops.active("grouped_matmul") and not ops.active("mla_latent_attention")
    monkeypatch.setenv("SEEKLINE_OPS_GPU", "all")
    assert all(ops.active(op) == (op in ops.GPU_KERNELS) for op in ops.OPS)
    monkeypatch.setenv("SEEKLINE_OPS_GPU", "none")
    assert not any(ops.active(op) for op in ops.OPS)
    monkeypatch.setenv("SEEKLINE_OPS_GPU", "fastest")
    with pytest.raises(ValueError, match="SEEKLINE_OPS_GPU must be one of measured, all, none"):
        ops.active("rms_norm")
    monkeypatch.setitem(ops._state, "path", str(ops.BUILD_DIR / ops.CPU_LIB))
    monkeypatch.setenv("SEEKLINE_OPS_GPU", "none")
    assert all(ops.active(op) for op in ops.OPS)        # the CPU kernels: policy does not apply
    with pytest.raises(ValueError, match="unknown seekline op 'rmsnorm'"):
        ops.active("rmsnorm")
