import numpy as np

from model.config import ModelConfig
from model.params import count_params, hf_param_shapes


def test_deepseek_v3_671b_total():
    c = count_params("deepseek-v3-671b")
    assert c["total"] == 671_026_404_352  # transformers, meta device, without MTP


def test_deepseek_v3_activated_and_mtp_by_formula():
    c = count_params("deepseek-v3-671b")
    expert = 3 * 7168 * 2048
    assert c["activated"] == c["total"] - 58 * (256 - 8) * expert - 129280 * 7168   # lookup table
    assert round(c["activated"] / 1e9) == 37     # "37B activated"
    # MTP layer: one MoE block + enorm/hnorm/eh_proj/shared_head.norm + embedding & head copies.
    attn = (1536 * 7168 + 1536 + 24576 * 1536 + 576 * 7168 + 512 + 32768 * 512 + 7168 * 16384)
    moe = 256 * 7168 + 257 * expert
    block = attn + moe + 2 * 7168
    mtp = block + 3 * 7168 + 7168 * 14336 + 2 * 129280 * 7168
    assert c["mtp"] == mtp
    assert 685e9 - 1e9 < c["total"] + c["mtp"] < 685e9 + 1e9   # "685B" checkpoint


def test_qwen25_05b_by_formula():
    v, d, i, n_layers, h, kvh = 151936, 896, 4864, 24, 14, 2
    hd = d // h
    layer = (d * h * hd + h * hd) + 2 * (d * kvh * hd + kvh * hd) + h * hd * d + 3 * d * i + 2 * d
    total = v * d + n_layers * layer + d   # tied head
    assert total == 494_032_768
    assert count_params("qwen2.5-0.5b") == {"total": total, "activated": total, "mtp": 0}


def test_deepseek_v2_lite_by_formula():
    c = count_params("deepseek-v2-lite")
    d, v, heads = 2048, 102400, 16
    attn = d * heads * 192 + 576 * d + 512 + 512 * heads * 256 + heads * 128 * d
    dense = 3 * d * 10944
    expert = 3 * d * 1408
    moe = 64 * d + 64 * expert + 3 * d * 2 * 1408
    total = 2 * v * d + d + 27 * (attn + 2 * d) + dense + 26 * moe
    assert c["total"] == total and round(total / 1e8) == 157          # "15.7B"
    assert c["activated"] == total - 26 * 58 * expert - v * d and round(c["activated"] / 1e8) in (24, 25)


def test_accepts_dict_and_path(tmp_path):
    cfg = ModelConfig.from_preset("tiny")
    d = cfg.to_hf_dict()
    p = tmp_path / "config.json"
    import json
    p.write_text(json.dumps(d))
    assert count_params(d) == count_params(str(p)) == count_params(str(tmp_path)) == count_params(cfg)


def test_count_matches_built_model():
    from model.decoder import build_model
    for preset in ("tiny", "tiny-qwen2"):
        cfg = ModelConfig.from_preset(preset)
        m = build_model(cfg)
        c = count_params(cfg)
        n = sum(int(np.prod(v.shape)) for v in m.trainable_weights)
        # the model shares embedding/head with MTP instead of storing copies
        shared_copies = cfg.num_nextn_predict_layers * 2 * cfg.vocab_size * cfg.hidden_size
        assert n == c["total"] + c["mtp"] - shared_copies


def test_shapes_cover_hub_keys():
    keys = hf_param_shapes(ModelConfig.from_preset("deepseek-v3-671b"))
    assert keys["model.layers.3.mlp.experts.255.down_proj.weight"] == (7168, 2048)
    assert keys["model.layers.61.eh_proj.weight"] == (7168, 14336)
    assert keys["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] == (576, 7168)
    assert "model.layers.2.mlp.gate.weight" not in keys   # first 3 layers dense
