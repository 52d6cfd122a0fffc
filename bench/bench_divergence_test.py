"""bench_model.py's explanation of a large logit difference with agreeing greedy tokens: where
the two sides part, and whether a near-tied MoE routing choice is why (pure numpy, < 1 s)."""
import bench_model as bm
import numpy as np


def test_first_divergence_finds_the_position_where_the_sides_part():
    a = np.zeros((6, 4))
    b = a.copy()
    b[:, 0] = [1e-7, 2e-6, 1e-6, 0.4, 1e-6, 0.2]
    d = bm.first_divergence(a, b, tol=1e-3)
    assert d["first_position"] == 3 and d["positions_over_tol"] == 2 and d["positions"] == 6
    assert d["max_before_first"] == 2e-6 and d["max_at_first"] == 0.4
    same = bm.first_divergence(a, a + 1e-6)
    assert same["first_position"] is None and same["max_at_first"] is None
    assert bm.first_divergence(a, a + 1.0)["max_before_first"] == 0.0


def test_routing_margin_is_the_gap_between_last_chosen_and_first_rejected():
    scores = np.array([[0.9, 0.5, 0.5 - 1e-7, 0.1],
                       [0.9, 0.7, 0.3, 0.1]])
    m = bm.routing_margin(scores, None, top_k=2)
    assert np.allclose(m, [1e-7, 0.4])
    # the correction bias steers selection, so it counts in the margin
    assert np.allclose(bm.routing_margin(scores, np.array([0, 0, 0.2, 0]), top_k=2), [0.2 - 1e-7, 0.2])


def test_routing_margin_sees_near_tied_groups():
    # 2 groups of 2 experts, keep 1 group, top-1 expert. Group scores (sum of top-2):
    # 1.0 vs 1.0 - 1e-6: the group choice is the near-tie, the expert choice inside is not.
    scores = np.array([[0.9, 0.1, 0.5, 0.5 - 1e-6]])
    m = bm.routing_margin(scores, None, top_k=1, n_group=2, topk_group=1, topk_method="noaux_tc")
    assert np.allclose(m, [1e-6])
    assert np.allclose(bm.routing_margin(scores, None, top_k=1, topk_method="greedy"), [0.4])


def test_explanation_says_whether_routing_explains_it():
    div = {"tol": 1e-3, "positions": 1024, "positions_over_tol": 40, "first_position": 700,
           "max_before_first": 1.9e-6, "max_at_first": 0.47}
    near = bm.explain_divergence(div, {"layer": 5, "margin": 3e-8})
    assert "up to position 700" in near and "layer 5 is a near-tie (margin 3.0e-08)" in near
    far = bm.explain_divergence(div, {"layer": 2, "margin": 0.01})
    assert "no routing near-tie at position 700" in far and "not a routing flip" in far
    assert "agree within" in bm.explain_divergence({**div, "first_position": None}, None)
