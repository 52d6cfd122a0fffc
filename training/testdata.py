"""Small packed-row artifacts for tests and benchmarks (the same layout the pack phase writes)."""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf


def _example(ids, seg, pos) -> bytes:
    f = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))
         for k, v in (("input_ids", ids), ("segment_ids", seg), ("positions", pos))}
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


def synthetic_rows(n_rows: int, seq_len: int, vocab: int, seed: int, docs_per_row: int = 2):
    """Rows of `docs_per_row` documents each: a learnable pattern (each document counts up from a
    random start modulo the vocab, skipping the special ids 0..2) so loss can fall in a few steps."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        cuts = np.sort(rng.choice(np.arange(4, seq_len - 4), docs_per_row - 1, replace=False))
        bounds = [0, *cuts.tolist(), seq_len]
        ids = np.zeros(seq_len, np.int64)
        seg = np.zeros(seq_len, np.int64)
        pos = np.zeros(seq_len, np.int64)
        for d in range(docs_per_row):
            a, b = bounds[d], bounds[d + 1]
            start = rng.integers(3, vocab)
            ids[a:b] = 3 + (start - 3 + np.arange(b - a)) % (vocab - 3)
            seg[a:b] = d + 1
            pos[a:b] = np.arange(b - a)
        rows.append((ids, seg, pos))
    return rows


def write_packed(root: str, seq_len: int, vocab: int, *, train_rows: int = 64, eval_rows: int = 16,
                 seed: int = 0, shards: int = 2) -> str:
    for split, n, s in (("train", train_rows, seed), ("eval", eval_rows, seed + 1)):
        d = os.path.join(root, f"Split-{split}")
        os.makedirs(d, exist_ok=True)
        rows = synthetic_rows(n, seq_len, vocab, s)
        per = -(-n // shards)
        for i in range(shards):
            part = rows[i * per:(i + 1) * per]
            if not part:
                continue
            with tf.io.TFRecordWriter(os.path.join(d, f"data-{i:05d}-of-{shards:05d}.gz"),
                                      options="GZIP") as w:
                for r in part:
                    w.write(_example(*r))
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump({"seq_len": seq_len}, f)
    return root


def agent_trajectory(a: int, b: int) -> dict:
    """A two-step Thought / Action / Observation trajectory adding a and b (python, then finish), as
    the agent loop writes them: the agent-row tests build their rows from these."""
    text = (f"Thought: add {a} and {b}\n"
            f'Action: {{"name": "python", "arguments": {{"code": "print({a}+{b})"}}}}\n'
            f"Observation: {a + b}\n"
            f"Thought: it is {a + b}\n"
            f'Action: {{"name": "finish", "arguments": {{"answer": "{a + b}"}}}}')
    tid = f"add-{a}-{b}"
    return {"id": tid, "task_id": tid, "task": {"task_id": tid, "prompt": f"{a}+{b}=?"}, "text": text,
            "success": True, "teacher": "hand"}
