import dataclasses
import json
import math

import pytest

from model.config import ModelConfig, list_presets, yarn_get_mscale
from model.conftest import fixture_dir
from model.errors import ConfigError


def _v3_dict():
    with open(ModelConfig.from_preset.__globals__["PRESET_DIR"] + "/deepseek-v3-671b.json") as f:
        return json.load(f)


def test_every_preset_parses():
    names = list_presets()
    for required in ("tiny", "small", "deepseek-v3-671b", "deepseek-v2-lite", "qwen2.5-0.5b"):
        assert required in names
    for n in names:
        ModelConfig.from_preset(n)


def test_preset_families():
    tiny = ModelConfig.from_preset("tiny")
    assert tiny.attention_type == "mla" and tiny.is_moe and tiny.num_nextn_predict_layers == 1
    qwen = ModelConfig.from_preset("qwen2.5-0.5b")
    assert qwen.attention_type == "gqa" and qwen.head_dim == 896 // 14 and qwen.qkv_bias
    assert qwen.tie_word_embeddings and not qwen.is_moe
    v2 = ModelConfig.from_preset("deepseek-v2-lite")
    assert v2.q_lora_rank is None and v2.scoring_func == "softmax" and v2.topk_method == "greedy"


def test_v3_softmax_scale_matches_reference_value():
    cfg = ModelConfig.from_preset("deepseek-v3-671b")
    # reference: 192^-0.5 · (0.1·1.0·ln 40 + 1)^2 = 0.0721688 × 1.873854 = 0.1352338
    assert cfg.softmax_scale == pytest.approx(192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2, rel=1e-12)
    assert cfg.softmax_scale == pytest.approx(0.1352338, abs=1e-7)
    assert yarn_get_mscale(1.0, 1.0) == 1.0


def test_rope_scaling_and_rope_parameters_are_equivalent():
    old = _v3_dict()
    new = dict(old)
    rs = new.pop("rope_scaling")
    new.pop("rope_theta")
    new["rope_parameters"] = {**{k: v for k, v in rs.items() if k != "type"}, "rope_type": "yarn",
                              "rope_theta": 10000.0}
    a, b = ModelConfig.from_hf_dict(old), ModelConfig.from_hf_dict(new)
    assert a == b
    assert a.rope_scaling.factor == 40 and a.rope_scaling.original_max_position_embeddings == 4096


def test_transformers_written_config_parses():
    cfg = ModelConfig.from_json_file(fixture_dir("dsv3_qlora") + "/config.json")
    assert cfg.q_lora_rank == 24 and cfg.n_group == 4 and cfg.rope_scaling.factor == 4.0


def test_hf_round_trip():
    for n in list_presets():
        cfg = ModelConfig.from_preset(n)
        assert ModelConfig.from_hf_dict(cfg.to_hf_dict()).replace(fp8_weight_block_size=None) == \
            cfg.replace(fp8_weight_block_size=None)


def test_config_is_frozen():
    cfg = ModelConfig.from_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 3


@pytest.mark.parametrize("change,field", [
    ({"some_new_knob": 1}, "some_new_knob"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"moe_layer_freq": 2}, "moe_layer_freq"),
    ({"attention_bias": True}, "attention_bias"),
    ({"model_type": "llama"}, "model_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.type"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "foo": 1}}, "rope_scaling.foo"),
    ({"num_experts_per_tok": 200}, "num_experts_per_tok"),
    ({"n_group": 3}, "n_group"),
    ({"hidden_size": "big"}, "hidden_size"),
    ({"scoring_func": "relu"}, "scoring_func"),
])
def test_bad_config_names_the_field(change, field):
    d = {**_v3_dict(), **change}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelConfig.from_hf_dict(d)


def test_missing_required_field():
    d = _v3_dict()
    del d["kv_lora_rank"]
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        ModelConfig.from_hf_dict(d)


def test_sliding_window_rejected_for_qwen2():
    d = ModelConfig.from_preset("qwen2.5-0.5b").to_hf_dict()
    d["use_sliding_window"] = True
    with pytest.raises(ConfigError, match="use_sliding_window"):
        ModelConfig.from_hf_dict(d)


def test_bad_json_names_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{\n  \"a\": ,\n}")
    with pytest.raises(ConfigError, match="config.json.*line 2"):
        ModelConfig.from_json_file(str(p))
