"""Repeated prompts (a GRPO rollout's G completions of one prompt) are prefilled once: every row
must still get exactly what the full-batch prefill and the uncached loop give it."""
import importlib

import numpy as np

from model.conftest import load_fixture_model
from model.generation import GenerationConfig, generate, left_pad, prefill
from model.generation.generate_test import _greedy_reference

g = importlib.import_module("model.generation.generate")   # the module, not the function


def test_prefill_unique_equals_full_batch_prefill(monkeypatch):
    m = load_fixture_model("dsv3_qlora")
    prompts = [[5, 9, 13], [42, 17], [5, 9, 13], [0, 42, 17], [5, 9, 13]]   # [0, 42, 17]: pad id inside
    ids, mask = left_pad(prompts, 0)
    seen = []
    monkeypatch.setattr(g, "prefill", lambda mm, i, k, n: seen.append(len(i)) or prefill(mm, i, k, n))
    logits, cache, key_valid, next_pos = g._prefill_unique(m, ids, mask, 8)
    assert seen == [3]                     # 3 distinct (ids, mask) rows of 5
    want = prefill(m, ids, mask, 8)
    np.testing.assert_allclose(logits.numpy(), want[0].numpy(), atol=1e-6)
    for got_layer, want_layer in zip(cache, want[1], strict=True):
        for a, b in zip(got_layer, want_layer, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    np.testing.assert_array_equal(key_valid.numpy(), want[2].numpy())
    np.testing.assert_array_equal(next_pos, [3, 2, 3, 3, 3])


def test_repeated_prompts_generate_what_each_gets_alone():
    m = load_fixture_model("qwen2_gqa_tied")
    a, b = [5, 9, 13, 200], [42, 17]
    res = generate(m, [a, b, a, a], GenerationConfig(max_new_tokens=4))
    want = {0: _greedy_reference(m, a, 4), 1: _greedy_reference(m, b, 4)}
    assert res.sequences == [want[0], want[1], want[0], want[0]]
    sampled = generate(m, [a] * 6, GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3)).sequences
    assert len({tuple(s) for s in sampled}) > 1          # copies of one prompt still sample apart
