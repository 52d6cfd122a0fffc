"""A seekline model as a TF Serving SavedModel: `generate` and `logits` signatures.

`export_saved_model(model_dir, out_dir, *, max_new_tokens_cap, stop_token_ids, pad_token_id)`
loads an HF-layout model folder and writes a SavedModel whose whole decode loop is in the graph
(TF Serving runs no Python):

  generate(input_ids (B, P) int32 left-padded, attention_mask (B, P) int32, max_new_tokens () int32,
           temperature () float32, top_p () float32, seed () int32)
      -> sequences (B, max_new_tokens_cap) int32 (the new tokens, pad_token_id after a row ends),
         lengths (B,) int32 (new tokens before the stop token), finished_by_stop (B,) bool
  logits(input_ids (B, T) int32 left-padded, attention_mask (B, T) int32) -> logits (B, T, V) float32

The computation is model/generation's: the same prefill (cache rows for the prompt, positions
restarting at each row's first real token) and the same per-token model step over the latent
cache, with per-row sampling (slots.select_next_rows: temperature 0 = greedy; top-p; stateless
seed (seed, step)), so a greedy export equals `generate` token for token and a sampled one
equals it for a one-row batch with the same seed. max_new_tokens is capped at export time
(the cache is sized P + cap); a larger request is clipped to the cap.
"""
from __future__ import annotations

import os

import tensorflow as tf

from common.errors import UserError
from model import ops

SIGNATURES = ("generate", "logits")


