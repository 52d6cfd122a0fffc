"""Pretraining: the causal-LM task on the pack phase's rows, through the shared engine.

`run_pretrain` is the plain function both the TFX component and `seekline train pretrain` call.
Its output folder is the Model artifact:

  checkpoints/          training checkpoints (resume point; keep-last-N)
  final/                HF layout: config.json + model.safetensors + tokenizer.json (+ meta)
  config.json           the phase config that produced it;  model_config.json  the architecture
  report.json           held-out loss / perplexity vs the unigram-entropy baseline, tokens/s, …
  loss_curve.png, metrics.jsonl, tensorboard/
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import numpy as np
import tensorflow as tf

from common.errors import ConfigError, InputDataError
from common.fileio import atomic_write_text
from configs.training import PretrainConfig, TrainerConfig
from model.config import ModelConfig
from training.data import PackedData, check_rows, open_packed
from training.lm_task import CausalLMTask
from training.loop import Trainer, TrainResult, tokens_per_second
from training.strategy import Runtime, make_runtime

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_meta.json")


def tokenizer_info(tokenizer_dir: str) -> dict[str, Any]:
    """vocab size and special ids of a tokenizer artifact (tokenizer_meta.json)."""
    path = os.path.join(tokenizer_dir, "tokenizer_meta.json")
    if not tf.io.gfile.exists(path):
        raise InputDataError(f"{tokenizer_dir}: not a tokenizer artifact (no tokenizer_meta.json)")
    try:
        meta = json.loads(tf.io.gfile.GFile(path).read())
        return {"vocab_size": int(meta["vocab_size"]), "bos_id": int(meta["bos_id"]),
                "eos_id": int(meta["eos_id"]), "pad_id": int(meta["pad_id"])}
    except (ValueError, KeyError, TypeError) as e:
        raise InputDataError(f"{path}: unreadable tokenizer metadata ({e})") from None


def model_config_for(cfg: PretrainConfig, vocab_size: int, seq_len: int, bos_id: int, eos_id: int) -> ModelConfig:
    """The preset + overrides, sized to the tokenizer (vocab) and the packed rows (context)."""
    base = ModelConfig.load(cfg.model).to_hf_dict()
    over = dict(cfg.model_overrides)
    for k in ("vocab_size",):
        if k in over and over[k] != vocab_size:
            raise ConfigError(f"pretrain.model_overrides.{k}={over[k]} disagrees with the tokenizer's {vocab_size}")
    base.update(over)
    base.update(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id)
    base["max_position_embeddings"] = max(int(over.get("max_position_embeddings", 0)), seq_len)
    return ModelConfig.from_hf_dict(base, source="pretrain.model")


def check_output_dir(output_dir: str) -> None:
    """An unwritable output folder is a one-line error before any compute is spent."""
    try:
        tf.io.gfile.makedirs(output_dir)
        probe = os.path.join(output_dir, ".write-probe")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        msg = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"{output_dir}: output folder is not writable ({msg.splitlines()[0]})") from None


def unigram_entropy(data: PackedData, split: str = "eval") -> float:
    """Entropy (nats) of the split's next-token targets: the held-out loss of the best
    context-free model fitted on the split itself — a bar any trained LM must clear."""
    files = data.eval_files if split == "eval" else data.train_files
    spec = {k: tf.io.FixedLenFeature([data.seq_len], tf.int64) for k in ("input_ids", "segment_ids")}
    counts: dict[int, int] = {}
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP").batch(256)
    for raw in ds:
        ex = tf.io.parse_example(raw, spec)
        ids, seg = ex["input_ids"].numpy(), ex["segment_ids"].numpy()      # (N, T)
        valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)            # targets of causal_lm_loss
        vals, c = np.unique(ids[:, 1:][valid], return_counts=True)
        for v, n in zip(vals.tolist(), c.tolist(), strict=True):
            counts[v] = counts.get(v, 0) + n
    total = sum(counts.values())
    if total == 0:
        raise InputDataError(f"{data.root}: the {split} split has no next-token targets")
    p = np.array(list(counts.values()), np.float64) / total
    return float(-(p * np.log(p)).sum())


def export_final(model, output_dir: str, tokenizer_dir: str | None, extra: dict[str, str]) -> str:
    """HF layout under OUTPUT/final: config.json + model.safetensors (+ tokenizer files)."""
    from model.checkpoint.hf import save_hf_checkpoint

    final = os.path.join(output_dir, "final")
    save_hf_checkpoint(model, final)
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_dir, name)
            if tf.io.gfile.exists(src):
                tmp = os.path.join(final, f".{name}.tmp")
                tf.io.gfile.copy(src, tmp, overwrite=True)
                tf.io.gfile.rename(tmp, os.path.join(final, name), overwrite=True)
    for name, text in extra.items():
        atomic_write_text(os.path.join(final, name), text)
    return final


def train_lm(trainer_cfg: TrainerConfig, model_cfg: ModelConfig, data: PackedData, output_dir: str, *,
             runtime: Runtime | None, max_steps: int | None, checkpoint_every: int | None,
             progress: bool, title: str, init_weights: str | None = None) -> tuple[Trainer, TrainResult]:
    """Build the model (optionally from HF-layout weights), train it with the causal-LM task."""
    rt = runtime or make_runtime(trainer_cfg.strategy, trainer_cfg.precision)
    check_rows(data, data.seq_len, model_cfg.vocab_size)
    if data.seq_len > model_cfg.max_position_embeddings:
        raise InputDataError(f"{data.root}: rows of {data.seq_len} tokens exceed the model's context "
                             f"({model_cfg.max_position_embeddings})")

    def build():
        import model as model_core
        if init_weights:
            # The same weights under a new config (e.g. YaRN rope scaling for context extension).
            return model_core.load_hf_checkpoint(init_weights, config=model_cfg)
        return model_core.build_model(model_cfg, seed=trainer_cfg.seed)

    task = CausalLMTask(mtp_weight=trainer_cfg.mtp_weight, aux_loss_alpha=trainer_cfg.aux_loss_alpha)
    trainer = Trainer(trainer_cfg, rt, build, task, output_dir, title=title)
    result = trainer.fit(data, max_steps=max_steps, checkpoint_every=checkpoint_every, progress=progress)
    return trainer, result


def run_pretrain(cfg: PretrainConfig, data_dir: str, tokenizer_dir: str, output_dir: str, *,
                 runtime: Runtime | None = None, max_steps: int | None = None,
                 checkpoint_every: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain (or resume) into output_dir; returns the report (also report.json)."""
    check_output_dir(output_dir)
    data = open_packed(data_dir)
    tok = tokenizer_info(tokenizer_dir)
    model_cfg = model_config_for(cfg, tok["vocab_size"], data.seq_len, tok["bos_id"], tok["eos_id"])
    trainer, result = train_lm(cfg.trainer, model_cfg, data, output_dir, runtime=runtime,
                               max_steps=max_steps, checkpoint_every=checkpoint_every,
                               progress=progress, title="pretrain")
    report: dict[str, Any] = {"phase": "pretrain", "steps": result.steps, "target_steps": cfg.trainer.steps,
                              "resumed_from_step": result.resumed_from,
                              "nonfinite_steps": result.nonfinite_steps,
                              "tokens_per_s": tokens_per_second(result.history),
                              "seq_len": data.seq_len, "data": data.root, "tokenizer": tokenizer_dir,
                              **result.final_eval}
    if not trainer.rt.is_chief:
        return report
    report["eval_unigram_entropy"] = unigram_entropy(data, "eval")
    if "eval_loss" in report:
        report["eval_loss_minus_unigram"] = report["eval_loss"] - report["eval_unigram_entropy"]
    report["final"] = export_final(result.model, output_dir, tokenizer_dir,
                                   {"seekline_phase.json": json.dumps({"phase": "pretrain", "steps": result.steps})})
    atomic_write_text(os.path.join(output_dir, "config.json"), cfg.model_dump_json(indent=1))
    atomic_write_text(os.path.join(output_dir, "report.json"),
                      json.dumps(_finite(report), indent=1, sort_keys=True))
    return report


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def copy_tokenizer(tokenizer_dir: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(dst, name))
