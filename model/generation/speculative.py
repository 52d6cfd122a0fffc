"""Greedy speculative decoding with the model's own MTP module as the drafter (DeepSeek-V3 §2.2 /
§5.4.3: the MTP module "can be repurposed for speculative decoding").

One *round* (a single tf.function, one host sync) does:

1. verify: feed the pending token t_n (already chosen by the main model) and the k drafts
   d_1..d_k at buffer rows n..n+k in one cached forward of the main model -> greedy picks
   g_0..g_k, where g_j is the main model's own choice after t_n, d_1..d_j;
2. accept the longest prefix with d_{j+1} == g_j (a per row) and emit g_0..g_a: the accepted
   drafts plus the main model's next token ("bonus"); every emitted token is a main-model argmax
   over exactly the tokens plain decoding would have seen, so greedy output equals
   `generate(..., temperature=0)` (up to float rounding of near-ties: the verify forward runs
   k+1 tokens per call where plain decoding runs one);
3. draft the next k tokens: the MTP module runs over the same k+1 positions with the verify
   hidden states and Emb(g_0..g_k) (for accepted positions g_j = d_{j+1} is the true next
   token, so its MTP cache rows are exactly what a full MTP forward would hold); its output at
   row n+a (h_{n+a}, Emb(bonus)) predicts d'_1. Drafts d'_2..d'_k chain the same module on its
   own output at the next position (vLLM/EAGLE style: h <- the module's hidden output,
   Emb <- the previous draft) — out of the distribution it was trained on, so later drafts are
   accepted less often; k = 1 is exactly DeepSeek-V3's setting. Only the first MTP module is used.

Rollback needs no copy: rows past the accepted prefix hold rejected tokens, but the next round
writes every row from n+a+1 on before any query can see it (queries attend only to rows <= their
own, the causal mask), so moving each row's write pointer back is the rollback. key_valid is
therefore constant: the prompt's left-padding mask, 1 everywhere after the prompt.

Batches: each row keeps its own write row / rope position and accepts its own count; finished
rows stop advancing (they rewrite the same rows, ignored). Greedy only: temperature > 0 is an
error (rejection sampling is not implemented); top_k / top_p / seed do not apply, and
GenerationConfig.jit_compile is not used (the round runs in graph mode).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from model.errors import GenerationError
from model.generation.config import GenerationConfig
from model.generation.generate import GenerationResult, _cached_fn, _collect, checked_prompts
from model.layers.attention_utils import mask_bias


@dataclass
class SpeculativeResult(GenerationResult):
    rounds: int = 0                   # verify forwards after prefill (each one host sync)
    drafted: int = 0                  # drafts offered to rows still generating
    accepted: int = 0                 # of those, accepted by the main model
    accepted_per_row: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


# ---------------------------------------------------------------------- cached forwards
def _bias(write_idx, key_valid):
    """Causal bias (B, 1, T, S) of T new tokens at buffer rows write_idx (B, T) over the cache."""
    b, s = tf.shape(key_valid)[0], tf.shape(key_valid)[1]
    key_pos = tf.tile(tf.range(s)[None, :], [b, 1])                            # (B, S)
    return mask_bias(tf.cast(write_idx, tf.int32), key_pos, key_valid)


def main_cached(model, ids, cache, write_idx, position_ids, key_valid, absorb):
    """DecoderLM.call_cached that also returns the final normed hidden state (the MTP input):
    ids (B, T) -> (logits (B, T, V), hidden (B, T, D), cache)."""
    bias = _bias(write_idx, key_valid)
    cos, sin = model.rope(position_ids)
    x = model.embed_tokens(ids)                                                # (B, T, D)
    new_cache = []
    for blk, c in zip(model.blocks, cache, strict=True):
        x, c = blk.call_cached(x, cos, sin, bias, c, write_idx, absorb)
        new_cache.append(c)
    hidden = model.norm(x)                                                     # (B, T, D)
    return model.head(hidden), hidden, new_cache


def mtp_cached(model, h, next_ids, cache, write_idx, position_ids, key_valid, absorb):
    """The first MTP module over T positions with its own cache (MTPModule.call, cached):
    h (B, T, D) previous-depth hidden, next_ids (B, T) the token after each position ->
    (logits (B, T, V) predicting the token two ahead, raw module output (B, T, D), cache)."""
    mod = model.mtp[0]
    bias = _bias(write_idx, key_valid)
    cos, sin = model.rope(position_ids)
    e = model.embed_tokens(next_ids)                                           # (B, T, D)
    x = mod.eh_proj(tf.concat([mod.enorm(e), mod.hnorm(h)], axis=-1))          # (B, T, D)
    x, cache = mod.block.call_cached(x, cos, sin, bias, cache, write_idx, absorb)
    return model.head(mod.shared_head_norm(x)), x, cache


def _argmax(logits):
    return tf.cast(tf.argmax(tf.cast(logits, tf.float32), axis=-1), tf.int32)


def _chain(model, h, d1, mcache, write, pos, key_valid, k, absorb):
    """Drafts d_2..d_k from d_1 (B,) and the MTP output h (B, D) at the row before `write` (B,):
    each step runs the module at the next row on (its own last output, Emb(last draft)).
    Returns (drafts (B, k), mcache)."""
    drafts = [d1]
    for j in range(k - 1):
        logits, x, mcache = mtp_cached(model, h[:, None], drafts[-1][:, None], mcache,
                                       (write + j)[:, None], (pos + j)[:, None], key_valid, absorb)
        h = x[:, 0]                                                            # (B, D)
        drafts.append(_argmax(logits[:, 0]))
    return tf.stack(drafts, axis=1), mcache


# ---------------------------------------------------------------------- compiled steps
def _prefill_fn(model, k: int):
    """(ids (B, P), mask (B, P), max_len ()) -> first token t_n (B,), drafts (B, k), main cache,
    MTP cache, key_valid (B, max_len). Prefill runs the naive MLA path, as generate's does."""
    def make(ref):
        def run(ids, mask, max_len):
            m = ref()
            b, p = tf.shape(ids)[0], tf.shape(ids)[1]
            cache = m.init_cache(b, max_len, m.compute_dtype)
            mcache = m.mtp[0].block.self_attn.init_cache(b, max_len, m.compute_dtype)
            # constant for the whole generation: see the module docstring (rollback)
            key_valid = tf.pad(mask, [[0, 0], [0, max_len - p]], constant_values=1)   # (B, S)
            write = tf.tile(tf.range(p)[None], [b, 1])                                # (B, P)
            pos = tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)                          # (B, P)
            logits, hidden, cache = main_cached(m, ids, cache, write, pos, key_valid, False)
            first = _argmax(logits[:, -1])                                            # (B,)
            nxt = tf.concat([ids[:, 1:], first[:, None]], axis=1)                     # (B, P)
            mlog, x, mcache = mtp_cached(m, hidden, nxt, mcache, write, pos, key_valid, False)
            drafts, mcache = _chain(m, x[:, -1], _argmax(mlog[:, -1]), mcache,
                                    tf.fill([b], p), pos[:, -1] + 1, key_valid, k, False)
            return first, drafts, cache, mcache, key_valid
        return tf.function(run, reduce_retracing=True)
    return _cached_fn(model, ("spec_prefill", k), make)


