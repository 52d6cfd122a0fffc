"""LoRA under the training engine: only adapters move (routed-expert adapters included), resume
restores them exactly, and the trained adapters survive a PEFT save/load and a merge.

Each Trainer traces the whole train step (~10-25 s on a loaded 2-core machine), so the runs are
module fixtures shared by the assertions.
"""
import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from training.strategy import make_runtime

RT = make_runtime("one_device", "fp32")

from model.decoder import build_model  # noqa: E402
from model.layers.linear import Linear  # noqa: E402
from model.layers.moe import MoE  # noqa: E402
from model.lora import LoraSpec, apply_lora, load_adapters, lora_variables, merge_lora, save_adapters  # noqa: E402
from training.checkpoint import CheckpointStore  # noqa: E402
from training.data import open_packed  # noqa: E402
from training.lm_task import CausalLMTask  # noqa: E402
from training.loop import Trainer  # noqa: E402
from training.testdata import write_packed  # noqa: E402
from training.testing_worker import tiny_model_config, trainer_config, weights  # noqa: E402

SEQ = 32
MODEL = tiny_model_config()
SPEC = LoraSpec(rank=4, alpha=8.0)
# the MLP projections only, routed experts included: the expert stacks are what must not move
SPEC_EXPERTS = LoraSpec(rank=4, alpha=8.0, target_modules=("mlp",), include_experts=True)
# gamma 0: the aux-loss-free routing-bias update is the trainer's, not a gradient; LoRA keeps the
# base model's routing.
CFG = trainer_config(steps=4, bias_update_gamma=0.0)


def _lora_model(spec=SPEC):
    m = build_model(MODEL, seed=CFG.seed)
    apply_lora(m, spec)
    return m


def _trainer(out, spec=SPEC):
    return Trainer(CFG, RT, lambda: _lora_model(spec), CausalLMTask(), str(out))


