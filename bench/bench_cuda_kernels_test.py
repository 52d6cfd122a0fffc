"""bench_cuda_kernels: its helpers, and (where nvcc exists) that the launchers, the check program
and the ctypes shim build and link; on a machine without a GPU the check program reports that."""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cuda_kernels as bck  # noqa: E402


def test_group_sizes_route_each_token_to_top_k_distinct_experts():
    sizes = bck.group_sizes(tokens=500, top_k=6, experts=64, seed=3)
    assert len(sizes) == 64 and sum(sizes) == 500 * 6
    assert max(sizes) <= 500                     # distinct experts: at most one row per token
    assert min(sizes) >= 0 and max(sizes) > 3 * min(sizes)  # the Dirichlet(2) preference skews load
    assert bck.group_sizes(500, 6, 64, seed=3) == sizes      # seeded


def test_offsets_ratio_and_tflops():
    assert bck.offsets([3, 0, 2]) == [0, 3, 3, 5]
    assert bck.ratio(reference_s=2.0, ours_s=0.5) == 4.0
    assert bck.tflops(2 * 4096 ** 3, 1e-3) == pytest.approx(137.438953472)


def test_parse_check_output_ignores_sanitizer_lines():
    ok = "========= COMPUTE-SANITIZER\nOK\n========= ERROR SUMMARY: 0 errors\n"
    assert bck.parse_check_output(ok)["ok"]
    bad = "FAIL gemm dtype=1 ta=0 tb=0 2x2x2 [3]: got 1 want 2\nFAILED 1\n"
    out = bck.parse_check_output(bad)
    assert not out["ok"] and out["failures"] == ["FAIL gemm dtype=1 ta=0 tb=0 2x2x2 [3]: got 1 want 2"]
    assert not bck.parse_check_output("")["ok"]


def test_load_build_cuda_does_not_import_tensorflow():
    # The GPU machine has no TensorFlow: the build helper must load without the model package.
    module = bck.load_build_cuda()
    assert callable(module.compile_cuda) and "tensorflow" not in module.__dict__


@pytest.mark.skipif(bck.load_build_cuda().nvcc_path() is None or shutil.which("g++") is None,
                    reason="needs nvcc and g++")
def test_builds_check_program_and_shim(tmp_path):
    built = bck.build(tmp_path)
    assert built["check"].is_file() and built["lib"].is_file()
    result = bck.run_check(built["check"])
    if "no_device" not in result:            # a GPU machine: the numbers must check out
        assert result["ok"], result
    else:
        assert result["returncode"] == bck.NO_DEVICE_EXIT