def _round_fn(model, k: int, absorb: bool):
    """One verify + accept + draft round.

    (tok (B,) pending t_n, drafts (B, k), done (B,) bool, cache, mcache, write (B,) buffer row
    of t_n, pos (B,) its rope position, key_valid (B, S)) -> (emitted g (B, k+1) of which the
    first accepted+1 count, accepted (B,), next pending token (B,), next drafts (B, k), cache,
    mcache, write, pos)."""
    def make(ref):
        def run(tok, drafts, done, cache, mcache, write, pos, key_valid):
            m = ref()
            offs = tf.range(k + 1)[None, :]                                           # (1, k+1)
            w_idx, p_idx = write[:, None] + offs, pos[:, None] + offs                 # (B, k+1)
            feed = tf.concat([tok[:, None], drafts], axis=1)                          # (B, k+1)
            logits, hidden, cache = main_cached(m, feed, cache, w_idx, p_idx, key_valid, absorb)
            g = _argmax(logits)                                                       # (B, k+1)
            match = tf.cast(tf.equal(drafts, g[:, :k]), tf.int32)                     # (B, k)
            acc = tf.reduce_sum(tf.math.cumprod(match, axis=1), axis=1)               # (B,)
            acc = tf.where(done, 0, acc)
            bonus = tf.gather(g, acc, batch_dims=1)                                   # (B,)
            mlog, x, mcache = mtp_cached(m, hidden, g, mcache, w_idx, p_idx, key_valid, absorb)
            h_a = tf.gather(x, acc, batch_dims=1)                                     # (B, D)
            d1 = _argmax(tf.gather(mlog, acc, batch_dims=1))                          # (B,)
            step = tf.where(done, 0, acc + 1)                                         # (B,)
            new_write, new_pos = write + step, pos + step
            new_drafts, mcache = _chain(m, h_a, d1, mcache, new_write, new_pos, key_valid, k,
                                        absorb)
            return g, acc, bonus, new_drafts, cache, mcache, new_write, new_pos
        return tf.function(run, reduce_retracing=True)
    return _cached_fn(model, ("spec_round", k, absorb), make)


