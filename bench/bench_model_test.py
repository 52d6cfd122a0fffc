"""Pure helper logic of bench/bench_model.py (no TensorFlow, no model built; < 1 s).

    .venv/bin/python -m pytest bench/bench_model_test.py -q
"""
import bench_model as bm
import numpy as np
import pytest

from model import ModelConfig


def test_deepseek_v3_cache_formula_576_vs_40960():
    cfg = ModelConfig.from_preset("deepseek-v3-671b")
    assert bm.cache_values_per_token(cfg) == 512 + 64 == 576
    assert bm.mha_values_per_token(cfg) == 128 * (192 + 128) == 40_960
    assert bm.mha_values_per_token(cfg) / bm.cache_values_per_token(cfg) == pytest.approx(71.11, abs=0.01)
    # bf16: 1152 B/token/layer, 68.6 KiB/token over 61 layers (reference/deepseek_v3.md)
    assert 576 * 2 * cfg.num_hidden_layers / 1024 == pytest.approx(68.6, abs=0.05)


def test_gqa_cache_formula():
    cfg = ModelConfig.from_preset("qwen2.5-0.5b")               # 14 heads, 2 KV heads, head_dim 64
    assert bm.cache_values_per_token(cfg) == 2 * 2 * 64
    assert bm.mha_values_per_token(cfg) == 2 * 14 * 64


def test_cache_bytes_per_token_divides_by_batch_len_layers():
    b, s = 2, 8
    cache = [(np.zeros((b, s, 512), np.float32), np.zeros((b, s, 64), np.float32))] * 3
    assert bm.cache_bytes_per_token(cache, b, s) == 576 * 4
    bf16_like = [(np.zeros((b, s, 512), np.float16), np.zeros((b, s, 64), np.float16))]
    assert bm.cache_bytes_per_token(bf16_like, b, s) == 576 * 2


def test_agreement():
    assert bm.agreement([1, 2, 3], [1, 2, 3]) == {"tokens": 3, "identical_prefix": 3,
                                                  "equal_fraction": 1.0, "all_equal": True}
    a = bm.agreement([1, 2, 3, 4], [1, 9, 3, 4])
    assert a["identical_prefix"] == 1 and a["equal_fraction"] == 0.75 and not a["all_equal"]


def test_summarize():
    s = bm.summarize([{"t": 2.0}, {"t": 1.0}, {"t": 4.0}], "t")
    assert s["median_s"] == 2.0 and s["min_s"] == 1.0 and s["spread"] == 4.0


if __name__ == "__main__":      # `make bench` runs every bench/bench_*.py, this file included
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
