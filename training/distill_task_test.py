"""DistillTask: one compute against numpy formulas over the two models' logits; training through
the engine with an online teacher (kl_to_teacher falls, the teacher is untouched); offline top-k
data with k = V trains the same as the online teacher.

Teachers: the tiny preset cut to one layer. For the formula tests its head is scaled ×10 (a
random model's logits are near-uniform, KL to the student ≈ 0.03 nats; scaled ≈ 1.2). For the
training tests it is first trained 12 causal-LM steps on the data: a random sharp teacher is a
function the student barely moves towards in 8 steps (measured: 1.20 -> 1.16 nats), a teacher
that learned the rows' pattern is one it can follow (measured: 0.44 -> 0.20).
"""
import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError, UserError
from training.strategy import make_runtime

RT = make_runtime("one_device", "fp32")

from model.decoder import build_model  # noqa: E402
from model.losses import mtp_loss, total_sequence_aux_loss  # noqa: E402
from training.data import TEACHER_IDS, TEACHER_LOGPROBS, eval_stream, open_packed  # noqa: E402
from training.distill_losses_test import np_ce, np_jsd, np_kl, np_mean, np_softmax, np_topk  # noqa: E402
from training.distill_task import LOSSES, DistillSpec, DistillTask, evaluate_distill  # noqa: E402
from training.lm_task import CausalLMTask  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.teacher_logits import check_teacher_data, precompute_teacher_topk  # noqa: E402
from training.testdata import write_packed  # noqa: E402
from training.testing_worker import tiny_model_config, trainer_config, weights  # noqa: E402

SEQ = 32
STUDENT = tiny_model_config()
TEACHER = tiny_model_config(1)
V = STUDENT.vocab_size


def make_teacher():
    t = build_model(TEACHER, seed=21)
    for v in t.weights:
        if v.path == "lm_head/kernel":
            v.assign(v * 10.0)
    return t


@pytest.fixture(scope="module")
def teacher():
    return make_teacher()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return open_packed(write_packed(str(tmp_path_factory.mktemp("packed")), SEQ, V, train_rows=24, eval_rows=8))


@pytest.fixture(scope="module")
def batch(data):
    b = dict(next(iter(eval_stream(data.eval_files, SEQ, batch_size=3, max_batches=1))))
    lm = np.ones((3, SEQ), np.int32)
    lm[0, :10] = 0                                    # SFT-style: early tokens are not targets
    b["loss_mask"] = tf.constant(lm)
    return b


def np_valid(ids, seg, lm):
    """Position i counts when token i+1 exists, is a target, and is in i's own document."""
    b, t = ids.shape
    v = np.zeros((b, t), np.float64)
    for r in range(b):
        for i in range(t - 1):
            v[r, i] = float(lm[r, i + 1] == 1 and seg[r, i] == seg[r, i + 1] != 0)
    return v


def _logits(model, batch, training):
    return model.forward(batch["input_ids"], position_ids=batch["positions"], segment_ids=batch["segment_ids"],
                         training=training, return_router=True, with_mtp=training)


def _np_divergence(loss, ps, pt, beta, tau, valid):
    if loss == "kd":
        return tau ** 2 * np_mean(np_kl(pt, ps), valid)
    if loss == "forward_kl":
        return np_mean(np_kl(pt, ps), valid)
    if loss == "reverse_kl":
        return np_mean(np_kl(ps, pt), valid)
    return np_mean(np_jsd(ps, pt, beta), valid)


