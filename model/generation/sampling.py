"""Next-token selection from logits: greedy, temperature, top-k, top-p (nucleus)."""
from __future__ import annotations

import tensorflow as tf

NEG_INF = -1e30


def filter_top_k(logits, k: int):
    """Keep the k largest logits per row (ties at the k-th value are kept). logits (B, V)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = tf.math.top_k(logits, k=k).values[:, -1:]                         # (B, 1)
    return tf.where(logits < kth, NEG_INF, logits)


def filter_top_p(logits, p: float):
    """Keep the smallest set of tokens whose probability mass reaches p (always >= 1 token)."""
    if p >= 1.0:
        return logits
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)         # (B, V)
    probs = tf.nn.softmax(sorted_logits, axis=-1)
    # mass strictly before each token; a token is kept if that mass is still < p.
    before = tf.cumsum(probs, axis=-1, exclusive=True)
    keep = before < p
    # smallest kept logit per row = threshold
    thresh = tf.reduce_min(tf.where(keep, sorted_logits, tf.fill(tf.shape(sorted_logits), 1e30)),
                           axis=-1, keepdims=True)
    return tf.where(logits < thresh, NEG_INF, logits)


def select_next(logits, temperature: float, top_k: int, top_p: float, seed):
    """logits (B, V) -> token ids (B,) int32. seed: (2,) int32 tensor for stateless sampling."""
    logits = tf.cast(logits, tf.float32)
    if temperature == 0.0:
        return tf.cast(tf.argmax(logits, axis=-1), tf.int32)
    logits = logits / temperature
    logits = filter_top_k(logits, top_k)
    logits = filter_top_p(logits, top_p)
    return tf.cast(tf.random.stateless_categorical(logits, 1, seed=seed)[:, 0], tf.int32)
