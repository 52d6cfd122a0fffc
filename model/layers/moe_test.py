import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.layers.moe import EXPERT_PROJECTIONS, MoE, dispatch_plan, route

# The pure-TF expert loops, and the grouped-matmul custom op when its library is built.
LOOPS = ["unrolled", "while",
         pytest.param("grouped", marks=pytest.mark.skipif(not ops.available(), reason="custom ops not built"))]


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


def _lora_weights(layer):
    """The routed stacks with their adapters folded in by the LoRA formula W + s·A·B (float64
    numpy, per expert), or the plain stacks without adapters."""
    out = []
    for p in EXPERT_PROJECTIONS:
        w = getattr(layer, f"experts_{p}").numpy().astype(np.float64)
        if layer.expert_lora(p) is not None:
            a, b = (v.numpy().astype(np.float64) for v in layer.expert_lora(p))
            w = w + layer.expert_lora_scale * np.stack([a[e] @ b[e] for e in range(w.shape[0])])
        out.append(w)
    return out


def _dense_reference(layer, x):
    """Every expert on every token (numpy), masked by the routing — the slow definition."""
    x2 = x.reshape(-1, x.shape[-1])
    r = layer.router(tf.constant(x2))
    idx, w = r.topk_idx.numpy(), r.topk_weight.numpy()
    silu = lambda z: z / (1 + np.exp(-z))  # noqa: E731
    g, u, d = _lora_weights(layer)
    out = np.zeros_like(x2)
    for e in range(g.shape[0]):
        y = (silu(x2 @ g[e]) * (x2 @ u[e])) @ d[e]
        coef = ((idx == e) * w).sum(-1, keepdims=True)
        out += coef * y
    se = layer.shared_experts
    out += (silu(x2 @ se.gate_proj.kernel.numpy()) * (x2 @ se.up_proj.kernel.numpy())) @ se.down_proj.kernel.numpy()
    return out.reshape(x.shape)


@pytest.mark.parametrize("expert_loop", LOOPS)
@pytest.mark.parametrize("scoring,method,n_group,topk_group", [
    ("sigmoid", "noaux_tc", 4, 2), ("softmax", "greedy", 1, 1), ("softmax", "group_limited_greedy", 2, 1)])
def test_moe_matches_dense_reference(scoring, method, n_group, topk_group, expert_loop):
    layer = MoE(16, 8, 8, 1, 2, n_group, topk_group, 2.5 if scoring == "sigmoid" else 1.0,
                scoring == "sigmoid", scoring, method, initializer_range=0.3, expert_loop=expert_loop)
    if layer.e_score_correction_bias is not None:
        layer.e_score_correction_bias.assign(np.random.default_rng(1).normal(size=8) * 0.3)
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), _dense_reference(layer, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("expert_loop", LOOPS)
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


# ---------------------------------------------------------------------- routed-expert LoRA
def _adapted(expert_loop="auto", projections=EXPERT_PROJECTIONS, rank=3, alpha=6.0, seed=7):
    """A sigmoid/noaux_tc MoE (E=8, K=3) with expert adapters whose B is non-zero."""
    layer = MoE(16, 8, 8, 1, 3, 4, 2, 2.5, True, "sigmoid", "noaux_tc", initializer_range=0.3,
                expert_loop=expert_loop)
    layer.e_score_correction_bias.assign(np.random.default_rng(1).normal(size=8) * 0.3)
    layer.enable_expert_lora(rank, alpha, projections=projections, seed=seed)
    rng = np.random.default_rng(seed)
    for p in layer.expert_lora_projections:
        layer.expert_lora(p)[1].assign((0.3 * rng.standard_normal(layer.expert_lora(p)[1].shape)).astype(np.float32))
    return layer


def test_fresh_expert_adapters_change_nothing_and_freeze_the_stacks():
    layer = MoE(16, 8, 8, 1, 3, 4, 2, 2.5, True, "sigmoid", "noaux_tc", initializer_range=0.3)
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    before = layer(x).numpy()
    layer.enable_expert_lora(4, 8.0, seed=0)
    assert layer.expert_lora_projections == EXPERT_PROJECTIONS and layer.expert_lora_scale == 2.0
    for p, (n_in, n_out) in zip(EXPERT_PROJECTIONS, [(16, 8), (16, 8), (8, 16)], strict=True):
        a, b = layer.expert_lora(p)
        assert a.shape == (8, n_in, 4) and b.shape == (8, 4, n_out)
        assert np.abs(a.numpy()).max() <= 1 / np.sqrt(n_in) and np.abs(a.numpy()).max() > 0.5 / np.sqrt(n_in)
        assert not b.numpy().any() and a.trainable and b.trainable
        assert not getattr(layer, f"experts_{p}").trainable
    # gate and up have the same shape: their A must still be different draws
    assert not np.array_equal(layer.expert_lora("gate")[0].numpy(), layer.expert_lora("up")[0].numpy())
    np.testing.assert_array_equal(layer(x).numpy(), before)             # B = 0: W + s·A·0 == W
    with pytest.raises(ValueError, match="already attached"):
        layer.enable_expert_lora(2, 1.0)
    other = MoE(16, 8, 8, 1, 3, 4, 2, 2.5, True, "sigmoid", "noaux_tc")
    with pytest.raises(ValueError, match="subset"):
        other.enable_expert_lora(2, 1.0, projections=("gate", "proj"))
    with pytest.raises(ValueError, match="no routed-expert LoRA"):
        other.merge_expert_lora()


@pytest.mark.parametrize("expert_loop", LOOPS)
@pytest.mark.parametrize("graph", [False, True])
def test_expert_adapters_in_every_expert_path_match_the_lora_formula(expert_loop, graph):
    layer = _adapted(expert_loop)
    x = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    want = _dense_reference(layer, x)
    plain = MoE.from_config(layer.get_config())
    for dst, src in zip(plain.weights, [v for v in layer.weights if "lora" not in v.name], strict=True):
        dst.assign(src)                                                  # the base weights alone
    assert np.abs(plain(x).numpy() - want).max() > 1e-2                 # the adapters matter
    fn = tf.function(layer) if graph else layer
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), want, rtol=1e-4, atol=1e-5)
    # the fixed-shape decode path, eager and under XLA, sees the same adapted weights
    x1 = x.reshape(-1, 1, 16)                                            # (B·T, 1, D)
    gathered = tf.function(lambda v: layer(v, gather_experts=True), jit_compile=graph)(tf.constant(x1))
    np.testing.assert_allclose(gathered.numpy().reshape(x.shape), want, rtol=1e-4, atol=1e-5)


