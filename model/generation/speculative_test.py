"""speculative_generate against independent references: plain greedy `generate`, the training
forward's MTP logits (DecoderLM.forward(with_mtp=True)), and — for acceptance counts — a pure
numpy simulation of a model whose main head and MTP drafter are hand-made bigram tables.

A random model's MTP head almost never agrees with its main head, so equality with `generate`
alone would exercise only the all-rejected path. The "bigram" models below switch off the MLPs
(and optionally scale the attention) so the main model's next token depends (mostly) on the
current token only, and make the MTP module the identity on Emb(next token): its draft is then
a function g of the previous token that agrees with the main table f on the tokens we choose.
"""
import functools

import numpy as np
import pytest
import tensorflow as tf

from model.decoder import build_model
from model.errors import GenerationError
from model.generation import GenerationConfig, generate
from model.generation.speculative import mtp_cached, speculative_generate

EPS = 1e-6


def _set(var, value):
    var.assign(np.asarray(value, np.float32).reshape(var.shape))


@functools.cache   # shared across tests: the traced steps are cached per model
def _bigram_model(attn_scale=0.0, drafter_noise=0.0, seed=0):
    """Tiny DeepSeek-V3 preset (MLA + MoE + 1 MTP module) with the MLPs off, attention output
    scaled by attn_scale, and an MTP module that maps Emb(t) straight to the head through
    shared_head_norm (weight = the main norm's, times (1 + drafter_noise · N(0, 1)) per dim)."""
    m = build_model("tiny", seed=seed)
    rng = np.random.default_rng(seed)
    for mod in [*m.blocks, m.mtp[0].block]:
        scale = 0.0 if mod is m.mtp[0].block else attn_scale
        for v in mod.weights:
            if v.path.endswith("o_proj/kernel"):
                _set(v, v.numpy() * scale)
            elif v.path.endswith(("down_proj/kernel", "experts_down")):
                _set(v, np.zeros(v.shape))
    d = m.cfg.hidden_size
    mtp = m.mtp[0]
    _set(mtp.eh_proj.kernel, np.concatenate([np.eye(d), np.zeros((d, d))], axis=0))  # emb half
    _set(mtp.enorm.weight, np.ones(d))
    wn = m.norm.weight.numpy()
    _set(mtp.shared_head_norm.weight, wn * (1 + drafter_noise * rng.standard_normal(d)))
    return m


def _rms(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)


def _tables(m):
    """f[t]: the main model's greedy next token after t (attention off); g[t]: the MTP draft
    for the token after t, computed from the weights in numpy."""
    e = m.embed_tokens.weight.numpy().astype(np.float64)                     # (V, D)
    head = m.lm_head.kernel.numpy().astype(np.float64)                       # (D, V)
    f = np.argmax(_rms(e) * m.norm.weight.numpy() @ head, axis=-1)
    mtp = m.mtp[0]
    g = np.argmax(_rms(_rms(e) * mtp.enorm.weight.numpy()) * mtp.shared_head_norm.weight.numpy()
                  @ head, axis=-1)
    return f, g


def _simulate(f, g, last_prompt_token, n, k):
    """The algorithm of speculative.py on bigram tables: -> (tokens, rounds, offered, accepted)."""
    out = [int(f[last_prompt_token])]
    rounds = offered = accepted = 0
    while len(out) < n:
        drafts = [int(g[out[-1]])]
        for _ in range(k - 1):
            drafts.append(int(g[drafts[-1]]))
        feed = [out[-1], *drafts]
        a = 0
        while a < k and drafts[a] == f[feed[a]]:
            a += 1
        room = n - len(out)
        rounds += 1
        offered += min(k, room)
        accepted += min(a, room)
        out += [int(f[t]) for t in feed[:a + 1]][:room]
    return out, rounds, offered, accepted


PROMPTS = [[5, 9, 13, 200, 7, 3], [42, 17], [100], list(range(20, 61))]


@pytest.mark.parametrize("k", [1, 3])
def test_acceptance_counts_equal_bigram_simulation(k):
    m = _bigram_model(drafter_noise=0.8)
    f, g = _tables(m)
    n = 24
    # last prompt tokens picked (by the reference) so rows accept different numbers of drafts
    by_acc = {}
    for t in range(2, m.cfg.vocab_size):
        by_acc.setdefault(_simulate(f, g, t, n, k)[3], t)
    lasts = sorted(by_acc.values())[:4]
    prompts = [p[:-1] + [t] for p, t in zip(PROMPTS, lasts, strict=False)]
    res = speculative_generate(m, prompts, GenerationConfig(max_new_tokens=n), num_draft=k)
    sims = [_simulate(f, g, p[-1], n, k) for p in prompts]
    assert res.sequences == [s[0] for s in sims]
    assert res.sequences == generate(m, prompts, GenerationConfig(max_new_tokens=n)).sequences
    want_acc = [s[3] for s in sims]
    assert res.accepted_per_row == want_acc
    assert res.accepted == sum(want_acc) and res.drafted == sum(s[2] for s in sims)
    assert res.rounds == max(s[1] for s in sims)
    # the case is only informative if rows accept some drafts, not all, and not equally
    assert 0 < res.acceptance_rate < 1 and len(set(want_acc)) > 1


