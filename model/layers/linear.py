"""Bias-optional dense projection with weights created eagerly (shapes come from the config).

keras.layers.Dense would do, but creating the kernel in __init__ lets a model be built — and a
checkpoint assigned — without a dummy forward pass, and keeps variable names short and stable.
Kernel layout is (in, out); HF checkpoints store (out, in) and the importer transposes.
"""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="seekline")
class Linear(keras.layers.Layer):
    def __init__(self, in_features: int, out_features: int, use_bias: bool = False,
                 initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.initializer_range = initializer_range
        self.kernel = self.add_weight(
            shape=(in_features, out_features), name="kernel",
            initializer=keras.initializers.RandomNormal(stddev=initializer_range))
        self.bias = (self.add_weight(shape=(out_features,), name="bias", initializer="zeros")
                     if use_bias else None)
        self.built = True

    def call(self, x):
        # x: (..., in) -> (..., out)
        y = tf.matmul(x, tf.cast(self.kernel, x.dtype)) if x.shape.rank == 2 else \
            tf.tensordot(x, tf.cast(self.kernel, x.dtype), axes=[[-1], [0]])
        if self.bias is not None:
            y = y + tf.cast(self.bias, x.dtype)
        return y

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features,
                "out_features": self.out_features, "use_bias": self.use_bias,
                "initializer_range": self.initializer_range}
