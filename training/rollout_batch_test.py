"""rollout_batch: the row layout on a hand-written case, the fixed step shape, and batched
log-probs against a plain forward of each row alone (numpy log-softmax of the logits)."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from model.conftest import load_fixture_model
from training.rollout_batch import batch_logprobs, build_rows, engine_layout


def test_build_rows_layout_by_hand():
    rows = build_rows([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], seq_len=6, pad_id=3)
    np.testing.assert_array_equal(rows["input_ids"], [[5, 6, 7, 9, 10, 3],
                                                      [8, 11, 12, 13, 3, 3]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 1, 0],
                                                        [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 4, 0],
                                                      [0, 1, 2, 3, 0, 0]])
    # column t marks token t (its log-prob comes from position t - 1): the completion tokens only
    np.testing.assert_array_equal(rows["completion_mask"], [[0, 0, 0, 1, 1, 0],
                                                            [0, 1, 1, 1, 0, 0]])
    assert rows["input_ids"].dtype == np.int32 and rows["completion_mask"].dtype == np.float32


def test_build_rows_exact_fit_and_too_long():
    full = build_rows([[1, 2]], [[3, 4]], seq_len=4)
    np.testing.assert_array_equal(full["segment_ids"], [[1, 1, 1, 1]])
    with pytest.raises(ConfigError, match=r"rollout 1: prompt \(3\) \+ completion \(2\) tokens exceed the row length 4"):
        build_rows([[1], [1, 2, 3]], [[2], [4, 5]], seq_len=4)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        build_rows([[1], [2]], [[3]], seq_len=4)


def test_engine_layout_shapes_and_zero_padding_rows():
    feats = {"input_ids": np.arange(1, 13, dtype=np.int32).reshape(3, 4),     # (3, 4)
             "advantages": np.array([0.5, -1.0, 2.0], np.float32),            # (3,)
             "row_valid": np.ones(3, np.float32)}
    out = engine_layout(feats, accum=2, rows_per_step=4)
    assert out["input_ids"].shape == (2, 2, 4) and out["advantages"].shape == (2, 2)
    np.testing.assert_array_equal(out["input_ids"][0], [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(out["input_ids"][1], [[9, 10, 11, 12], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["advantages"], [[0.5, -1.0], [2.0, 0.0]])
    np.testing.assert_array_equal(out["row_valid"], [[1, 1], [1, 0]])
    with pytest.raises(ValueError, match="5 rows do not fit a step of 4"):
        engine_layout({"x": np.zeros((5, 2))}, accum=2, rows_per_step=4)
    with pytest.raises(ValueError, match="not a multiple of accum"):
        engine_layout({"x": np.zeros((2, 2))}, accum=3, rows_per_step=4)


def _reference_logprobs(model, ids: list[int], temperature: float) -> np.ndarray:
    """(L,) log p(token t | tokens < t) from one forward of the unpadded row alone; [0] = 0."""
    logits = model.forward(np.array([ids], np.int32), training=False)["logits"].numpy()[0].astype(np.float64)
    z = logits[:-1] / temperature                                              # (L-1, V)
    logz = z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    return np.concatenate([[0.0], z[np.arange(len(ids) - 1), ids[1:]] - logz])


@pytest.mark.parametrize("name", ["dsv3_qlora", "qwen2_gqa_tied"])
def test_batch_logprobs_equal_a_plain_forward_per_row_and_ignore_the_split(name):
    model = load_fixture_model(name)
    rng = np.random.default_rng(0)
    lengths = [(3, 4), (1, 6), (5, 2), (2, 2), (4, 5)]            # (prompt, completion) per row
    prompts = [rng.integers(2, 256, p).tolist() for p, _ in lengths]
    comps = [rng.integers(2, 256, c).tolist() for _, c in lengths]
    rows = build_rows(prompts, comps, seq_len=10)
    t = 0.7
    by3 = batch_logprobs(model, rows, t, micro_batch=3)     # chunks of 3 + 2 (the last one padded)
    by5 = batch_logprobs(model, rows, t, micro_batch=5)
    assert by3.shape == (5, 10) and by3.dtype == np.float32
    for i, (p, c) in enumerate(zip(prompts, comps, strict=True)):
        ref = _reference_logprobs(model, p + c, t)
        np.testing.assert_allclose(by3[i, :len(ref)], ref, atol=2e-5, rtol=1e-5)
        assert not by3[i, len(ref):].any()                 # padding columns are exactly 0
    np.testing.assert_allclose(by3, by5, atol=1e-6)