def _is_adapter(key):
    # Linear: ".../q_a_proj/lora_A"; MoE's stacked expert adapters: ".../experts_gate_lora_A"
    return key.endswith(("/lora_A", "/lora_B", "_lora_A", "_lora_B"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return open_packed(write_packed(str(tmp_path_factory.mktemp("packed")), SEQ, MODEL.vocab_size,
                                    train_rows=16, eval_rows=8))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    tr = _trainer(tmp_path_factory.mktemp("straight"))
    before = weights(tr.model)
    res = tr.fit(data, progress=False)
    return dict(trainer=tr, res=res, before=before, after=weights(tr.model))


@pytest.mark.slow
def test_training_moves_only_the_adapters(straight):
    before, after = straight["before"], straight["after"]
    tr = straight["trainer"]
    adapters = [v for m in tr.model._flatten_layers() if isinstance(m, Linear) and m.has_lora
                for v in (m.lora_a, m.lora_b)]
    # per layer: q_a, q_b, kv_a, kv_b, o + gate/up/down (dense MLP or shared experts)
    assert len(adapters) == 2 * 8 * MODEL.num_hidden_layers
    assert {id(v) for v in tr.variables} == {id(v) for v in adapters}
    base_keys = [k for k in before if not _is_adapter(k)]
    assert base_keys and all(np.array_equal(before[k], after[k]) for k in base_keys)
    # the base weights are the plain model's, bit for bit (apply_lora touched nothing)
    plain = weights(build_model(MODEL, seed=CFG.seed))
    assert [before[k] for k in base_keys] and all(
        np.array_equal(a, b) for a, b in zip([before[k] for k in base_keys], plain.values(), strict=True))
    moved_b = [k for k in after if k.endswith("/lora_B") and np.abs(after[k]).max() > 0]
    assert len(moved_b) == sum(k.endswith("/lora_B") for k in after)       # every B left zero
    losses = [r["loss"] for r in straight["res"].history if "loss" in r]
    assert straight["res"].nonfinite_steps == 0 and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_resume_restores_the_adapters_exactly(straight, data, tmp_path):
    first = _trainer(tmp_path)
    assert first.fit(data, max_steps=2, progress=False).steps == 2
    again = _trainer(tmp_path)               # a new process would build the same LoRA model
    res = again.fit(data, progress=False)
    assert res.resumed_from == 2 and res.steps == 4
    got = weights(again.model)
    assert got.keys() == straight["after"].keys()
    for k, v in straight["after"].items():
        assert np.array_equal(got[k], v), k


@pytest.mark.slow
def test_trained_adapters_round_trip_and_merge(straight, tmp_path):
    model = straight["trainer"].model
    ids = np.random.default_rng(0).integers(2, MODEL.vocab_size, (2, 12)).astype(np.int32)
    adapted = model(ids).numpy()
    save_adapters(model, str(tmp_path / "adapter"))
    fresh = build_model(MODEL, seed=CFG.seed)
    base = fresh(ids).numpy()
    load_adapters(fresh, str(tmp_path / "adapter"))
    assert np.abs(adapted - base).max() > 1e-3                        # the training did something
    np.testing.assert_array_equal(fresh(ids).numpy(), adapted)
    merge_lora(fresh)
    np.testing.assert_allclose(fresh(ids).numpy(), adapted, rtol=0, atol=2e-5)


def test_checkpoint_keeps_the_dropout_stream_and_refuses_a_non_lora_model(tmp_path):
    m = build_model(MODEL, seed=0)
    apply_lora(m, LoraSpec(rank=2, dropout=0.1, target_modules=("o_proj",)))
    lin = [x for x in m._flatten_layers() if isinstance(x, Linear) and x.has_lora][0]
    lin(tf.ones([2, lin.in_features]), training=True)                 # advance its seed state
    saved = lin._lora_seed.state.numpy().copy()
    store = CheckpointStore(str(tmp_path / "ck"), keep=1, is_chief=True, model=m)
    store.save(1)
    lin(tf.ones([2, lin.in_features]), training=True)
    assert not np.array_equal(lin._lora_seed.state.numpy(), saved)
    store.restore_latest()
    np.testing.assert_array_equal(lin._lora_seed.state.numpy(), saved)
    plain = CheckpointStore(str(tmp_path / "ck"), keep=1, is_chief=True, model=build_model(MODEL, seed=0))
    with pytest.raises(ConfigError, match="cannot restore"):
        plain.restore_latest()


@pytest.fixture(scope="module")
def experts(data, tmp_path_factory):
    tr = _trainer(tmp_path_factory.mktemp("experts"), SPEC_EXPERTS)
    before = weights(tr.model)
    res = tr.fit(data, progress=False)
    return dict(trainer=tr, res=res, before=before, after=weights(tr.model))


@pytest.mark.slow
def test_training_with_expert_adapters_moves_only_the_adapters(experts, tmp_path):
    before, after, model = experts["before"], experts["after"], experts["trainer"].model
    moes = [m for m in model._flatten_layers() if isinstance(m, MoE)]
    adapted = [m for m in moes if m.has_expert_lora]
    # tiny: layer 0 dense, layer 1 MoE (+ the MTP block's MoE, never adapted)
    assert len(adapted) == MODEL.num_hidden_layers - 1 and len(moes) == len(adapted) + 1
    assert {id(v) for v in experts["trainer"].variables} == {id(v) for v in lora_variables(model)}
    stacks = [k for k in before if k.endswith(("/experts_gate", "/experts_up", "/experts_down"))]
    assert len(stacks) == 3 * len(moes)
    base_keys = [k for k in before if not _is_adapter(k)]
    assert all(np.array_equal(before[k], after[k]) for k in base_keys)  # expert stacks bit-identical
    expert_b = [k for k in after if k.endswith("_lora_B")]
    assert len(expert_b) == 3 * len(adapted) and all(np.abs(after[k]).max() > 0 for k in expert_b)
    losses = [r["loss"] for r in experts["res"].history if "loss" in r]
    assert experts["res"].nonfinite_steps == 0 and losses[-1] < losses[0], losses
    # the trained expert adapters survive the PEFT folder and the merge
    ids = np.random.default_rng(0).integers(2, MODEL.vocab_size, (2, 12)).astype(np.int32)
    adapted_logits = model(ids).numpy()
    save_adapters(model, str(tmp_path / "adapter"))
    fresh = build_model(MODEL, seed=CFG.seed)
    assert np.abs(adapted_logits - fresh(ids).numpy()).max() > 1e-3
    load_adapters(fresh, str(tmp_path / "adapter"))
    np.testing.assert_array_equal(fresh(ids).numpy(), adapted_logits)
    merge_lora(fresh)
    np.testing.assert_allclose(fresh(ids).numpy(), adapted_logits, rtol=0, atol=2e-5)