class _ServingModule(tf.Module):
    def __init__(self, model, cap: int, stop_ids: list[int], pad_id: int):
        super().__init__(name="seekline")
        self.model = model
        self.cap = cap
        self.stop_ids = tf.constant(stop_ids or [-1], tf.int32)      # -1 never matches a token
        self.pad_id = pad_id
        self.context = model.cfg.max_position_embeddings

    def _prefill(self, ids, mask, max_len):
        m = self.model
        b, p = tf.shape(ids)[0], tf.shape(ids)[1]
        cache = m.init_cache(b, max_len, m.compute_dtype)
        key_valid = tf.pad(mask, [[0, 0], [0, max_len - p]])                   # (B, S)
        write = tf.tile(tf.range(p)[None], [b, 1])                              # (B, P)
        pos = tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)                        # (B, P)
        return cache, key_valid, write, pos

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
    def logits(self, input_ids, attention_mask):
        p = tf.shape(input_ids)[1]
        tf.debugging.assert_less_equal(p, self.context, message="input longer than the model's context")
        cache, key_valid, write, pos = self._prefill(input_ids, attention_mask, p)
        out, _ = self.model.call_cached(input_ids, cache, write, pos, key_valid, absorb=False)
        return {"logits": tf.cast(out, tf.float32)}                              # (B, T, V)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
                                  tf.TensorSpec([], tf.int32, name="max_new_tokens"),
                                  tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([], tf.float32, name="top_p"),
                                  tf.TensorSpec([], tf.int32, name="seed")])
    def generate(self, input_ids, attention_mask, max_new_tokens, temperature, top_p, seed):
        from model.generation.slots import select_next_rows

        b, p = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        n = tf.clip_by_value(max_new_tokens, 1, self.cap)
        tf.debugging.assert_less_equal(p + self.cap, self.context,
                                       message="prompt length + max_new_tokens cap exceeds the model's context")
        max_len = p + self.cap
        cache, key_valid, write, pos = self._prefill(input_ids, attention_mask, max_len)
        # as generate(): the prompt through the naive attention, each new token through the
        # absorbed latent path
        logits, cache = self.model.call_cached(input_ids, cache, write, pos, key_valid, absorb=False,
                                               last_only=True)                  # (B, 1, V)
        temp = tf.fill([b], temperature)                                         # (B,) per-row params
        top_p_rows = tf.fill([b], top_p)
        top_k = tf.zeros([b], tf.int32)
        seeds = tf.fill([b], seed)

        def pick(logits_bv, step):
            tok = select_next_rows(logits_bv, temp, top_k, top_p_rows, seeds, tf.fill([b], step))
            hit = tf.reduce_any(tok[:, None] == self.stop_ids[None, :], axis=-1)   # (B,)
            return tok, hit

        tok, done = pick(logits[:, -1, :], tf.constant(0, tf.int32))
        out = tf.TensorArray(tf.int32, size=self.cap, element_shape=tf.TensorShape([None]))
        out = out.write(0, tf.where(done, self.pad_id, tok))
        lengths = tf.where(done, 0, 1)                                           # (B,)
        write_pos = tf.fill([b], p)                                              # (B,) next cache row
        next_pos = tf.reduce_sum(attention_mask, axis=1)                         # (B,) rope position

        def cond(i, tok, done, cache, key_valid, write_pos, next_pos, lengths, out):
            return (i < n) & tf.logical_not(tf.reduce_all(done))

        def body(i, tok, done, cache, key_valid, write_pos, next_pos, lengths, out):
            feed = tf.where(done, self.pad_id, tok)                                # (B,)
            s = tf.shape(key_valid)[1]
            written = tf.cast(tf.range(s)[None, :] == write_pos[:, None], key_valid.dtype)
            key_valid = tf.maximum(key_valid, written)                             # (B, S)
            step_logits, cache = self.model.call_cached(feed[:, None], cache, write_pos[:, None],
                                                        next_pos[:, None], key_valid, absorb=True,
                                                        last_only=True)            # (B, 1, V)
            nxt, hit = pick(step_logits[:, -1, :], i)
            now_done = done | hit
            out = out.write(i, tf.where(now_done, self.pad_id, nxt))
            lengths = lengths + tf.where(now_done, 0, 1)
            return i + 1, nxt, now_done, cache, key_valid, write_pos + 1, next_pos + 1, lengths, out

        loop = tf.while_loop(cond, body, (tf.constant(1), tok, done, cache, key_valid, write_pos, next_pos,
                                          lengths, out),
                             shape_invariants=(tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape([None]),
                                               tf.nest.map_structure(lambda t: t.shape, cache),
                                               tf.TensorShape([None, None]), tf.TensorShape([None]),
                                               tf.TensorShape([None]), tf.TensorShape([None]), None))
        i, _, done, _, _, _, _, lengths, out = loop
        # steps never run (all rows stopped early, or n < cap) are pad
        filled = out.stack()[:i]                                                 # (i, B)
        pad = tf.fill([self.cap - i, b], self.pad_id)
        seqs = tf.transpose(tf.concat([filled, pad], axis=0))                    # (B, cap)
        return {"sequences": seqs, "lengths": lengths, "finished_by_stop": done}


def export_saved_model(model_dir: str, out_dir: str, *, max_new_tokens_cap: int, stop_token_ids: list[int],
                       pad_token_id: int) -> dict:
    """Write the SavedModel of the HF-layout model in model_dir to out_dir (a version folder)."""
    from model.checkpoint.hf import load_hf_checkpoint

    model = load_hf_checkpoint(model_dir, with_mtp=False)
    context = model.cfg.max_position_embeddings
    if not 1 <= max_new_tokens_cap < context:
        raise UserError(f"export.max_new_tokens_cap={max_new_tokens_cap}: must be in [1, {context}) "
                        f"(the model's context is {context} tokens)")
    module = _ServingModule(model, max_new_tokens_cap, list(stop_token_ids), pad_token_id)
    # Traced on the pure-TF paths: the SavedModel must load in TF Serving or any TF without
    # seekline's custom-op library (model/ops).
    with ops.disabled():
        sigs = {"generate": module.generate.get_concrete_function(),
                "logits": module.logits.get_concrete_function()}
        sigs["serving_default"] = sigs["generate"]
        tf.saved_model.save(module, out_dir, signatures=sigs)
    return {"signatures": sorted(sigs), "max_new_tokens_cap": max_new_tokens_cap, "context": context,
            "stop_token_ids": list(stop_token_ids), "pad_token_id": pad_token_id,
            "path": os.path.abspath(out_dir) if "://" not in out_dir else out_dir}
