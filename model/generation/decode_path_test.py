"""Which MoE expert path a cached one-token decode step takes, and that every path gives the
logits of the full (uncached) forward: a few rows gather their experts' weights, a batch of rows
(a GRPO rollout) takes the dispatch path, an XLA-compiled step (fixed_shape) always gathers."""
import contextlib

import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.conftest import load_fixture_model
from model.generation import left_pad
from model.layers.moe import MoE

TOL = 1e-4


def _prefill_all_but_last(m, prompts):
    """Prefill all but each row's last token (left-padded batch) -> the cached decode step of
    that token, fixed_shape -> logits (B, V); and the full forward's logits (B, V) there."""
    ids, mask = left_pad(prompts, 0)
    b, p = ids.shape
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    kv = mask.copy()
    kv[:, -1] = 0
    _, cache = m.call_cached(tf.constant(ids[:, :-1]), m.init_cache(b, p),
                             tf.constant(np.tile(np.arange(p - 1, dtype=np.int32), [b, 1])),
                             tf.constant(pos[:, :-1]), tf.constant(kv), absorb=False)

    def step(fixed_shape):
        logits, _ = m.call_cached(tf.constant(ids[:, -1:]), cache, tf.constant(np.full((b, 1), p - 1, np.int32)),
                                  tf.constant(pos[:, -1:]), tf.constant(mask), fixed_shape=fixed_shape)
        return logits.numpy()[:, -1]
    return step, m(ids, attention_mask=mask).numpy()[:, -1]


@pytest.mark.parametrize("custom_ops", [
    False, pytest.param(True, marks=pytest.mark.skipif(not ops.available(), reason="custom ops not built"))],
    ids=["ops-off", "ops-on"])
@pytest.mark.parametrize("rows,fixed_shape,gathered", [(2, False, True),    # 2 rows x 3 experts <= 8
                                                       (4, False, False),   # 12 pairs > 8 experts
                                                       (4, True, True)])    # XLA: fixed shapes
def test_decode_path_choice_and_logits_equal_full_forward(monkeypatch, rows, fixed_shape, gathered, custom_ops):
    """With the grouped-matmul op active (outside XLA) decode always dispatches: the op runs the few
    rows without the gathered path's weight copies."""
    gathered = gathered and not custom_ops
    m = load_fixture_model("dsv3_qlora")          # 8 routed experts, top-3, 2 MoE layers
    prompts = [[5, 9, 13, 200, 7, 3], [42, 17, 8], [100, 4], [7, 7, 7, 7, 9]][:rows]
    step, full = _prefill_all_but_last(m, prompts)
    calls = {"gathered": 0, "dispatch": 0}
    for name, key in (("gathered_experts", "gathered"), ("routed_experts", "dispatch")):
        def counted(self, *a, _orig=getattr(MoE, name), _key=key, **kw):
            calls[_key] += 1
            return _orig(self, *a, **kw)
        monkeypatch.setattr(MoE, name, counted)
    with contextlib.nullcontext() if custom_ops else ops.disabled():
        got = step(fixed_shape)
    assert calls == ({"gathered": 2, "dispatch": 0} if gathered else {"gathered": 0, "dispatch": 2})
    assert np.abs(got - full).max() <= TOL


def test_relaxed_batch_dimension_takes_dispatch():
    m = load_fixture_model("dsv3_qlora")
    blk = next(b for b in m.blocks if b.is_moe)
    x = tf.TensorSpec([None, 1, m.cfg.hidden_size])
    assert blk._gather_decode(x, fixed_shape=False) is False
    assert blk._gather_decode(x, fixed_shape=True) is True
    assert blk._gather_decode(tf.TensorSpec([2, 3, m.cfg.hidden_size]), fixed_shape=True) is False   # not decode
