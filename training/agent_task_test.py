"""AgentDistillTask: weight against a by-hand count, one compute against agent_distill_loss on the
same logits (with and without an online teacher), and a short engine run on rows the agent
dataset builder made from synthetic trajectories (the held-out SAD loss falls)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from common.errors import UserError
from training.strategy import make_runtime
from training.testdata import agent_trajectory

RT = make_runtime("one_device", "fp32")

from model.decoder import build_model  # noqa: E402
from training import agent_losses as al  # noqa: E402
from training.agent_task import METRICS, AgentDistillTask  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.testing_worker import tiny_model_config, trainer_config  # noqa: E402

T = 12
STUDENT = tiny_model_config(2)      # layer 1 is MoE: a balance loss exists
V = STUDENT.vocab_size
SPEC = al.AgentLossSpec(lambda_reason=0.5, lambda_act=2.0, tool_weight=0.7, json_weight=0.3)


@pytest.fixture(scope="module")
def student():
    return build_model(STUDENT, seed=5)


@pytest.fixture(scope="module")
def teacher():
    t = build_model(tiny_model_config(1), seed=9)
    for v in t.weights:
        if v.path == "lm_head/kernel":
            v.assign(v * 10.0)                 # sharper than a random model, so KL ≠ CE-ish values
    return t


def _batch():
    """Two rows: row 0 one document of 10 tokens + padding, row 1 two documents (7 + 5)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, size=(2, T))
    seg = np.array([[1] * 10 + [0] * 2, [1] * 7 + [2] * 5])
    pos = np.array([list(range(10)) + [0, 0], list(range(7)) + list(range(5))])
    reason = np.array([[0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0]])
    action = np.array([[0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1]])
    tool = np.array([[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0]])
    js = np.array([[0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]])
    b = {"input_ids": ids, "segment_ids": seg, "positions": pos, "loss_mask": reason | action,
         al.REASON_MASK: reason, al.ACTION_MASK: action, al.TOOL_NAME_MASK: tool, al.JSON_MASK: js}
    return {k: tf.constant(v, tf.int32) for k, v in b.items()}


def _np_weight(b, lr, la):
    """Σ over positions i of λ_r·m_r(i+1) + λ_a·m_a(i+1) where i+1 is in i's (non-padding) document."""
    ids, seg = b["input_ids"].numpy(), b["segment_ids"].numpy()
    r, a = b[al.REASON_MASK].numpy(), b[al.ACTION_MASK].numpy()
    total = 0.0
    for row in range(ids.shape[0]):
        for i in range(T - 1):
            if seg[row, i] != 0 and seg[row, i] == seg[row, i + 1]:
                total += lr * r[row, i + 1] + la * a[row, i + 1]
    return total


def test_weight_is_the_sad_weight_sum():
    b = _batch()
    # By hand: row 0 reason targets at 1,2,3 (3), action at 3,4,5,6,9 (5); row 1 doc 1 reason 1,2,
    # action 3..6; doc 2 (7..11): reason at 8 (7 starts the doc, no target), action 9,10,11.
    assert _np_weight(b, 1.0, 1.0) == 3 + 5 + 2 + 4 + 1 + 3
    np.testing.assert_allclose(float(AgentDistillTask(SPEC).weight(b)), _np_weight(b, 0.5, 2.0), rtol=1e-6)


def _logits(model, b):
    return tf.cast(model.forward(b["input_ids"], position_ids=b["positions"], segment_ids=b["segment_ids"],
                                 training=False)["logits"], tf.float32)


@pytest.mark.parametrize("online", [False, True])
def test_compute_equals_agent_distill_loss(student, teacher, online):
    b = _batch()
    task = AgentDistillTask(SPEC, teacher=teacher if online else None, aux_loss_alpha=0.0)
    s = _logits(student, b)
    want, want_m = al.agent_distill_loss(s, b, SPEC, _logits(teacher, b) if online else None)
    ce = al.sad_ce_loss(s, b["input_ids"], b[al.REASON_MASK], b[al.ACTION_MASK], b["segment_ids"],
                        lambda_reason=SPEC.lambda_reason, lambda_act=SPEC.lambda_act)
    out = task.compute(student, b, True)                   # no MTP layers, aux off: the objective alone
    np.testing.assert_allclose(float(out.loss), float(want), rtol=1e-5)
    for k in ("sad", "tool_loss", "json_loss", "tool_name_acc", "json_token_acc"):
        np.testing.assert_allclose(float(out.metrics[k]), float(want_m[k]), rtol=1e-5, atol=1e-7, err_msg=k)
    assert float(out.metrics["tool_loss"]) > 0 and float(out.metrics["json_loss"]) > 0
    ev = task.compute(student, b, False)
    assert set(METRICS) <= set(ev.metrics)
    # eval loss = the span-weighted CE (the no-teacher SAD), whatever the teacher
    np.testing.assert_allclose(float(ev.loss), float(ce), rtol=1e-5)
    if online:
        assert abs(float(ev.metrics["sad"]) - float(ev.loss)) > 1e-3   # KL form, not the CE


