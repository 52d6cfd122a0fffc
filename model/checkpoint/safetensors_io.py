"""Minimal safetensors reader/writer on numpy (incl. bf16 and FP8 e4m3, which numpy lacks).

The `safetensors` package's numpy API cannot represent bfloat16 / float8 without extra dtype
packages, so we parse the (simple, documented) format ourselves: 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw bytes. Reads are lazy
(np.memmap), so a shard's tensors are only touched when asked for.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping

import numpy as np

from model.errors import CheckpointError

_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
              "BF16": np.uint16, "F8_E4M3": np.uint8}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3")


def _e4m3_table() -> np.ndarray:
    """All 256 float8_e4m3fn values as float32 (bias 7, no infinities, S.1111.111 = NaN)."""
    out = np.zeros(256, np.float32)
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 0xF, b & 0x7
        if e == 0xF and m == 0x7:
            v = np.nan
        elif e == 0:
            v = (m / 8.0) * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        out[b] = -v if s else v
    return out


_E4M3 = _e4m3_table()


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


class SafetensorsFile:
    """Lazy view of one .safetensors file."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.header: dict[str, dict] = header
        self._base = 8 + n
        self._mm: np.memmap | None = None

    def keys(self):
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def dtype(self, key: str) -> str:
        return self.header[key]["dtype"]

    def raw(self, key: str) -> np.ndarray:
        """Stored values with a numpy dtype (bf16 / fp8 as their uint bit patterns)."""
        info = self.header[key]
        dt = info["dtype"]
        if dt not in _NP_DTYPES:
            raise CheckpointError(f"{self.path}: tensor '{key}' has unsupported dtype {dt}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        buf = self._mm[self._base + start:self._base + end]
        return np.frombuffer(buf, dtype=_NP_DTYPES[dt]).reshape(info["shape"])

    def get_f32(self, key: str) -> np.ndarray:
        """Float tensors decoded to float32 (FP8 values are returned *unscaled*)."""
        dt = self.dtype(key)
        a = self.raw(key)
        if dt == "BF16":
            return bf16_bits_to_f32(a)
        if dt == "F8_E4M3":
            return _E4M3[a]
        return a.astype(np.float32)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], dtype: str = "float32",
                      metadata: dict[str, str] | None = None,
                      keep_f32: Callable[[str], bool] = lambda key: False) -> None:
    """Write float tensors as F32 / BF16 / F16 (ints keep their dtype; keys where keep_f32(key)
    stay F32). Not atomic by itself: callers write into a temporary directory and rename it."""
    code = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    header: dict[str, dict] = {}
    blobs = []
    offset = 0
    for name in tensors:
        a = np.asarray(tensors[name])
        if a.dtype.kind == "f":
            if keep_f32(name):
                data, dt = np.ascontiguousarray(a, np.float32), "F32"
            elif code == "BF16":
                data, dt = f32_to_bf16_bits(a), "BF16"
            else:
                data, dt = np.ascontiguousarray(a, np.float32 if code == "F32" else np.float16), code
        else:
            inv = {v: k for k, v in _NP_DTYPES.items() if k not in ("BF16", "F8_E4M3")}
            data, dt = np.ascontiguousarray(a), inv[np.dtype(a.dtype).type]
        b = data.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
