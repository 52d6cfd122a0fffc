"""Pre-norm decoder block: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)).

The block picks MLA or GQA and dense-SwiGLU or MoE from the config — the one place where the
families differ structurally.
"""
from __future__ import annotations

import keras

from model.config import ModelConfig
from model.layers.gqa import GroupedQueryAttention
from model.layers.mla import MultiHeadLatentAttention
from model.layers.mlp import SwiGLU
from model.layers.moe import MoE
from model.layers.rmsnorm import RMSNorm


def build_attention(cfg: ModelConfig, name: str = "self_attn"):
    if cfg.attention_type == "mla":
        return MultiHeadLatentAttention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.q_lora_rank, cfg.kv_lora_rank,
            cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.softmax_scale,
            cfg.rope_interleave, cfg.initializer_range, name=name)
    return GroupedQueryAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                 cfg.head_dim, cfg.qkv_bias, cfg.rope_interleave,
                                 cfg.initializer_range, name=name)


def build_ffn(cfg: ModelConfig, layer_idx: int, name: str = "mlp"):
    if cfg.is_moe_layer(layer_idx):
        return MoE(cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts,
                   cfg.n_shared_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group,
                   cfg.routed_scaling_factor, cfg.norm_topk_prob, cfg.scoring_func,
                   cfg.topk_method, cfg.initializer_range, name=name)
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range, name=name)


@keras.saving.register_keras_serializable(package="seekline")
class DecoderBlock(keras.layers.Layer):
    def __init__(self, config: dict, layer_idx: int, **kwargs):
        """config: a HF config dict (ModelConfig.to_hf_dict()) so the layer serialises as data."""
        super().__init__(**kwargs)
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_hf_dict(config)
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, name="input_layernorm")
        self.self_attn = build_attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                                name="post_attention_layernorm")
        self.mlp = build_ffn(cfg, layer_idx)
        self.is_moe = isinstance(self.mlp, MoE)
        self.built = True

    def _ffn(self, x, return_router, gather_experts: bool = False):
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            y, r = self.mlp(h, return_router=True, gather_experts=gather_experts)
            return x + y, r
        return x + self.mlp(h), None

    def call(self, x, cos, sin, bias, return_router: bool = False):
        """x (B, T, D) -> (B, T, D) [, RouterOutput | None]."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias)
        x, r = self._ffn(x, return_router)
        return (x, r) if return_router else x

    def call_cached(self, x, cos, sin, bias, cache, write_idx, absorb: bool = True,
                    fixed_shape: bool = False):
        """fixed_shape: the caller compiles with XLA, so decode must take the fixed-shape
        gathered expert path whatever the batch."""
        a, cache = self.self_attn.call_cached(self.input_layernorm(x), cos, sin, bias, cache,
                                              write_idx, absorb)
        x, _ = self._ffn(x + a, False, gather_experts=self._gather_decode(x, fixed_shape))
        return x, cache

    def _gather_decode(self, x, fixed_shape: bool) -> bool:
        """Whether this (B, T, D) cached call takes MoE's gathered expert path. Only one-token
        decode may. The gathered path copies each row's K experts' weights, so it wins for a
        handful of rows (B·K <= E: fewer copies than experts) and is the one XLA can compile;
        a batch of rows (e.g. a GRPO rollout) takes the dispatch path, one matmul per expert
        on its rows (measured, preset small, 32 rows: 20 vs 35 ms per decode step on 2 cores,
        bench/README.md `bench_rollout.py`). Unknown B (a relaxed trace): dispatch."""
        if not self.is_moe or x.shape[1] != 1:
            return False
        if fixed_shape:
            return True
        b = x.shape[0]
        return b is not None and b * self.mlp.num_experts_per_tok <= self.mlp.n_routed_experts

    def get_config(self):
        return {**super().get_config(), "config": self.cfg.to_hf_dict(), "layer_idx": self.layer_idx}
