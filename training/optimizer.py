"""AdamW with decoupled weight decay and a linear-warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from configs.training import TrainerConfig
from model import ops


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


def clip_scale(gnorm, clip_norm: float):
    """The factor tf.clip_by_global_norm multiplies every gradient by (same expression, same fp32
    rounding): clip_norm · min(1/‖g‖, 1/clip_norm); None when clipping is off."""
    if clip_norm <= 0:
        return None
    return clip_norm * tf.minimum(1.0 / gnorm, 1.0 / clip_norm)


class AdamW(keras.optimizers.AdamW):
    """keras AdamW whose update takes gradients already all-reduced by the engine, and runs as one
    fused kernel per variable.

    The engine sums gradients across replicas itself so it can clip and NaN-check the *global*
    gradient once; Keras' replica-context all-reduce would then sum them a second time.

    The update, per variable: with seekline's ops (model/ops, CPU, fp32 variables) one
    SeeklineApplyAdamW — the clip scale, the decoupled decay and Adam in a single in-place pass;
    otherwise Keras' decay (matrices only), the scaled gradient and TF's fused ResourceApplyAdam.
    Both are Keras' AdamW up to fp32 rounding (optimizer_test.py).
    """

    _grad_scale = None   # set by apply_scaled for the duration of one apply

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)

    def apply_scaled(self, grads, variables, grad_scale=None):
        """apply_gradients with every gradient multiplied by the scalar grad_scale (the global-norm
        clip factor, clip_scale) — folded into the fused kernel instead of one Mul per variable."""
        self._grad_scale = grad_scale
        try:
            self.apply_gradients(zip(grads, variables, strict=True))
        finally:
            self._grad_scale = None

    def _fuses(self, variable) -> bool:
        """Whether `variable`'s update runs as SeeklineApplyAdamW (decided at trace time)."""
        return not self.amsgrad and tf.as_dtype(variable.dtype) == tf.float32 and ops.active("adamw")

    def _apply_weight_decay(self, variables):
        # the fused kernel applies the decay of the variables it updates itself
        return super()._apply_weight_decay([v for v in variables if not self._fuses(v)])

    def _decay_coefficient(self, variable, learning_rate, dtype):
        if self.weight_decay is None or not self._use_weight_decay(variable):
            return tf.zeros([], dtype)
        return tf.cast(learning_rate, dtype) * tf.cast(self.weight_decay, dtype)

    def update_step(self, gradient, variable, learning_rate):
        """One variable's AdamW step: m_t = β1·m + (1−β1)·g, v_t likewise with g²,
        var −= lr·√(1−β2^t)/(1−β1^t) · m_t/(√v_t + ε), after the decoupled decay var −= lr·wd·var.

        Keras' own update is about ten elementwise ops per variable, each a full read (and most a
        write) of a variable-sized tensor. TF's ResourceApplyAdam reads g, m, v and the variable once
        and writes them in place; SeeklineApplyAdamW also folds in the clip scale and the decay
        (a Mul, and a Mul + AssignSub, per variable before).
        """
        dtype = variable.dtype
        fused = self._fuses(variable)
        if self._grad_scale is not None and not (fused and not isinstance(gradient, tf.IndexedSlices)):
            scale = tf.cast(self._grad_scale, gradient.dtype)
            gradient = (tf.IndexedSlices(gradient.values * scale, gradient.indices, gradient.dense_shape)
                        if isinstance(gradient, tf.IndexedSlices) else gradient * scale)
        if fused and isinstance(gradient, tf.IndexedSlices):
            # sparse gradients take Keras' path; the decay _apply_weight_decay left to the kernel first
            variable.assign_sub(variable * self._decay_coefficient(variable, learning_rate, dtype))
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        lr = tf.cast(learning_rate, dtype)
        i = self._get_variable_index(variable)
        if fused:
            alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
            scale = tf.ones([], dtype) if self._grad_scale is None else tf.cast(self._grad_scale, dtype)
            ops.library().seekline_apply_adam_w(
                var=variable.handle, m=self._momentums[i].handle, v=self._velocities[i].handle,
                grad=tf.cast(gradient, dtype), alpha=alpha, decay=self._decay_coefficient(variable, lr, dtype),
                beta1=b1, beta2=b2, epsilon=tf.cast(self.epsilon, dtype), grad_scale=scale)
            return
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[i].handle, v=self._velocities[i].handle,
            beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step), lr=lr,
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