@pytest.mark.parametrize("loss", LOSSES)
def test_compute_matches_numpy_formulas(loss, teacher, batch):
    student = build_model(STUDENT, seed=3)
    spec = DistillSpec(loss=loss, alpha=0.7, temperature=2.0, beta=0.3)
    task = DistillTask(spec, teacher)
    ids, seg, lm = (batch[k].numpy() for k in ("input_ids", "segment_ids", "loss_mask"))
    valid = np_valid(ids, seg, lm)
    assert float(task.weight(batch)) == valid.sum()

    out = task.compute(student, batch, True)
    ref = _logits(student, batch, True)
    s = ref["logits"].numpy().astype(np.float64)
    t = teacher(batch["input_ids"], position_ids=batch["positions"], segment_ids=batch["segment_ids"]).numpy()
    labels = np.concatenate([ids[:, 1:], np.zeros((3, 1), ids.dtype)], 1)
    ce = np_ce(s, labels, valid)
    kl1 = np_mean(np_kl(np_softmax(t), np_softmax(s)), valid)
    m = {k: float(v) for k, v in out.metrics.items()}
    assert m["ce"] == pytest.approx(ce, rel=1e-5)
    assert m["kl_to_teacher"] == pytest.approx(kl1, rel=1e-4)
    if loss == "ce":
        objective = ce
    else:
        d = _np_divergence(loss, np_softmax(s, 2.0), np_softmax(t, 2.0), 0.3, 2.0, valid)
        assert m["distill_loss"] == pytest.approx(d, rel=1e-4)
        objective = 0.7 * d + 0.3 * ce
    # MTP (hard labels) and the balance loss are added as CausalLMTask adds them.
    tm = tf.not_equal(batch["segment_ids"], 0)
    mtp = float(mtp_loss(ref["mtp_logits"], batch["input_ids"], batch["loss_mask"], 0.3, batch["segment_ids"]))
    aux = float(total_sequence_aux_loss(ref["router"], 3, SEQ, STUDENT.num_experts_per_tok, 1e-4,
                                        token_mask=tm, segment_ids=batch["segment_ids"]))
    assert m["mtp_loss"] == pytest.approx(mtp, rel=1e-5) and m["aux_loss"] == pytest.approx(aux, rel=1e-4)
    assert float(out.loss) == pytest.approx(objective + mtp + aux, rel=1e-5)
    assert len(out.routers) > 0 and out.token_mask is not None

    ev = task.compute(student, batch, False)
    assert float(ev.loss) == pytest.approx(ce, rel=1e-5)
    assert {"ce", "distill_loss", "kl_to_teacher", "loss"} <= set(ev.metrics)
    assert float(ev.metrics["kl_to_teacher"]) == pytest.approx(kl1, rel=1e-4)


@pytest.mark.parametrize("loss", ["kd", "reverse_kl", "jsd"])
def test_offline_topk_features_give_the_online_numbers_at_k_equal_v(loss, teacher, batch):
    student = build_model(STUDENT, seed=3)
    spec = DistillSpec(loss=loss, alpha=0.6, temperature=1.0, beta=0.4)
    t = teacher(batch["input_ids"], position_ids=batch["positions"], segment_ids=batch["segment_ids"]).numpy()
    ids, lp = np_topk(t, V, 1.0)
    offline = {**batch, TEACHER_IDS: tf.constant(ids, tf.int32), TEACHER_LOGPROBS: tf.constant(lp, tf.float32)}
    on = DistillTask(spec, teacher).compute(student, batch, True).metrics
    off = DistillTask(spec).compute(student, offline, True).metrics
    for k in ("loss", "ce", "distill_loss", "kl_to_teacher"):
        assert float(off[k]) == pytest.approx(float(on[k]), rel=1e-4, abs=1e-5), k
    # k < V: the bucketed KL is a lower bound of the full one.
    ids8, lp8 = np_topk(t, 8, 1.0)
    small = {**batch, TEACHER_IDS: tf.constant(ids8, tf.int32), TEACHER_LOGPROBS: tf.constant(lp8, tf.float32)}
    kl8 = float(DistillTask(spec).compute(student, small, False).metrics["kl_to_teacher"])
    assert 0.0 < kl8 <= float(on["kl_to_teacher"]) + 1e-5


