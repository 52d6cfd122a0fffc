import numpy as np
import tensorflow as tf

from model.layers.attention_utils import MASK_VALUE, mask_bias, softmax_fp32


def test_mask_bias_causal_and_padding():
    q = tf.constant([[0, 1, 2]])
    k = tf.constant([[0, 1, 2, 3]])
    valid = tf.constant([[0, 1, 1, 1]])
    b = mask_bias(q, k, valid).numpy()[0, 0]
    want = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]], bool)   # key 0 is padding
    np.testing.assert_array_equal(b == 0, want)
    assert (b[~want] == MASK_VALUE).all()


def test_fully_masked_row_is_finite():
    p = softmax_fp32(tf.zeros([1, 1, 1, 3]), tf.fill([1, 1, 1, 3], MASK_VALUE), tf.float32).numpy()
    assert np.isfinite(p).all()


def test_segment_mask_bias_is_block_diagonal_causal():
    from model.layers.attention_utils import segment_mask_bias
    seg = tf.constant([[1, 1, 2, 2, 2, 0]])
    b = segment_mask_bias(seg).numpy()
    assert b.shape == (1, 1, 6, 6) and b.dtype == np.float32
    # by hand: doc 1 = keys 0..1, doc 2 = keys 2..4 (causal inside each), padding query sees nothing
    want = np.array([[1, 0, 0, 0, 0, 0],
                     [1, 1, 0, 0, 0, 0],
                     [0, 0, 1, 0, 0, 0],
                     [0, 0, 1, 1, 0, 0],
                     [0, 0, 1, 1, 1, 0],
                     [0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(b[0, 0] == 0, want)
    assert (b[0, 0][~want] == MASK_VALUE).all()
    # a padding query's row is fully masked yet its softmax is finite (uniform)
    p = softmax_fp32(tf.zeros([1, 1, 6, 6]), b, tf.float32).numpy()
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0, 0, 5], np.full(6, 1 / 6), rtol=1e-6)


def test_mask_bias_segments_and_key_valid_combine():
    q = tf.constant([[0, 1, 2]])
    valid = tf.constant([[0, 1, 1]])          # key 0 invalid even though it is in segment 1
    seg = tf.constant([[1, 1, 2]])
    b = mask_bias(q, q, valid, seg, seg).numpy()[0, 0]
    np.testing.assert_array_equal(b == 0, np.array([[0, 0, 0], [0, 1, 0], [0, 0, 1]], bool))
    import pytest
    with pytest.raises(ValueError, match="both"):
        mask_bias(q, q, valid, seg, None)


def test_positions_from_segments_restart_per_document():
    from model.layers.attention_utils import positions_from_segments
    seg = tf.constant([[1, 1, 1, 2, 2, 3, 0, 0],
                       [1, 1, 1, 1, 1, 1, 1, 1]])
    want = [[0, 1, 2, 0, 1, 0, 0, 0],
            [0, 1, 2, 3, 4, 5, 6, 7]]
    np.testing.assert_array_equal(positions_from_segments(seg).numpy(), want)
    # a second row starting with the segment id the first row ended with still restarts at 0
    seg = tf.constant([[1, 2, 2], [2, 2, 3]])
    np.testing.assert_array_equal(positions_from_segments(seg).numpy(), [[0, 0, 1], [0, 1, 0]])
