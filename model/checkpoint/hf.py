"""HF safetensors <-> seekline Keras model.

Name mapping lives in one place (`variable_map`): every HF key maps to a Keras variable plus how
to move data between them — "copy", "linear" (HF (out, in) vs our (in, out) kernel: transpose),
or "expert" (one slice of a stacked (E, ...) expert weight, transposed). Shapes are checked
against `model.params.hf_param_shapes`, so a bad checkpoint is reported by key with both shapes
before anything is assigned.

Layouts need no permutation: the model rotates interleaved rope pairs itself (rope_interleave),
so exported tensors are bit-identical to the imported ones.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import OrderedDict

import numpy as np

from common.fileio import make_temp_dir
from model.checkpoint.reader import CheckpointReader
from model.checkpoint.safetensors_io import write_safetensors
from model.config import ModelConfig
from model.errors import CheckpointError, ConfigError
from model.params import hf_param_shapes

SEEKLINE_META = "seekline.json"
NATIVE_FORMAT = "seekline-hf-safetensors/1"
_MTP_SHARED = ("embed_tokens.weight", "shared_head.head.weight")  # copies of shared tensors


def _keep_f32(key: str) -> bool:
    # The routing bias is tiny-valued and selection-critical: transformers keeps it in fp32
    # (_keep_in_fp32_modules_strict) and so do we, whatever the export dtype.
    return key.endswith("e_score_correction_bias")


# ---------------------------------------------------------------------- name map
def _mlp_map(m, mlp, p):
    m[p + "gate_proj.weight"] = (mlp.gate_proj.kernel, "linear", None)
    m[p + "up_proj.weight"] = (mlp.up_proj.kernel, "linear", None)
    m[p + "down_proj.weight"] = (mlp.down_proj.kernel, "linear", None)


def _block_map(m, blk, p):
    from model.layers.mla import MultiHeadLatentAttention
    from model.layers.moe import MoE
    m[p + "input_layernorm.weight"] = (blk.input_layernorm.weight, "copy", None)
    m[p + "post_attention_layernorm.weight"] = (blk.post_attention_layernorm.weight, "copy", None)
    a, ap = blk.self_attn, p + "self_attn."
    if isinstance(a, MultiHeadLatentAttention):
        if a.q_lora_rank is None:
            m[ap + "q_proj.weight"] = (a.q_proj.kernel, "linear", None)
        else:
            m[ap + "q_a_proj.weight"] = (a.q_a_proj.kernel, "linear", None)
            m[ap + "q_a_layernorm.weight"] = (a.q_a_layernorm.weight, "copy", None)
            m[ap + "q_b_proj.weight"] = (a.q_b_proj.kernel, "linear", None)
        m[ap + "kv_a_proj_with_mqa.weight"] = (a.kv_a_proj_with_mqa.kernel, "linear", None)
        m[ap + "kv_a_layernorm.weight"] = (a.kv_a_layernorm.weight, "copy", None)
        m[ap + "kv_b_proj.weight"] = (a.kv_b_proj.kernel, "linear", None)
        m[ap + "o_proj.weight"] = (a.o_proj.kernel, "linear", None)
    else:
        for n in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(a, n)
            m[ap + n + ".weight"] = (lin.kernel, "linear", None)
            if lin.bias is not None:
                m[ap + n + ".bias"] = (lin.bias, "copy", None)
        m[ap + "o_proj.weight"] = (a.o_proj.kernel, "linear", None)
    f, fp = blk.mlp, p + "mlp."
    if isinstance(f, MoE):
        m[fp + "gate.weight"] = (f.gate.kernel, "linear", None)
        if f.e_score_correction_bias is not None:
            m[fp + "gate.e_score_correction_bias"] = (f.e_score_correction_bias, "copy", None)
        for e in range(f.n_routed_experts):
            ep = fp + f"experts.{e}."
            m[ep + "gate_proj.weight"] = (f.experts_gate, "expert", e)
            m[ep + "up_proj.weight"] = (f.experts_up, "expert", e)
            m[ep + "down_proj.weight"] = (f.experts_down, "expert", e)
        if f.shared_experts is not None:
            _mlp_map(m, f.shared_experts, fp + "shared_experts.")
    else:
        _mlp_map(m, f, fp)


def variable_map(model) -> OrderedDict[str, tuple]:
    """HF key -> (variable, kind, expert index) for every tensor the model owns."""
    cfg = model.cfg
    m: OrderedDict[str, tuple] = OrderedDict()
    m["model.embed_tokens.weight"] = (model.embed_tokens.weight, "copy", None)
    for i, blk in enumerate(model.blocks):
        _block_map(m, blk, f"model.layers.{i}.")
    m["model.norm.weight"] = (model.norm.weight, "copy", None)
    if model.lm_head is not None:
        m["lm_head.weight"] = (model.lm_head.kernel, "linear", None)
    for k, mod in enumerate(model.mtp):
        p = f"model.layers.{cfg.num_hidden_layers + k}."
        m[p + "enorm.weight"] = (mod.enorm.weight, "copy", None)
        m[p + "hnorm.weight"] = (mod.hnorm.weight, "copy", None)
        m[p + "eh_proj.weight"] = (mod.eh_proj.kernel, "linear", None)
        _block_map(m, mod.block, p)
        m[p + "shared_head.norm.weight"] = (mod.shared_head_norm.weight, "copy", None)
    return m


# ---------------------------------------------------------------------- model -> tensors
def model_to_hf_tensors(model) -> OrderedDict[str, np.ndarray]:
    """All tensors of `model` in HF naming/layout (float32), in hf_param_shapes order."""
    cfg = model.cfg
    vmap = variable_map(model)
    cache: dict[int, np.ndarray] = {}
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, shape in hf_param_shapes(cfg, include_mtp=bool(model.mtp)).items():
        if key.endswith(_MTP_SHARED) and key not in vmap:
            # The official MTP layout stores copies of the shared embedding / head.
            src = "model.embed_tokens.weight" if key.endswith("embed_tokens.weight") else (
                "lm_head.weight" if model.lm_head is not None else "model.embed_tokens.weight")
            var, kind, _ = vmap[src]
            a = np.asarray(var.numpy(), np.float32)
            out[key] = a.T.copy() if kind == "linear" else a.copy()
            continue
        var, kind, e = vmap[key]
        if kind == "expert":
            full = cache.setdefault(id(var), np.asarray(var.numpy(), np.float32))
            a = full[e].T
        else:
            a = np.asarray(var.numpy(), np.float32)
            a = a.T if kind == "linear" else a
        if tuple(a.shape) != tuple(shape):
            raise AssertionError(f"internal: {key} has shape {a.shape}, expected {shape}")
        out[key] = np.ascontiguousarray(a)
    return out


# ---------------------------------------------------------------------- validation
def _has_mtp_keys(reader: CheckpointReader, cfg: ModelConfig) -> bool:
    prefixes = tuple(f"model.layers.{cfg.num_hidden_layers + k}." for k in range(max(1, cfg.num_nextn_predict_layers)))
    return any(k.startswith(prefixes) for k in reader.keys())


def check_tensors(reader: CheckpointReader, cfg: ModelConfig, include_mtp: bool) -> dict[str, tuple[int, ...]]:
    """Raise CheckpointError naming the first missing / extra / mis-shaped tensor."""
    expected = hf_param_shapes(cfg, include_mtp=include_mtp)
    have = set(reader.keys())
    for key, shape in expected.items():
        if key not in have:
            if cfg.tie_word_embeddings and key == "lm_head.weight":
                continue
            raise CheckpointError(f"{reader.path}: missing tensor '{key}' (expected shape "
                                  f"{list(shape)}, got nothing)")
        got = tuple(reader.shape(key))
        if got != tuple(shape):
            raise CheckpointError(f"{reader.location(key)}: tensor '{key}' has shape {list(got)}, "
                                  f"expected {list(shape)}")
    extra = sorted(have - set(expected))
    if cfg.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # some exporters write the tied head anyway
    if not include_mtp:
        mtp_prefix = tuple(f"model.layers.{cfg.num_hidden_layers + k}."
                           for k in range(cfg.num_nextn_predict_layers))
        extra = [k for k in extra if not (mtp_prefix and k.startswith(mtp_prefix))]
    if extra:
        k = extra[0]
        raise CheckpointError(f"{reader.location(k)}: unexpected tensor '{k}' with shape "
                              f"{list(reader.shape(k))} (expected shape: none — not part of a "
                              f"{cfg.model_type} model with this config)")
    return expected


# ---------------------------------------------------------------------- load
def read_config(path: str) -> ModelConfig:
    cpath = os.path.join(path, "config.json")
    if not os.path.exists(cpath):
        raise CheckpointError(f"{path}: config.json not found")
    try:
        return ModelConfig.from_json_file(cpath)
    except UnicodeDecodeError as e:  # a damaged (binary) file: from_json_file expects text
        raise ConfigError(f"{cpath}: invalid JSON: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_hf_checkpoint(path: str, with_mtp: bool | None = None, config: ModelConfig | None = None):
    """HF (or seekline-native) checkpoint dir -> DecoderLM with the weights assigned.

    with_mtp: None = load MTP modules when the checkpoint has their keys (transformers'
    save_pretrained drops them), True = require them, False = ignore them.
    """
    from model.decoder import DecoderLM  # TF import only when a model is actually built
    cfg = config or read_config(path)
    reader = CheckpointReader(path, cfg.fp8_weight_block_size)
    present = cfg.num_nextn_predict_layers > 0 and _has_mtp_keys(reader, cfg)
    if with_mtp is None:
        with_mtp = present
    if with_mtp and cfg.num_nextn_predict_layers == 0:
        raise CheckpointError(f"{path}: with_mtp=True but config.json has num_nextn_predict_layers=0")
    check_tensors(reader, cfg, include_mtp=with_mtp)
    model_cfg = cfg if with_mtp else cfg.replace(num_nextn_predict_layers=0)
    model = DecoderLM(model_cfg.replace(fp8_weight_block_size=None))
    assign_from_reader(model, reader)
    return model


def assign_from_reader(model, reader: CheckpointReader) -> None:
    vmap = variable_map(model)
    stacked: dict[int, tuple[object, np.ndarray]] = {}
    for key, (var, kind, e) in vmap.items():
        if key == "lm_head.weight" and key not in reader:
            continue
        a = reader.get(key)
        if kind == "expert":
            buf = stacked.setdefault(id(var), (var, np.zeros(var.shape, np.float32)))[1]
            buf[e] = a.T
            continue
        a = a.T if kind == "linear" else a
        if tuple(a.shape) != tuple(var.shape):
            raise CheckpointError(f"{reader.location(key)}: tensor '{key}' maps to shape "
                                  f"{list(a.shape)}, variable needs {list(var.shape)}")
        var.assign(a.astype(np.float32))
    for var, buf in stacked.values():
        var.assign(buf)


# ---------------------------------------------------------------------- save
@contextlib.contextmanager
def _atomic_dir(out_dir: str):
    """Yield a sibling temp dir to write into; on success it replaces out_dir, on failure it is
    removed and out_dir is left as it was. The dir gets the umask's permissions (0755 under 022),
    as a plain mkdir would: tempfile.mkdtemp's 0700 would make every checkpoint private."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = make_temp_dir(parent, prefix=os.path.basename(out_dir) + ".tmp-")
    try:
        yield tmp
        _commit(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: str, out_dir: str) -> None:
    """Replace out_dir by tmp; an existing out_dir is kept until the new one is in place."""
    if os.path.exists(out_dir):
        old = out_dir + f".old-{os.getpid()}-{int(time.time())}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _write_shards(tmp: str, tensors: dict[str, np.ndarray], dtype: str, max_shard_bytes: int | None):
    itemsize = 4 if dtype == "float32" else 2
    groups, cur, size = [], [], 0
    for k, a in tensors.items():
        n = a.size * itemsize
        if cur and max_shard_bytes and size + n > max_shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += n
    groups.append(cur)
    if len(groups) == 1:
        write_safetensors(os.path.join(tmp, "model.safetensors"), tensors, dtype, keep_f32=_keep_f32)
        return ["model.safetensors"]
    weight_map, total, files = {}, 0, []
    for i, keys in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(os.path.join(tmp, fn), {k: tensors[k] for k in keys}, dtype, keep_f32=_keep_f32)
        for k in keys:
            weight_map[k] = fn
            total += tensors[k].size * itemsize
        files.append(fn)
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


