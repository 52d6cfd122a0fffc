import numpy as np
import pytest
import tensorflow as tf

from model.layers.moe import MoE, dispatch_plan, route


def _route_reference(logits, bias, top_k, n_group, topk_group, norm, scale):
    """Straight numpy transcription of the V3 routing rule (reference/deepseek_v3.md)."""
    s = 1 / (1 + np.exp(-logits))
    choice = s + bias
    n, e = s.shape
    per = e // n_group
    idx_out, w_out = [], []
    for t in range(n):
        gs = [np.sort(choice[t, g * per:(g + 1) * per])[-2:].sum() for g in range(n_group)]
        keep = np.argsort(gs)[::-1][:topk_group]
        c = np.full(e, -np.inf)
        for g in keep:
            c[g * per:(g + 1) * per] = choice[t, g * per:(g + 1) * per]
        idx = np.argsort(c)[::-1][:top_k]
        w = s[t, idx]
        if norm:
            w = w / (w.sum() + 1e-20)
        idx_out.append(idx)
        w_out.append(w * scale)
    return np.array(idx_out), np.array(w_out), s


def test_route_matches_reference_with_negative_bias():
    # Strongly negative biases make every `choice` negative: a 0.0 group mask (the old
    # transformers bug) would then prefer masked experts; −inf must not.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 16)).astype(np.float32)
    bias = (rng.normal(size=16) - 3.0).astype(np.float32)
    r = route(tf.constant(logits), tf.constant(bias), top_k=3, n_group=4, topk_group=2,
              scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
              routed_scaling_factor=2.5)
    idx, w, s = _route_reference(logits, bias, 3, 4, 2, True, 2.5)
    got_idx = r.topk_idx.numpy()
    order = np.argsort(got_idx, axis=1)
    ref_order = np.argsort(idx, axis=1)
    np.testing.assert_array_equal(np.take_along_axis(got_idx, order, 1), np.take_along_axis(idx, ref_order, 1))
    np.testing.assert_allclose(np.take_along_axis(r.topk_weight.numpy(), order, 1),
                               np.take_along_axis(w, ref_order, 1), rtol=1e-5)
    np.testing.assert_allclose(r.scores.numpy(), s, rtol=1e-5)
    # chosen experts always lie in exactly <= topk_group groups
    groups = got_idx // 4
    assert all(len(set(g)) <= 2 for g in groups)


def test_bias_steers_selection_not_weights():
    logits = tf.zeros([1, 4])
    bias = tf.constant([0.0, 0.0, 5.0, 0.0])
    r = route(logits, bias, top_k=1, n_group=1, topk_group=1, scoring_func="sigmoid",
              topk_method="noaux_tc", norm_topk_prob=False, routed_scaling_factor=1.0)
    assert r.topk_idx.numpy()[0, 0] == 2
    np.testing.assert_allclose(r.topk_weight.numpy(), [[0.5]])  # sigmoid(0), bias not included


def test_dispatch_touches_only_chosen_pairs():
    idx = tf.constant([[0, 3], [3, 1], [0, 2], [3, 0]], tf.int32)
    order, token_of, counts = dispatch_plan(idx, 6)
    np.testing.assert_array_equal(counts.numpy(), [3, 1, 1, 3, 0, 0])
    assert int(tf.reduce_sum(counts)) == idx.shape[0] * idx.shape[1]   # N·K rows, not N·E
    np.testing.assert_array_equal(tf.gather(tf.reshape(idx, [-1]), order).numpy(), [0, 0, 0, 1, 2, 3, 3, 3])
    np.testing.assert_array_equal(token_of.numpy()[:3], [0, 2, 3])


def _dense_reference(layer, x):
    """Every expert on every token (numpy), masked by the routing — the slow definition."""
    x2 = x.reshape(-1, x.shape[-1])
    r = layer.router(tf.constant(x2))
    idx, w = r.topk_idx.numpy(), r.topk_weight.numpy()
    silu = lambda z: z / (1 + np.exp(-z))  # noqa: E731
    g, u, d = layer.experts_gate.numpy(), layer.experts_up.numpy(), layer.experts_down.numpy()
    out = np.zeros_like(x2)
    for e in range(g.shape[0]):
        y = (silu(x2 @ g[e]) * (x2 @ u[e])) @ d[e]
        coef = ((idx == e) * w).sum(-1, keepdims=True)
        out += coef * y
    se = layer.shared_experts
    out += (silu(x2 @ se.gate_proj.kernel.numpy()) * (x2 @ se.up_proj.kernel.numpy())) @ se.down_proj.kernel.numpy()
    return out.reshape(x.shape)


