"""Read a HF checkpoint directory: config.json + model.safetensors or shards + index json.

`CheckpointReader.get(key)` returns float32 numpy arrays whatever the stored dtype (F32, F16,
BF16, or FP8 e4m3 with `<name>.weight_scale_inv` block scales, dequantised as
W[i, j] = q[i, j] · scale_inv[i // bo, j // bi]). Two expert layouts are accepted: the hub's
per-expert keys (mlp.experts.E.{gate,up,down}_proj.weight) and transformers' fused in-memory
layout (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]); the fused form is
exposed under per-expert names so the rest of the importer sees one layout.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from model.checkpoint.safetensors_io import SafetensorsFile
from model.errors import CheckpointError

_FUSED_GATE_UP = re.compile(r"^(.*\.mlp\.experts)\.gate_up_proj$")
_FUSED_DOWN = re.compile(r"^(.*\.mlp\.experts)\.down_proj$")


def _read_weight_map(index: str) -> dict[str, str]:
    """{tensor name: shard file name} of a model.safetensors.index.json, or a one-line error."""
    try:
        with open(index, "rb") as f:
            weight_map = json.loads(f.read().decode("utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        detail = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{index}: invalid index json ({' '.join(detail.split())})") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v and os.path.basename(v) == v
            for k, v in weight_map.items()):
        # A shard name must be a plain file name: the index may not point outside the folder.
        raise CheckpointError(f"{index}: invalid index json (weight_map must map tensor names "
                              "to shard file names in this folder)")
    return weight_map


class CheckpointReader:
    def __init__(self, path: str, fp8_block: tuple[int, int] | None = None):
        self.path = path
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: checkpoint directory not found")
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        if os.path.exists(index):
            weight_map = _read_weight_map(index)
            for key, fn in weight_map.items():
                fp = os.path.join(path, fn)
                if fn not in self._files:
                    if not os.path.exists(fp):
                        raise CheckpointError(f"{index}: shard '{fn}' (holding '{key}') is missing")
                    self._files[fn] = SafetensorsFile(fp)
                if key not in self._files[fn]:
                    raise CheckpointError(f"{index}: key '{key}' is not in shard '{fn}'")
                self._where[key] = fn
        elif os.path.exists(single):
            self._files["model.safetensors"] = SafetensorsFile(single)
            self._where = {k: "model.safetensors" for k in self._files["model.safetensors"].keys()}
        else:
            found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not found:
                raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
            for fn in found:  # shards without an index: take the union
                self._files[fn] = SafetensorsFile(os.path.join(path, fn))
                for k in self._files[fn].keys():
                    self._where[k] = fn
        self.fp8_block = fp8_block or (128, 128)
        self._virtual: dict[str, tuple[str, int, slice]] = {}
        self._keys: list[str] | None = None
        self._expand_fused_experts()

    # ------------------------------------------------------------------ key set
    def _expand_fused_experts(self):
        for key in list(self._where):
            m = _FUSED_GATE_UP.match(key)
            if m:
                e, two_i, _ = self._stored_shape(key)
                i = two_i // 2
                for x in range(e):
                    self._virtual[f"{m.group(1)}.{x}.gate_proj.weight"] = (key, x, slice(0, i))
                    self._virtual[f"{m.group(1)}.{x}.up_proj.weight"] = (key, x, slice(i, two_i))
                continue
            m = _FUSED_DOWN.match(key)
            if m and len(self._stored_shape(key)) == 3:
                for x in range(self._stored_shape(key)[0]):
                    self._virtual[f"{m.group(1)}.{x}.down_proj.weight"] = (key, x, slice(None))

    def _stored_shape(self, key):
        return self._files[self._where[key]].shape(key)

    def keys(self) -> list[str]:
        """Logical tensor names (FP8 scales folded into their weights, fused experts split)."""
        if self._keys is None:
            fused = {v[0] for v in self._virtual.values()}
            ks = [k for k in self._where if k not in fused and not k.endswith("weight_scale_inv")]
            self._keys = ks + list(self._virtual)
            self._keyset = frozenset(self._keys)
        return self._keys

    def __contains__(self, key: str) -> bool:
        self.keys()
        return key in self._keyset

    def location(self, key: str) -> str:
        k = self._virtual[key][0] if key in self._virtual else key
        return os.path.join(self.path, self._where[k])

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._virtual:
            src, _, sl = self._virtual[key]
            s = self._stored_shape(src)
            rows = s[1] if sl == slice(None) else sl.stop - sl.start
            return (rows, s[2])
        return self._stored_shape(key)

    def dtype(self, key: str) -> str:
        k = self._virtual[key][0] if key in self._virtual else key
        return self._files[self._where[k]].dtype(k)

    # ------------------------------------------------------------------ values
    def get(self, key: str) -> np.ndarray:
        """float32 value of `key` (FP8 dequantised)."""
        if key in self._virtual:
            src, x, sl = self._virtual[key]
            return self._get_stored(src)[x][sl]
        return self._get_stored(key)

    def _get_stored(self, key: str) -> np.ndarray:
        f = self._files[self._where[key]]
        a = f.get_f32(key)
        if f.dtype(key) == "F8_E4M3":
            skey = key[:-len("weight")] + "weight_scale_inv" if key.endswith("weight") else key + "_scale_inv"
            if skey not in self._where:
                raise CheckpointError(f"{self.location(key)}: FP8 tensor '{key}' has no '{skey}'")
            scale = self._files[self._where[skey]].get_f32(skey)
            a = dequant_fp8(a, scale, self.fp8_block, key)
        return a


def dequant_fp8(q: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int], key: str = "") -> np.ndarray:
    """q (out, in) e4m3 values, scale_inv (ceil(out/bo), ceil(in/bi)) -> float32 (out, in)."""
    bo, bi = block
    rows, cols = q.shape
    want = (-(-rows // bo), -(-cols // bi))
    if tuple(scale_inv.shape) != want:
        raise CheckpointError(f"FP8 scale for '{key}': expected shape {want} for weight {q.shape} "
                              f"with block {block}, got {tuple(scale_inv.shape)}")
    full = np.repeat(np.repeat(scale_inv, bo, axis=0)[:rows], bi, axis=1)[:, :cols]
    return (q * full).astype(np.float32)