def test_aux_loss_is_added_in_training(student):
    b = _batch()
    plain = AgentDistillTask(SPEC, aux_loss_alpha=0.0).compute(student, b, True)
    with_aux = AgentDistillTask(SPEC, aux_loss_alpha=1e-2).compute(student, b, True)
    assert "aux_loss" not in plain.metrics and float(with_aux.metrics["aux_loss"]) > 0
    np.testing.assert_allclose(float(with_aux.loss), float(plain.loss) + float(with_aux.metrics["aux_loss"]),
                               rtol=1e-5)


def test_validity_term_is_added_on_sampling_steps_only(student):
    """With rollout features in the batch the training objective gains validity_weight · L_valid
    (training/agent_validity.validity_loss on the same features); evaluation and weight 0 ignore them."""
    from training import agent_validity as av

    rng = np.random.default_rng(1)
    ids = rng.integers(3, V, size=(2, 1, 6))                                 # (M, K, L): one rollout per row
    seg, mask = np.ones_like(ids), np.zeros((2, 1, 6), np.float32)
    mask[:, :, 3:] = 1.0
    roll = {av.ROLLOUT_IDS: ids, av.ROLLOUT_SEG: seg, av.ROLLOUT_POS: np.broadcast_to(np.arange(6), ids.shape),
            av.ROLLOUT_MASK: mask, av.ROLLOUT_ADV: np.array([[1.0], [-0.5]], np.float32)}
    b = {**_batch(), **{k: tf.constant(v) for k, v in roll.items()}}
    plain = AgentDistillTask(SPEC, aux_loss_alpha=0.0).compute(student, b, True)
    task = AgentDistillTask(SPEC, aux_loss_alpha=0.0, validity_weight=2.0, validity_temperature=0.5)
    out = task.compute(student, b, True)
    want, _ = av.validity_loss(student, b, 0.5)
    assert abs(float(want)) > 1e-4
    np.testing.assert_allclose(float(out.loss), float(plain.loss) + 2.0 * float(want), rtol=1e-5)
    np.testing.assert_allclose(float(out.metrics["validity_loss"]), float(want), rtol=1e-6)
    assert "validity_loss" not in plain.metrics
    np.testing.assert_allclose(float(task.compute(student, b, False).loss),
                               float(AgentDistillTask(SPEC).compute(student, _batch(), False).loss), rtol=1e-6)


def test_rows_without_span_masks_are_a_user_error(student):
    b = {k: v for k, v in _batch().items() if k != al.ACTION_MASK}
    with pytest.raises(UserError, match="action_mask"):
        AgentDistillTask(SPEC).compute(student, b, False)


# ------------------------------------------------------------------ engine run on built rows
@pytest.fixture(scope="module")
def agent_data(tmp_path_factory):
    from components.agent.dataset import build_agent_dataset_files
    from components.grpo.testdata import grpo_model_dir
    from training.data import open_packed

    root = tmp_path_factory.mktemp("agent")
    model_dir = grpo_model_dir(str(root), seq=176, layers=1)
    src = root / "traj.jsonl"
    src.write_text("".join(json.dumps(agent_trajectory(a, b)) + "\n" for a in range(1, 7) for b in range(2, 6)))
    rep = build_agent_dataset_files(str(src), str(root / "rows"), tokenizer_path=model_dir, seq_len=176,
                                    eval_fraction=0.25, seed=1)
    assert rep["train"]["truncated"] == 0 and rep["train"]["tool_name_tokens"] > 0
    return model_dir, open_packed(str(root / "rows"))


def test_ten_engine_steps_lower_the_held_out_sad_loss(agent_data, tmp_path):
    import model as model_core

    model_dir, data = agent_data
    assert {al.REASON_MASK, al.ACTION_MASK, al.TOOL_NAME_MASK, al.JSON_MASK} <= set(data.extra_features)
    cfg = trainer_config(steps=10, checkpoint_every=10, lr=1e-2, eval_batches=1)
    tr = Trainer(cfg, RT, lambda: model_core.load_hf_checkpoint(model_dir), AgentDistillTask(SPEC), str(tmp_path))
    before = tr.baseline_eval(data)
    res = tr.fit(data, progress=False)
    after = res.final_eval
    for k in METRICS:
        assert f"eval_{k}" in before and f"eval_{k}" in after, k
    assert after["eval_sad"] < 0.8 * before["eval_sad"], (before["eval_sad"], after["eval_sad"])
    assert after["eval_tool_loss"] < before["eval_tool_loss"]
    assert 0.0 <= after["eval_tool_name_acc"] <= 1.0
    assert all(np.isfinite(h["loss"]) for h in res.history if "loss" in h)
    steps = [h for h in res.history if "loss" in h and "step" in h]
    assert steps and all("tool_name_acc" in h and "sad" in h for h in steps)
    print({k: (round(before[k], 4), round(after[k], 4)) for k in sorted(before) if k.startswith("eval_")})