def test_bad_specs_and_missing_teacher(batch, teacher):
    with pytest.raises(ConfigError, match="loss"):
        DistillSpec(loss="mse")
    with pytest.raises(ConfigError, match="alpha"):
        DistillSpec(alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillSpec(temperature=0.0)
    with pytest.raises(ConfigError, match="beta"):
        DistillSpec(beta=-0.1)
    student = build_model(STUDENT, seed=3)
    with pytest.raises(UserError, match="no teacher"):
        DistillTask().compute(student, batch, True)
    both = {**batch, TEACHER_IDS: tf.zeros([3, SEQ, 2], tf.int32), TEACHER_LOGPROBS: tf.zeros([3, SEQ, 2])}
    with pytest.raises(UserError, match="use one"):
        DistillTask(teacher=teacher).compute(student, both, True)


# ------------------------------------------------------------------ through the engine
SPEC = DistillSpec(loss="kd", alpha=0.5, temperature=2.0)


def _fit(data, task, out):
    cfg = trainer_config(steps=8, checkpoint_every=8)
    tr = Trainer(cfg, RT, lambda: build_model(STUDENT, seed=cfg.seed), task, str(out))
    res = tr.fit(data, progress=False)
    return tr, res


@pytest.fixture(scope="module")
def online(data, tmp_path_factory):
    cfg = trainer_config(steps=12, checkpoint_every=12, lr=1e-2)
    pre = Trainer(cfg, RT, lambda: build_model(TEACHER, seed=21), CausalLMTask(),
                  str(tmp_path_factory.mktemp("teacher")))
    teacher = pre.fit(data, progress=False).model
    before = weights(teacher)
    task = DistillTask(SPEC, teacher)
    cfg = trainer_config()
    start = evaluate_distill(task, build_model(STUDENT, seed=cfg.seed), data, batch_size=4, max_batches=2)
    tr, res = _fit(data, task, tmp_path_factory.mktemp("online"))
    end = evaluate_distill(task, tr.model, data, batch_size=4, max_batches=2)
    return dict(teacher=teacher, before=before, after=weights(teacher), res=res, student=weights(tr.model),
                start=start, end=end)


@pytest.mark.slow
def test_online_teacher_kl_falls_and_teacher_is_frozen(online):
    res = online["res"]
    kls = [r["kl_to_teacher"] for r in res.history if "kl_to_teacher" in r]
    assert len(kls) == 8 and kls[-1] < 0.7 * kls[0], kls
    assert online["end"]["eval_kl_to_teacher"] < 0.7 * online["start"]["eval_kl_to_teacher"], \
        (online["start"], online["end"])
    for k, v in online["before"].items():
        assert np.array_equal(v, online["after"][k]), k
    assert res.nonfinite_steps == 0 and np.isfinite(res.final_eval["eval_loss"])
    # The engine's held-out pass (micro 4 × 2 eval batches) reports the task's eval metrics too:
    # the same numbers evaluate_distill gives, and eval_loss is the student's CE.
    fe, end = res.final_eval, online["end"]
    assert fe["eval_kl_to_teacher"] == pytest.approx(end["eval_kl_to_teacher"], rel=1e-5)
    assert fe["eval_loss"] == pytest.approx(fe["eval_ce"], rel=1e-6)
    assert {"ce", "distill_loss", "mtp_loss", "aux_loss"} <= set(res.history[0])


@pytest.mark.slow
def test_offline_topk_data_trains_like_the_online_teacher(online, data, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("offline") / "teacher_topk")
    precompute_teacher_topk(online["teacher"], data, root, k=V, temperature=SPEC.temperature, batch_size=8)
    check_teacher_data(root, data.root, vocab_size=V, k=V, temperature=SPEC.temperature)
    off = open_packed(root)
    assert off.teacher_topk == V
    tr, res = _fit(off, DistillTask(SPEC), tmp_path_factory.mktemp("offline_run"))
    on_hist = [r for r in online["res"].history if "loss" in r]
    off_hist = [r for r in res.history if "loss" in r]
    assert len(on_hist) == len(off_hist) == 8
    for a, b in zip(on_hist, off_hist, strict=True):
        for k in ("loss", "ce", "distill_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (a["step"], k)
    after = weights(tr.model)
    for k, v in online["student"].items():
        np.testing.assert_allclose(after[k], v, atol=2e-4, err_msg=k)
    assert res.final_eval["eval_loss"] == pytest.approx(online["res"].final_eval["eval_loss"], rel=1e-4)