def test_perfect_drafter_accepts_everything():
    """MTP table == main table: every draft accepted; n new tokens take ceil((n-1)/(k+1)) rounds."""
    m = _bigram_model(drafter_noise=0.0)
    f, g = _tables(m)
    assert (f == g).all()
    for k in (1, 3):
        res = speculative_generate(m, [[7, 8, 9]], GenerationConfig(max_new_tokens=21), num_draft=k)
        assert res.acceptance_rate == 1.0
        assert res.rounds == -(-20 // (k + 1))
        assert res.sequences == generate(m, [[7, 8, 9]], GenerationConfig(max_new_tokens=21)).sequences


def _replay_k1(m, prompt, generated):
    """Acceptance for k=1 from the *training* forward: the draft offered for t_{n+1} is the
    argmax of mtp_logits[0] at position n-1 of the final sequence (its inputs, h_{n-1} and t_n,
    are final there). Returns accepted drafts."""
    seq = list(prompt) + list(generated)
    mtp = m.forward(np.array([seq], np.int32), with_mtp=True)["mtp_logits"][0].numpy()[0]   # (T, V)
    n, end, acc = len(prompt), len(seq), 0      # n: index of the pending token
    while n < end - 1:
        if int(mtp[n - 1].argmax()) == seq[n + 1]:
            acc += 1
            n += 2
        else:
            n += 1
    return acc


def test_attention_model_equals_generate_and_training_forward_mtp():
    """Attention on (scaled): the cache matters, drafts are partly accepted, rows diverge."""
    m = _bigram_model(attn_scale=0.5, drafter_noise=0.3, seed=1)
    cfg = GenerationConfig(max_new_tokens=30)
    want = generate(m, PROMPTS, cfg).sequences
    res = speculative_generate(m, PROMPTS, cfg, num_draft=1)
    assert res.sequences == want
    acc = [_replay_k1(m, p, s) for p, s in zip(PROMPTS, want, strict=True)]
    assert res.accepted_per_row == acc
    assert 0 < res.acceptance_rate < 1 and len(set(acc)) > 1


def test_random_full_model_equals_generate():
    """Unmodified tiny preset (MLPs, MoE routing, MTP block with attention): output equals generate."""
    m = build_model("tiny", seed=3)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(2, 256, size=n).tolist() for n in (1, 7, 33, 12)]
    for n in (1, 17):
        cfg = GenerationConfig(max_new_tokens=n)
        want = generate(m, prompts, cfg)
        got = speculative_generate(m, prompts, cfg, num_draft=2)
        assert got.sequences == want.sequences and got.finish_reasons == want.finish_reasons


