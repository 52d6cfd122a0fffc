"""Parameter shapes in HF checkpoint naming, computed from the config alone.

`hf_param_shapes` is the single source of truth for "which tensors does a checkpoint of this
config hold and with what shapes": the loader validates files against it and `count_params`
sums it, so parameter counts never allocate weights (the 671B config is counted in microseconds).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from model.config import ModelConfig

Shape = tuple[int, ...]


def _attention_shapes(cfg: ModelConfig, p: str) -> dict[str, Shape]:
    d, h = cfg.hidden_size, cfg.num_attention_heads
    out: dict[str, Shape] = OrderedDict()
    if cfg.attention_type == "mla":
        if cfg.q_lora_rank is None:
            out[p + "q_proj.weight"] = (h * cfg.qk_head_dim, d)
        else:
            out[p + "q_a_proj.weight"] = (cfg.q_lora_rank, d)
            out[p + "q_a_layernorm.weight"] = (cfg.q_lora_rank,)
            out[p + "q_b_proj.weight"] = (h * cfg.qk_head_dim, cfg.q_lora_rank)
        out[p + "kv_a_proj_with_mqa.weight"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d)
        out[p + "kv_a_layernorm.weight"] = (cfg.kv_lora_rank,)
        out[p + "kv_b_proj.weight"] = (h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
        out[p + "o_proj.weight"] = (d, h * cfg.v_head_dim)
    else:
        hd, kvh = cfg.head_dim, cfg.num_key_value_heads
        for name, rows in (("q_proj", h * hd), ("k_proj", kvh * hd), ("v_proj", kvh * hd)):
            out[p + name + ".weight"] = (rows, d)
            if cfg.qkv_bias:
                out[p + name + ".bias"] = (rows,)
        out[p + "o_proj.weight"] = (d, h * hd)
    return out


def _mlp_shapes(p: str, d: int, inter: int) -> dict[str, Shape]:
    return OrderedDict([(p + "gate_proj.weight", (inter, d)), (p + "up_proj.weight", (inter, d)),
                        (p + "down_proj.weight", (d, inter))])


def block_shapes(cfg: ModelConfig, layer_idx: int) -> dict[str, Shape]:
    p = f"model.layers.{layer_idx}."
    d = cfg.hidden_size
    out: dict[str, Shape] = OrderedDict()
    out[p + "input_layernorm.weight"] = (d,)
    out.update(_attention_shapes(cfg, p + "self_attn."))
    out[p + "post_attention_layernorm.weight"] = (d,)
    if cfg.is_moe_layer(layer_idx):
        out[p + "mlp.gate.weight"] = (cfg.n_routed_experts, d)
        if cfg.topk_method == "noaux_tc":
            out[p + "mlp.gate.e_score_correction_bias"] = (cfg.n_routed_experts,)
        for e in range(cfg.n_routed_experts):
            out.update(_mlp_shapes(p + f"mlp.experts.{e}.", d, cfg.moe_intermediate_size))
        if cfg.n_shared_experts:
            out.update(_mlp_shapes(p + "mlp.shared_experts.", d,
                                   cfg.moe_intermediate_size * cfg.n_shared_experts))
    else:
        out.update(_mlp_shapes(p + "mlp.", d, cfg.intermediate_size))
    return out


def mtp_shapes(cfg: ModelConfig, k: int) -> dict[str, Shape]:
    """MTP module k as stored in DeepSeek checkpoints: model.layers.{L+k}.* (incl. the copies of
    the embedding and head that the official checkpoint stores next to each module)."""
    idx = cfg.num_hidden_layers + k
    p = f"model.layers.{idx}."
    d, v = cfg.hidden_size, cfg.vocab_size
    out: dict[str, Shape] = OrderedDict()
    out[p + "embed_tokens.weight"] = (v, d)
    out[p + "enorm.weight"] = (d,)
    out[p + "hnorm.weight"] = (d,)
    out[p + "eh_proj.weight"] = (d, 2 * d)
    out.update(block_shapes(cfg, idx))
    out[p + "shared_head.norm.weight"] = (d,)
    out[p + "shared_head.head.weight"] = (v, d)
    return out


def hf_param_shapes(cfg: ModelConfig, include_mtp: bool = True) -> dict[str, Shape]:
    """All tensors of a HF-format checkpoint of `cfg`, in a stable order."""
    d, v = cfg.hidden_size, cfg.vocab_size
    out: dict[str, Shape] = OrderedDict()
    out["model.embed_tokens.weight"] = (v, d)
    for i in range(cfg.num_hidden_layers):
        out.update(block_shapes(cfg, i))
    out["model.norm.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (v, d)
    if include_mtp:
        for k in range(cfg.num_nextn_predict_layers):
            out.update(mtp_shapes(cfg, k))
    return out


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _is_buffer(key: str) -> bool:
    # The routing bias is adjusted by the load-balancing rule, not by gradients; transformers
    # keeps it as a buffer, so it is not a parameter in the published counts.
    return key.endswith("e_score_correction_bias")


def count_params(config: Any) -> dict[str, int]:
    """{'total', 'activated', 'mtp'} from shapes only.

    Routing biases (e_score_correction_bias) are buffers, not parameters, and are excluded.
    total: main model without MTP (what transformers reports; 671,026,404,352 for DeepSeek-V3).
    activated: parameters in one token's forward compute — total minus the routed experts it does
      not use (n_routed - top_k per MoE layer) and minus the input embedding table (a lookup of
      one row; with tied embeddings the table is the head's matmul and stays counted). This
      reproduces the published figures: V3 36.6B ("37B activated"), V2-Lite 2.45B ("2.4B").
    mtp: the MTP modules as stored in the checkpoint, including their embedding/head copies
      (V3: the "14B" of the 685B checkpoint).
    `config` is a ModelConfig, a HF config dict, a path to config.json / a checkpoint dir, or a
    preset name.
    """
    cfg = ModelConfig.load(config)
    main = hf_param_shapes(cfg, include_mtp=False)
    total = sum(_numel(s) for k, s in main.items() if not _is_buffer(k))
    inactive = 0
    if cfg.is_moe:
        expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
        n_moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        inactive = n_moe_layers * (cfg.n_routed_experts - cfg.num_experts_per_tok) * expert
    if not cfg.tie_word_embeddings:
        inactive += cfg.vocab_size * cfg.hidden_size
    mtp = 0
    for k in range(cfg.num_nextn_predict_layers):
        mtp += sum(_numel(s) for key, s in mtp_shapes(cfg, k).items() if not _is_buffer(key))
    return {"total": total, "activated": total - inactive, "mtp": mtp}
