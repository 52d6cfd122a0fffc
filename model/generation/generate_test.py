import numpy as np
import pytest
import tensorflow as tf

from model.conftest import load_fixture_model, reference
from model.decoder import build_model
from model.errors import GenerationError
from model.generation import GenerationConfig, generate, left_pad

TOL = 1e-4


def _teacher_forced_decode(m, ids, mask, n_prefill, absorb):
    """Prefill ids[:, :n_prefill] into a cache, then feed the remaining tokens one at a time
    (teacher forcing); returns the logits (B, T, V) of the prefill + every decode step."""
    b, t = ids.shape
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    kv = np.zeros((b, t), np.int32)
    kv[:, :n_prefill] = mask[:, :n_prefill]
    write = np.tile(np.arange(n_prefill, dtype=np.int32), [b, 1])
    logits, cache = m.call_cached(tf.constant(ids[:, :n_prefill]), m.init_cache(b, t),
                                  tf.constant(write), tf.constant(pos[:, :n_prefill]),
                                  tf.constant(kv), absorb=False)
    outs = [logits.numpy()]
    for i in range(n_prefill, t):
        kv[:, i] = mask[:, i]
        logits, cache = m.call_cached(tf.constant(ids[:, i:i + 1]), cache,
                                      tf.constant(np.full((b, 1), i, np.int32)),
                                      tf.constant(pos[:, i:i + 1]), tf.constant(kv), absorb=absorb)
        outs.append(logits.numpy())
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("name", ["dsv3_qlora", "dsv3_plain_bf16_sharded", "qwen2_gqa_tied"])
def test_incremental_decode_equals_full_forward(name):
    m = load_fixture_model(name)
    ref = reference(name)
    for ids, mask, want in ((ref["input_ids"], np.ones_like(ref["input_ids"]), ref["logits"]),
                            (ref["padded_input_ids"], ref["attention_mask"], ref["padded_logits"])):
        full = m(ids, attention_mask=mask).numpy()
        valid = mask.astype(bool)
        for absorb in (True, False):
            got = _teacher_forced_decode(m, ids, mask, 4, absorb)
            assert np.abs(got - full)[valid].max() <= TOL
            assert np.abs(got - want)[valid].max() <= TOL   # and matches transformers


def test_absorbed_decode_equals_naive():
    m = load_fixture_model("dsv3_qlora")
    ids = reference("dsv3_qlora")["input_ids"]
    mask = np.ones_like(ids)
    a = _teacher_forced_decode(m, ids, mask, 3, absorb=True)
    b = _teacher_forced_decode(m, ids, mask, 3, absorb=False)
    assert np.abs(a - b).max() <= 1e-5


