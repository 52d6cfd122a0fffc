"""Context extension with YaRN: stretch RoPE by `factor`, continue training on long rows.

Steps (run_context_extension):
  1. the pretrained model's context L0 = its max_position_embeddings; target L = factor·L0;
     the new config keeps every weight and adds rope_scaling = yarn(factor, original L0);
  2. long rows: the corpus documents (ingest examples, both splits) re-tokenized and packed into
     rows of L tokens (components/pack/packing.py), optionally with synthetic passkey rows mixed
     in, written once under OUTPUT/data/ (a resumed run reuses them);
  3. passkey retrieval at each configured multiple of L0, on the pretrained weights as they are
     (plain RoPE beyond L0: "before") and after training (YaRN: "after");
  4. training through the shared engine (same task as pretraining), HF export to final/.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np
import tensorflow as tf

from common.errors import InputDataError
from common.fileio import atomic_write_text
from components.context_extension.passkey import PasskeyBuilder, passkey_accuracy
from components.pack.packing import pack
from components.pretrain.pretrain import check_output_dir, export_final, tokenizer_info, train_lm
from configs.training import ContextExtensionConfig
from model.config import ModelConfig, RopeScaling
from training.data import open_packed
from training.loop import tokens_per_second
from training.strategy import Runtime, make_runtime

DATA_DIR = "data"


def extended_config(base: ModelConfig, cfg: ContextExtensionConfig) -> tuple[ModelConfig, int, int]:
    """(YaRN config, original context L0, extended context L)."""
    if base.rope_scaling is not None and base.rope_scaling.factor > 1:
        raise InputDataError(f"the model is already context-extended (rope_scaling factor "
                             f"{base.rope_scaling.factor}); extend a pretrained model instead")
    l0 = base.max_position_embeddings
    length = int(round(cfg.factor * l0))
    rs = RopeScaling(factor=float(cfg.factor), original_max_position_embeddings=l0,
                     beta_fast=cfg.beta_fast, beta_slow=cfg.beta_slow, mscale=cfg.mscale,
                     mscale_all_dim=cfg.mscale_all_dim)
    return base.replace(rope_scaling=rs, max_position_embeddings=length), l0, length


def _docs(examples_uri: str, split: str) -> list[str]:
    from components.tokenizer.tokenizer import iter_split
    return [text for _, text, _ in iter_split(examples_uri, split)]


def write_rows(path: str, rows) -> int:
    """Rows (input_ids, segment_ids, positions[, loss_mask]) as a gzipped TFRecord shard."""
    n = 0
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for row in rows:
            names = ("input_ids", "segment_ids", "positions", "loss_mask")[:len(row)]
            feats = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(v, np.int64).tolist()))
                     for k, v in zip(names, row, strict=True)}
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
            n += 1
    return n


def build_long_rows(examples_uri: str, tokenizer_dir: str, out_dir: str, seq_len: int,
                    cfg: ContextExtensionConfig, seed: int) -> dict[str, int]:
    """Pack the corpus into rows of seq_len (+ passkey rows); written once, atomically."""
    if tf.io.gfile.exists(os.path.join(out_dir, "config.json")):
        return json.loads(tf.io.gfile.GFile(os.path.join(out_dir, "stats.json")).read())
    from components.tokenizer.tokenizer import load as load_tokenizer
    tok = load_tokenizer(tokenizer_dir)
    info = tokenizer_info(tokenizer_dir)
    staging = out_dir.rstrip("/") + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    stats: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    for split in ("train", "eval"):
        texts = _docs(examples_uri, split)
        encs = tok.encode_batch_fast(texts, add_special_tokens=False)
        docs = [(np.asarray(e.ids, np.int64), "") for e in encs if len(e.ids) >= cfg.min_doc_tokens]
        if not docs:
            raise InputDataError(f"{examples_uri}: no {split} document has >= {cfg.min_doc_tokens} tokens "
                                 "(context_extension.min_doc_tokens)")
        rows = [(r.input_ids, r.segment_ids, r.positions)
                for r in pack(docs, seq_len, pad_id=info["pad_id"], eos_id=info["eos_id"], bos_id=info["bos_id"])]
        n_pk = 0
        f = cfg.passkey_train_fraction
        if split == "train" and f > 0:
            # Passkey rows from train-split filler with their own seed: never the eval samples.
            builder = PasskeyBuilder(tok, texts[:200], info["bos_id"])
            n_pk = len(rows) if f >= 1 else int(round(len(rows) * f / (1 - f)))
            if f >= 1:
                rows = []
            for s in builder.samples(seq_len, n_pk, cfg.passkey.digits, seed + 17):
                mask = np.ones(seq_len, np.int64)
                if cfg.passkey_answer_only_loss:
                    mask[:s.answer_start] = 0   # loss_mask marks targets: the answer tokens
                rows.append((s.ids, np.ones(seq_len, np.int64), np.arange(seq_len), mask))
            rows = [r if len(r) == 4 else (*r, np.ones(seq_len, np.int64)) for r in rows]
            rows = [rows[i] for i in rng.permutation(len(rows))]
        d = os.path.join(staging, f"Split-{split}")
        tf.io.gfile.makedirs(d)
        stats[f"rows_{split}"] = write_rows(os.path.join(d, "data-00000-of-00001.gz"), rows)
        stats[f"passkey_rows_{split}"] = n_pk
    atomic_write_text(os.path.join(staging, "stats.json"), json.dumps(stats))
    atomic_write_text(os.path.join(staging, "config.json"), json.dumps({"seq_len": seq_len}))
    if tf.io.gfile.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return stats


def passkey_table(model, builder: PasskeyBuilder, l0: int, max_len: int, cfg: ContextExtensionConfig) -> dict:
    out = {}
    for mult in cfg.passkey.multiples:
        length = int(round(mult * l0))
        if length > max_len:
            continue
        if length < builder.min_length(cfg.passkey.digits):
            # a small tokenizer spends more tokens on the needle than a short context holds
            out[f"{mult:g}x"] = {"context": length, "skipped": "context too short for a passkey sample"}
            continue
        samples = builder.samples(length, cfg.passkey.samples, cfg.passkey.digits, cfg.passkey.seed + length)
        out[f"{mult:g}x"] = {"context": length, **passkey_accuracy(model, samples)}
    return out


def plot_passkey(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, key in (("before (plain RoPE)", "before"), ("after YaRN extension", "after")):
        rows = {k: v for k, v in report.get(key, {}).items() if "accuracy" in v}
        if rows:
            xs = [v["context"] for v in rows.values()]
            ax.plot(xs, [v["accuracy"] for v in rows.values()], "o-", label=f"{label}: exact")
            ax.plot(xs, [v["token_accuracy"] for v in rows.values()], "x--", label=f"{label}: per token")
    ax.axvline(report.get("original_context", 0), color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("passkey accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def run_context_extension(cfg: ContextExtensionConfig, init_dir: str, examples_dir: str, tokenizer_dir: str,
                          output_dir: str, *, runtime: Runtime | None = None, max_steps: int | None = None,
                          checkpoint_every: int | None = None, progress: bool = True,
                          yarn: bool = True) -> dict[str, Any]:
    """Extend the pretrained model in init_dir (HF layout) to factor × its context.

    yarn=False trains the same way with plain RoPE (the ablation the learning check compares to).
    """
    import model as model_core

    check_output_dir(output_dir)
    rt = runtime or make_runtime(cfg.trainer.strategy, cfg.trainer.precision)
    base = model_core.ModelConfig.from_json_file(os.path.join(init_dir, "config.json"))
    ext, l0, length = extended_config(base, cfg)
    if not yarn:
        ext = ext.replace(rope_scaling=None)
    stats = build_long_rows(examples_dir, tokenizer_dir, os.path.join(output_dir, DATA_DIR), length, cfg,
                            cfg.trainer.seed) if rt.is_chief else None
    data = open_packed(os.path.join(output_dir, DATA_DIR))
    from components.tokenizer.tokenizer import load as load_tokenizer
    info = tokenizer_info(tokenizer_dir)
    builder = PasskeyBuilder(load_tokenizer(tokenizer_dir), _docs(examples_dir, "eval"), info["bos_id"])
    report: dict[str, Any] = {"phase": "context_extension", "yarn": yarn, "factor": cfg.factor,
                              "original_context": l0, "extended_context": length, "data": stats}
    before_path = os.path.join(output_dir, "passkey_before.json")
    if tf.io.gfile.exists(before_path):   # a resumed run: the pretrained model has not changed
        report["before"] = json.loads(tf.io.gfile.GFile(before_path).read())
    else:
        # The pretrained weights as they are, allowed to run past L0 with plain RoPE.
        plain = model_core.load_hf_checkpoint(init_dir, config=base.replace(max_position_embeddings=length))
        report["before"] = passkey_table(plain, builder, l0, length, cfg)
        del plain
        if rt.is_chief:
            atomic_write_text(before_path, json.dumps(report["before"]))
    trainer, result = train_lm(cfg.trainer, ext, data, output_dir, runtime=rt, max_steps=max_steps,
                               checkpoint_every=checkpoint_every, progress=progress,
                               title="context extension" + ("" if yarn else " (no YaRN)"), init_weights=init_dir)
    report.update(steps=result.steps, target_steps=cfg.trainer.steps, resumed_from_step=result.resumed_from,
                  nonfinite_steps=result.nonfinite_steps, tokens_per_s=tokens_per_second(result.history),
                  **result.final_eval)
    report["after"] = passkey_table(result.model, builder, l0, length, cfg)
    if not rt.is_chief:
        return report
    report["final"] = export_final(result.model, output_dir, tokenizer_dir,
                                   {"seekline_phase.json": json.dumps({"phase": "context_extension",
                                                                       "steps": result.steps})})
    plot_passkey(report, os.path.join(output_dir, "passkey.png"))
    atomic_write_text(os.path.join(output_dir, "config.json"), cfg.model_dump_json(indent=1))
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True))
    return report
