"""RMSNorm: x / sqrt(mean(x²) + eps) · w, normalised in float32 (as DeepSeek/transformers do)."""
from __future__ import annotations

import keras

from model.ops.rms_norm import rms_norm


@keras.saving.register_keras_serializable(package="seekline")
class RMSNorm(keras.layers.Layer):
    def __init__(self, dim: int, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.eps = eps
        self.weight = self.add_weight(shape=(dim,), name="weight", initializer="ones")
        self.built = True

    def call(self, x):
        # x: (..., dim). Normalised in fp32 so bf16 activations do not lose the small variances;
        # one fused kernel when seekline's custom ops are active (model/ops), else pure TF.
        return rms_norm(x, self.weight, self.eps)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "eps": self.eps}