# ---------------------------------------------------------------------- entry point
def speculative_generate(model, prompts: Sequence[Sequence[int]],
                         config: GenerationConfig = GenerationConfig(),
                         num_draft: int = 1) -> SpeculativeResult:
    """Greedy generation with `num_draft` MTP drafts verified per main-model forward.

    Same prompts / config / result as `generate` (greedy only), plus acceptance statistics."""
    cfg = model.cfg
    if not getattr(model, "mtp", None):
        raise GenerationError("speculative_generate: the model has no MTP module "
                              "(num_nextn_predict_layers = 0, or loaded with with_mtp=False)")
    if not isinstance(num_draft, int) or num_draft < 1:
        raise GenerationError(f"speculative_generate: num_draft must be an int >= 1, got {num_draft!r}")
    if config.temperature != 0.0:
        raise GenerationError("speculative_generate: only greedy decoding (temperature 0) is "
                              f"supported, got temperature={config.temperature}")
    ids, mask = checked_prompts(cfg, prompts, config, "speculative_generate")
    b, p = ids.shape
    k = num_draft
    # Active rows write at most up to P + max_new_tokens - 2 + 2k (verify + chained drafts past a
    # fully accepted round); rows past the prompt beyond the context limit only ever hold
    # rejected drafts (rope positions are computed, not looked up).
    max_len = p + config.max_new_tokens + 2 * k
    first, drafts, cache, mcache, key_valid = _prefill_fn(model, k)(
        tf.constant(ids), tf.constant(mask), tf.constant(max_len, tf.int32))
    stops = set(config.stop_token_ids)
    n = config.max_new_tokens
    out = [[t] for t in first.numpy().tolist()]
    done = np.array([row[0] in stops or n == 1 for row in out])
    write = tf.fill([b], tf.constant(p, tf.int32))
    pos = tf.constant(mask.sum(axis=1).astype(np.int32))
    tok = first
    step = _round_fn(model, k, config.absorb)
    rounds = drafted = accepted = 0
    acc_rows = [0] * b
    while not done.all():
        g, acc, tok, drafts, cache, mcache, write, pos = step(
            tok, drafts, tf.constant(done), cache, mcache, write, pos, key_valid)
        g, acc = g.numpy(), acc.numpy()                       # the one host sync per round
        rounds += 1
        for i in np.flatnonzero(~done):
            room = n - len(out[i])
            # drafts count when they fall within the row's max_new_tokens (draft j is token j of
            # the round's output): at most `room` of them
            offered = min(k, room)
            used = min(int(acc[i]), offered)
            drafted += offered
            accepted += used
            acc_rows[i] += used
            for t in g[i, :int(acc[i]) + 1].tolist()[:room]:
                out[i].append(t)
                if t in stops:
                    done[i] = True
                    break
            if len(out[i]) >= n:
                done[i] = True
    # rows cut short by a stop token are padded with -1 (never an id) past it; _collect cuts there
    res = _collect(np.array([row + [-1] * (n - len(row)) for row in out]), stops)
    return SpeculativeResult(res.sequences, res.finish_reasons, res.stop_tokens, rounds=rounds,
                             drafted=drafted, accepted=accepted, accepted_per_row=acc_rows)