def test_unrolled_and_while_loops_agree_with_expert_adapters():
    a, b = _adapted("unrolled", projections=("up", "down")), _adapted("while", projections=("up", "down"))
    assert a.expert_lora_projections == ("up", "down") and a.expert_lora("gate") is None
    b.set_weights(a.get_weights())                   # same base and adapters, other loop
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 7, 16)).astype(np.float32))
    np.testing.assert_allclose(tf.function(a)(x).numpy(), tf.function(b)(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("expert_loop", LOOPS)
def test_expert_adapter_gradients_reach_chosen_experts_only(expert_loop):
    layer = _adapted(expert_loop)
    x = tf.constant(np.random.default_rng(3).normal(size=(1, 2, 16)).astype(np.float32))

    @tf.function
    def fwd_bwd(x):
        with tf.GradientTape() as tape:
            y, r = layer(x, return_router=True)
            loss = tf.reduce_sum(y ** 2)
        return r, tape.gradient(loss, [v for p in EXPERT_PROJECTIONS for v in layer.expert_lora(p)])
    r, grads = fwd_bwd(x)
    used = set(r.topk_idx.numpy().ravel())
    assert len(used) < 8
    for g in grads:
        for e in range(8):
            assert (np.abs(g.numpy()[e]).sum() > 0) == (e in used)


def test_merge_folds_in_float64_once_and_equals_the_unmerged_forward():
    layer = _adapted("unrolled")
    x = np.random.default_rng(5).normal(size=(3, 4, 16)).astype(np.float32)
    adapted = layer(x).numpy()
    want = [w.astype(np.float32) for w in _lora_weights(layer)]       # W + s·A·B in float64, rounded once
    n_weights = len(layer.weights)
    layer.merge_expert_lora()
    for p, w in zip(EXPERT_PROJECTIONS, want, strict=True):
        np.testing.assert_array_equal(getattr(layer, f"experts_{p}").numpy(), w)
        assert getattr(layer, f"experts_{p}").trainable                # trainability restored
    assert not layer.has_expert_lora and len(layer.weights) == n_weights - 6
    np.testing.assert_allclose(layer(x).numpy(), adapted, rtol=0, atol=1e-5)


def _op_types(layer, x, **kw):
    graph = tf.function(lambda v: layer(v, **kw)).get_concrete_function(x).graph
    return sorted(op.type for op in graph.get_operations())


@pytest.mark.parametrize("expert_loop", LOOPS)
def test_no_adapter_path_has_no_extra_ops(expert_loop):
    layer = MoE(16, 8, 8, 1, 3, 4, 2, 2.5, True, "sigmoid", "noaux_tc", expert_loop=expert_loop)
    x = tf.TensorSpec([2, 5, 16], tf.float32)
    x1 = tf.TensorSpec([4, 1, 16], tf.float32)
    plain = (_op_types(layer, x), _op_types(layer, x1, gather_experts=True))
    assert all(a is b for a, b in zip(layer._expert_weights(), (layer.experts_gate, layer.experts_up,
                                                                layer.experts_down), strict=True))
    layer.enable_expert_lora(2, 4.0, projections=("down",))
    adapted = (_op_types(layer, x), _op_types(layer, x1, gather_experts=True))
    assert all(a.count("Einsum") == 1 and len(a) > len(p) for a, p in zip(adapted, plain, strict=True))
    layer.remove_expert_lora()
    assert (_op_types(layer, x), _op_types(layer, x1, gather_experts=True)) == plain
    assert all("Einsum" not in p for p in plain)
