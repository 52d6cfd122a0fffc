"""Distribution strategy and precision, chosen from config — applied outside the model.

On a cluster, Kubeflow's TFJob sets TF_CONFIG in every worker pod and the same
`seekline train PHASE` command runs in each; MultiWorkerMirroredStrategy reads it. It must be
created before any other TF op runs in the process, so callers build it first.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from common.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    strategy: tf.distribute.Strategy
    kind: str                  # "one_device" | "mirrored" | "multi_worker"
    is_chief: bool             # writes checkpoints, reports and the final export
    worker_index: int
    num_workers: int
    compute_dtype: str         # "float32" | "bfloat16"

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return cfg


def _workers(cfg: dict) -> int:
    cluster = cfg.get("cluster", {}) or {}
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _role(cfg: dict) -> tuple[bool, int]:
    """(is_chief, worker_index) of this process: the "chief" task if the cluster has one, else
    worker 0; indices count the chief first, then the workers."""
    task = cfg.get("task", {}) or {}
    ttype, tidx = task.get("type", "worker"), int(task.get("index", 0))
    has_chief = bool((cfg.get("cluster", {}) or {}).get("chief"))
    is_chief = ttype == "chief" or (ttype == "worker" and tidx == 0 and not has_chief)
    return is_chief, tidx + (1 if has_chief and ttype == "worker" else 0)


def make_runtime(strategy: str = "auto", precision: str = "auto") -> Runtime:
    """Build the strategy (first TF op of the process) and set the Keras dtype policy."""
    tf_config = _tf_config()
    n_workers = _workers(tf_config)
    gpus = tf.config.list_physical_devices("GPU")
    kind = strategy
    if kind == "auto":
        kind = "multi_worker" if n_workers > 1 else ("mirrored" if len(gpus) > 1 else "one_device")
    if kind == "multi_worker":
        if n_workers < 1:
            raise ConfigError("trainer.strategy=multi_worker needs TF_CONFIG with a 'cluster' of workers")
        # RING collectives work on CPU and GPU; NCCL is picked automatically on GPUs by AUTO.
        strat = tf.distribute.MultiWorkerMirroredStrategy()
        is_chief, worker_index = _role(tf_config)
    elif kind == "mirrored":
        strat = tf.distribute.MirroredStrategy()
        is_chief, worker_index, n_workers = True, 0, 1
    else:
        strat = tf.distribute.get_strategy()  # the default strategy: one device, no wrapping cost
        is_chief, worker_index, n_workers = True, 0, 1
    if precision == "auto":
        precision = "bf16" if gpus else "fp32"
    compute = "bfloat16" if precision == "bf16" else "float32"
    # Weights stay fp32 (optimizer state and updates in fp32); matmuls run in the compute dtype.
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if compute == "bfloat16" else "float32")
    return Runtime(strat, kind, is_chief, worker_index, max(n_workers, 1), compute)
