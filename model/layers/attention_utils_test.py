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
