import numpy as np
import tensorflow as tf

from model.generation.sampling import NEG_INF, filter_top_k, filter_top_p, select_next


def test_top_k_keeps_k_largest():
    logits = tf.constant([[1.0, 5.0, 3.0, 4.0]])
    got = filter_top_k(logits, 2).numpy()
    np.testing.assert_array_equal(got[0] > NEG_INF / 2, [False, True, False, True])


def test_top_p_keeps_smallest_nucleus():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    logits = tf.constant(np.log(p)[None].astype(np.float32))
    keep = lambda q: (filter_top_p(logits, q).numpy()[0] > NEG_INF / 2).tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]      # 0.5 reaches p exactly
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.81) == [True, True, True, False]
    assert keep(0.01) == [True, False, False, False]     # never empty


def test_greedy_and_seeded_sampling():
    logits = tf.constant([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(select_next(logits, 0.0, 0, 1.0, [0, 0]).numpy(), [1, 0])
    a = select_next(logits, 1.0, 0, 1.0, tf.constant([7, 1])).numpy()
    b = select_next(logits, 1.0, 0, 1.0, tf.constant([7, 1])).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(select_next(logits, 1.0, 1, 1.0, tf.constant([3, 3])).numpy(), [1, 0])


def test_sampling_frequencies_follow_softmax():
    logits = tf.constant(np.log([[0.7, 0.2, 0.1]]).astype(np.float32).repeat(4000, 0))
    ids = select_next(logits, 1.0, 0, 1.0, tf.constant([1, 2])).numpy()
    freq = np.bincount(ids, minlength=3) / len(ids)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)
