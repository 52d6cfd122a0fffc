"""safetensors files on numpy, read through the `safetensors` library's own validated parser.

Reading: `safe_open(path, framework="numpy")` checks the whole header before any tensor is read
(header length within the file and under the library's cap, JSON, known dtypes, each tensor's
byte range = prod(shape) · itemsize, ranges contiguous from 0 and ending exactly at the end of
the file), so a truncated, random or inconsistent file fails at open; it is reported as a
one-line CheckpointError naming the file. BF16 comes back as `ml_dtypes.bfloat16`: the library
asks numpy for a dtype named "bfloat16", which importing ml_dtypes registers.

Three hand-written parts remain, each where a measurement (safetensors 0.8.0, numpy 1.26,
ml_dtypes 0.3.2) showed the library cannot do the job:

- F8_E4M3 tensors: `get_tensor` and `get_slice(...)[:]` fail with "module 'numpy' has no
  attribute 'float8_e4m3fn'", for framework="numpy" and "tf" alike (tf goes through numpy). Their
  bytes are read at the data_offsets of the header the library has just validated, and viewed as
  `ml_dtypes.float8_e4m3fn`.
- Writing: `safetensors.numpy.save_file` writes our dtypes (BF16 via ml_dtypes), but lays the
  tensors out sorted by dtype alignment, then name, with __metadata__ first, so its files differ
  byte for byte from this writer's, whose exports transformers loaded and whose hashes
  tests/fixtures/hf/*/export_check.json pin. Switching means re-running that check
  (scripts/make_hf_fixtures.py --verify-export, in the torch + transformers reference venv). The
  writer is the format's few lines; the tests read its output back with the library.
- Naming the fault: the library's "invalid shape, data type, or offset for tensor" and
  "incomplete metadata, file not fully covered" name no tensor, and for a tensor moved past the
  end it names the neighbour after the gap. So once the library has rejected a file, `_diagnose`
  re-reads the header (only if its length fits in the file) to say which tensor is cut off,
  mis-sized or out of place, or that the header length exceeds the file. It only words an
  error; whether a file is accepted is the library's decision alone.
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from model.errors import CheckpointError

# Stored dtype code -> numpy dtype, for the dtypes a checkpoint may hold.
_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
              "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn}
_CODES = {np.dtype(t): code for code, t in _NP_DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3")
_LIB_PREFIX = "Error while deserializing header: "


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt in (np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn))


class SafetensorsFile:
    """Lazy view of one .safetensors file: the library memory-maps it and copies a tensor out on
    `get`. The mapping lives as long as this object."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._f = safe_open(path, framework="numpy")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(_open_error(path, e)) from None
        self.metadata: dict[str, str] = self._f.metadata() or {}
        self._keys = list(self._f.keys())
        self._keyset = frozenset(self._keys)
        self._info: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._offsets: dict[str, list[int]] | None = None
        self._data_start = 0

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keyset

    def _dtype_shape(self, key: str) -> tuple[str, tuple[int, ...]]:
        if key not in self._info:
            if key not in self._keyset:
                raise CheckpointError(f"{self.path}: no tensor '{key}'")
            sl = self._f.get_slice(key)
            self._info[key] = (sl.get_dtype(), tuple(sl.get_shape()))
        return self._info[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._dtype_shape(key)[1]

    def dtype(self, key: str) -> str:
        return self._dtype_shape(key)[0]

    def get(self, key: str) -> np.ndarray:
        """Stored values in their own dtype (BF16 / F8_E4M3 as ml_dtypes arrays)."""
        dt, shape = self._dtype_shape(key)
        if dt not in _NP_DTYPES:
            raise CheckpointError(f"{self.path}: tensor '{key}' has unsupported dtype {dt} "
                                  f"(supported: {', '.join(_NP_DTYPES)})")
        if dt == "F8_E4M3":
            return self._read_at_offsets(key, shape)
        try:
            return self._f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.path}: tensor '{key}' cannot be read ({e})") from None

    def get_f32(self, key: str) -> np.ndarray:
        """Float tensors decoded to float32 (FP8 values are returned *unscaled*)."""
        return self.get(key).astype(np.float32)

    def _read_at_offsets(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        # The library validated this header when the file was opened; we only take its offsets.
        if self._offsets is None:
            try:
                with open(self.path, "rb") as fh:
                    (n,) = struct.unpack("<Q", fh.read(8))
                    header = json.loads(fh.read(n))
                self._offsets = {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}
            except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{self.path}: changed since it was opened ({e})") from None
            self._data_start = 8 + n
        if key not in self._offsets:
            raise CheckpointError(f"{self.path}: changed since it was opened (no tensor '{key}')")
        start, end = self._offsets[key]
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start + start)
            buf = fh.read(end - start)
        if len(buf) != end - start:  # only if the file was cut short after it was opened
            raise CheckpointError(f"{self.path}: tensor '{key}' is cut off: {len(buf)} of "
                                  f"{end - start} bytes")
        return np.frombuffer(buf, dtype=ml_dtypes.float8_e4m3fn).reshape(shape)


