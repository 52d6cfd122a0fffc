import numpy as np
import tensorflow as tf

from model.balance import bias_delta, expert_load, layer_loads, update_routing_bias
from model.decoder import build_model


def test_expert_load_counts():
    idx = tf.constant([[0, 2], [2, 3], [2, 0]])
    np.testing.assert_array_equal(expert_load(idx, 5).numpy(), [2, 0, 3, 1, 0])
    np.testing.assert_array_equal(expert_load(idx, 5, token_mask=[1, 0, 1]).numpy(), [2, 0, 2, 0, 0])


def test_bias_delta_sign():
    # mean load 2: overloaded -γ, underloaded +γ, at mean 0
    np.testing.assert_allclose(bias_delta(tf.constant([4.0, 0.0, 2.0, 2.0]), 0.001).numpy(),
                               [-0.001, 0.001, 0.0, 0.0])


def test_update_routing_bias_on_model():
    m = build_model("tiny", seed=0)
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 16)).astype(np.int32)
    out = m.forward(ids, return_router=True, with_mtp=True)
    loads = layer_loads(out["router"], m.cfg.n_routed_experts)
    before = [layer.e_score_correction_bias.numpy().copy() for layer in m.moe_layers()]
    update_routing_bias(m, loads, gamma=0.01)
    for layer, b0, load in zip(m.moe_layers(), before, loads, strict=False):
        load = load.numpy()
        want = b0 + 0.01 * np.sign(load.mean() - load)
        np.testing.assert_allclose(layer.e_score_correction_bias.numpy(), want, atol=1e-7)
        assert load.sum() == 32 * m.cfg.num_experts_per_tok


def test_padding_of_a_packed_row_is_not_load():
    m = build_model("tiny", seed=0)
    ids = np.random.default_rng(1).integers(2, 256, size=(2, 10)).astype(np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0, 0],
                    [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    out = m.forward(ids, segment_ids=seg, return_router=True, with_mtp=True)
    loads = layer_loads(out["router"], m.cfg.n_routed_experts, token_mask=seg != 0)
    k = m.cfg.num_experts_per_tok
    for r, load in zip(out["router"], loads, strict=True):
        assert load.numpy().sum() == 16 * k                                # 7 + 9 real tokens
        # reference: count the real tokens' top-k choices directly
        real = r.topk_idx.numpy()[(seg != 0).reshape(-1)]
        np.testing.assert_array_equal(load.numpy(), np.bincount(real.reshape(-1), minlength=m.cfg.n_routed_experts))
