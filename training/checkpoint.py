"""Atomic, keep-last-N training checkpoints with exact resume.

A checkpoint holds the model, the optimizer (moments + update count), the step counter (which is
also the data position: see training/data.py), the non-finite-step counter and the RNG
generator state. TF writes `ckpt-N.index` / `ckpt-N.data-*` first and only then replaces the
`checkpoint` state file (an atomic rename), so "latest" never names a half-written checkpoint: a
run killed mid-save resumes from the previous one and simply writes ckpt-N again.

Beside the checkpoints, `model_config.json` records the architecture the run trains; resuming
with a different one is a one-line error before any compute (not a shape error deep in TF).

Multi-worker: saving is a collective every worker joins; only the chief's copy is kept (the
others write to a scratch folder that is removed), the pattern TF's multi-worker guide uses.
"""
from __future__ import annotations

import json
import os
import shutil

import keras
import tensorflow as tf

from common.errors import ConfigError
from common.fileio import atomic_write_text

MODEL_CONFIG = "model_config.json"


def _with_all_weights(trackables: dict) -> dict:
    """Add every variable of each Keras layer/model as an explicit, position-keyed dict.

    Keras 3 keeps sublayers held in Python lists (the decoder's blocks) in its own tracking
    structures, which TF checkpoints do not traverse: block weights were saved only because the
    optimizer also references the trainable ones, and non-trainable state (the MoE routing
    biases) was not saved at all, so a resumed run restarted balancing from zero biases.
    `variables` is `weights` plus the state of Keras SeedGenerators (LoRA dropout streams,
    model/layers/linear.py), so a resumed run draws the same dropout masks; for a model without
    seed generators the two lists, and so the checkpoint keys, are identical.
    """
    out = dict(trackables)
    for name, obj in trackables.items():
        if isinstance(obj, keras.layers.Layer):
            out[f"{name}_weights"] = {f"{i:04d}:{v.path}".replace("/", "."): v
                                      for i, v in enumerate(obj.variables)}
    return out


class CheckpointStore:
    def __init__(self, directory: str, *, keep: int, is_chief: bool, worker_index: int = 0,
                 **trackables):
        self.directory = directory
        self.is_chief = is_chief
        write_dir = directory if is_chief else os.path.join(
            os.path.dirname(directory.rstrip("/")), f".worker-{worker_index}-checkpoints")
        self.write_dir = write_dir
        self.ckpt = tf.train.Checkpoint(**_with_all_weights(trackables))
        self.manager = tf.train.CheckpointManager(self.ckpt, write_dir, max_to_keep=keep,
                                                  checkpoint_name="ckpt")
        # Restores always read the chief's folder (workers share it on a cluster volume).
        self._read = tf.train.CheckpointManager(self.ckpt, directory, max_to_keep=keep,
                                                checkpoint_name="ckpt") if not is_chief else self.manager

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory)

    def check_model_config(self, model_config: dict) -> None:
        """Record the architecture on first use; refuse a different one on resume."""
        path = os.path.join(self.directory, MODEL_CONFIG)
        if tf.io.gfile.exists(path):
            saved = json.loads(tf.io.gfile.GFile(path).read())
            diff = sorted(k for k in set(saved) | set(model_config) if saved.get(k) != model_config.get(k))
            if diff and self.latest:
                shown = ", ".join(f"{k}: {saved.get(k)!r} -> {model_config.get(k)!r}" for k in diff[:4])
                raise ConfigError(f"{self.directory}: checkpoints are of a different model config "
                                  f"({shown}); use a new --output or delete the folder")
        if self.is_chief:
            tf.io.gfile.makedirs(self.directory)
            atomic_write_text(path, json.dumps(model_config, indent=1, sort_keys=True))

    def restore_latest(self) -> str | None:
        path = self.latest
        if path is None:
            return None
        try:
            # assert_existing_objects_matched: every variable we have must come from the file.
            self.ckpt.restore(path).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{path}: cannot restore this checkpoint into the run's model/optimizer "
                              f"({msg[:300]})") from None
        return path

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        return path
