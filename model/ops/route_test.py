"""SeeklineRouteTopK against the pure-TF router (tf.math.top_k over the group-masked row): the same
expert ids in the same order, for V3's noaux_tc (top-2 group sums), V2's group-limited greedy
(group max), plain top-k; ties, -inf and odd shapes."""
import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.layers.moe import _route_top_k_reference, route

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

MODES = {"noaux_tc": "top2_sum", "group_limited_greedy": "max", "greedy": "none"}


def _op(choice, top_k, n_group, topk_group, method):
    grouped = method != "greedy" and n_group > 1
    return ops.library().seekline_route_top_k(choice, top_k=top_k, n_group=n_group, topk_group=topk_group,
                                              group_mode=MODES[method] if grouped else "none")


CASES = [  # (N, E, top_k, n_group, topk_group, method)
    (37, 16, 4, 4, 2, "noaux_tc"),     # the small preset
    (9, 256, 8, 8, 4, "noaux_tc"),     # DeepSeek-V3
    (11, 64, 6, 8, 3, "group_limited_greedy"),   # DeepSeek-V2-Lite style
    (5, 64, 6, 1, 1, "greedy"),
    (3, 8, 8, 1, 1, "greedy"),         # k = E
    (4, 12, 3, 3, 1, "noaux_tc"),      # one group kept: all k from it
    (0, 16, 4, 4, 2, "noaux_tc"),
]


@pytest.mark.parametrize("n,e,k,ng,kg,method", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_same_experts_in_the_same_order_as_top_k(n, e, k, ng, kg, method, ties):
    rng = np.random.default_rng(n * e + k)
    x = rng.normal(size=(n, e)).astype(np.float32)
    if ties:                        # few distinct values: many equal scores within and across groups
        x = np.round(x * 2) / 2
    choice = tf.constant(x)
    got = _op(choice, k, ng, kg, method).numpy()
    want = _route_top_k_reference(choice, k, ng, kg, method, method != "greedy" and ng > 1).numpy()
    assert got.dtype == np.int32 and got.shape == (n, k)
    np.testing.assert_array_equal(got, want)


def test_minus_infinity_and_all_equal_rows():
    x = np.zeros((3, 16), np.float32)
    x[1, :8] = -np.inf                 # two whole groups masked
    x[2, ::3] = -np.inf
    for method, ng, kg in (("noaux_tc", 4, 2), ("group_limited_greedy", 4, 3), ("greedy", 1, 1)):
        choice = tf.constant(x)
        np.testing.assert_array_equal(_op(choice, 4, ng, kg, method).numpy(),
                                      _route_top_k_reference(choice, 4, ng, kg, method, ng > 1).numpy())


def test_route_gives_the_same_output_with_the_op_on_and_off():
    rng = np.random.default_rng(3)
    logits, bias = tf.constant(rng.normal(size=(50, 16)).astype(np.float32)), tf.constant(rng.normal(size=16) * 0.1,
                                                                                        tf.float32)
    kw = dict(top_k=4, n_group=4, topk_group=2, scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
              routed_scaling_factor=2.5)
    on = route(logits, bias, **kw)
    with ops.disabled():
        off = route(logits, bias, **kw)
    np.testing.assert_array_equal(on.topk_idx.numpy(), off.topk_idx.numpy())
    np.testing.assert_array_equal(on.topk_weight.numpy(), off.topk_weight.numpy())


@pytest.mark.parametrize("kw,match", [
    (dict(top_k=17, n_group=1, topk_group=1, group_mode="none"), "top_k 17 > number of experts 16"),
    (dict(top_k=4, n_group=5, topk_group=2, group_mode="top2_sum"), "not a multiple of n_group 5"),
    (dict(top_k=4, n_group=4, topk_group=5, group_mode="max"), "topk_group 5 > n_group 4"),
    (dict(top_k=4, n_group=16, topk_group=4, group_mode="top2_sum"), "at least 2 experts per group"),
])
def test_bad_attributes_are_errors(kw, match):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        ops.library().seekline_route_top_k(tf.zeros([2, 16]), **kw)


def test_no_gradient_and_static_shape():
    x = tf.Variable(tf.random.normal([6, 16]))
    with tf.GradientTape() as tape:
        r = route(x, None, top_k=4, n_group=4, topk_group=2, scoring_func="sigmoid", topk_method="noaux_tc",
                  norm_topk_prob=True, routed_scaling_factor=1.0)
        loss = tf.reduce_sum(r.topk_weight)
    assert tape.gradient(loss, x) is not None        # through the gathered scores, not the ids

    @tf.function(input_signature=[tf.TensorSpec([None, 16])])
    def f(c):
        idx = ops.library().seekline_route_top_k(c, top_k=4, n_group=4, topk_group=2, group_mode="top2_sum")
        assert idx.shape.as_list() == [None, 4]
        return idx

    f.get_concrete_function()
