"""LoRA: module selection by HF name, freezing, PEFT files, merging, parity with transformers/PEFT.

Reference numbers come from tests/fixtures/lora/<name>/ (scripts/make_lora_fixtures.py, run in the
reference venv on seekline's export of model/lora_fixtures.py): transformers' logits on the merged
export, PEFT's logits on the base fixture + adapter folder, and the export's hashes.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from model.checkpoint.hf import load_hf_checkpoint, save_hf_checkpoint
from model.conftest import fixture_dir
from model.errors import CheckpointError, ConfigError
from model.lora import (
    ExpertProjection,
    LoraSpec,
    adapter_tensors,
    apply_lora,
    load_adapters,
    lora_modules,
    lora_parameter_counts,
    lora_spec,
    lora_variables,
    merge_lora,
    save_adapters,
)
from model.lora_fixtures import FIXTURES, LORA_FIXTURES, adapted_fixture_model, set_fixture_adapters

ATOL = 1e-4


def _lora_fixture(name):
    d = os.path.join(LORA_FIXTURES, name)
    return d, np.load(os.path.join(d, "reference.npz")), json.load(open(os.path.join(d, "check.json")))


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------- spec
@pytest.mark.parametrize("kw,field", [
    (dict(rank=0), "rank"), (dict(rank=2.5), "rank"), (dict(alpha=0), "alpha"),
    (dict(dropout=1.0), "dropout"), (dict(target_modules="q_proj"), "target_modules"),
    (dict(target_modules=()), "target_modules"),
    (dict(include_experts=True, target_modules=("attention", "q_proj")), "include_experts"),
    (dict(include_experts="yes"), "include_experts"),
])
def test_bad_spec_is_a_one_line_config_error_naming_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        LoraSpec(**kw)
    assert f"LoraSpec.{field}" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- selection and freezing
def test_modules_selected_by_hf_name_rest_frozen_counts_by_formula():
    """dsv3_qlora: 3 layers (layer 0 dense, 1-2 MoE with one shared expert) + an MTP layer 3.
    Dims from its config.json: hidden 32, q_lora 24, 4 heads × (nope 8 + rope 8), kv_lora 16,
    v 12, intermediate 64, moe_intermediate 16 (× 1 shared expert)."""
    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    total_before = sum(int(np.prod(v.shape)) for v in model.weights)
    names = apply_lora(model, LoraSpec(rank=3, alpha=6.0, target_modules=("q_b_proj", "down_proj")))
    assert names == ["model.layers.0.self_attn.q_b_proj", "model.layers.0.mlp.down_proj",
                     "model.layers.1.self_attn.q_b_proj", "model.layers.1.mlp.shared_experts.down_proj",
                     "model.layers.2.self_attn.q_b_proj", "model.layers.2.mlp.shared_experts.down_proj"]
    r = 3
    want = 3 * r * (24 + 4 * 16) + r * (64 + 32) + 2 * r * (16 + 32)   # r·(in + out) per module
    assert lora_parameter_counts(model) == {"trainable": want, "total": total_before + want, "lora": want}
    adapters = {id(v) for m in lora_modules(model).values() for v in (m.lora_a, m.lora_b)}
    assert {id(v) for v in model.trainable_variables} == adapters
    # MTP modules (model.layers.3.*) and the router are never adapted
    assert not any(".layers.3." in n for n in lora_modules(model))
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora(model, LoraSpec())


def test_all_linear_and_freeze_rest_false():
    model = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    trainable_before = {id(v) for v in model.trainable_variables}
    names = apply_lora(model, LoraSpec(rank=2, freeze_rest=False))
    assert len(names) == 2 * 7 and names[0] == "model.layers.0.self_attn.q_proj"
    base = {id(v) for m in lora_modules(model).values() for v in [m.kernel] + ([m.bias] if m.bias is not None else [])}
    now = {id(v) for v in model.trainable_variables}
    adapters = {id(v) for m in lora_modules(model).values() for v in (m.lora_a, m.lora_b)}
    assert now == (trainable_before - base) | adapters    # embeddings/norms still train, kernels not


@pytest.mark.parametrize("fixture,group,want", [
    ("dsv3_qlora", "attention", {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}),
    ("qwen2_gqa_tied", "attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
    ("qwen2_gqa_tied", "mlp", {"gate_proj", "up_proj", "down_proj"}),
])
def test_target_groups_expand_to_what_the_architecture_has(fixture, group, want):
    model = load_hf_checkpoint(fixture_dir(fixture))
    names = apply_lora(model, LoraSpec(rank=2, target_modules=(group,)))
    assert {n.rsplit(".", 1)[-1] for n in names} == want
    assert all(".mlp.experts." not in n for n in names)


def test_unknown_target_lists_the_modules_that_exist():
    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    with pytest.raises(ConfigError) as e:
        apply_lora(model, LoraSpec(target_modules=("q_proj", "o_proj")))
    msg = str(e.value)
    assert "['q_proj']" in msg and "q_a_proj" in msg and "kv_b_proj" in msg and "\n" not in msg
    assert not lora_modules(model)                          # nothing attached on error


# ---------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", list(FIXTURES))
def test_adapted_and_merged_logits_match_transformers_and_export_is_the_verified_one(name, tmp_path):
    fx, ref, check = _lora_fixture(name)
    ids = ref["input_ids"]
    model = adapted_fixture_model(name)
    adapted = model(ids).numpy()
    # the adapters matter: transformers' merged logits are far from the base model's
    assert np.abs(ref["merged_logits"] - ref["base_logits"]).max() > 0.1
    np.testing.assert_allclose(adapted, ref["merged_logits"], rtol=0, atol=ATOL)
    if "peft_logits" in ref.files:      # PEFT on the base fixture + the fixture's adapter folder
        np.testing.assert_allclose(adapted, ref["peft_logits"], rtol=0, atol=ATOL)
    else:
        assert "peft_note" in check     # why PEFT could not check this one is recorded
    # the adapter folder PEFT was checked on is the one save_adapters writes today
    save_adapters(model, str(tmp_path / "adapter"), base_model_name_or_path=check["base"])
    for fn in ("adapter_model.safetensors", "adapter_config.json"):
        assert _sha(tmp_path / "adapter" / fn) == _sha(os.path.join(fx, "adapter", fn)), fn
    merge_lora(model)
    assert not lora_modules(model)
    np.testing.assert_allclose(model(ids).numpy(), ref["merged_logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(model(ids).numpy(), adapted, rtol=0, atol=2e-5)   # fp32 merge
    out = save_hf_checkpoint(model, str(tmp_path / "merged"))
    now = {fn: _sha(os.path.join(out, fn)) for fn in sorted(os.listdir(out))}
    assert now == check["merged_sha256"], (
        f"{name}: merged export changed since transformers checked it; re-run "
        "model/lora_fixtures.py + scripts/make_lora_fixtures.py")


# ---------------------------------------------------------------------- PEFT folders
def test_load_adapters_attaches_the_fixture_adapter_exactly():
    name = "dsv3_qlora"
    fx, ref, _ = _lora_fixture(name)
    model = load_hf_checkpoint(fixture_dir(FIXTURES[name][0]))
    model(ref["input_ids"])                 # trace the inference forward before adapters exist
    names = load_adapters(model, os.path.join(fx, "adapter"))
    assert len(names) == 24 and all(p.trainable is False for m in lora_modules(model).values()
                                    for p in [m.kernel])
    # same tensors as the seeded ones the fixture was made from
    seeded = adapted_fixture_model(name)
    got, want = adapter_tensors(model), adapter_tensors(seeded)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    # the cached forward was retraced with the adapters
    np.testing.assert_allclose(model(ref["input_ids"]).numpy(), ref["merged_logits"], rtol=0, atol=ATOL)


def test_load_into_existing_adapters_and_save_round_trip(tmp_path):
    spec, seed = FIXTURES["qwen2_gqa_tied"][1:]
    src = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    apply_lora(src, spec)
    set_fixture_adapters(src, seed + 100)
    save_adapters(src, str(tmp_path / "a"))
    dst = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    apply_lora(dst, spec)                   # e.g. a training run's model, adapters already attached
    load_adapters(dst, str(tmp_path / "a"))
    got, want = adapter_tensors(dst), adapter_tensors(src)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    cfg = json.load(open(tmp_path / "a" / "adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["use_rslora"] is True
    assert cfg["target_modules"] == ["q_proj", "o_proj", "k_proj", "v_proj", "gate_proj", "down_proj"]
    # a model with different adapters refuses the folder
    other = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    apply_lora(other, LoraSpec(rank=2, target_modules=("q_proj",)))
    with pytest.raises(CheckpointError, match="does not fit the model's adapters"):
        load_adapters(other, str(tmp_path / "a"))


def _copy_adapter(name, dst):
    shutil.copytree(os.path.join(LORA_FIXTURES, name, "adapter"), dst)
    return dst


def test_adapter_for_another_base_is_a_clear_error(tmp_path):
    qwen_adapter = os.path.join(LORA_FIXTURES, "qwen2_gqa_tied", "adapter")
    dsv3 = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    with pytest.raises(CheckpointError) as e:
        load_adapters(dsv3, qwen_adapter)
    assert "does not have" in str(e.value) and "different base" in str(e.value)
    assert not lora_modules(dsv3)                           # validated before anything attached
    # same module names, other sizes: the Qwen2 adapter on a Qwen2 with a wider hidden size
    from model.config import ModelConfig
    from model.decoder import build_model
    cfg = ModelConfig.from_json_file(os.path.join(fixture_dir("qwen2_gqa_tied"), "config.json"))
    wide = build_model(cfg.replace(hidden_size=128), seed=0)
    with pytest.raises(CheckpointError, match=r"down_proj\.lora_B\.weight' has shape \[64, 4\], this model needs \[128, 4\]"):
        load_adapters(wide, qwen_adapter)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(use_dora=True), "use_dora"),
    (lambda c: c.update(peft_type="IA3"), "peft_type"),
    (lambda c: c.update(r=0), "'r'"),
    (lambda c: c.update(bias="all"), "'bias'"),
])
def test_unsupported_adapter_config_names_the_field(tmp_path, edit, match):
    d = _copy_adapter("qwen2_gqa_tied", str(tmp_path / "a"))
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    edit(cfg)
    json.dump(cfg, open(os.path.join(d, "adapter_config.json"), "w"))
    model = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    with pytest.raises(ConfigError, match=match):
        load_adapters(model, d)


def test_missing_files_and_foreign_tensors(tmp_path):
    model = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    with pytest.raises(CheckpointError, match="adapter_config.json not found"):
        load_adapters(model, str(tmp_path))
    from safetensors.numpy import load_file, save_file
    d = _copy_adapter("qwen2_gqa_tied", str(tmp_path / "a"))
    t = load_file(os.path.join(d, "adapter_model.safetensors"))
    t.pop("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
    t["base_model.model.model.embed_tokens.lora_embedding_A"] = np.zeros((4, 256), np.float32)
    save_file(t, os.path.join(d, "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor 'base_model.model.model.embed_tokens"):
        load_adapters(model, d)
    t.pop("base_model.model.model.embed_tokens.lora_embedding_A")
    save_file(t, os.path.join(d, "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor '.*layers\.1\.mlp\.down_proj\.lora_B"):
        load_adapters(model, d)


def test_merge_without_adapters_is_an_error():
    model = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        merge_lora(model)


# ---------------------------------------------------------------------- routed experts
EXPERTS = "dsv3_experts"      # dsv3_qlora + include_experts (model/lora_fixtures.py)


def _moes(model):
    from model.layers.moe import MoE
    return [layer for layer in model._flatten_layers() if isinstance(layer, MoE)]


def test_include_experts_selects_every_routed_expert_counts_by_formula():
    """dsv3_qlora: layers 1-2 are MoE with 8 routed experts (hidden 32, moe_intermediate 16) and
    one shared expert; layer 0 is dense (intermediate 64); layer 3 is the MTP module (MoE too)."""
    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    total_before = sum(int(np.prod(v.shape)) for v in model.weights)
    names = apply_lora(model, LoraSpec(rank=3, alpha=6.0, target_modules=("down_proj",),
                                       include_experts=True))
    experts = lambda i: [f"model.layers.{i}.mlp.experts.{j}.down_proj" for j in range(8)]  # noqa: E731
    assert names == ["model.layers.0.mlp.down_proj",
                     *experts(1), "model.layers.1.mlp.shared_experts.down_proj",
                     *experts(2), "model.layers.2.mlp.shared_experts.down_proj"]
    r = 3
    want = r * (64 + 32) + 2 * (8 * r * (16 + 32) + r * (16 + 32))   # r·(in + out) per module
    assert lora_parameter_counts(model) == {"trainable": want, "total": total_before + want, "lora": want}
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in lora_variables(model)}
    main, mtp = _moes(model)[:2], _moes(model)[2:]
    assert [m.expert_lora_projections for m in main] == [("down",), ("down",)] and len(mtp) == 1
    assert not mtp[0].has_expert_lora                                  # MTP modules never adapted
    assert all(not m.experts_down.trainable for m in main)
    mod = lora_modules(model)["model.layers.2.mlp.experts.5.down_proj"]
    assert isinstance(mod, ExpertProjection) and (mod.index, mod.in_features, mod.out_features) == (5, 16, 32)
    # all-linear / the mlp group reach all three routed projections; a dense model has none
    for targets in (("all-linear",), ("mlp",)):
        m = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
        got = apply_lora(m, LoraSpec(rank=2, target_modules=targets, include_experts=True))
        assert sum(".mlp.experts." in n for n in got) == 2 * 8 * 3
    qwen = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    assert len(apply_lora(qwen, LoraSpec(rank=2, include_experts=True))) == 2 * 7


def test_expert_fixture_was_checked_with_the_experts_moved():
    """What transformers saw (check.json): 48 routed-expert modules in the adapter and merged
    routed-expert weights that differ from the base's, so the parity test above covers them."""
    _, ref, check = _lora_fixture(EXPERTS)
    assert check["routed_expert_modules"] == 2 * 8 * 3 and check["routed_experts_delta_max_abs"] > 1e-3
    assert FIXTURES[EXPERTS][1].include_experts


