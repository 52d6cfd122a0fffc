"""One typed, validated, read-only model config.

`ModelConfig` is a frozen dataclass. It is built from a HuggingFace `config.json` dict
(`ModelConfig.from_hf_dict`) — presets in `model/presets/*.json` are stored in that same format,
so a preset, a hub checkpoint and a seekline export all go through one parser — and it writes
itself back with `to_hf_dict()`.

Two families share the config:
  * MLA + DeepSeekMoE (model_type "deepseek_v3" / "deepseek_v2"), and
  * dense GQA (model_type "qwen2": q/k/v bias, half-rotation RoPE, optional tied embeddings).

Unknown keys fail loudly (ConfigError naming the key); keys that only carry metadata for
other runtimes (torch_dtype, auto_map, ...) are listed in `_IGNORED_HF_KEYS`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model.errors import ConfigError

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")

SUPPORTED_MODEL_TYPES = ("deepseek_v3", "deepseek_v2", "qwen2")

# Keys that describe the runtime / provenance of a HF checkpoint but do not change the math.
_IGNORED_HF_KEYS = frozenset({
    "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "pretraining_tp", "ep_size", "aux_loss_alpha", "seq_aux", "attention_dropout",
    "output_router_logits", "router_aux_loss_coef", "pad_token_id", "_name_or_path",
    "quantization_config", "max_window_layers", "sliding_window", "layer_types",
    "return_dict", "output_hidden_states", "output_attentions", "tie_encoder_decoder",
    "is_encoder_decoder", "chunk_size_feed_forward", "id2label", "label2id", "problem_type",
    "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "finetuning_task", "num_labels", "bad_words_ids", "head_dim_is_rope_dim",
    "num_mtp_layers",  # transformers' alias of num_nextn_predict_layers (handled below)
})


@dataclass(frozen=True)
class RopeScaling:
    """YaRN context-extension parameters (the only scaling type DeepSeek uses)."""
    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def to_hf_dict(self) -> dict:
        d = {"type": "yarn", "rope_type": "yarn", "factor": self.factor,
             "original_max_position_embeddings": self.original_max_position_embeddings,
             "beta_fast": self.beta_fast, "beta_slow": self.beta_slow}
        for k in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if not self.truncate:
            d["truncate"] = False
        return d


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and hyper-parameters of one decoder-only model (HF config.json names)."""
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # True: RoPE rotates adjacent pairs (2i, 2i+1) — the layout of DeepSeek checkpoints.
    rope_interleave: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # --- MLA (attention_type == "mla") ---
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # --- GQA (attention_type == "gqa") ---
    head_dim: int = 0
    qkv_bias: bool = False
    # --- DeepSeekMoE (n_routed_experts == 0 means a dense model) ---
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    scoring_func: str = "sigmoid"          # "sigmoid" (V3) | "softmax" (V2)
    topk_method: str = "noaux_tc"          # "noaux_tc" (V3) | "greedy" | "group_limited_greedy" (V2)
    # --- MTP ---
    num_nextn_predict_layers: int = 0
    # Block size of FP8 weight scales when reading an FP8 checkpoint (quantization_config).
    fp8_weight_block_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ derived
    @property
    def attention_type(self) -> str:
        return "gqa" if self.model_type == "qwen2" else "mla"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def rope_dim(self) -> int:
        """Number of channels RoPE rotates (the shared rope key for MLA, the full head for GQA)."""
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """MTP layers (index >= num_hidden_layers) follow the same rule as main layers."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace

    @property
    def softmax_scale(self) -> float:
        """Attention logit scale, incl. YaRN's mscale² correction for MLA (transformers' rule)."""
        d = self.qk_head_dim if self.attention_type == "mla" else self.head_dim
        scale = d ** -0.5
        rs = self.rope_scaling
        if self.attention_type == "mla" and rs is not None and rs.mscale_all_dim:
            m = yarn_get_mscale(rs.factor, rs.mscale_all_dim)
            scale *= m * m
        return scale

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        def need(cond: bool, fieldname: str, msg: str):
            if not cond:
                raise ConfigError(f"config field '{fieldname}': {msg}")

        need(self.model_type in SUPPORTED_MODEL_TYPES, "model_type",
             f"unsupported {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "intermediate_size"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
                 f"must be a positive int, got {v!r}")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must be >= 0")
        if self.attention_type == "mla":
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                need(getattr(self, name) > 0, name, "must be > 0 for MLA")
            need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank",
                 "must be null or > 0")
            need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "must be even")
            need(self.num_key_value_heads == self.num_attention_heads, "num_key_value_heads",
                 "MLA has one latent shared by all heads; num_key_value_heads must equal "
                 "num_attention_heads")
        else:
            need(self.head_dim > 0 and self.head_dim % 2 == 0, "head_dim", "must be even and > 0")
            need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
                 "must divide num_attention_heads")
            need(not self.is_moe, "n_routed_experts", "the GQA (qwen2) family is dense here")
        if self.is_moe:
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0")
            need(0 < self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 "must be in [1, n_routed_experts]")
            need(self.n_group >= 1 and self.n_routed_experts % self.n_group == 0, "n_group",
                 "must divide n_routed_experts")
            need(1 <= self.topk_group <= self.n_group, "topk_group", "must be in [1, n_group]")
            need(self.scoring_func in ("sigmoid", "softmax"), "scoring_func",
                 f"unsupported {self.scoring_func!r}")
            need(self.topk_method in ("noaux_tc", "greedy", "group_limited_greedy"), "topk_method",
                 f"unsupported {self.topk_method!r}")
            per_group = self.n_routed_experts // self.n_group
            if self.topk_method == "noaux_tc":
                need(per_group >= 2, "n_group", "noaux_tc scores groups by their top-2 experts; "
                     "need >= 2 experts per group")
            if self.topk_method != "greedy":
                need(self.num_experts_per_tok <= self.topk_group * per_group, "num_experts_per_tok",
                     "must be <= topk_group * n_routed_experts / n_group")
        if self.rope_scaling is not None:
            need(self.rope_scaling.factor >= 1.0, "rope_scaling.factor", "must be >= 1")
            need(self.rope_scaling.original_max_position_embeddings > 0,
                 "rope_scaling.original_max_position_embeddings", "must be > 0")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], source: str = "config") -> ModelConfig:
        """Parse a HF config.json dict; `source` names the file in error messages."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        mt = d.pop("model_type", None)
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"{source}: config field 'model_type': unsupported {mt!r}; "
                              f"supported: {SUPPORTED_MODEL_TYPES}")
        for k in list(d):
            if k in _IGNORED_HF_KEYS:
                if k == "quantization_config":
                    continue
                if k == "num_mtp_layers" and "num_nextn_predict_layers" not in d:
                    d["num_nextn_predict_layers"] = d[k]
                if k == "sliding_window" and d.get("use_sliding_window"):
                    continue
                d.pop(k)
        kw: dict = {"model_type": mt}

        def take(key, default=dataclasses.MISSING, conv=None):
            if key in d:
                v = d.pop(key)
            elif default is dataclasses.MISSING:
                raise ConfigError(f"{source}: required config field '{key}' is missing")
            else:
                v = default
            if conv is not None and v is not None:
                try:
                    v = conv(v)
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"{source}: config field '{key}': {e}") from None
            return v

        def as_int(v):
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError(f"expected an integer, got {v!r}")
            return int(v)

        if take("mlp_bias", False, bool):
            raise ConfigError(f"{source}: config field 'mlp_bias': biased MLPs are not supported")
        hidden_act = take("hidden_act", "silu")
        if hidden_act not in ("silu", "swish"):
            raise ConfigError(f"{source}: config field 'hidden_act': unsupported {hidden_act!r} "
                              "(only silu/SwiGLU)")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings"):
            kw[key] = take(key, conv=as_int)
        kw["num_key_value_heads"] = take("num_key_value_heads", None, as_int) or kw["num_attention_heads"]
        kw["rms_norm_eps"] = take("rms_norm_eps", 1e-6, float)
        kw["initializer_range"] = take("initializer_range", 0.02, float)
        kw["tie_word_embeddings"] = take("tie_word_embeddings", False, bool)
        kw["bos_token_id"] = take("bos_token_id", None, as_int)
        eos = take("eos_token_id", None)
        kw["eos_token_ids"] = tuple(as_int(e) for e in (eos if isinstance(eos, list) else [eos])
                                    if e is not None)

        # RoPE: hub configs use `rope_theta` + `rope_scaling`; transformers >= 5 writes
        # `rope_parameters` holding rope_type + rope_theta (+ yarn fields). Accept both.
        rope_theta = take("rope_theta", None, float)
        rp = take("rope_parameters", None)
        rs = take("rope_scaling", None)
        if rp and rs and _norm_rope(rp) != _norm_rope(rs):
            raise ConfigError(f"{source}: config fields 'rope_scaling' and 'rope_parameters' "
                              f"disagree ({rs} vs {rp})")
        rope = dict(rp or rs or {})
        if "rope_theta" in rope:
            rope_theta = float(rope.pop("rope_theta"))
        kw["rope_theta"] = rope_theta if rope_theta is not None else 10000.0
        kw["rope_scaling"] = _parse_rope_scaling(rope, source, kw["max_position_embeddings"])

        if mt == "qwen2":
            if d.pop("use_sliding_window", False):
                raise ConfigError(f"{source}: config field 'use_sliding_window': sliding-window "
                                  "attention is not supported")
            d.pop("sliding_window", None)
            if d.pop("use_mrope", False):
                raise ConfigError(f"{source}: config field 'use_mrope': multimodal RoPE is not supported")
            kw["head_dim"] = take("head_dim", None, as_int) or kw["hidden_size"] // kw["num_attention_heads"]
            kw["qkv_bias"] = True  # Qwen2 always has q/k/v bias (no config flag)
            kw["rope_interleave"] = False
            if d.pop("attention_bias", None):
                raise ConfigError(f"{source}: config field 'attention_bias' is not a qwen2 field")
        else:
            if take("attention_bias", False, bool):
                raise ConfigError(f"{source}: config field 'attention_bias': biased MLA "
                                  "projections are not supported")
            d.pop("head_dim", None)  # transformers derives it (= qk_rope_head_dim)
            qk_head_dim = d.pop("qk_head_dim", None)  # derived; must agree when present
            kw["q_lora_rank"] = take("q_lora_rank", None, as_int)
            for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                kw[key] = take(key, conv=as_int)
            # The hub DeepSeek checkpoints are interleaved; transformers defaults to True too.
            kw["rope_interleave"] = take("rope_interleave", True, bool)
            n_routed = take("n_routed_experts", None, as_int) or 0
            kw["n_routed_experts"] = n_routed
            if n_routed:
                kw["n_shared_experts"] = take("n_shared_experts", 0, as_int) or 0
                kw["num_experts_per_tok"] = take("num_experts_per_tok", conv=as_int)
                kw["moe_intermediate_size"] = take("moe_intermediate_size", conv=as_int)
                kw["first_k_dense_replace"] = take("first_k_dense_replace", 0, as_int) or 0
                kw["n_group"] = take("n_group", 1, as_int) or 1
                kw["topk_group"] = take("topk_group", 1, as_int) or 1
                kw["routed_scaling_factor"] = take("routed_scaling_factor", 1.0, float)
                kw["norm_topk_prob"] = take("norm_topk_prob", False, bool)
                default_sf = "sigmoid" if mt == "deepseek_v3" else "softmax"
                default_tm = "noaux_tc" if mt == "deepseek_v3" else "greedy"
                kw["scoring_func"] = take("scoring_func", default_sf, str)
                kw["topk_method"] = take("topk_method", default_tm, str)
                freq = take("moe_layer_freq", 1, as_int)
                if freq != 1:
                    raise ConfigError(f"{source}: config field 'moe_layer_freq': only 1 is "
                                      f"supported, got {freq}")
            kw["num_nextn_predict_layers"] = take("num_nextn_predict_layers", 0, as_int) or 0
            if qk_head_dim is not None and qk_head_dim != kw["qk_nope_head_dim"] + kw["qk_rope_head_dim"]:
                raise ConfigError(f"{source}: config field 'qk_head_dim' = {qk_head_dim} disagrees "
                                  "with qk_nope_head_dim + qk_rope_head_dim")
        qc = d.pop("quantization_config", None)
        if qc:
            if qc.get("quant_method") != "fp8" or qc.get("fmt", "e4m3") != "e4m3":
                raise ConfigError(f"{source}: config field 'quantization_config': only "
                                  f"fp8 e4m3 block quantisation is supported, got {qc}")
            kw["fp8_weight_block_size"] = tuple(int(x) for x in qc.get("weight_block_size", (128, 128)))
        d.pop("use_sliding_window", None)
        if d:
            key = sorted(d)[0]
            raise ConfigError(f"{source}: unsupported config field '{key}' for model_type "
                              f"{mt!r} (value {d[key]!r})")
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str) -> ModelConfig:
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        return cls.from_hf_dict(d, source=path)

    @classmethod
    def from_preset(cls, name: str) -> ModelConfig:
        path = os.path.join(PRESET_DIR, f"{name}.json")
        if not os.path.exists(path):
            raise ConfigError(f"unknown preset {name!r}; available: {list_presets()}")
        return cls.from_json_file(path)

    @classmethod
    def load(cls, spec: Any) -> ModelConfig:
        """ModelConfig | HF dict | path to config.json / checkpoint dir | preset name."""
        if isinstance(spec, ModelConfig):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_hf_dict(spec)
        if isinstance(spec, (str, os.PathLike)):
            p = os.fspath(spec)
            if os.path.isdir(p):
                p = os.path.join(p, "config.json")
            if os.path.exists(p):
                return cls.from_json_file(p)
            if p in list_presets():
                return cls.from_preset(p)
            raise ConfigError(f"{p}: no such config file or preset (presets: {list_presets()})")
        raise ConfigError(f"cannot build a ModelConfig from {type(spec).__name__}")

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ serialisation
    def to_hf_dict(self) -> dict:
        """config.json that transformers (and `from_hf_dict`) load."""
        d: dict = {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (list(self.eos_token_ids) if len(self.eos_token_ids) > 1
                             else (self.eos_token_ids[0] if self.eos_token_ids else None)),
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = self.rope_scaling.to_hf_dict()
        if self.attention_type == "gqa":
            d["architectures"] = ["Qwen2ForCausalLM"]
            d["head_dim"] = self.head_dim
            d["use_sliding_window"] = False
        else:
            d["architectures"] = ["DeepseekV3ForCausalLM" if self.model_type == "deepseek_v3"
                                  else "DeepseekV2ForCausalLM"]
            d.update(q_lora_rank=self.q_lora_rank, kv_lora_rank=self.kv_lora_rank,
                     qk_nope_head_dim=self.qk_nope_head_dim, qk_rope_head_dim=self.qk_rope_head_dim,
                     v_head_dim=self.v_head_dim, rope_interleave=self.rope_interleave,
                     attention_bias=False, num_nextn_predict_layers=self.num_nextn_predict_layers)
            if self.is_moe:
                d.update(n_routed_experts=self.n_routed_experts, n_shared_experts=self.n_shared_experts,
                         num_experts_per_tok=self.num_experts_per_tok,
                         moe_intermediate_size=self.moe_intermediate_size,
                         first_k_dense_replace=self.first_k_dense_replace, n_group=self.n_group,
                         topk_group=self.topk_group, routed_scaling_factor=self.routed_scaling_factor,
                         norm_topk_prob=self.norm_topk_prob, scoring_func=self.scoring_func,
                         topk_method=self.topk_method, moe_layer_freq=1)
            else:
                # transformers' DeepseekV3 always builds MoE from first_k_dense_replace on:
                # a dense MLA model is expressed as "every layer dense".
                d.update(first_k_dense_replace=self.num_hidden_layers, n_routed_experts=1,
                         num_experts_per_tok=1, n_group=1, topk_group=1,
                         moe_intermediate_size=1, n_shared_experts=1)
        return d


def _norm_rope(d: Mapping) -> dict:
    d = dict(d)
    d.pop("rope_theta", None)
    t = d.pop("rope_type", None) or d.pop("type", None) or "default"
    d.pop("type", None)
    return {"rope_type": t, **d}


def _parse_rope_scaling(rope: dict, source: str, max_pos: int) -> RopeScaling | None:
    rope = dict(rope)
    rtype = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
    rope.pop("type", None)
    if rtype == "default":
        rope.pop("partial_rotary_factor", None) if rope.get("partial_rotary_factor", 1.0) == 1.0 else None
        if rope:
            raise ConfigError(f"{source}: unsupported RoPE field 'rope_scaling.{sorted(rope)[0]}' "
                              "for rope_type 'default'")
        return None
    if rtype != "yarn":
        raise ConfigError(f"{source}: config field 'rope_scaling.type': unsupported rope type "
                          f"{rtype!r} (supported: default, yarn)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{source}: config field 'rope_scaling.partial_rotary_factor' is not "
                          "supported")
    rope.pop("partial_rotary_factor", None)
    omax = rope.pop("original_max_position_embeddings", None) or max_pos
    factor = rope.pop("factor", None)
    if factor is None:
        factor = max_pos / omax
    kw = dict(factor=float(factor), original_max_position_embeddings=int(omax))
    for k in ("beta_fast", "beta_slow"):
        v = rope.pop(k, None)
        if v:  # transformers: `or 32` / `or 1`
            kw[k] = float(v)
    for k in ("mscale", "mscale_all_dim", "attention_factor"):
        v = rope.pop(k, None)
        kw[k] = None if v is None else float(v)
    kw["truncate"] = bool(rope.pop("truncate", True))
    if rope:
        raise ConfigError(f"{source}: unsupported RoPE field 'rope_scaling.{sorted(rope)[0]}'")
    return RopeScaling(**kw)


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention-temperature correction: 0.1·mscale·ln(scale) + 1 (1 when not extending)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def list_presets() -> list:
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".json"))