def _open_error(path: str, e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, SafetensorError):
        return f"{path}: cannot read safetensors file ({e.strerror or e})"
    # Our diagnosis names the tensor at fault where the library's words may name none, or a
    # neighbour (it walks offsets in order: a moved tensor shows up as a gap before the next).
    reason = _diagnose(path) or str(e).removeprefix(_LIB_PREFIX)
    return " ".join(f"{path}: not a valid safetensors file: {reason}".split())  # one line


def _diagnose(path: str) -> str:
    """The header length or tensor at fault in a file the library rejected ('' if unknown)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"header length {n} exceeds the {size - 8} bytes after it"
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return ""
    if not isinstance(header, dict):
        return ""
    data_len = size - 8 - n
    entries, skipped = [], False
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(x) for x in info["shape"]]
            itemsize = np.dtype(_NP_DTYPES[info["dtype"]]).itemsize
        except (KeyError, TypeError, ValueError):
            skipped = True  # a dtype we do not know, or a malformed entry: the library's words stand
            continue
        entries.append((start, end, name, shape, itemsize, info["dtype"]))
    entries.sort()  # file order, so a truncation names the tensor it cuts through
    for start, end, name, shape, itemsize, dtype in entries:
        if end > data_len:
            return (f"tensor '{name}' needs data bytes {start}..{end}, but the file holds "
                    f"{data_len}: truncated or bad offsets")
        if math.prod(shape) * itemsize != end - start:
            return (f"tensor '{name}' has {end - start} bytes, but shape {shape} of "
                    f"{dtype} needs {math.prod(shape) * itemsize}")
    if skipped:
        return ""
    pos = 0  # every range fits: now gaps / overlaps, which the format forbids
    for start, end, name, *_ in entries:
        if start != pos:
            return f"tensor '{name}' starts at data byte {start}, expected {pos} (gap or overlap)"
        pos = end
    return f"{data_len - pos} bytes after the last tensor's data" if pos < data_len else ""


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], dtype: str = "float32",
                      metadata: dict[str, str] | None = None,
                      keep_f32: Callable[[str], bool] = lambda key: False) -> None:
    """Write float tensors as F32 / BF16 / F16 (ints keep their dtype; keys where keep_f32(key)
    stay F32), in the given order. Not atomic by itself: callers write into a temporary
    directory and rename it."""
    target = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    header: dict[str, dict] = {}
    blobs = []
    offset = 0
    for name in tensors:
        a = np.asarray(tensors[name])
        if _is_float(a.dtype):
            # Via float32 first, so float64 input rounds as it always has (once to f32).
            a32 = a.astype(np.float32, copy=False)
            data = np.ascontiguousarray(a32 if keep_f32(name) else a32.astype(target, copy=False))
        else:
            data = np.ascontiguousarray(a)
        if data.dtype not in _CODES:
            raise ValueError(f"tensor '{name}': dtype {data.dtype} cannot be stored")
        b = data.tobytes()
        header[name] = {"dtype": _CODES[data.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
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
