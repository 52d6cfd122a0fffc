"""CausalLMTask: the loss mask selects targets; an SFT batch with no target is an error."""
import numpy as np
import pytest
import tensorflow as tf

from model.config import ModelConfig
from model.decoder import build_model
from model.losses import causal_lm_loss
from training.lm_task import NO_TARGETS_MESSAGE, CausalLMTask


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.load("tiny").replace(vocab_size=64, rope_scaling=None, num_hidden_layers=2)
    return build_model(cfg, seed=0)


def _batch(mask):
    ids = np.random.default_rng(0).integers(3, 64, size=(2, 12)).astype(np.int32)
    seg = np.ones((2, 12), np.int32)
    pos = np.tile(np.arange(12, dtype=np.int32), (2, 1))
    return {"input_ids": tf.constant(ids), "segment_ids": tf.constant(seg), "positions": tf.constant(pos),
            "loss_mask": tf.constant(np.asarray(mask, np.int32))}


def test_weight_counts_marked_targets_and_lm_loss_uses_them(model):
    mask = np.zeros((2, 12), np.int32)
    mask[0, 5:9] = 1          # targets t5..t8 of row 0: predicted at positions 4..7
    mask[1, 0] = 1            # t0 has no predicting position: not a target
    b = _batch(mask)
    task = CausalLMTask(mtp_weight=0.0, aux_loss_alpha=0.0)
    assert float(task.weight(b)) == 4.0
    out = task.compute(model, b, training=False)
    logits = model.forward(b["input_ids"], position_ids=b["positions"], segment_ids=b["segment_ids"])["logits"]
    lp = tf.nn.log_softmax(logits[0]).numpy()
    ids = b["input_ids"].numpy()[0]
    want = -np.mean([lp[i, ids[i + 1]] for i in range(4, 8)])
    np.testing.assert_allclose(float(out.loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(out.loss), float(causal_lm_loss(logits, b["input_ids"], b["loss_mask"],
                                                                     b["segment_ids"])), rtol=1e-6)


def test_required_targets_missing_is_an_error_in_training(model):
    b = _batch(np.zeros((2, 12), np.int32))
    task = CausalLMTask(mtp_weight=0.0, aux_loss_alpha=0.0, require_targets=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no loss targets"):
        task.compute(model, b, training=True)
    assert "assistant mask" in NO_TARGETS_MESSAGE
    # without the requirement (pretraining rows never lack targets) it is a zero loss, not an error
    out = CausalLMTask(mtp_weight=0.0, aux_loss_alpha=0.0).compute(model, b, training=True)
    assert float(out.loss) == 0.0
