import numpy as np
import pytest

from model.checkpoint.safetensors_io import (
    _E4M3,
    SafetensorsFile,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    write_safetensors,
)
from model.errors import CheckpointError


def test_e4m3_table_known_values():
    # float8_e4m3fn: max 448 (0x7E), min normal 2^-6 (0x08), min subnormal 2^-9 (0x01), NaN 0x7F
    assert _E4M3[0x7E] == 448.0 and _E4M3[0xFE] == -448.0
    assert _E4M3[0x08] == 2.0 ** -6 and _E4M3[0x01] == 2.0 ** -9
    assert _E4M3[0x38] == 1.0 and np.isnan(_E4M3[0x7F])


def test_bf16_round_to_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 3.14159], np.float32)
    got = bf16_bits_to_f32(f32_to_bf16_bits(x))
    # 1+2^-8 is a tie -> even (1.0); 1+3·2^-8 is a tie -> even (1 + 2^-6)
    np.testing.assert_array_equal(got[:4], [1.0, 1.0, 1.0 + 2 ** -6, -2.5])
    assert abs(got[4] - 3.140625) < 1e-7


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_round_trip(tmp_path, dtype):
    a = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"a": a, "i": np.arange(4, dtype=np.int64)}, dtype)
    f = SafetensorsFile(p)
    tol = {"float32": 0, "bfloat16": 1e-2, "float16": 1e-3}[dtype]
    np.testing.assert_allclose(f.get_f32("a"), a, atol=tol * 4, rtol=tol)
    np.testing.assert_array_equal(f.raw("i"), np.arange(4))


def test_readable_by_safetensors_package(tmp_path):
    from safetensors.numpy import load_file
    a = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"w": a})
    np.testing.assert_array_equal(load_file(p)["w"], a)


def test_garbage_file_names_path(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        SafetensorsFile(str(p))