def _greedy_reference(m, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(m(np.array([seq], np.int32)).numpy()[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("name", ["dsv3_qlora", "qwen2_gqa_tied"])
def test_batched_greedy_generation_matches_uncached_loop(name):
    m = load_fixture_model(name)
    prompts = [[5, 9, 13, 200, 7, 3], [42, 17], [100]]
    res = generate(m, prompts, GenerationConfig(max_new_tokens=6))
    for p, got in zip(prompts, res.sequences, strict=False):
        assert got == _greedy_reference(m, p, 6)
    assert res.finish_reasons == ["length"] * 3


def test_stop_tokens_end_rows_independently():
    m = load_fixture_model("qwen2_gqa_tied")
    prompts = [[5, 9, 13], [42, 17]]
    free = generate(m, prompts, GenerationConfig(max_new_tokens=6)).sequences
    stop = free[0][2]
    res = generate(m, prompts, GenerationConfig(max_new_tokens=6, stop_token_ids=(stop,)))
    assert res.sequences[0] == free[0][:free[0].index(stop)]
    assert res.finish_reasons[0] == "stop" and res.stop_tokens[0] == stop
    if stop not in free[1]:
        assert res.sequences[1] == free[1] and res.finish_reasons[1] == "length"
        assert res.stop_tokens[1] is None


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    m = load_fixture_model("qwen2_gqa_tied")
    prompts = [[5, 9, 13], [42]]
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.9, top_p=0.9, seed=11)
    assert generate(m, prompts, cfg).sequences == generate(m, prompts, cfg).sequences
    greedy = generate(m, prompts, GenerationConfig(max_new_tokens=5)).sequences
    assert generate(m, prompts, GenerationConfig(max_new_tokens=5, temperature=1.5, top_k=1,
                                                 seed=3)).sequences == greedy


def test_xla_decode_step_for_dense_model():
    m = load_fixture_model("qwen2_gqa_tied")
    prompts = [[5, 9, 13], [42]]
    a = generate(m, prompts, GenerationConfig(max_new_tokens=4, jit_compile=True)).sequences
    assert a == generate(m, prompts, GenerationConfig(max_new_tokens=4)).sequences


def test_prompt_longer_than_context_is_a_clear_error():
    m = build_model("tiny-qwen2", seed=0)   # max_position_embeddings 512
    with pytest.raises(GenerationError, match=r"prompt 1 has 510 tokens.*max context of 512"):
        generate(m, [[1, 2], [3] * 510], GenerationConfig(max_new_tokens=8))
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        generate(m, [[1, 999]], GenerationConfig(max_new_tokens=1))
    with pytest.raises(GenerationError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])


def test_prefill_last_logits_equal_full_forward_last_position():
    """prefill applies norm + head to the last position only; reference: the full forward
    (untraced) at that position, and transformers' logits from the fixture."""
    from model.generation import prefill
    m = load_fixture_model("dsv3_qlora")
    ref = reference("dsv3_qlora")
    for ids, mask, want in ((ref["input_ids"], np.ones_like(ref["input_ids"]), ref["logits"]),
                            (ref["padded_input_ids"], ref["attention_mask"], ref["padded_logits"])):
        full = m.forward(ids, attention_mask=mask)["logits"].numpy()
        logits, cache, key_valid, next_pos = prefill(m, ids, mask, ids.shape[1] + 3)
        assert logits.shape == (ids.shape[0], m.cfg.vocab_size)
        assert np.abs(logits.numpy() - full[:, -1]).max() <= TOL
        assert np.abs(logits.numpy() - want[:, -1]).max() <= TOL
        np.testing.assert_array_equal(key_valid.numpy()[:, :ids.shape[1]], mask)
        np.testing.assert_array_equal(key_valid.numpy()[:, ids.shape[1]:], 0)
        np.testing.assert_array_equal(next_pos, mask.sum(1))


def _sampled_reference(m, prompts, n, temperature, top_k, top_p, seed, stops=()):
    """Uncached eager batched loop: left-padded full forward per step, select_next over the
    batch with the (seed, step) schedule generate documents, rows stopping independently."""
    from model.generation.sampling import select_next
    seqs = [list(p) for p in prompts]
    out, reasons = [[] for _ in prompts], ["length"] * len(prompts)
    for t in range(n):
        ids, mask = left_pad(seqs, 0)
        logits = m.forward(ids, attention_mask=mask)["logits"][:, -1]   # (B, V)
        toks = select_next(logits, temperature, top_k, top_p, tf.constant([seed, t], tf.int32)).numpy()
        for i, tok in enumerate(toks.tolist()):
            if reasons[i] == "stop":
                continue
            if tok in stops:
                reasons[i] = "stop"
            else:
                out[i].append(tok)
                seqs[i].append(tok)
    return out, reasons


def test_compiled_sampling_matches_eager_select_next_loop():
    m = load_fixture_model("qwen2_gqa_tied")
    prompts = [[5, 9, 13], [42]]
    res = generate(m, prompts, GenerationConfig(max_new_tokens=5, temperature=0.9, top_k=20,
                                                top_p=0.9, seed=11))
    assert res.sequences == _sampled_reference(m, prompts, 5, 0.9, 20, 0.9, 11)[0]


def test_compiled_greedy_with_stop_matches_uncached_loop():
    m = load_fixture_model("dsv3_qlora")
    prompts = [[5, 9, 13, 200, 7, 3], [42, 17]]
    stop = _greedy_reference(m, prompts[0], 2)[1]
    res = generate(m, prompts, GenerationConfig(max_new_tokens=5, stop_token_ids=(stop,)))
    want, want_reasons = _sampled_reference(m, prompts, 5, 0.0, 0, 1.0, 0, stops=(stop,))
    assert res.sequences == want and res.finish_reasons == want_reasons
    assert res.finish_reasons[0] == "stop"


def test_bucket_len_and_no_retrace_within_a_bucket():
    import importlib
    g = importlib.import_module("model.generation.generate")   # the module, not the function
    assert [g.bucket_len(n) for n in (1, 31, 32, 33, 1024)] == [32, 32, 32, 64, 1024]
    m = build_model("tiny-qwen2", seed=0)
    cfg = GenerationConfig(max_new_tokens=3)
    generate(m, [[1, 2, 3]], cfg)
    pre = g._prefill_fn(m, False)
    dec = g._decode_fn(m, True, False, 0.0, 0, 1.0)
    counts = (pre.experimental_get_tracing_count(), dec.experimental_get_tracing_count())
    for n in (4, 9, 20, 32):         # all bucket to 32 tokens: the same shapes
        out = generate(m, [list(range(1, n + 1))], cfg)
        assert out.sequences[0] == _greedy_reference(m, list(range(1, n + 1)), 3)
    assert (pre.experimental_get_tracing_count(), dec.experimental_get_tracing_count()) == counts


def test_xla_decode_step_for_moe_model():
    """MoE decode uses the fixed-shape expert path, so jit_compile now applies to MoE models."""
    m = load_fixture_model("dsv3_qlora")
    prompts = [[5, 9, 13, 200, 7, 3], [42, 17]]
    res = generate(m, prompts, GenerationConfig(max_new_tokens=4, jit_compile=True))
    assert res.sequences == [_greedy_reference(m, p, 4) for p in prompts]
