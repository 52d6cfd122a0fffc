"""The export phase: the blessed model as a TF Serving SavedModel + HF files + a manifest.

run_export(cfg, model_dir, output_dir, push_dir, provenance):
  OUTPUT/saved_model/<version>/   SavedModel (generate, logits, serving_default = generate)
  OUTPUT/hf/                      config.json, model.safetensors, tokenizer.json (+ meta, chat
                                  template) — the HF-ecosystem copy
  OUTPUT/manifest.json            what was exported from where: the source model, its evaluation
                                  and blessing (pass@k, rules), the pipeline and the MLMD ids
  <push_dir>/<version>/           the SavedModel again, published whole (staged, then renamed), so
                                  TF Serving watching push_dir never sees a half-written version;
                                  with hf/ inside it (TF Serving ignores it; `seekline serve
                                  PUSH_DIR` serves the newest version's hf/)
The version is the export time in seconds (TF Serving serves the highest number).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from common.errors import InputDataError
from common.fileio import atomic_write_text
from configs.training import ExportConfig

SAVED_MODEL_DIR = "saved_model"
HF_DIR = "hf"
MANIFEST = "manifest.json"
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_meta.json", "seekline_phase.json")


def stop_and_pad_ids(model_dir: str) -> tuple[list[int], int]:
    """The ids generate stops at (config eos ids + the tokenizer's eos / end-of-turn) and pads with."""
    from components.grpo.rollout import PromptEncoder
    from components.tokenizer.tokenizer import META_FILE, load_meta
    from model.config import ModelConfig

    cfg = ModelConfig.from_json_file(os.path.join(model_dir, "config.json"))
    eos = list(cfg.eos_token_ids)
    if os.path.exists(os.path.join(model_dir, META_FILE)):
        eos.append(load_meta(model_dir)["eos_id"])
    enc = PromptEncoder.for_model(model_dir, "auto", eos)
    return sorted({int(t) for t in enc.stop_ids}), int(enc.pad_id)


def _copy_tree_gfile(src: str, dst: str) -> None:
    import tensorflow as tf

    for root, _, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else f"{dst}/{rel}"
        tf.io.gfile.makedirs(target)
        for f in files:
            tf.io.gfile.copy(os.path.join(root, f), f"{target}/{f}", overwrite=True)


def _publish(src: str, push_dir: str, version: str, hf: str | None = None) -> str:
    """Copy src (and the HF folder as <version>/hf: TF Serving reads only saved_model.pb,
    variables/ and assets/, and `seekline serve PUSH_DIR` serves the newest version's hf/) to
    push_dir/version through a staging name in the same folder, then rename (an object store —
    gs://, s3:// — has no atomic folder rename: there the version folder is written in place, its
    saved_model.pb last, which is the file TF Serving waits for)."""
    if "://" in push_dir:
        import tensorflow as tf

        final = f"{push_dir.rstrip('/')}/{version}"
        if hf:
            _copy_tree_gfile(hf, f"{final}/{HF_DIR}")
        _copy_tree_gfile(os.path.join(src, "variables"), f"{final}/variables")
        for f in tf.io.gfile.listdir(src):
            if f.rstrip("/") not in ("variables", "saved_model.pb"):
                path = os.path.join(src, f.rstrip("/"))
                if tf.io.gfile.isdir(path):
                    _copy_tree_gfile(path, f"{final}/{f.rstrip('/')}")
                else:
                    tf.io.gfile.copy(path, f"{final}/{f}", overwrite=True)
        tf.io.gfile.copy(os.path.join(src, "saved_model.pb"), f"{final}/saved_model.pb", overwrite=True)
        return final
    os.makedirs(push_dir, exist_ok=True)
    final = os.path.join(push_dir, version)
    stage = os.path.join(push_dir, f".{version}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(src, stage)
    if hf:
        shutil.copytree(hf, os.path.join(stage, HF_DIR))
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(stage, final)
    return final


def run_export(cfg: ExportConfig, model_dir: str, output_dir: str, push_dir: str | None,
               provenance: dict[str, Any] | None = None, *, version: str | None = None) -> dict[str, Any]:
    """Export model_dir (HF layout with its tokenizer); returns the manifest."""
    from components.export.saved_model import export_saved_model

    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not os.path.exists(os.path.join(model_dir, f)):
            raise InputDataError(f"{model_dir}: not an HF-layout model folder with its tokenizer (no {f})")
    version = version or str(int(time.time()))
    stop_ids, pad_id = stop_and_pad_ids(model_dir)
    sm = os.path.join(output_dir, SAVED_MODEL_DIR, version)
    info = export_saved_model(model_dir, sm, max_new_tokens_cap=cfg.max_new_tokens_cap,
                              stop_token_ids=stop_ids, pad_token_id=pad_id)
    hf = os.path.join(output_dir, HF_DIR)
    os.makedirs(hf, exist_ok=True)
    for f in HF_FILES:
        if os.path.exists(os.path.join(model_dir, f)):
            shutil.copy2(os.path.join(model_dir, f), os.path.join(hf, f))
    pushed = _publish(sm, push_dir, version, hf) if push_dir else None
    manifest = {"version": int(version), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source_model": model_dir, "saved_model": {**info, "path": sm}, "hf": hf, "pushed_to": pushed,
                **(provenance or {})}
    atomic_write_text(os.path.join(output_dir, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))
    return manifest
