"""The planner's numbers against published figures and hand-computed cases (not against itself)."""
import math

import pytest

from model.config import ModelConfig
from planning.plan import (
    ClusterProfile,
    activation_bytes,
    kv_cache_bytes,
    kv_values_per_token_layer,
    layer_activation_elements_per_token,
    mha_kv_values_per_token_layer,
    param_split,
    plan,
    state_bytes,
)

V3 = ModelConfig.load("deepseek-v3-671b")

# A dense GQA block shaped like Korthikanti et al.'s GPT layer: MHA (kv heads = heads) and a
# SwiGLU width f = 8h/3, which keeps 3f = 8h values — the same as GeLU's 4h input + 4h output.
GPTLIKE = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 48, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
           "max_position_embeddings": 64, "tie_word_embeddings": True}

# Qwen2.5-7B's shape (hub config.json), the ~7B dense case of docs/scaling.md.
QWEN7B = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
          "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
          "max_position_embeddings": 32768, "rope_theta": 1000000.0}


def test_v3_published_parameter_counts():
    """DeepSeek-V3 report: 671B total, 37B activated per token; the HF checkpoint is 685B with
    the 14B MTP module, whose embedding and head (129280 × 7168 each) are shared in training."""
    ps = param_split(V3)
    assert round(ps.total / 1e9) == 671
    assert round(ps.activated / 1e9) == 37
    # 671.0B + 13.5B stored MTP = 684.5B, the hub's "685B".
    assert abs(ps.total + ps.mtp_trained + 2 * 129280 * 7168 - 685e9) < 1e9
    # 58 MoE layers + 1 MTP layer, 256 experts of 3 · 7168 · 2048 weights each.
    assert ps.routed_experts == 59 * 256 * 3 * 7168 * 2048


def test_mla_kv_cache_vs_mha_for_v3():
    """README: 576 values/token/layer for the V3 shape vs 40,960 for a full-MHA cache."""
    assert kv_values_per_token_layer(V3) == 576
    assert mha_kv_values_per_token_layer(V3) == 40960
    # 576 values × 61 layers × 2 bytes per token.
    assert kv_cache_bytes(V3, batch=1, context=1) == 576 * 61 * 2
    assert kv_cache_bytes(V3, batch=4, context=1000) == 4 * 1000 * 70272


def test_gqa_kv_cache_counts_k_and_v_heads():
    cfg = ModelConfig.from_hf_dict(QWEN7B)
    assert kv_values_per_token_layer(cfg) == 2 * 4 * 128  # 4 KV heads of 128, K and V
    assert mha_kv_values_per_token_layer(cfg) == 2 * 28 * 128


def test_adam_is_16_bytes_per_param_and_zero_figure_1():
    """ZeRO paper Figure 1: Ψ = 7.5B, K = 12, N_d = 64 → 120 GB, 31.4 GB, 16.6 GB, 1.9 GB."""
    assert state_bytes(1, 0, 1) == 16
    psi, n = 7.5e9, 64
    got = [state_bytes(psi, stage, n) / 1e9 for stage in range(4)]
    assert got == pytest.approx([120.0, 31.4, 16.6, 1.9], abs=0.05)


def test_activation_count_matches_korthikanti_gpt_layer():
    """Korthikanti et al. §4.1: a layer keeps s·b·h·(34 + 5·a·s/h) bytes with dropout. Without
    dropout (this code has none) the masks go (1 + 1 sbh, 1 as²b) and the softmax output is
    also what attention-over-values reads (2 as²b fewer): 32·sbh + 2·as²b bytes."""
    cfg = ModelConfig.from_hf_dict(GPTLIKE)
    s, b, h, a = 16, 2, 48, 4
    half, fp32 = layer_activation_elements_per_token(cfg, moe=False, seq_len=s)
    assert fp32 == 0
    assert 2 * half * s * b == 32 * s * b * h + 2 * a * s * s * b == 53248


def test_activations_hand_computed_small_model():
    """Two GPT-like layers (53,248 bytes each, above) + the head: per token 2·(2·48) bytes of
    bf16 norm/head inputs and 100 fp32 logits = 592 bytes × 32 tokens = 18,944.
    Full recomputation: 2 layer inputs (2 bytes × 48 × 32 tokens = 3,072 each) + one layer
    being recomputed + the head."""
    cfg = ModelConfig.from_hf_dict(GPTLIKE)
    act = activation_bytes(cfg, micro_batch=2, seq_len=16)
    assert act.full == 2 * 53248 + 18944 == 125440
    assert act.recompute == 2 * 3072 + 53248 + 18944 == 78336
    # Fused attention drops the softmax output: 2 · a · s² · b = 4,096 bytes per layer.
    flash = activation_bytes(cfg, micro_batch=2, seq_len=16, attention_scores=False)
    assert act.full - flash.full == 2 * 4096


