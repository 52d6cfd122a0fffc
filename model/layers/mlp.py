"""SwiGLU feed-forward: down(silu(gate·x) ⊙ up·x). Used for dense layers and shared experts."""
from __future__ import annotations

import keras

from model.layers.linear import Linear
from model.ops.swiglu import swiglu


@keras.saving.register_keras_serializable(package="seekline")
class SwiGLU(keras.layers.Layer):
    def __init__(self, hidden_size: int, intermediate_size: int, initializer_range: float = 0.02,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.initializer_range = initializer_range
        self.gate_proj = Linear(hidden_size, intermediate_size, initializer_range=initializer_range,
                                name="gate_proj")
        self.up_proj = Linear(hidden_size, intermediate_size, initializer_range=initializer_range,
                              name="up_proj")
        self.down_proj = Linear(intermediate_size, hidden_size, initializer_range=initializer_range,
                                name="down_proj")
        self.built = True

    def call(self, x):
        # x: (..., D) -> (..., D)
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "initializer_range": self.initializer_range}
