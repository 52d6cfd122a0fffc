"""bench_ops' arithmetic (the benchmark itself runs by hand: bench/README.md)."""
import pytest

from bench import bench_ops


def test_matmul_flops_and_ratio():
    assert bench_ops.matmul_flops(2, 3, 4) == 48
    r = bench_ops.ratio({"pure_tf": [3.0, 1.0, 2.0], "op": [1.0, 0.5, 2.0]})
    assert r["speedup"] == pytest.approx(2.0) and r["spread"] == pytest.approx(4.0)


def test_interleaved_rotates_the_order():
    seen = []
    out = bench_ops.interleaved({"a": lambda: seen.append("a"), "b": lambda: seen.append("b")}, 3)
    assert seen == ["a", "b", "b", "a", "a", "b"] and all(len(v) == 3 for v in out.values())


def test_forward_flops_per_token_by_hand():
    import model
    cfg = model.ModelConfig.from_preset("small").replace(num_nextn_predict_layers=0)
    n_active = model.count_params(cfg.to_hf_dict())["activated"]
    # small: 8 heads, qk 32 + 16, v 32, 6 layers; context 1024 -> 512 keys on average
    assert bench_ops.forward_flops_per_token(cfg, 1024) == 2 * n_active + 2 * 8 * (48 + 32) * 512 * 6


def test_causal_attention_flops_by_hand():
    # T = 3: 1 + 2 + 3 = 6 visible pairs; per pair and head 2·(Dk + Dv) = 2·(4 + 2)
    assert bench_ops.causal_attention_flops(2, 3, 5, 4, 2) == 2 * 5 * 6 * 2 * (4 + 2)


@pytest.mark.parametrize("preset", ["small", "tiny", "deepseek-v2-lite", "deepseek-v3-671b", "qwen2.5-0.5b",
                                    "tiny-qwen2"])
def test_forward_matmul_shapes_cover_every_active_weight(preset):
    # The listed products touch each activated weight once per token: their multiply-adds per token
    # equal count_params' activated count less what is no matmul (RMSNorm weights, q/k/v biases).
    import model
    cfg = model.ModelConfig.from_preset(preset).replace(num_nextn_predict_layers=0)
    n_active = model.count_params(cfg.to_hf_dict())["activated"]
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    if cfg.attention_type == "mla":
        norms = layers * (2 * d + (cfg.q_lora_rank or 0) + cfg.kv_lora_rank) + d
    else:
        norms = layers * 2 * d + d
    biases = layers * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim if cfg.qkv_bias else 0
    shapes = bench_ops.forward_matmul_shapes(cfg, tokens=7)
    assert sum(c * m * k * n for _, c, m, k, n in shapes) == 7 * (n_active - norms - biases)
    assert all(m == 7 for what, _, m, _, _ in shapes if not what.startswith("routed"))
