"""The one training loop every phase shares.

A phase supplies a `Task` (how many loss targets a batch has, and the loss + metrics of one
micro-batch) and a model builder; the engine owns the rest: distribution, the compiled train
step with gradient accumulation, global-norm clipping, the non-finite guard, the aux-loss-free
routing-bias update, checkpoints with exact resume, held-out evaluation, TensorBoard, progress
and the loss curve.

Loss normalisation: every micro-batch loss is a mean over its targets; the engine weights it by
(its targets / the global step's targets), so the summed gradient is the token-weighted mean over
the whole global batch, whatever the split into replicas and micro-steps (1 worker × batch 8 and
2 workers × batch 4 give the same update).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from common.errors import UserError
from common.fileio import atomic_write_text
from configs.training import TrainerConfig
from model.balance import layer_loads, update_routing_bias
from training.checkpoint import CheckpointStore
from training.data import PackedData, eval_stream, train_stream
from training.metrics import MetricsLog, expert_load_stats, plot_loss_curve
from training.optimizer import build_optimizer, clip_scale, lr_at
from training.strategy import Runtime


class TrainingError(UserError):
    """The run cannot continue (e.g. too many non-finite steps in a row)."""


@dataclass
class StepOutput:
    loss: tf.Tensor                          # scalar: mean over this micro-batch's targets
    metrics: dict[str, tf.Tensor]            # scalar means, logged as-is
    routers: list = field(default_factory=list)   # RouterOutput per MoE layer
    token_mask: tf.Tensor | None = None      # (B, T): tokens that count as expert load


class Task(Protocol):
    def weight(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        """Number of loss targets in a micro-batch (float32 scalar)."""

    def compute(self, model, batch: dict[str, tf.Tensor], training: bool) -> StepOutput:
        """Forward + loss of one micro-batch {feature: (B, T)}."""


class BatchSource(Protocol):
    def batch(self, step: int) -> tuple[dict[str, np.ndarray] | None, dict[str, float]]:
        """The host batch of 0-based `step` and host metrics to log with it (see Trainer.fit_online)."""


@dataclass
class TrainResult:
    model: Any
    steps: int                               # the step the run ended at
    resumed_from: int | None
    history: list[dict]
    final_eval: dict[str, float]
    nonfinite_steps: int
    skipped_steps: int = 0                   # steps the batch source skipped (fit_online)


class Trainer:
    def __init__(self, cfg: TrainerConfig, runtime: Runtime, build_model: Callable[[], Any], task: Task,
                 output_dir: str, *, title: str = "training"):
        self.cfg, self.rt, self.task = cfg, runtime, task
        self.output_dir = output_dir
        self.total_steps = cfg.steps
        self.title = title
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        tf.random.set_seed(cfg.seed)
        with runtime.strategy.scope():
            self.model = build_model()
            self.variables = list(self.model.trainable_variables)
            self.optimizer = build_optimizer(cfg, self.variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
            self.rng = tf.random.Generator.from_seed(cfg.seed)
        self.store = CheckpointStore(os.path.join(output_dir, "checkpoints"), keep=cfg.keep_checkpoints,
                                     is_chief=runtime.is_chief, worker_index=runtime.worker_index,
                                     model=self.model, optimizer=self.optimizer, step=self.step,
                                     nonfinite=self.nonfinite, rng=self.rng)
        self.moe = self.model.moe_layers() if hasattr(self.model, "moe_layers") else []
        self._train_fn = None
        self._eval_fn = None

    # ------------------------------------------------------------------ compiled step
    def _replica_step(self, batch):
        """batch {feature: (accum, M, T)} on one replica -> globally reduced results."""
        cfg, task = self.cfg, self.task
        ctx = tf.distribute.get_replica_context()
        accum = cfg.grad_accum_steps
        micro = [{k: v[i] for k, v in batch.items()} for i in range(accum)]
        weights = [tf.cast(task.weight(m), tf.float32) for m in micro]
        global_w = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.add_n(weights))
        global_w = tf.maximum(global_w, 1.0)
        grads = None
        metric_sums: dict[str, tf.Tensor] = {}
        n_exp = self.model.cfg.n_routed_experts if self.moe else 0
        loads = [tf.zeros([n_exp], tf.float32) for _ in self.moe]
        tokens = tf.constant(0.0)
        # Micro-steps are unrolled in the graph: accumulation counts are small (they trade
        # memory for batch) and an unrolled loop keeps per-micro-batch shapes static.
        for m, w in zip(micro, weights, strict=True):
            with tf.GradientTape() as tape:
                out = task.compute(self.model, m, True)
                objective = tf.cast(out.loss, tf.float32) * (w / global_w)
            # dense fp32 (an embedding's IndexedSlices densified, as adding it to zeros did); the first
            # micro-batch's gradients are the sum so far (no zeros + g pass per variable)
            g = [None if b is None else tf.cast(tf.convert_to_tensor(b), tf.float32)
                 for b in tape.gradient(objective, self.variables)]
            grads = g if grads is None else [b if a is None else a if b is None else a + b
                                             for a, b in zip(grads, g, strict=True)]
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + tf.cast(v, tf.float32) * (w / global_w)
            if self.moe:
                for i, ld in enumerate(layer_loads(out.routers, n_exp, out.token_mask)[:len(loads)]):
                    loads[i] += ld
            seg = m.get("segment_ids")
            tokens += tf.reduce_sum(tf.cast(seg != 0, tf.float32)) if seg is not None else \
                tf.cast(tf.size(m["input_ids"]), tf.float32)
        grads = [tf.zeros(v.shape, tf.float32) if a is None else a
                 for a, v in zip(grads, self.variables, strict=True)]          # unused variables: 0
        red = tf.distribute.ReduceOp.SUM
        grads = ctx.all_reduce(red, grads)
        metric_sums = {k: ctx.all_reduce(red, v) for k, v in metric_sums.items()}
        loads = [ctx.all_reduce(red, ld) for ld in loads]
        tokens = ctx.all_reduce(red, tokens)
        gnorm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(gnorm) & tf.math.is_finite(metric_sums.get("loss", tf.constant(0.0)))
        # clip_by_global_norm's factor, applied inside the optimizer's per-variable update
        scale = clip_scale(gnorm, cfg.clip_norm)

        def apply(g, scale):
            self.optimizer.apply_scaled(g, self.variables, scale)
            return tf.constant(True)
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, lambda: apply(grads, scale), lambda: tf.constant(False))
        else:
            # Mirrored/multi-worker (without XLA on GPUs): apply_gradients synchronises through
            # merge_call, which a cond branch in replica context cannot do. Decide in
            # cross-replica context and run the update per replica from there, as Keras'
            # LossScaleOptimizer does.
            def cross_replica(strategy, finite, grads, scale):
                ok = strategy.experimental_local_results(finite)[0]
                return tf.cond(ok, lambda: strategy.extended.call_for_each_replica(apply, args=(grads, scale)),
                               lambda: tf.constant(False))
            ctx.merge_call(cross_replica, args=(finite, grads, scale))
        return metric_sums, gnorm, finite, loads, tokens

    def _build_train_fn(self):
        strategy = self.rt.strategy
        gamma = self.cfg.bias_update_gamma

        def step_fn(batch):
            per_replica = strategy.run(self._replica_step, args=(batch,))
            # Every replica holds the same all-reduced values: take the first.
            first = tf.nest.map_structure(lambda x: strategy.experimental_local_results(x)[0], per_replica)
            metrics, gnorm, finite, loads, tokens = first
            if self.moe and gamma > 0:
                # Cross-replica context: the bias update reaches every replica's copy.
                def bias():
                    update_routing_bias(self.model, loads, gamma)
                    return tf.constant(0)
                tf.cond(finite, bias, lambda: tf.constant(0))
            skipped = tf.cast(tf.logical_not(finite), tf.int64)
            self.step.assign_add(1)
            self.nonfinite.assign_add(skipped)
            # A skipped step still spends its place in the schedule: the learning rate stays a
            # function of the step, not of how many updates happened to be finite.
            self.optimizer.iterations.assign_add(tf.cast(skipped, self.optimizer.iterations.dtype))
            return metrics, gnorm, finite, loads, tokens
        # autograph off: the step has no Python control flow on tensors (tf.cond is explicit), and
        # converting the whole model source costs more tracing time than the rest together.
        return tf.function(step_fn, jit_compile=self.cfg.jit_compile or None, autograph=False)

    # ------------------------------------------------------------------ data
    def _dist_train(self, data: PackedData, start_step: int):
        cfg, rt = self.cfg, self.rt
        num_rows = data.num_rows("train")
        replicas = rt.num_replicas

        def fn(ctx: tf.distribute.InputContext):
            per_pipeline = replicas // ctx.num_input_pipelines
            first = ctx.input_pipeline_id * per_pipeline
            return train_stream(data.train_files, data.seq_len, micro_batch=cfg.micro_batch_size,
                                accum=cfg.grad_accum_steps, num_replicas=replicas, seed=cfg.seed,
                                shuffle_buffer=cfg.shuffle_buffer, num_rows=num_rows,
                                start_step=start_step, replica_range=(first, first + per_pipeline),
                                teacher_topk=data.teacher_topk)
        return iter(rt.strategy.distribute_datasets_from_function(fn))

    # ------------------------------------------------------------------ eval
    def evaluate(self, data: PackedData) -> dict[str, float]:
        """Held-out numbers: the task's loss (eval_loss, eval_perplexity) and every other metric its
        eval pass reports (eval_<name>), each a target-weighted mean over the eval batches."""
        task, cfg = self.task, self.cfg
        if self._eval_fn is None:   # traced once per trainer, not per evaluation
            def one(batch):
                out = task.compute(self.model, batch, False)
                w = tf.cast(task.weight(batch), tf.float32)
                extra = {k: tf.cast(v, tf.float32) * w for k, v in out.metrics.items() if k != "loss"}
                return tf.cast(out.loss, tf.float32) * w, w, extra
            self._eval_fn = tf.function(one, autograph=False)
        one = self._eval_fn
        total, count, sums = 0.0, 0.0, {}
        for batch in eval_stream(data.eval_files, data.seq_len, cfg.micro_batch_size, cfg.eval_batches,
                                 teacher_topk=data.teacher_topk):
            s, w, extra = one(batch)
            total += float(s)
            count += float(w)
            for k, v in extra.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if count == 0:
            return {}
        loss = total / count
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_targets": count,
                **{f"eval_{k}": v / count for k, v in sums.items()}}

    def baseline_eval(self, data: PackedData) -> dict[str, float]:
        """Held-out numbers of the starting weights, measured once before training and kept in
        OUTPUT/eval_before.json (a resumed run reads them back instead of the trained weights')."""
        path = os.path.join(self.output_dir, "eval_before.json")
        if tf.io.gfile.exists(path):
            return json.loads(tf.io.gfile.GFile(path).read())
        if self.store.latest is not None:
            return {}       # checkpoints but no baseline: the run was started without one
        before = self.evaluate(data)
        if self.rt.is_chief:
            atomic_write_text(path, json.dumps(before))
        return before

    # ------------------------------------------------------------------ the loop
    def _begin(self, max_steps: int | None) -> tuple[Any, int, int]:
        """Restore the latest checkpoint: (restored step or None, start step, end step)."""
        self.store.check_model_config(self.model.cfg.to_hf_dict())
        resumed = self.store.restore_latest()
        start = int(self.step.numpy())
        end = min(self.total_steps, max_steps) if max_steps else self.total_steps
        return resumed, start, end

    def fit(self, data: PackedData, *, max_steps: int | None = None, checkpoint_every: int | None = None,
            progress: bool = True) -> TrainResult:
        """Train on packed rows (the engine's own input pipeline) from the latest checkpoint."""
        resumed, start, end = self._begin(max_steps)
        it = self._dist_train(data, start) if start < end else None
        return self._loop(lambda step: (next(it), {}), resumed, start, end, checkpoint_every, progress,
                          lambda: self.evaluate(data))

    def fit_online(self, source: BatchSource, *, max_steps: int | None = None, checkpoint_every: int | None = None,
                   progress: bool = True, evaluate: Callable[[], dict[str, float]] | None = None) -> TrainResult:
        """Train on batches the phase makes while training (GRPO's rollouts), from the latest checkpoint.

        source.batch(step) is called for each 0-based step with the weights that step starts from and
        returns ({feature: numpy array with leading dims (grad_accum_steps, global micro-batch)}, host
        metrics), or (None, host metrics) to skip the step: the step counter and the learning-rate
        schedule advance, no update is applied (e.g. every rollout group had zero reward variance).
        A resumed run calls it from the restored step on, so a deterministic source resumes exactly.
        """
        resumed, start, end = self._begin(max_steps)

        def next_batch(step):
            batch, host = source.batch(step)
            return (None if batch is None else self._distribute(batch)), host
        return self._loop(next_batch, resumed, start, end, checkpoint_every, progress, evaluate or (lambda: {}))

    def _distribute(self, batch: dict[str, np.ndarray]):
        """A host batch {feature: (accum, R·M, ...)} -> per-replica values {feature: (accum, M, ...)}."""
        strategy, replicas = self.rt.strategy, self.rt.num_replicas
        m = self.cfg.micro_batch_size
        for k, v in batch.items():
            if v.shape[0] != self.cfg.grad_accum_steps or v.shape[1] != replicas * m:
                raise ValueError(f"online batch feature {k!r} has shape {v.shape}; expected leading dims "
                                 f"({self.cfg.grad_accum_steps}, {replicas * m})")

        def part(ctx):
            r = ctx.replica_id_in_sync_group
            return {k: tf.constant(v[:, r * m:(r + 1) * m]) for k, v in batch.items()}
        return strategy.experimental_distribute_values_from_function(part)

    def _skip_step(self) -> None:
        self.step.assign_add(1)
        self.optimizer.iterations.assign_add(1)

    def _loop(self, next_batch, resumed, start: int, end: int, checkpoint_every: int | None, progress: bool,
              evaluate: Callable[[], dict[str, float]]) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        every = checkpoint_every or cfg.checkpoint_every
        log = MetricsLog(self.output_dir, rt.is_chief, start)
        if self._train_fn is None:
            self._train_fn = self._build_train_fn()
        bar = _Progress(end, start, self.title, enabled=progress and rt.is_chief)
        consecutive, tps, skipped = 0, None, 0
        t0, tok_acc = time.perf_counter(), 0.0
        try:
            for s in range(start, end):
                batch, host = next_batch(s)
                step = s + 1
                if batch is None:
                    self._skip_step()
                    skipped += 1
                    metrics, loss = {}, float("nan")
                else:
                    metrics, gnorm, finite, loads, tokens = self._train_fn(batch)
                    if not bool(finite):
                        consecutive += 1
                        if consecutive >= cfg.max_nonfinite_steps:
                            raise TrainingError(
                                f"{consecutive} non-finite steps in a row (last at step {step}): loss/gradients "
                                f"are NaN/Inf; lower trainer.lr or check the data ({self.output_dir})")
                    else:
                        consecutive = 0
                    tok_acc += float(tokens)
                    loss = float(metrics["loss"])
                if step % cfg.log_every == 0 or step == end or step == start + 1:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    vals = {k: float(v) for k, v in metrics.items()}
                    vals.update(host)
                    # the rate this step's update used (updates are counted per step, skipped or not)
                    vals.update(lr=lr_at(cfg, step - 1), tokens_per_s=tok_acc / dt,
                                nonfinite_steps=float(self.nonfinite.numpy()))
                    if skipped:
                        vals["skipped_steps"] = float(skipped)
                    if batch is not None:
                        vals["grad_norm"] = float(gnorm)
                        if self.moe:
                            vals.update(expert_load_stats([x.numpy() for x in loads]))
                            for i, layer in enumerate(self.moe):
                                if layer.e_score_correction_bias is not None:
                                    vals[f"routing_bias/layer{i}_mean_abs"] = float(
                                        tf.reduce_mean(tf.abs(layer.e_score_correction_bias)))
                    if cfg.eval_every and step % cfg.eval_every == 0 and step != end:
                        vals.update(evaluate())
                    log.log(step, vals)
                    tps = vals["tokens_per_s"]
                    t0, tok_acc = time.perf_counter(), 0.0
                bar.update(step, loss, tps)
                if step % every == 0 or step == end:
                    self.store.save(step)
            final_eval = evaluate()
            done_before = any(r.get("step") == end and set(final_eval) <= set(r) for r in log.rows)
            if final_eval and rt.is_chief and not done_before:   # a re-run of a finished run logs nothing new
                log.log(int(self.step.numpy()), final_eval)
        finally:
            bar.close()
            log.close()
        if rt.is_chief and log.rows:
            plot_loss_curve(log.rows, os.path.join(self.output_dir, "loss_curve.png"), self.title)
        return TrainResult(self.model, int(self.step.numpy()), None if resumed is None else start,
                           log.rows, final_eval, int(self.nonfinite.numpy()), skipped)


class _Progress:
    """A rich progress bar with loss and tokens/s (chief only)."""

    def __init__(self, total: int, start: int, title: str, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                          TimeRemainingColumn(), transient=False)
        self.p.start()
        self.task = self.p.add_task(title, total=total, completed=start, loss="-", tps="-")

    def update(self, step: int, loss: float, tps: float | None) -> None:
        if self.enabled:
            fields = {"loss": f"{loss:.4f}"}
            if tps is not None:
                fields["tps"] = f"{tps:,.0f}"
            self.p.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.enabled:
            self.p.stop()


def tokens_per_second(history: list[dict]) -> float:
    vals = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    return float(np.median(vals)) if vals else 0.0