def test_load_adapters_attaches_routed_expert_adapters_exactly():
    fx, ref, _ = _lora_fixture(EXPERTS)
    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    names = load_adapters(model, os.path.join(fx, "adapter"))
    # o_proj × 3, dense MLP × 3, per MoE layer 8 experts × 3 + the shared expert × 3
    assert len(names) == 3 + 3 + 2 * (8 * 3 + 3) and lora_spec(model).include_experts
    seeded = adapted_fixture_model(EXPERTS)
    got, want = adapter_tensors(model), adapter_tensors(seeded)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    np.testing.assert_allclose(model(ref["input_ids"]).numpy(), ref["merged_logits"], rtol=0, atol=ATOL)
    merged = merge_lora(model)
    assert merged == names and not lora_modules(model) and not any(m.has_expert_lora for m in _moes(model))
    np.testing.assert_allclose(model(ref["input_ids"]).numpy(), ref["merged_logits"], rtol=0, atol=ATOL)


def test_expert_adapter_files_are_validated(tmp_path):
    from safetensors.numpy import load_file, save_file
    key = "base_model.model.model.layers.1.mlp.experts.3.gate_proj.lora_{}.weight"
    d = _copy_adapter(EXPERTS, str(tmp_path / "a"))
    path = os.path.join(d, "adapter_model.safetensors")
    t = load_file(path)
    t[key.format("A")] = np.zeros((3, 31), np.float32)                 # gate_proj in = hidden 32
    save_file(t, path)
    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    with pytest.raises(CheckpointError, match=r"experts\.3\.gate_proj\.lora_A\.weight' has shape \[3, 31\], "
                                              r"this model needs \[3, 32\]"):
        load_adapters(model, d)
    t.pop(key.format("A"))
    t.pop(key.format("B"))
    save_file(t, path)
    with pytest.raises(CheckpointError, match=r"experts\.3\.gate_proj.*7 of this layer's 8 routed experts"):
        load_adapters(model, d)
    assert not lora_modules(model) and not lora_variables(model)       # nothing attached on error


