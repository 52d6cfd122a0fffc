"""AdamW with decoupled weight decay and a linear-warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from configs.training import TrainerConfig


@keras.saving.register_keras_serializable(package="seekline")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(s) = peak·s/warmup for s < warmup, then cosine from peak to min_ratio·peak at `total`.

    `s` is the optimizer's update count (0-based: the first update uses lr(0) = 0 when
    warmup > 0, as torch's LambdaLR warmups do; we use (s+1)/warmup so the first step learns).
    """

    def __init__(self, peak: float, warmup: int, total: int, min_ratio: float):
        self.peak, self.warmup, self.total, self.min_ratio = float(peak), int(warmup), int(total), float(min_ratio)

    def __call__(self, step):
        s = tf.cast(step, tf.float32)
        warm = self.peak * (s + 1.0) / float(max(self.warmup, 1))
        span = float(max(self.total - self.warmup, 1))
        progress = tf.clip_by_value((s - self.warmup) / span, 0.0, 1.0)
        cos = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(s < self.warmup, warm, self.peak * cos)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total, "min_ratio": self.min_ratio}


def lr_at(cfg: TrainerConfig, step: int) -> float:
    """Plain-Python value of the schedule (reports, tests)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / max(cfg.warmup_steps, 1)
    progress = min(max((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class AdamW(keras.optimizers.AdamW):
    """keras AdamW whose update takes gradients already all-reduced by the engine.

    The engine sums gradients across replicas itself so it can clip and NaN-check the *global*
    gradient once; Keras' replica-context all-reduce would then sum them a second time.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)

    def update_step(self, gradient, variable, learning_rate):
        """Adam's update as TF's fused kernel: m, v and the variable in one pass.

        Keras' update is about ten elementwise ops per variable, each a full read (and most a
        write) of a variable-sized tensor; ResourceApplyAdam reads g, m, v and the variable once
        and writes them in place — the same update (m_t = β1·m + (1−β1)·g, v_t likewise with g²,
        var −= lr·√(1−β2^t)/(1−β1^t) · m_t/(√v_t + ε)), equal to Keras' up to fp32 rounding.
        The decoupled weight decay stays Keras' (applied before this, matrices only).
        """
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        i = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[i].handle, v=self._velocities[i].handle,
            beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step), lr=tf.cast(learning_rate, dtype),
            beta1=b1, beta2=b2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
            use_locking=False)


def build_optimizer(cfg: TrainerConfig, variables) -> AdamW:
    schedule = WarmupCosine(cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    opt = AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay, beta_1=cfg.beta1,
                beta_2=cfg.beta2, epsilon=cfg.eps)
    # Only matrices decay; norm gains and biases (rank 1) do not, as GPT/DeepSeek recipes do.
    opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
    opt.build(variables)  # slots exist before a checkpoint restore assigns them
    return opt
