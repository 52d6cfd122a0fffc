import contextlib
import json
import os
import shutil

import numpy as np
import pytest

from model import ops
from model.checkpoint.hf import import_hf_checkpoint, load_hf_checkpoint, save_hf_checkpoint
from model.checkpoint.reader import CheckpointReader, dequant_fp8
from model.checkpoint.safetensors_io import SafetensorsFile, write_safetensors
from model.conftest import PARITY_FIXTURES, fixture_dir, load_fixture_model, reference
from model.errors import CheckpointError

TOL = 1e-4


@pytest.mark.parametrize("custom_ops", [
    pytest.param(True, marks=pytest.mark.skipif(not ops.available(), reason="custom ops not built")), False],
    ids=["ops-on", "ops-off"])
@pytest.mark.parametrize("name", PARITY_FIXTURES)
def test_logits_match_transformers(name, custom_ops):
    """Both with seekline's custom ops (grouped-matmul MoE, fused RMSNorm) and on the pure-TF paths."""
    m = load_fixture_model(name)
    ref = reference(name)
    with contextlib.nullcontext() if custom_ops else ops.disabled():
        err = np.abs(m(ref["input_ids"]).numpy() - ref["logits"]).max()
        mask = ref["attention_mask"].astype(bool)
        got = m(ref["padded_input_ids"], attention_mask=ref["attention_mask"]).numpy()
    err_pad = np.abs(got - ref["padded_logits"])[mask].max()
    print(f"{name} (custom ops {'on' if custom_ops else 'off'}): max abs err {err:.2e} "
          f"(left-padded batch {err_pad:.2e})")
    assert err <= TOL and err_pad <= TOL


def test_mtp_keys_are_loaded():
    m = load_fixture_model("dsv3_qlora")
    assert len(m.mtp) == 1
    r = CheckpointReader(fixture_dir("dsv3_qlora"))
    np.testing.assert_array_equal(m.mtp[0].eh_proj.kernel.numpy(), r.get("model.layers.3.eh_proj.weight").T)
    np.testing.assert_array_equal(m.mtp[0].block.mlp.experts_down.numpy()[5],
                                  r.get("model.layers.3.mlp.experts.5.down_proj.weight").T)
    out = m.forward(reference("dsv3_qlora")["input_ids"], with_mtp=True)
    assert out["mtp_logits"][0].shape == out["logits"].shape


def test_mtp_logits_match_transformers_mtp_model():
    m = load_fixture_model("dsv3_qlora")
    ref = reference("dsv3_qlora")
    out = m.forward(ref["input_ids"], with_mtp=True)
    # depth 1 at position i predicts t_{i+2}; the last position has no t_{i+1} input
    err = np.abs(out["mtp_logits"][0].numpy()[:, :-1] - ref["mtp_logits"]).max()
    print(f"dsv3_qlora MTP: max abs err {err:.2e}")
    assert err <= TOL


def test_with_mtp_false_ignores_mtp_keys():
    m = load_hf_checkpoint(fixture_dir("dsv3_qlora"), with_mtp=False)
    assert not m.mtp and m.cfg.num_nextn_predict_layers == 0


def test_fp8_dequant_blocks():
    q = np.arange(12, dtype=np.float32).reshape(3, 4)
    s = np.array([[1.0, 10.0], [100.0, 1000.0]], np.float32)
    got = dequant_fp8(q, s, (2, 3))
    want = q * np.array([[1, 1, 1, 10], [1, 1, 1, 10], [100, 100, 100, 1000]])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["dsv3_qlora", "qwen2_gqa_tied"])
def test_export_is_bit_identical_to_source(tmp_path, name):
    m = load_fixture_model(name)
    out = save_hf_checkpoint(m, str(tmp_path / "exp"))
    src, exp = CheckpointReader(fixture_dir(name)), CheckpointReader(out)
    assert sorted(src.keys()) == sorted(exp.keys())
    for k in src.keys():
        np.testing.assert_array_equal(exp.get(k), src.get(k), err_msg=k)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model_type"] == json.load(open(os.path.join(fixture_dir(name), "config.json")))["model_type"]
    assert [p for p in os.listdir(tmp_path) if p != "exp"] == []   # no temp dir left behind


def test_export_bf16_sharded_reloads(tmp_path):
    name = "dsv3_plain_bf16_sharded"
    m = load_fixture_model(name)
    out = save_hf_checkpoint(m, str(tmp_path / "exp"), dtype="bfloat16", max_shard_bytes=50_000)
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    src, exp = CheckpointReader(fixture_dir(name)), CheckpointReader(out)
    for k in src.keys():   # bf16 source -> bf16 export: identical values
        np.testing.assert_array_equal(exp.get(k), src.get(k), err_msg=k)
    ref = reference(name)
    again = load_hf_checkpoint(out)
    assert np.abs(again(ref["input_ids"]).numpy() - ref["logits"]).max() <= TOL


def test_transformers_loaded_seekline_exports(tmp_path):
    """export_check.json is written by scripts/make_hf_fixtures.py --verify-export: transformers
    (in .venv-ref) loaded seekline's exports and reproduced the reference logits. Re-export with
    today's code and require byte-identical files, so the check still covers this exporter."""
    import hashlib

    from model.checkpoint.export_fixtures import FIXTURES

    for name in PARITY_FIXTURES:
        info = json.load(open(os.path.join(fixture_dir(name), "export_check.json")))
        assert info["max_abs_err_vs_reference"] <= TOL, (name, info)
        assert info.get("mtp_max_abs_err_vs_reference", 0.0) <= TOL, (name, info)
        assert name in FIXTURES
        out = save_hf_checkpoint(load_hf_checkpoint(fixture_dir(name)), str(tmp_path / name))
        now = {fn: hashlib.sha256(open(os.path.join(out, fn), "rb").read()).hexdigest() for fn in sorted(os.listdir(out))}
        assert now == info["exported_sha256"], f"{name}: export changed since transformers verified it; re-run the export verification (model/checkpoint/export_fixtures.py)"


