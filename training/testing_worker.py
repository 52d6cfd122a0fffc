"""Test helpers for the training engine, and a worker entry point for multi-process tests.

`python -m training.testing_worker --data D --output O --strategy S --micro M --steps N --npz W`
trains the tiny test model with the causal-LM task (TF_CONFIG from the environment for
multi_worker) and, on the chief, saves every model weight to W as .npz keyed by variable path.
The strategy is built before anything else touches TF: MultiWorkerMirroredStrategy requires it.
"""
from __future__ import annotations

import argparse
import os
import sys


def tiny_model_config(layers: int = 2):
    """The "tiny" preset cut to test size: layer 0 dense, the rest and the MTP block MoE."""
    from model.config import ModelConfig
    return ModelConfig.from_preset("tiny").replace(rope_scaling=None, max_position_embeddings=64,
                                                   num_hidden_layers=layers)


def trainer_config(**overrides):
    """Short, fast-learning runs: every step logged, checkpoints every 2 steps, keep 2."""
    from configs.training import TrainerConfig
    base = dict(steps=6, micro_batch_size=4, grad_accum_steps=1, lr=5e-3, warmup_steps=1,
                min_lr_ratio=0.1, log_every=1, checkpoint_every=2, keep_checkpoints=2, eval_batches=2,
                shuffle_buffer=64, bias_update_gamma=1e-3, precision="fp32", strategy="one_device",
                deterministic=True, seed=3)
    base.update(overrides)
    return TrainerConfig(**base)


def weights(model) -> dict:
    """Every model variable (trainable and routing biases) as numpy, keyed "index/path": Keras 3
    paths are per-layer ("q_a_proj/kernel") and repeat across blocks."""
    return {f"{i:03d}/{v.path}": v.numpy() for i, v in enumerate(model.weights)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--strategy", default="one_device")
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--npz", required=True)
    a = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from training.strategy import make_runtime
    cfg_kw = dict(steps=a.steps, micro_batch_size=a.micro, strategy=a.strategy)
    rt = make_runtime(a.strategy, "fp32")   # first TF op of the process

    import numpy as np

    from model.decoder import build_model
    from training.data import open_packed
    from training.lm_task import CausalLMTask
    from training.loop import Trainer

    cfg = trainer_config(**cfg_kw)
    mc = tiny_model_config()
    trainer = Trainer(cfg, rt, lambda: build_model(mc, seed=cfg.seed), CausalLMTask(), a.output)
    res = trainer.fit(open_packed(a.data), progress=False)
    print(f"worker {rt.worker_index}/{rt.num_workers} replicas={rt.num_replicas} steps={res.steps} "
          f"nonfinite={res.nonfinite_steps}", flush=True)
    if rt.is_chief:
        np.savez(a.npz, **weights(trainer.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
