"""The training engine end to end on synthetic packed rows (tiny model, one CPU device).

Each Trainer's first step traces the whole train step (~10-25 s on a loaded 2-core machine), so
runs are module fixtures shared by the assertions that need them.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from training.strategy import make_runtime

RT = make_runtime("one_device", "fp32")

from model.decoder import build_model  # noqa: E402
from training.data import open_packed  # noqa: E402
from training.lm_task import CausalLMTask  # noqa: E402
from training.loop import StepOutput, Trainer, TrainingError  # noqa: E402
from training.testdata import write_packed  # noqa: E402
from training.testing_worker import tiny_model_config, trainer_config, weights  # noqa: E402

SEQ = 32
MODEL = tiny_model_config()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return open_packed(write_packed(str(tmp_path_factory.mktemp("packed")), SEQ, MODEL.vocab_size,
                                    train_rows=24, eval_rows=8))


def _trainer(out, cfg=None, task=None, model_cfg=MODEL):
    cfg = cfg or trainer_config()
    return Trainer(cfg, RT, lambda: build_model(model_cfg, seed=cfg.seed), task or CausalLMTask(), str(out))


def _assert_same(a: dict, b: dict, exact: bool, **tol):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert np.array_equal(a[k], b[k]), f"{k}: max diff {np.abs(a[k] - b[k]).max()}"
        else:
            np.testing.assert_allclose(a[k], b[k], err_msg=k, **tol)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """6 uninterrupted steps, micro 4 × accum 1."""
    out = tmp_path_factory.mktemp("straight")
    tr = _trainer(out)
    before = weights(tr.model)
    bias_before = [x.e_score_correction_bias.numpy().copy() for x in tr.moe]
    res = tr.fit(data, progress=False)
    return dict(out=out, trainer=tr, res=res, before=before, bias_before=bias_before,
                after=weights(tr.model), iterations=int(tr.optimizer.iterations.numpy()))


@pytest.fixture(scope="module")
def first_half(data, tmp_path_factory):
    """The same run stopped after 3 of its 6 steps (max_steps), as a killed job would be."""
    out = tmp_path_factory.mktemp("resumed")
    tr = _trainer(out)
    res = tr.fit(data, max_steps=3, progress=False)
    return dict(out=out, res=res, after=weights(tr.model))


@pytest.mark.slow
def test_loss_falls_bias_moves_and_artifacts_exist(straight):
    res, out = straight["res"], straight["out"]
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert len(losses) == 6                                   # log_every=1
    assert losses[-1] < losses[0] - 0.1, losses
    assert res.steps == 6 and res.nonfinite_steps == 0 and res.resumed_from is None
    assert np.isfinite(res.final_eval["eval_loss"])
    # Aux-loss-free balancing ran: each routing bias moved by whole multiples of γ per step.
    gamma = trainer_config().bias_update_gamma
    moved = [x.e_score_correction_bias.numpy() - b0 for x, b0 in
             zip(straight["trainer"].moe, straight["bias_before"], strict=True)]
    assert len(moved) == 2 and all(np.abs(d).max() > 0 for d in moved)
    for d in moved:
        np.testing.assert_allclose(d / gamma, np.round(d / gamma), atol=1e-3)
        assert np.abs(d).max() <= 6 * gamma + 1e-7
    # Logged artifacts.
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("eval_loss" in r for r in rows)
    assert all(r["nonfinite_steps"] == 0 for r in rows if "loss" in r)
    with open(os.path.join(out, "loss_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(out, "tensorboard")))
    # checkpoint_every=2, keep 2: only the newest two remain.
    ckpts = os.path.join(out, "checkpoints")
    assert sorted(n for n in os.listdir(ckpts) if n.endswith(".index")) == ["ckpt-4.index", "ckpt-6.index"]
    assert tf.train.latest_checkpoint(ckpts).endswith("ckpt-6")
    assert json.load(open(os.path.join(ckpts, "model_config.json")))["num_hidden_layers"] == 2


@pytest.mark.slow
def test_resume_is_bit_identical(straight, first_half, data):
    """3 steps, then a NEW Trainer on the same folder continues to 6 = 6 steps straight, exactly."""
    assert first_half["res"].steps == 3
    emb = "000/embed_tokens/weight"
    assert not np.array_equal(first_half["after"][emb], straight["after"][emb])
    tr = _trainer(first_half["out"])
    res = tr.fit(data, progress=False)
    assert res.resumed_from == 3 and res.steps == 6
    _assert_same(weights(tr.model), straight["after"], exact=True)
    assert int(tr.optimizer.iterations.numpy()) == straight["iterations"] == 6
    # The metrics log holds each step once, losses equal to the straight run's.
    rows = [json.loads(line) for line in open(os.path.join(first_half["out"], "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    want = [r["loss"] for r in straight["res"].history if "loss" in r]
    assert [r["loss"] for r in rows if "loss" in r] == want
    ckpts = os.path.join(first_half["out"], "checkpoints")
    assert sorted(n for n in os.listdir(ckpts) if n.endswith(".index")) == ["ckpt-4.index", "ckpt-6.index"]


@pytest.mark.slow
def test_gradient_accumulation_matches_a_bigger_micro_batch(first_half, data, tmp_path):
    """micro 2 × accum 2 after 3 steps = micro 4 × accum 1 after 3 steps (same seed and rows).

    Only float summation order differs (two half-batch gradients added vs one); Adam divides by
    sqrt(v) so near-zero gradient entries can amplify it a little. Measured max diff 4.8e-6;
    atol 3e-5 is far below one Adam step (~lr = 5e-3), so a wrongly weighted micro-batch fails.
    """
    tr = _trainer(tmp_path, trainer_config(micro_batch_size=2, grad_accum_steps=2))
    res = tr.fit(data, max_steps=3, progress=False)
    assert res.steps == 3 and res.nonfinite_steps == 0
    _assert_same(weights(tr.model), first_half["after"], exact=False, rtol=0, atol=3e-5)


class PoisonedTask:
    """The causal-LM task whose loss is NaN on chosen (0-based) steps of the trainer."""

    def __init__(self, bad_steps):
        self.inner, self.bad, self.trainer = CausalLMTask(), tf.constant(bad_steps, tf.int64), None

    def weight(self, batch):
        return self.inner.weight(batch)

    def compute(self, model, batch, training):
        out = self.inner.compute(model, batch, training)
        if not training:
            return out
        hit = tf.reduce_any(tf.equal(self.trainer.step, self.bad))
        loss = tf.where(hit, tf.constant(float("nan")), out.loss)
        return StepOutput(loss, {**out.metrics, "loss": loss}, out.routers, out.token_mask)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_stop_the_run(data, tmp_path):
    # 0-based step 1 is NaN alone; 4, 5, 6 are three in a row = max_nonfinite_steps.
    task = PoisonedTask([1, 4, 5, 6])
    tr = _trainer(tmp_path, trainer_config(steps=8, max_nonfinite_steps=3, checkpoint_every=100),
                  task=task)
    task.trainer = tr
    tr.fit(data, max_steps=1, progress=False)
    after1 = weights(tr.model)

    def moments():
        return [v.numpy().copy() for v in tr.optimizer.variables if "iteration" not in v.path]
    moments1 = moments()
    res = tr.fit(data, max_steps=2, progress=False)           # step 2 (0-based 1) is poisoned
    assert res.steps == 2 and res.nonfinite_steps == 1
    _assert_same(weights(tr.model), after1, exact=True)     # weights and routing biases untouched
    assert all(np.array_equal(a, b) for a, b in zip(moments(), moments1, strict=True))  # Adam state too
    # the update count is the schedule's position: it follows the step, skipped or not
    assert int(tr.optimizer.iterations.numpy()) == 2
    last = [r for r in res.history if "loss" in r][-1]
    assert last["step"] == 2 and np.isnan(last["loss"]) and last["nonfinite_steps"] == 1
    with pytest.raises(TrainingError) as e:
        tr.fit(data, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "3 non-finite steps in a row" in msg and "step 7" in msg, msg
    # Steps 3 and 4 trained normally between the poisoned ones; 7 steps ran in all.
    assert int(tr.optimizer.iterations.numpy()) == 7 and int(tr.nonfinite.numpy()) == 4


def test_resume_with_another_model_config_fails_before_training(data, tmp_path):
    out = tmp_path / "run"
    first = _trainer(out)
    first.store.check_model_config(first.model.cfg.to_hf_dict())
    first.store.save(1)
    other = _trainer(out, model_cfg=MODEL.replace(num_hidden_layers=3))
    with pytest.raises(ConfigError) as e:
        other.fit(data, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(out / "checkpoints") in msg and "num_hidden_layers: 2 -> 3" in msg, msg
    assert other._train_fn is None and int(other.step.numpy()) == 0
