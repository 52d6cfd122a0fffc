"""Building blocks for continuous batching (serving/engine.py): a fixed set of B cache *slots*,
each row at its own write position, and per-row sampling parameters.

generate() runs one batch from prefill to the last token with one sampling setting. A server
instead keeps a cache of B rows alive across requests: a finished row leaves at a step
boundary and a new request is prefilled (with the same `prefill` as generate) and copied into
the free row (`insert_rows`). Every row then advances by one token per `slot_step`, however far
along it is: write_idx / position / key_valid are already per row in `call_cached`.

Sampling is per row (temperature, top-k, top-p, seed): row i of `select_next_rows` gives the
token `sampling.select_next` gives for that row alone with seed (seeds[i], steps[i]) — so one
request's seeded output does not depend on which other requests share its batch, and a request
alone equals generate(model, [prompt], GenerationConfig(seed=s, ...)) token for token.
"""
from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from model.generation.generate import _cached_fn, _step_fn
from model.generation.sampling import NEG_INF

# Every step returns the top-TOP_LOGPROBS log-probabilities of each row (OpenAI allows up to 20);
# a top-k over V per row is small next to the model step.
TOP_LOGPROBS = 20


def select_next_rows(logits, temperature, top_k, top_p, seeds, steps):
    """logits (B, V); temperature (B,) f32 (0 = greedy); top_k (B,) i32 (0 = off); top_p (B,) f32
    (1 = off); seeds, steps (B,) i32 -> token ids (B,) int32.

    The filters repeat sampling.filter_top_k / filter_top_p with a per-row k / p (same ops on each
    row), then each row draws with its own stateless seed: stateless_categorical over a (B, V)
    batch draws row i's noise from the batch's one seed, so row i's token would depend on B."""
    logits = tf.cast(logits, tf.float32)
    greedy = tf.cast(tf.argmax(logits, axis=-1), tf.int32)                    # (B,)

    def sample():
        v = tf.shape(logits)[1]
        safe_t = tf.where(temperature > 0, temperature, tf.ones_like(temperature))
        x = logits / safe_t[:, None]                                         # (B, V)
        # top-k: the k-th largest value per row; ties at it are kept (as filter_top_k).
        desc = tf.sort(x, direction="DESCENDING", axis=-1)                   # (B, V)
        kth = tf.gather(desc, tf.clip_by_value(top_k - 1, 0, v - 1), batch_dims=1)[:, None]   # (B, 1)
        use_k = (top_k > 0) & (top_k < v)
        x = tf.where(use_k[:, None] & (x < kth), NEG_INF, x)
        # top-p: smallest prefix of the sorted row whose mass reaches p (as filter_top_p).
        desc = tf.sort(x, direction="DESCENDING", axis=-1)
        before = tf.cumsum(tf.nn.softmax(desc, axis=-1), axis=-1, exclusive=True)  # (B, V)
        keep = before < top_p[:, None]
        thresh = tf.reduce_min(tf.where(keep, desc, tf.fill(tf.shape(desc), 1e30)), axis=-1,
                               keepdims=True)                                # (B, 1)
        x = tf.where((top_p < 1.0)[:, None] & (x < thresh), NEG_INF, x)
        pairs = tf.stack([seeds, steps], axis=1)                             # (B, 2)

        def draw(args):
            row, seed = args                                                 # (V,), (2,)
            return tf.cast(tf.random.stateless_categorical(row[None], 1, seed=seed)[0, 0], tf.int32)
        drawn = tf.map_fn(draw, (x, pairs), fn_output_signature=tf.int32)   # (B,)
        return tf.where(temperature > 0, drawn, greedy)

    # An all-greedy batch (the common API default) skips the two sorts.
    return tf.cond(tf.reduce_any(temperature > 0), sample, lambda: greedy)


def token_logprobs(logits, tok):
    """logits (B, V), chosen tok (B,) -> (logprob of tok (B,), top values (B, K), top ids (B, K)).
    Log-probabilities of the model's distribution (before temperature / top-k / top-p)."""
    lp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)            # (B, V)
    chosen = tf.gather(lp, tok, batch_dims=1)                               # (B,)
    k = tf.minimum(TOP_LOGPROBS, tf.shape(lp)[1])
    top = tf.math.top_k(lp, k=k)
    return chosen, top.values, top.indices


def _select_fn(model):
    """Compiled first-token selection from prefill logits (no model call)."""
    def make(ref):
        del ref

        def first(logits, temperature, top_k, top_p, seeds, steps):
            tok = select_next_rows(logits, temperature, top_k, top_p, seeds, steps)
            return (tok, *token_logprobs(logits, tok))
        return tf.function(first, reduce_retracing=True)
    return _cached_fn(model, ("slots_select",), make)


def select_first(model, logits, temperature, top_k, top_p, seeds, steps):
    """Token, its logprob and the top logprobs (numpy) from prefill logits (B, V); params (B,)."""
    out = _select_fn(model)(logits, *_params(temperature, top_k, top_p, seeds, steps))
    return tuple(t.numpy() for t in out)