def test_import_native_from_fp8(tmp_path):
    out = str(tmp_path / "native")
    meta = import_hf_checkpoint(fixture_dir("dsv3_fp8"), out)
    assert meta["format"].startswith("seekline") and meta["dtype"] == "bfloat16"
    assert json.load(open(os.path.join(out, "seekline.json"))) == meta
    assert "quantization_config" not in json.load(open(os.path.join(out, "config.json")))
    assert all(SafetensorsFile(os.path.join(out, "model.safetensors")).dtype(k) != "F8_E4M3"
               for k in SafetensorsFile(os.path.join(out, "model.safetensors")).keys())
    ref = reference("dsv3_fp8")
    m = load_hf_checkpoint(out)
    # bf16 storage of dequantised weights: bounded by bf16 rounding, not exact
    assert np.abs(m(ref["input_ids"]).numpy() - ref["logits"]).max() < 5e-2
    assert sorted(os.listdir(tmp_path)) == ["native"]


def test_import_fp32_is_exact_and_replaces_atomically(tmp_path):
    out = str(tmp_path / "native")
    os.makedirs(out)
    open(os.path.join(out, "old.txt"), "w").write("old")
    import_hf_checkpoint(fixture_dir("qwen2_gqa_tied"), out)
    assert not os.path.exists(os.path.join(out, "old.txt"))
    ref = reference("qwen2_gqa_tied")
    assert np.abs(load_hf_checkpoint(out)(ref["input_ids"]).numpy() - ref["logits"]).max() <= TOL
    assert sorted(os.listdir(tmp_path)) == ["native"]


# ---------------------------------------------------------------------- bad input
def _corrupt(tmp_path, edit):
    src = fixture_dir("qwen2_gqa_tied")
    d = tmp_path / "ckpt"
    shutil.copytree(src, d)
    f = SafetensorsFile(str(d / "model.safetensors"))
    tensors = {k: f.get_f32(k) for k in f.keys()}
    edit(tensors)
    del f
    write_safetensors(str(d / "model.safetensors"), tensors)
    return str(d)


def test_missing_tensor_names_key_and_shape(tmp_path):
    d = _corrupt(tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(CheckpointError,
                       match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias' \(expected shape \[32\]"):
        load_hf_checkpoint(d)


def test_extra_tensor_names_key_and_shape(tmp_path):
    d = _corrupt(tmp_path, lambda t: t.update({"model.layers.9.foo.weight": np.zeros((3, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.9\.foo\.weight' with shape \[3, 2\]"):
        load_hf_checkpoint(d)


def test_misshaped_tensor_names_both_shapes(tmp_path):
    d = _corrupt(tmp_path, lambda t: t.update({"model.norm.weight": np.ones((65,), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' has shape \[65\], expected \[64\]"):
        load_hf_checkpoint(d)


def test_failed_import_keeps_existing_output(tmp_path):
    d = _corrupt(tmp_path, lambda t: t.pop("model.norm.weight"))
    out = tmp_path / "native"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        import_hf_checkpoint(d, str(out))
    assert (out / "keep.txt").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "native"]


def test_unsupported_config_field_names_field(tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(fixture_dir("qwen2_gqa_tied"), d)
    cfg = json.load(open(d / "config.json"))
    cfg["rope_parameters"] = {"rope_type": "longrope", "factor": 2.0, "rope_theta": 10000.0}
    json.dump(cfg, open(d / "config.json", "w"))
    from model.errors import ConfigError
    with pytest.raises(ConfigError, match=r"config\.json.*rope_scaling\.type.*longrope"):
        load_hf_checkpoint(str(d))


def test_missing_dir_and_missing_shard(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_hf_checkpoint(str(tmp_path / "nope"))
    d = tmp_path / "sharded"
    shutil.copytree(fixture_dir("dsv3_plain_bf16_sharded"), d)
    os.remove(d / "model-00002-of-00004.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00004.safetensors"):
        load_hf_checkpoint(str(d))


def test_with_mtp_true_requires_mtp_keys():
    # transformers' save_pretrained drops the MTP layer although config.json keeps
    # num_nextn_predict_layers=1: the default loads without MTP, with_mtp=True names the gap.
    assert not load_fixture_model("dsv3_plain_bf16_sharded").mtp
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.3\.embed_tokens\.weight'"):
        load_hf_checkpoint(fixture_dir("dsv3_plain_bf16_sharded"), with_mtp=True)


def test_failed_export_keeps_the_old_dir_and_leaves_no_temp(tmp_path, monkeypatch):
    import model.checkpoint.hf as hf

    out = tmp_path / "exp"
    out.mkdir()
    (out / "previous.txt").write_text("keep me")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "_write_shards", boom)
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(load_hf_checkpoint(fixture_dir("qwen2_gqa_tied")), str(out))
    assert os.listdir(tmp_path) == ["exp"] and (out / "previous.txt").read_text() == "keep me"