def test_generation_with_unmerged_expert_adapters_equals_generation_after_merging():
    """Prefill takes the dispatch path, single-token decode the gathered one (eager and XLA):
    all must see the expert adapters. Greedy tokens are checked against an uncached full-forward
    loop on the adapted model, then against generation after merge_lora."""
    from model.generation.config import GenerationConfig
    from model.generation.generate import generate
    model = adapted_fixture_model(EXPERTS)
    base = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    prompts = [[5, 9, 13, 200, 7, 3], [42, 17]]

    def greedy_reference(m, prompt, n):
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(np.argmax(m(np.asarray([ids], np.int32)).numpy()[0, -1])))
        return ids[len(prompt):]
    want = [greedy_reference(model, p, 4) for p in prompts]
    assert want != [greedy_reference(base, p, 4) for p in prompts]     # the adapters change the tokens
    unmerged = {jit: generate(model, prompts, GenerationConfig(max_new_tokens=4, jit_compile=jit)).sequences
                for jit in (False, True)}
    assert unmerged == {False: want, True: want}
    merge_lora(model)
    assert generate(model, prompts, GenerationConfig(max_new_tokens=4)).sequences == want


def test_lm_head_is_adapted_only_when_named_and_merges_exactly(tmp_path):
    """PEFT's rule: all-linear leaves the output layer alone; naming lm_head adapts it (untied
    heads only). Merged = unmerged forward; the exported head is W + s·A·B."""
    import tensorflow as tf

    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    names = apply_lora(model, LoraSpec(rank=2, target_modules=("all-linear",)))
    assert "lm_head" not in names
    model = load_hf_checkpoint(fixture_dir("dsv3_qlora"))
    names = apply_lora(model, LoraSpec(rank=2, alpha=4.0, target_modules=("o_proj", "lm_head")))
    assert names[-1] == "lm_head" and all(n.endswith(("o_proj", "lm_head")) for n in names)
    head = model.lm_head
    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.1, head.lora_a.shape).astype(np.float32)
    b = rng.normal(0, 0.1, head.lora_b.shape).astype(np.float32)
    head.lora_a.assign(a)
    head.lora_b.assign(b)
    want_w = head.kernel.numpy().astype(np.float64) + 2.0 * (a.astype(np.float64) @ b.astype(np.float64))
    ids = tf.constant(rng.integers(0, model.cfg.vocab_size, size=(1, 9)), tf.int32)
    adapted = model(ids).numpy()
    save_adapters(model, str(tmp_path / "ad"))
    saved = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert saved["base_model.model.lm_head.lora_B.weight"].shape == (model.cfg.vocab_size, 2)
    merge_lora(model)
    np.testing.assert_allclose(model(ids).numpy(), adapted, atol=1e-5)
    np.testing.assert_allclose(model.lm_head.kernel.numpy(), want_w.astype(np.float32), atol=1e-6)


def test_lm_head_of_a_tied_model_is_not_adaptable():
    model = load_hf_checkpoint(fixture_dir("qwen2_gqa_tied"))
    with pytest.raises(ConfigError, match="lm_head"):
        apply_lora(model, LoraSpec(rank=2, target_modules=("q_proj", "lm_head")))