def _params(temperature, top_k, top_p, seeds, steps):
    return (tf.constant(np.asarray(temperature, np.float32)), tf.constant(np.asarray(top_k, np.int32)),
            tf.constant(np.asarray(top_p, np.float32)), tf.constant(np.asarray(seeds, np.int32)),
            tf.constant(np.asarray(steps, np.int32)))


def _slot_step_fn(model, absorb: bool, jit: bool, rows: int | None):
    inner = _step_fn(model, absorb, jit) if rows is None else None

    def make(ref):
        # rows: step only the first `rows` slots of the cache (static, so MoE layers pick their
        # expert path for that batch size, and XLA sees fixed shapes); the other rows pass through.
        sub = inner or _fresh_step(ref, absorb, jit)

        def step(tok, cache, write, pos, key_valid, temperature, top_k, top_p, seeds, steps):
            # tok/write/pos (R,): the row's last token, the cache row it goes to, its rope position.
            full_cache, full_kv = cache, key_valid
            if rows is not None:
                cache = [tuple(t[:rows] for t in layer) for layer in cache]          # (R, S, ...)
                key_valid = key_valid[:rows]                                         # (R, S)
            s = tf.shape(key_valid)[1]
            written = tf.cast(tf.range(s)[None, :] == write[:, None], key_valid.dtype)   # (R, S)
            key_valid = tf.maximum(key_valid, written)
            logits, cache = sub(tok[:, None], cache, write, pos, key_valid)          # (R, V)
            nxt = select_next_rows(logits, temperature, top_k, top_p, seeds, steps)
            if rows is not None:
                cache = [tuple(tf.concat([n, f[rows:]], 0) for n, f in zip(new, old, strict=True))
                         for new, old in zip(cache, full_cache, strict=True)]
                key_valid = tf.concat([key_valid, full_kv[rows:]], 0)
            return (nxt, *token_logprobs(logits, nxt), cache, key_valid)
        return tf.function(step, reduce_retracing=rows is None)
    return _cached_fn(model, ("slots_step", absorb, jit, rows), make)


def _fresh_step(ref, absorb: bool, jit: bool):
    """A model step of its own (not generate's shared, shape-relaxed one): one per row count, so
    each keeps its static batch size."""
    def step(token, cache, write_pos, position, key_valid):
        logits, cache = ref().call_cached(token, cache, write_pos[:, None], position[:, None], key_valid,
                                          absorb=absorb, last_only=True, fixed_shape=jit)
        return logits[:, -1, :], cache
    return tf.function(step, jit_compile=jit) if jit else step


def slot_step(model, tok, cache, write, pos, key_valid, temperature, top_k, top_p, seeds, steps,
              absorb: bool = True, jit_compile: bool = False, rows: int | None = None):
    """One decode step of the slot rows. tok, write, pos, steps and the sampling params: (R,)
    numpy, R = rows (the first `rows` slots; the rest of the cache is untouched) or, with rows
    None, every slot; key_valid (B, S) tensor; cache: model.init_cache layout (B rows). Rows not
    in use are fed anything in range (their outputs are ignored). Returns (tok (R,), logprob (R,),
    top values (R, K), top ids (R, K)) as numpy, and the new (B-row) cache and key_valid."""
    out = _slot_step_fn(model, absorb, jit_compile, rows)(
        tf.constant(np.asarray(tok, np.int32)), cache, tf.constant(np.asarray(write, np.int32)),
        tf.constant(np.asarray(pos, np.int32)), key_valid,
        *_params(temperature, top_k, top_p, seeds, steps))
    nxt, lp, top_v, top_i, cache, key_valid = out
    return nxt.numpy(), lp.numpy(), top_v.numpy(), top_i.numpy(), cache, key_valid


_INSERT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def insert_rows(model, cache, key_valid, new_cache, new_key_valid, rows):
    """Copy freshly prefilled rows into slots: cache tensors (B, S, ...) <- new (k, S, ...) at
    rows (k,); key_valid (B, S) likewise. Both caches must have the same S."""
    fn = _INSERT.get(model)
    if fn is None:
        def run(cache, key_valid, new_cache, new_key_valid, rows):
            idx = rows[:, None]                                              # (k, 1)
            out = [tuple(tf.tensor_scatter_nd_update(big, idx, tf.cast(small, big.dtype))
                         for big, small in zip(layer, new_layer, strict=True))
                   for layer, new_layer in zip(cache, new_cache, strict=True)]
            return out, tf.tensor_scatter_nd_update(key_valid, idx, tf.cast(new_key_valid, key_valid.dtype))
        fn = _INSERT[model] = tf.function(run, reduce_retracing=True)
    return fn(cache, key_valid, new_cache, new_key_valid, tf.constant(np.asarray(rows, np.int32)))
