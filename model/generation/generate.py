"""Prefill + incremental decode with a per-layer cache.

MLA layers cache only RMSNorm(latent) + roped k_pe per token (and decode with the absorbed path);
GQA layers cache K/V per KV head. Prompts of different lengths are left-padded: the attention
mask hides the pad slots and position ids restart at 0 at each row's first real token, so every
row sees exactly what it would see alone.

The per-token decode step is a tf.function with fixed shapes (traced once per model/batch
shape); with GenerationConfig.jit_compile it is XLA-compiled (dense models).
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model.errors import GenerationError
from model.generation.config import GenerationConfig
from model.generation.sampling import select_next


@dataclass
class GenerationResult:
    sequences: list[list[int]]       # generated ids per prompt (stop token not included)
    finish_reasons: list[str]        # "stop" | "length"


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    """-> ids (B, P) int32, mask (B, P) int32 with real tokens right-aligned."""
    if len(prompts) == 0:
        raise GenerationError("generate: no prompts given")
    lens = [len(p) for p in prompts]
    for i, n in enumerate(lens):
        if n == 0:
            raise GenerationError(f"generate: prompt {i} is empty")
    p = max(lens)
    ids = np.full((len(prompts), p), pad_id, np.int32)
    mask = np.zeros((len(prompts), p), np.int32)
    for i, seq in enumerate(prompts):
        ids[i, p - len(seq):] = np.asarray(seq, np.int32)
        mask[i, p - len(seq):] = 1
    return ids, mask


_STEP_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _step_fn(model, absorb: bool, jit: bool):
    """Compiled one-token decode step, cached per model."""
    per_model = _STEP_FNS.setdefault(model, {})
    key = (absorb, jit)
    if key not in per_model:
        def step(token, cache, write_pos, position, key_valid):
            # token (B, 1); write_pos (B,) cache row; position (B,) rope position
            logits, cache = model.call_cached(token, cache, write_pos[:, None], position[:, None],
                                              key_valid, absorb=absorb)
            return logits[:, -1, :], cache
        per_model[key] = tf.function(step, jit_compile=jit, reduce_retracing=True)
    return per_model[key]


def prefill(model, ids, mask, max_len: int, absorb: bool = False):
    """Run the (left-padded) prompts, filling a cache of max_len rows.

    Returns (last-position logits (B, V), cache, key_valid (B, max_len), next positions (B,)).
    """
    b, p = ids.shape
    cache = model.init_cache(b, max_len, model.compute_dtype)
    key_valid = np.zeros((b, max_len), np.int32)
    key_valid[:, :p] = mask
    write_idx = np.tile(np.arange(p, dtype=np.int32)[None], [b, 1])
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    logits, cache = model.call_cached(tf.constant(ids), cache, tf.constant(write_idx),
                                      tf.constant(pos), tf.constant(key_valid), absorb=absorb)
    return logits[:, -1, :], cache, key_valid, mask.sum(axis=1).astype(np.int32)


def generate(model, prompts: Sequence[Sequence[int]],
             config: GenerationConfig = GenerationConfig()) -> GenerationResult:
    """Generate continuations for a batch of token-id prompts (lists of ints)."""
    cfg = model.cfg
    ids, mask = left_pad(prompts, config.pad_token_id)
    b, p = ids.shape
    limit = cfg.max_position_embeddings
    for i, seq in enumerate(prompts):
        if len(seq) + config.max_new_tokens > limit:
            raise GenerationError(
                f"generate: prompt {i} has {len(seq)} tokens; with max_new_tokens="
                f"{config.max_new_tokens} that exceeds the model's max context of {limit} "
                "(max_position_embeddings)")
    bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
    if bad.size:
        raise GenerationError(f"generate: token id {int(bad[0])} is outside the vocabulary "
                              f"[0, {cfg.vocab_size})")
    max_len = p + config.max_new_tokens
    logits, cache, key_valid, next_pos = prefill(model, ids, mask, max_len)
    step = _step_fn(model, config.absorb, config.jit_compile and not cfg.is_moe)
    seed = config.seed if config.seed is not None else int(np.random.randint(0, 2**31 - 1))
    stops = set(config.stop_token_ids)
    out: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    reasons = ["length"] * b
    key_valid = tf.constant(key_valid)
    for t in range(config.max_new_tokens):
        tok = select_next(logits, config.temperature, config.top_k, config.top_p,
                          tf.constant([seed, t], tf.int32)).numpy()
        for i in range(b):
            if done[i]:
                continue
            if int(tok[i]) in stops:
                done[i], reasons[i] = True, "stop"
            else:
                out[i].append(int(tok[i]))
        if done.all() or t == config.max_new_tokens - 1:
            break
        write = np.full((b,), p + t, np.int32)
        tok = np.where(done, config.pad_token_id, tok).astype(np.int32)
        key_valid = tf.tensor_scatter_nd_update(
            key_valid, np.stack([np.arange(b), write], -1).astype(np.int32), np.ones(b, np.int32))
        logits, cache = step(tf.constant(tok[:, None]), cache, tf.constant(write),
                             tf.constant(next_pos), key_valid)
        next_pos = next_pos + 1
    return GenerationResult(out, reasons)