@pytest.mark.parametrize("expert_loop", ["unrolled", "while"])
@pytest.mark.parametrize("scoring,method,n_group,topk_group", [
    ("sigmoid", "noaux_tc", 4, 2), ("softmax", "greedy", 1, 1), ("softmax", "group_limited_greedy", 2, 1)])
def test_moe_matches_dense_reference(scoring, method, n_group, topk_group, expert_loop):
    layer = MoE(16, 8, 8, 1, 2, n_group, topk_group, 2.5 if scoring == "sigmoid" else 1.0,
                scoring == "sigmoid", scoring, method, initializer_range=0.3, expert_loop=expert_loop)
    if layer.e_score_correction_bias is not None:
        layer.e_score_correction_bias.assign(np.random.default_rng(1).normal(size=8) * 0.3)
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), _dense_reference(layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("expert_loop", ["unrolled", "while"])
@pytest.mark.parametrize("graph", [False, True])
def test_moe_gradients_flow_to_chosen_experts_only(expert_loop, graph):
    layer = MoE(8, 4, 8, 0, 1, 1, 1, 1.0, True, "sigmoid", "noaux_tc", initializer_range=0.3,
                expert_loop=expert_loop)
    x = tf.constant(np.random.default_rng(3).normal(size=(1, 3, 8)).astype(np.float32))

    def fwd_bwd(x):
        with tf.GradientTape() as tape:
            y = layer(x, return_router=True)
            loss = tf.reduce_sum(y[0] ** 2)
        return y, tape.gradient(loss, [layer.experts_gate, layer.gate.kernel])
    y, grads = (tf.function(fwd_bwd) if graph else fwd_bwd)(x)
    used = set(y[1].topk_idx.numpy().ravel())
    g = grads[0].numpy()
    for e in range(8):
        assert (np.abs(g[e]).sum() > 0) == (e in used)
    assert np.abs(grads[1].numpy()).sum() > 0   # router learns through the combine weights


def test_expert_loops_agree_in_graph_mode():
    a = MoE(16, 8, 40, 1, 4, 4, 2, 2.5, True, "sigmoid", "noaux_tc", 0.3)    # auto -> while (E > 32)
    assert a.expert_loop == "while"
    b = MoE.from_config({**a.get_config(), "expert_loop": "unrolled"})
    b.set_weights(a.get_weights())
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 7, 16)).astype(np.float32))
    np.testing.assert_allclose(tf.function(a)(x).numpy(), tf.function(b)(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scoring,method,n_group,topk_group", [
    ("sigmoid", "noaux_tc", 4, 2), ("softmax", "group_limited_greedy", 2, 1)])
def test_gathered_experts_match_dense_reference_and_dispatch_under_xla(scoring, method, n_group,
                                                                       topk_group):
    """The fixed-shape decode path (one token per row) against the slow definition, eager and
    XLA-compiled, and against the dispatch path."""
    layer = MoE(16, 8, 8, 1, 3, n_group, topk_group, 2.5 if scoring == "sigmoid" else 1.0,
                scoring == "sigmoid", scoring, method, initializer_range=0.3)
    if layer.e_score_correction_bias is not None:
        layer.e_score_correction_bias.assign(np.random.default_rng(1).normal(size=8) * 0.3)
    x = np.random.default_rng(5).normal(size=(4, 1, 16)).astype(np.float32)    # (B, 1, D)
    want = _dense_reference(layer, x)
    eager = layer(x, gather_experts=True).numpy()
    xla = tf.function(lambda v: layer(v, gather_experts=True), jit_compile=True)(tf.constant(x)).numpy()
    for got in (eager, xla):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eager, layer(x).numpy(), rtol=1e-5, atol=1e-6)