def save_hf_checkpoint(model, out_dir: str, dtype: str = "float32",
                       max_shard_bytes: int | None = None) -> str:
    """Write config.json + safetensors (per-expert hub keys, MTP as model.layers.{L+k}.*)
    that transformers loads. Atomic: written to a temp dir, then renamed onto out_dir."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    tensors = model_to_hf_tensors(model)
    with _atomic_dir(out_dir) as tmp:
        _write_shards(tmp, tensors, dtype, max_shard_bytes)
        cfg_dict = model.cfg.to_hf_dict()
        cfg_dict["torch_dtype"] = dtype
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg_dict, f, indent=2, sort_keys=True)
    return out_dir


# ---------------------------------------------------------------------- import (native format)
def import_hf_checkpoint(hf_dir: str, out_dir: str, dtype: str = "auto",
                         max_shard_bytes: int = 4 << 30) -> dict:
    """Convert a HF checkpoint into seekline's native checkpoint folder, atomically.

    Native format = HF layout (config.json + safetensors, per-expert keys, MTP keys kept) without
    FP8 (dequantised), plus seekline.json {format, source, dtype, params}. It is therefore also a
    valid transformers checkpoint, and `load_hf_checkpoint` reads it back. Tensors are streamed
    one at a time (no Keras model is built), and every tensor is validated first.
    dtype: "auto" keeps F32 as float32 and writes everything else (BF16/F16/FP8) as bfloat16.
    Returns the seekline.json metadata.
    """
    from model.params import count_params
    cfg = read_config(hf_dir)
    reader = CheckpointReader(hf_dir, cfg.fp8_weight_block_size)
    with_mtp = cfg.num_nextn_predict_layers > 0 and _has_mtp_keys(reader, cfg)
    expected = check_tensors(reader, cfg, include_mtp=with_mtp)
    if dtype == "auto":
        dtype = "float32" if all(reader.dtype(k) == "F32" for k in expected if k in reader) \
            else "bfloat16"
    out_cfg = cfg.replace(fp8_weight_block_size=None)
    if not with_mtp:
        out_cfg = out_cfg.replace(num_nextn_predict_layers=0)
    with _atomic_dir(out_dir) as tmp:
        # Group keys into shards lazily so only one shard's tensors are in memory at a time.
        itemsize = 4 if dtype == "float32" else 2
        keys = [k for k in expected if k in reader]
        groups, cur, size = [], [], 0
        for k in keys:
            n = int(np.prod(expected[k])) * itemsize
            if cur and size + n > max_shard_bytes:
                groups.append(cur)
                cur, size = [], 0
            cur.append(k)
            size += n
        groups.append(cur)
        weight_map = {}
        for i, group in enumerate(groups):
            fn = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            write_safetensors(os.path.join(tmp, fn), {k: reader.get(k) for k in group}, dtype,
                              keep_f32=_keep_f32)
            weight_map.update({k: fn for k in group})
        if len(groups) > 1:
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": sum(int(np.prod(expected[k])) * itemsize for k in keys)},
                           "weight_map": weight_map}, f, indent=2)
        cfg_dict = out_cfg.to_hf_dict()
        cfg_dict["torch_dtype"] = dtype
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg_dict, f, indent=2, sort_keys=True)
        meta = {"format": NATIVE_FORMAT, "source": os.path.abspath(hf_dir), "dtype": dtype,
                "mtp_layers": out_cfg.num_nextn_predict_layers, "params": count_params(out_cfg),
                "num_tensors": len(keys)}
        with open(os.path.join(tmp, SEEKLINE_META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
    return meta
