"""Checkpoint store: complete model state, keep-last-N, worker scratch folders, one-line errors."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from model.decoder import build_model
from training.checkpoint import MODEL_CONFIG, CheckpointStore
from training.optimizer import build_optimizer
from training.testing_worker import tiny_model_config, trainer_config


def _index_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".index"))


def test_every_model_weight_round_trips_including_routing_biases(tmp_path):
    """Non-trainable state in list-held blocks (MoE routing biases) must be saved too: the
    optimizer does not reference it, and Keras 3 list tracking is invisible to TF checkpoints."""
    cfg = trainer_config()
    src = build_model(tiny_model_config(), seed=0)
    opt = build_optimizer(cfg, src.trainable_variables)
    for i, layer in enumerate(src.moe_layers()):
        layer.e_score_correction_bias.assign(np.linspace(-1, 1, 8, dtype=np.float32) * (i + 1))
    want = [v.numpy().copy() for v in src.weights]
    store = CheckpointStore(str(tmp_path / "ck"), keep=2, is_chief=True, model=src, optimizer=opt)
    store.save(1)

    dst = build_model(tiny_model_config(), seed=1)
    assert not np.array_equal(dst.weights[0].numpy(), want[0])
    opt2 = build_optimizer(cfg, dst.trainable_variables)
    restored = CheckpointStore(str(tmp_path / "ck"), keep=2, is_chief=True, model=dst, optimizer=opt2)
    assert restored.restore_latest().endswith("ckpt-1")
    assert len(dst.weights) == len(want)
    for v, w in zip(dst.weights, want, strict=True):
        assert np.array_equal(v.numpy(), w), v.path


def test_keep_last_n_and_latest(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    store = CheckpointStore(str(tmp_path / "ck"), keep=2, is_chief=True, step=step)
    assert store.latest is None and store.restore_latest() is None
    for s in (2, 4, 6):
        step.assign(s)
        store.save(s)
    assert _index_files(tmp_path / "ck") == ["ckpt-4.index", "ckpt-6.index"]
    step.assign(0)
    assert store.restore_latest().endswith("ckpt-6") and int(step.numpy()) == 6


def test_non_chief_writes_to_a_scratch_folder_and_reads_the_chiefs(tmp_path):
    out = tmp_path / "run"
    chief_step, worker_step = tf.Variable(5, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    CheckpointStore(str(out / "checkpoints"), keep=2, is_chief=True, step=chief_step).save(5)
    worker = CheckpointStore(str(out / "checkpoints"), keep=2, is_chief=False, worker_index=1,
                             step=worker_step)
    assert worker.restore_latest().endswith("ckpt-5") and int(worker_step.numpy()) == 5
    for s in (6, 7):   # a second save after the scratch folder was removed still works
        worker_step.assign(s)
        worker.save(s)
        assert not os.path.exists(out / ".worker-1-checkpoints")
    assert _index_files(out / "checkpoints") == ["ckpt-5.index"]


def test_incompatible_checkpoint_is_a_one_line_config_error(tmp_path):
    CheckpointStore(str(tmp_path), keep=1, is_chief=True, w=tf.Variable(tf.zeros([3]))).save(1)
    other = CheckpointStore(str(tmp_path), keep=1, is_chief=True, w=tf.Variable(tf.zeros([4])))
    with pytest.raises(ConfigError) as e:
        other.restore_latest()
    msg = str(e.value)
    assert "\n" not in msg and "ckpt-1" in msg and "cannot restore" in msg, msg


def test_model_config_recorded_and_enforced_only_with_checkpoints(tmp_path):
    d = str(tmp_path / "ck")
    store = CheckpointStore(d, keep=1, is_chief=True, step=tf.Variable(0, dtype=tf.int64))
    store.check_model_config({"hidden_size": 64})
    assert json.load(open(os.path.join(d, MODEL_CONFIG))) == {"hidden_size": 64}
    store.check_model_config({"hidden_size": 32})   # no checkpoint yet: a fresh start may change it
    store.save(1)
    with pytest.raises(ConfigError) as e:
        store.check_model_config({"hidden_size": 64})
    msg = str(e.value)
    assert "\n" not in msg and d in msg and "hidden_size: 32 -> 64" in msg, msg