def test_mtp_cached_equals_training_forward():
    """The cached MTP pass (prefill of a prefix, then one position at a time) gives the logits
    of DecoderLM.forward(with_mtp=True) at every position whose next token is known."""
    m = build_model("tiny", seed=4)
    ids = np.random.default_rng(4).integers(2, 256, size=(2, 12)).astype(np.int32)
    out = m.forward(ids, with_mtp=True)
    want = out["mtp_logits"][0].numpy()                                      # (B, T, V)
    hidden = out["hidden"]
    b, t = ids.shape
    nxt = np.concatenate([ids[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
    cache = m.mtp[0].block.self_attn.init_cache(b, t)
    kv = tf.ones([b, t], tf.int32)
    pos = np.tile(np.arange(t, dtype=np.int32), [b, 1])
    got, _, cache = mtp_cached(m, hidden[:, :5], nxt[:, :5], cache, pos[:, :5], pos[:, :5], kv, False)
    outs = [got.numpy()]
    for i in range(5, t - 1):
        got, _, cache = mtp_cached(m, hidden[:, i:i + 1], nxt[:, i:i + 1], cache, pos[:, i:i + 1],
                                   pos[:, i:i + 1], kv, True)
        outs.append(got.numpy())
    got = np.concatenate(outs, axis=1)
    assert np.abs(got - want[:, :t - 1]).max() <= 1e-4


def _reference_drafts(m, seq, k):
    """Drafts for committed tokens `seq` (its last one pending, not yet through the main model),
    from the uncached layers: the main forward's hidden states, then MTPModule.call over the
    whole sequence, chaining its own last output and draft one position further each time."""
    from model.layers.attention_utils import mask_bias
    mod = m.mtp[0]
    h = m.forward(np.array([seq[:-1]], np.int32))["hidden"]                 # (1, L-1, D)
    nxt = list(seq[1:])
    drafts = []
    for _ in range(k):
        t = len(nxt)
        pos = tf.range(t)[None]                                             # (1, T)
        cos, sin = m.rope(pos)
        x, normed = mod(h, m.embed_tokens(tf.constant([nxt])), cos, sin,
                        mask_bias(pos, pos, tf.ones([1, t], tf.int32)))
        drafts.append(int(m.head(normed)[0, -1].numpy().argmax()))
        h = tf.concat([h, x[:, -1:]], axis=1)
        nxt.append(drafts[-1])
    return drafts


def test_chained_drafts_equal_uncached_mtp_chain():
    """Drafts after prefill and after a round (k = 3: one MTP pass + two chained steps, all with
    MTP attention over the cache, left-padded prompt) equal the uncached chain."""
    from model.generation import speculative as spec
    from model.generation.generate import left_pad, pad_to_bucket
    m = build_model("tiny", seed=6)
    # sharpen attention (random init attends almost uniformly, so rope positions barely matter)
    for blk in [*m.blocks, m.mtp[0].block]:
        for v in blk.self_attn.weights:
            if v.path.endswith(("q_b_proj/kernel", "kv_a_proj_with_mqa/kernel")):
                _set(v, v.numpy() * 8)
            elif v.path.endswith("o_proj/kernel"):      # and let it dominate the residual
                _set(v, v.numpy() * 30)
    prompt = np.random.default_rng(6).integers(2, 256, size=19).tolist()
    ids, mask = pad_to_bucket(*left_pad([prompt], 0), 0)
    p, k = ids.shape[1], 3
    first, drafts, cache, mcache, kv = spec._prefill_fn(m, k)(
        tf.constant(ids), tf.constant(mask), tf.constant(p + 20, tf.int32))
    seq = prompt + [int(first[0])]
    assert drafts.numpy()[0].tolist() == _reference_drafts(m, seq, k)
    # feed drafts equal to the main model's own picks, so the round accepts 2 of them
    own = generate(m, [prompt], GenerationConfig(max_new_tokens=4)).sequences[0]
    forced = tf.constant([[own[1], own[2], (own[3] + 1) % 256]], tf.int32)
    g, acc, bonus, drafts, *_ = spec._round_fn(m, k, True)(
        first, forced, tf.constant([False]), cache, mcache, tf.constant([p], tf.int32),
        tf.constant([len(prompt)], tf.int32), kv)
    assert int(acc[0]) == 2 and int(bonus[0]) == own[3]
    seq = prompt + own[:4]
    assert drafts.numpy()[0].tolist() == _reference_drafts(m, seq, k)


def test_stop_tokens_and_context_limit():
    m = _bigram_model(attn_scale=0.5, drafter_noise=0.3, seed=1)
    free = generate(m, PROMPTS[:2], GenerationConfig(max_new_tokens=12)).sequences
    stop = free[0][5]
    cfg = GenerationConfig(max_new_tokens=12, stop_token_ids=(stop,))
    want = generate(m, PROMPTS[:2], cfg)
    got = speculative_generate(m, PROMPTS[:2], cfg, num_draft=3)
    assert got.sequences == want.sequences and got.finish_reasons == want.finish_reasons
    assert got.stop_tokens == want.stop_tokens and got.finish_reasons[0] == "stop"
    # a prompt that fills the context to the last position (max_position_embeddings 512)
    long = [int(x) for x in np.random.default_rng(5).integers(2, 256, size=500)]
    cfg = GenerationConfig(max_new_tokens=12)
    assert speculative_generate(m, [long, [3]], cfg, num_draft=3).sequences == \
        generate(m, [long, [3]], cfg).sequences
    with pytest.raises(GenerationError, match=r"prompt 0 has 501 tokens.*max context of 512"):
        speculative_generate(m, [long + [1]], cfg)


def test_bad_input_is_a_clear_error():
    m = _bigram_model()
    with pytest.raises(GenerationError, match="only greedy"):
        speculative_generate(m, [[1]], GenerationConfig(temperature=0.7))
    with pytest.raises(GenerationError, match="num_draft"):
        speculative_generate(m, [[1]], GenerationConfig(), num_draft=0)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        speculative_generate(m, [[1, 999]], GenerationConfig())
    with pytest.raises(GenerationError, match="no MTP module"):
        speculative_generate(build_model("tiny-qwen2", seed=0), [[1]], GenerationConfig())
