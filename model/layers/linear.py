"""Bias-optional dense projection with weights created eagerly (shapes come from the config),
with an optional LoRA adapter.

keras.layers.Dense would do, but creating the kernel in __init__ lets a model be built — and a
checkpoint assigned — without a dummy forward pass, and keeps variable names short and stable.
Kernel layout is (in, out); HF checkpoints store (out, in) and the importer transposes.

LoRA (Hu et al. 2021; the PEFT conventions, so adapters interchange with PEFT):
    y = x·W (+ b) + s · dropout(x)·A·B,   A (in, r), B (r, out),   s = alpha / r
(rsLoRA: s = alpha / sqrt(r)). A starts as PEFT's kaiming_uniform(a=√5) on its (r, in) weight,
i.e. U(−1/√in, 1/√in); B starts at zero, so a fresh adapter leaves the output unchanged. The
base kernel and bias are frozen while an adapter is attached; dropout only acts in training.
`merge_lora` folds s·A·B into the kernel and removes the adapter. Model-level handling (which
modules, PEFT files) is model/lora.py.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf


def _project(x, w):
    # x: (..., in), w: (in, out) -> (..., out)
    w = tf.cast(w, x.dtype)
    return tf.matmul(x, w) if x.shape.rank == 2 else tf.tensordot(x, w, axes=[[-1], [0]])


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
        self.lora_a = None          # (in, r) when an adapter is attached
        self.lora_b = None          # (r, out)
        self.lora_rank = 0
        self.lora_alpha = 0.0
        self.lora_dropout = 0.0
        self.lora_scale = 0.0
        self._lora_seed = None
        self._base_trainable: tuple[bool, ...] = ()
        self.built = True

    # ------------------------------------------------------------------ LoRA
    @property
    def has_lora(self) -> bool:
        return self.lora_a is not None

    def enable_lora(self, rank: int, alpha: float, dropout: float = 0.0,
                    use_rslora: bool = False, seed: int | None = None) -> None:
        """Attach a rank-`rank` adapter (A kaiming-uniform as PEFT, B zeros) and freeze kernel/bias.

        seed: for A's initialiser and the dropout stream (None: Keras' global seed state).
        """
        if self.has_lora:
            raise ValueError(f"{self.name}: a LoRA adapter is already attached")
        if int(rank) != rank or rank < 1:
            raise ValueError(f"{self.name}: LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{self.name}: LoRA dropout must be in [0, 1), got {dropout!r}")
        rank = int(rank)
        # PEFT: kaiming_uniform_(A.weight (r, in), a=√5) -> gain √(2/(1+5)), bound gain·√(3/in) = 1/√in.
        bound = 1.0 / math.sqrt(self.in_features)
        locked = self._tracker.locked  # Keras may lock a built layer's lists; adding is deliberate
        self._tracker.unlock()
        try:
            self.lora_a = self.add_weight(
                shape=(self.in_features, rank), name="lora_A",
                initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed))
            self.lora_b = self.add_weight(shape=(rank, self.out_features), name="lora_B",
                                          initializer="zeros")
            self._lora_seed = (keras.random.SeedGenerator(seed, name="lora_dropout_seed")
                               if dropout > 0 else None)
        finally:
            if locked:
                self._tracker.lock()
        base = [self.kernel] + ([self.bias] if self.bias is not None else [])
        self._base_trainable = tuple(v.trainable for v in base)
        for v in base:
            v.trainable = False
        self.lora_rank, self.lora_alpha, self.lora_dropout = rank, float(alpha), float(dropout)
        self.lora_scale = float(alpha) / (math.sqrt(rank) if use_rslora else rank)

    def effective_kernel(self):
        """(in, out) kernel including the adapter: W + s·A·B (W itself when no adapter). For code
        that uses the kernel directly instead of calling the layer (MLA's absorbed decode)."""
        if not self.has_lora:
            return self.kernel
        return self.kernel + self.lora_scale * tf.matmul(self.lora_a, self.lora_b)

    def merge_lora(self) -> None:
        """W <- W + s·A·B (computed in float64, rounded once to the kernel dtype), then remove the
        adapter and restore the kernel/bias trainability it had before `enable_lora`."""
        if not self.has_lora:
            raise ValueError(f"{self.name}: no LoRA adapter to merge")
        w = np.asarray(self.kernel.numpy(), np.float64)
        delta = (np.asarray(self.lora_a.numpy(), np.float64) @ np.asarray(self.lora_b.numpy(), np.float64))
        self.kernel.assign((w + self.lora_scale * delta).astype(self.kernel.dtype))
        self.remove_lora()

    def remove_lora(self) -> None:
        """Drop the adapter without merging it (the layer computes x·W (+ b) again)."""
        if not self.has_lora:
            return
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            for v in (self.lora_a, self.lora_b):
                self._tracker.untrack(v)
            if self._lora_seed is not None:
                self._tracker.untrack(self._lora_seed)
            self.lora_a = self.lora_b = self._lora_seed = None
        finally:
            if locked:
                self._tracker.lock()
        base = [self.kernel] + ([self.bias] if self.bias is not None else [])
        for v, t in zip(base, self._base_trainable, strict=True):
            v.trainable = t
        self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_scale = 0, 0.0, 0.0, 0.0

    # ------------------------------------------------------------------ forward
    def call(self, x, training=None):
        # x: (..., in) -> (..., out)
        y = _project(x, self.kernel)
        if self.bias is not None:
            y = y + tf.cast(self.bias, x.dtype)
        if self.lora_a is not None:
            h = x
            if training and self._lora_seed is not None:
                h = keras.random.dropout(h, self.lora_dropout, seed=self._lora_seed)
            delta = _project(_project(h, self.lora_a), self.lora_b)         # (..., r) -> (..., out)
            y = y + tf.cast(self.lora_scale, x.dtype) * delta
        return y

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features,
                "out_features": self.out_features, "use_bias": self.use_bias,
                "initializer_range": self.initializer_range}
