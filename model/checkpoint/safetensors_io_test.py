import ml_dtypes
import numpy as np
import pytest

from model.checkpoint.safetensors_io import SafetensorsFile, write_safetensors
from model.errors import CheckpointError


def test_e4m3_known_values(tmp_path):
    """F8_E4M3 is read outside the library (it cannot hand numpy float8): decode known bytes.
    float8_e4m3fn (OCP FP8 spec): 0x7E = 448 (max), 0x08 = 2^-6 (min normal), 0x01 = 2^-9 (min
    subnormal), 0x38 = 1.0, 0x7F = NaN, top bit = sign."""
    from safetensors.numpy import save_file

    bits = np.array([[0x7E, 0xFE, 0x08], [0x01, 0x38, 0x7F]], np.uint8)
    p = str(tmp_path / "f8.safetensors")
    # a neighbour before it, so the F8 tensor does not start at data offset 0
    save_file({"w": bits.view(ml_dtypes.float8_e4m3fn), "a_before": np.arange(5, dtype=np.float32)}, p)
    f = SafetensorsFile(p)
    assert f.dtype("w") == "F8_E4M3" and f.shape("w") == (2, 3)
    got = f.get_f32("w")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.ravel()[:5], [448.0, -448.0, 2.0 ** -6, 2.0 ** -9, 1.0])
    assert np.isnan(got[1, 2])
    np.testing.assert_array_equal(f.get("a_before"), [0, 1, 2, 3, 4])


def test_bf16_round_to_nearest_even(tmp_path):
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 3.14159], np.float32)
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"x": x}, "bfloat16")
    f = SafetensorsFile(p)
    assert f.dtype("x") == "BF16"
    got = f.get_f32("x")
    # 1+2^-8 is a tie -> even (1.0); 1+3·2^-8 is a tie -> even (1 + 2^-6)
    np.testing.assert_array_equal(got[:4], [1.0, 1.0, 1.0 + 2 ** -6, -2.5])
    assert abs(got[4] - 3.140625) < 1e-7
    # the stored bit patterns themselves: 1.0 = 0x3F80, 1 + 2^-6 = 0x3F82, -2.5 = 0xC020
    np.testing.assert_array_equal(f.get("x").view(np.uint16)[:4], [0x3F80, 0x3F80, 0x3F82, 0xC020])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_round_trip(tmp_path, dtype):
    a = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"a": a, "i": np.arange(4, dtype=np.int64)}, dtype)
    f = SafetensorsFile(p)
    tol = {"float32": 0, "bfloat16": 1e-2, "float16": 1e-3}[dtype]
    np.testing.assert_allclose(f.get_f32("a"), a, atol=tol * 4, rtol=tol)
    np.testing.assert_array_equal(f.get("i"), np.arange(4))
    assert f.get("i").dtype == np.int64


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_readable_by_safetensors_package(tmp_path, dtype):
    from safetensors.numpy import load_file
    a = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"w": a, "bias": a[0], "n": np.arange(3, dtype=np.int32)}, dtype,
                      keep_f32=lambda k: k == "bias")
    got = load_file(p)
    want = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    assert got["w"].dtype == want and got["bias"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], a.astype(want))
    np.testing.assert_array_equal(got["n"], [0, 1, 2])


def test_garbage_file_names_path(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        SafetensorsFile(str(p))
