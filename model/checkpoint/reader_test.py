import shutil

import numpy as np

from model.checkpoint.hf import load_hf_checkpoint
from model.checkpoint.reader import CheckpointReader
from model.checkpoint.safetensors_io import SafetensorsFile, write_safetensors
from model.conftest import fixture_dir, reference


def test_fused_expert_layout_is_accepted(tmp_path):
    """transformers' in-memory layout: experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]."""
    d = tmp_path / "fused"
    shutil.copytree(fixture_dir("dsv2_group_limited"), d)
    f = SafetensorsFile(str(d / "model.safetensors"))
    t = {k: f.get_f32(k) for k in f.keys()}
    del f
    n_exp = 8
    for layer in (1, 2):
        p = f"model.layers.{layer}.mlp.experts."
        gate = [t.pop(p + f"{e}.gate_proj.weight") for e in range(n_exp)]
        up = [t.pop(p + f"{e}.up_proj.weight") for e in range(n_exp)]
        down = [t.pop(p + f"{e}.down_proj.weight") for e in range(n_exp)]
        t[p + "gate_up_proj"] = np.stack([np.concatenate([g, u], 0) for g, u in zip(gate, up, strict=False)])
        t[p + "down_proj"] = np.stack(down)
    write_safetensors(str(d / "model.safetensors"), t)
    r = CheckpointReader(str(d))
    assert r.shape("model.layers.1.mlp.experts.3.up_proj.weight") == (16, 48)
    ref = reference("dsv2_group_limited")
    m = load_hf_checkpoint(str(d))
    assert np.abs(m(ref["input_ids"]).numpy() - ref["logits"]).max() <= 1e-4


def test_fp8_keys_fold_scales():
    r = CheckpointReader(fixture_dir("dsv3_fp8"), (16, 16))
    assert not any(k.endswith("weight_scale_inv") for k in r.keys())
    assert r.dtype("model.layers.0.self_attn.o_proj.weight") == "F8_E4M3"
    w = r.get("model.layers.0.self_attn.o_proj.weight")
    assert w.dtype == np.float32 and np.isfinite(w).all() and np.abs(w).max() > 0
