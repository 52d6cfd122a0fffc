"""RMSNorm: x / sqrt(mean(x²) + eps) · w, normalised in float32 (as DeepSeek/transformers do)."""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="seekline")
class RMSNorm(keras.layers.Layer):
    def __init__(self, dim: int, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.eps = eps
        self.weight = self.add_weight(shape=(dim,), name="weight", initializer="ones")
        self.built = True

    def call(self, x):
        # x: (..., dim). Normalise in fp32 so bf16 activations do not lose the small variances.
        dtype = x.dtype
        xf = tf.cast(x, tf.float32)
        var = tf.reduce_mean(tf.square(xf), axis=-1, keepdims=True)
        y = tf.cast(xf * tf.math.rsqrt(var + self.eps), dtype)
        return tf.cast(self.weight, dtype) * y

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "eps": self.eps}
