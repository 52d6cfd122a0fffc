"""Rollouts → fixed-shape training rows, and log-probs of whole rollout batches.

Each rollout is prompt ids + completion ids. Rows are right-padded to one length T (so the
compiled train step traces once per run): the prompt starts at column 0, positions count from
0, segment id 1 marks real tokens (the model's segment-aware attention then ignores the
padding). completion_mask marks the completion tokens (column t = token t, whose log-prob
comes from position t − 1; see grpo_objective.token_logprobs).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from common.errors import ConfigError
from training.grpo_objective import token_logprobs

ROW_FEATURES = ("input_ids", "segment_ids", "positions", "completion_mask")


def build_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], seq_len: int,
               pad_id: int = 0) -> dict[str, np.ndarray]:
    """-> {input_ids, segment_ids, positions (N, T) int32, completion_mask (N, T) float32}."""
    n = len(prompts)
    if n != len(completions):
        raise ValueError(f"{n} prompts but {len(completions)} completions")
    ids = np.full((n, seq_len), pad_id, np.int32)
    seg = np.zeros((n, seq_len), np.int32)
    pos = np.zeros((n, seq_len), np.int32)
    cmask = np.zeros((n, seq_len), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        total = len(p) + len(c)
        if total > seq_len:
            raise ConfigError(f"rollout {i}: prompt ({len(p)}) + completion ({len(c)}) tokens exceed the "
                              f"row length {seq_len}")
        ids[i, :total] = list(p) + list(c)
        seg[i, :total] = 1
        pos[i, :total] = np.arange(total)
        cmask[i, len(p):total] = 1.0
    return {"input_ids": ids, "segment_ids": seg, "positions": pos, "completion_mask": cmask}


_LOGP_FNS: dict = {}


def batch_logprobs(model, rows: dict[str, np.ndarray], temperature: float, micro_batch: int) -> np.ndarray:
    """(N, T) float32 log-probs of every row's tokens under `model` at `temperature` (no gradient),
    computed micro_batch rows at a time through one compiled forward."""
    key = (id(model), float(temperature))
    fn = _LOGP_FNS.get(key)
    if fn is None or fn[0]() is not model:
        import weakref
        ref = weakref.ref(model)

        def run(ids, seg, pos):
            out = ref().forward(ids, position_ids=pos, segment_ids=seg, training=False)
            return token_logprobs(tf.cast(out["logits"], tf.float32) / temperature, ids)
        fn = (ref, tf.function(run, autograph=False))
        _LOGP_FNS[key] = fn
    n = rows["input_ids"].shape[0]
    out = []
    for s in range(0, n, micro_batch):
        chunk = {k: rows[k][s:s + micro_batch] for k in ("input_ids", "segment_ids", "positions")}
        short = micro_batch - chunk["input_ids"].shape[0]
        if short:   # keep one traced shape: pad the last chunk with empty rows
            chunk = {k: np.pad(v, [(0, short), (0, 0)]) for k, v in chunk.items()}
        lp = fn[1](tf.constant(chunk["input_ids"]), tf.constant(chunk["segment_ids"]),
                   tf.constant(chunk["positions"])).numpy()
        out.append(lp[:micro_batch - short])
    return np.concatenate(out, axis=0) * (rows["segment_ids"] != 0)


def engine_layout(features: dict[str, np.ndarray], accum: int, rows_per_step: int) -> dict[str, np.ndarray]:
    """{feature: (N, ...)} with N ≤ rows_per_step -> {feature: (accum, rows_per_step / accum, ...)},
    padded with empty rows (row_valid 0, masks 0) so every step has the same shape."""
    n = next(iter(features.values())).shape[0]
    if n > rows_per_step:
        raise ValueError(f"{n} rows do not fit a step of {rows_per_step}")
    if rows_per_step % accum:
        raise ValueError(f"rows_per_step {rows_per_step} is not a multiple of accum {accum}")
    out = {}
    for k, v in features.items():
        pad = [(0, rows_per_step - n)] + [(0, 0)] * (v.ndim - 1)
        v = np.pad(v, pad)
        out[k] = v.reshape((accum, rows_per_step // accum) + v.shape[1:])
    return out