def test_mla_moe_layer_hand_computed():
    """A V3 MoE layer per token, counted from the V3 config by hand:
    norms + normed input 3·7168; q path 2·1536; kv path 2·512; Q, K 2·128·192; V, o_in 2·128·128;
    softmax 128·s; normed MLP input 7168; 8 routed copies (7168 + 3·2048) + 8 outputs · 7168;
    shared expert 3·2048; fp32 router scores 256."""
    s = 4096
    half, fp32 = layer_activation_elements_per_token(V3, moe=True, seq_len=s)
    want = (3 * 7168 + 2 * 1536 + 2 * 512 + 2 * 128 * 192 + 2 * 128 * 128 + 128 * s + 7168
            + 8 * (7168 + 3 * 2048) + 8 * 7168 + 3 * 2048)
    assert (half, fp32) == (want, 256)


def test_step_time_is_six_n_tokens_over_cluster_flops():
    """V3, 4 nodes × 8 H100 (989 TFLOPS), 4096 × 1 rows per GPU, MFU 0.4: 6 · 36.63B · 131,072
    tokens / (32 · 989e12 · 0.4)."""
    p = plan(V3, ClusterProfile(nodes=4, seq_len=4096, micro_batch=1, mfu=0.4))
    n_act = 36_625_603_584  # count_params' activated (published "37B")
    assert p.step["tokens/step"] == 32 * 4096
    assert p.step["compute_s"] == pytest.approx(6 * n_act * 131072 / (32 * 989e12 * 0.4))
    # 6 · 36.63e9 · 131072 = 2.880e16 FLOPs; 32 · 989e12 · 0.4 = 1.266e16 FLOP/s → 2.275 s.
    assert 2.27 < p.step["compute_s"] < 2.28


def test_small_dense_model_fits_plain_data_parallelism():
    p = plan(ModelConfig.load("qwen2.5-0.5b"), ClusterProfile())
    assert p.parallelism == {"kind": "data", "zero": 0, "recompute": False}


def test_7b_needs_zero_on_one_h100_node():
    """16 bytes × 7.6B ≈ 122 GB > 72 GB usable: plain DP never fits; ZeRO-3 over 8 GPUs does."""
    cfg = ModelConfig.from_hf_dict(QWEN7B)
    p = plan(cfg, ClusterProfile(seq_len=4096, micro_batch=1))
    z = {(r["stage"], r["recompute"]): r for r in p.zero}
    assert z[(0, True)]["min_gpus"] is None
    # ZeRO-3: Ψ·16/N + recomputed activations + one gathered block (bf16 weights + grads) <= budget.
    ps = param_split(cfg)
    act = activation_bytes(cfg, 1, 4096).recompute
    want = math.ceil(16 * ps.trained / (0.9 * 80e9 - act - 4 * ps.max_layer))
    assert z[(3, True)]["min_gpus"] == want <= 8
    assert p.parallelism["kind"] == "data"


def test_long_context_7b_needs_tensor_parallelism():
    """At 32k tokens the kept softmax of one layer (28 heads × 32768² × 2 bytes = 60 GB) plus
    the rest does not fit next to the states: TP (with sequence parallelism) splits it."""
    cfg = ModelConfig.from_hf_dict(QWEN7B)
    p = plan(cfg, ClusterProfile(seq_len=32768, micro_batch=1))
    assert p.parallelism["kind"] == "tensor"
    assert p.parallelism["tp"] in (2, 4)


def test_v3_needs_expert_parallelism_or_more_nodes():
    one_node = plan(V3, ClusterProfile(nodes=1, gpu="h200"))
    assert one_node.parallelism["kind"] == "more nodes"
    # The training states are 16 bytes × 682.6B ≈ 10.9 TB: at least 10.9e12 / (126.9e9 - acts) GPUs.
    assert one_node.parallelism["min_gpus"] > 80
    big = plan(V3, ClusterProfile(nodes=32))
    assert big.parallelism["kind"] == "expert"
    assert 256 % big.parallelism["ep"] == 0


def test_profile_defaults_and_bad_values():
    assert ClusterProfile(gpu="h200").gpu_memory_gb == 141
    assert ClusterProfile().gpu_memory_gb == 80
    with pytest.raises(ValueError, match="nodes"):
        ClusterProfile(nodes=0)
    with pytest.raises(ValueError, match="mfu"):
        ClusterProfile(mfu=1.5)
