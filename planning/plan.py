"""`seekline plan`: memory per GPU, step time and the parallelism a model needs on a cluster.

Pure arithmetic on a ModelConfig (no TensorFlow, no weights). Where each number comes from:

* Parameter counts: model/params.count_params (shapes of the HF checkpoint; reproduces the
  published DeepSeek-V3 671B total / 37B activated).
* Model states, mixed precision + Adam: 16 bytes/parameter = 2 (bf16 weights) + 2 (bf16
  gradients) + 12 (fp32 master weights, Adam m and v) — Rajbhandari et al. 2020, "ZeRO: Memory
  Optimizations Toward Training Trillion Parameter Models", §3.1 (K = 12). Keras'
  mixed_bfloat16 policy (fp32 variables + fp32 gradients + 2 fp32 moments) is also 16 bytes.
  ZeRO stages shard them over the N data-parallel ranks (ZeRO §5, Figure 1):
  stage 1 = 4 + 12/N, stage 2 = 2 + 14/N, stage 3 = 16/N bytes/parameter.
* Activations: the per-layer count of Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", §4.1 — s·b·h·(34 + 5·a·s/h) bytes for a GPT
  layer — redone tensor by tensor for this code's blocks (RMSNorm, SwiGLU, no dropout, MLA or
  GQA, DeepSeekMoE); for a GPT-shaped layer without dropout masks it gives their 32·sbh + 4·as²b
  minus the mask bytes (checked in planning/plan_test.py). Full recomputation keeps each layer's
  input (2·s·b·h bytes, their §4.2) plus one layer's activations while it is recomputed.
* KV cache: MLA caches the compressed latent c_kv (kv_lora_rank) and the shared RoPE key
  (qk_rope_head_dim) per token per layer — 576 values for V3 (DeepSeek-V2 paper §2.1.4, Table 1)
  — against heads·(qk_head_dim + v_head_dim) = 40,960 for full multi-head attention.
* Step time: 6·N_activated FLOPs per token (Kaplan et al. 2020 §2.1; MFU as in Chowdhery et al.
  2022, PaLM, App. B), divided by GPUs × peak × MFU, where MFU is a stated assumption.
* GPU peaks / bandwidths: NVIDIA H100 SXM and H200 datasheets (989 TFLOPS dense BF16, NVLink
  900 GB/s, 80 GB HBM3 / 141 GB HBM3e), A100 SXM (312 TFLOPS, 600 GB/s, 80 GB); one 400 Gb/s
  InfiniBand NDR NIC per GPU = 50 GB/s (200 Gb/s HDR = 25 GB/s for A100 systems).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.config import ModelConfig
from model.params import count_params

GB = 1e9  # decimal gigabytes, as GPU datasheets state memory
BF16 = 2
FP32 = 4
ADAM_BYTES_PER_PARAM = 16  # ZeRO §3.1: 2 + 2 + K with K = 12

# name -> (memory GB, dense BF16 TFLOPS, NVLink GB/s per GPU, inter-node GB/s per GPU)
GPUS: dict[str, tuple[float, float, float, float]] = {
    "h100": (80.0, 989.0, 900.0, 50.0),
    "h200": (141.0, 989.0, 900.0, 50.0),
    "a100": (80.0, 312.0, 600.0, 25.0),
}


class ClusterProfile(BaseModel):
    """The hardware and the training/serving shape one plan is made for."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: Literal["h100", "h200", "a100"] = "h100"
    gpus_per_node: int = Field(8, ge=1)
    nodes: int = Field(1, ge=1)
    # None = the gpu's datasheet value.
    gpu_memory_gb: float | None = Field(None, gt=0)
    peak_tflops: float | None = Field(None, gt=0)
    nvlink_gb_s: float | None = Field(None, gt=0)
    interconnect_gb_s: float | None = Field(None, gt=0)
    # Share of GPU memory a plan may fill: the rest is the CUDA context, the allocator's
    # fragmentation and temporary buffers (collectives, matmul workspaces).
    usable_fraction: float = Field(0.9, gt=0, le=1)
    # Training shape: rows per GPU per micro-step, their length, micro-steps per optimizer step.
    seq_len: int = Field(4096, ge=1)
    micro_batch: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    # Model FLOPs utilisation assumed for the step time (40% is what large MoE/dense runs report).
    mfu: float = Field(0.4, gt=0, le=1)
    # Serving shape for the KV cache: concurrent sequences × tokens each; None = seq_len.
    serve_batch: int = Field(1, ge=1)
    serve_context: int | None = Field(None, ge=1)
    # Train the MTP modules too (their blocks and projections; embedding and head are shared
    # with the main model, DeepSeek-V3 paper §2.2).
    include_mtp: bool = True
    # True: attention keeps its softmax output (heads × seq_len per token), as a non-fused
    # attention does; False: a fused (flash) attention that recomputes it in the backward.
    attention_scores: bool = True

    @model_validator(mode="after")
    def _fill(self):
        mem, tflops, nvl, ib = GPUS[self.gpu]
        for name, v in (("gpu_memory_gb", mem), ("peak_tflops", tflops), ("nvlink_gb_s", nvl),
                        ("interconnect_gb_s", ib)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, v)
        if self.serve_context is None:
            object.__setattr__(self, "serve_context", self.seq_len)
        return self

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gb * GB * self.usable_fraction


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParamSplit:
    total: int          # main model, as count_params reports (671.0B for V3)
    activated: int      # per token (36.6B for V3)
    mtp_trained: int    # MTP modules without their embedding/head copies (shared in training)
    routed_experts: int  # routed-expert weights (main + trained MTP): what expert parallelism shards
    max_layer: int      # the largest block: what ZeRO-3 gathers at once

    @property
    def trained(self) -> int:
        return self.total + self.mtp_trained

    @property
    def dense(self) -> int:
        """Everything that is not a routed expert (replicated across expert-parallel ranks)."""
        return self.trained - self.routed_experts


def _block_params(cfg: ModelConfig, moe: bool) -> tuple[int, int]:
    """(all, routed-expert) parameters of one block, from count_params' own shapes."""
    from model.params import block_shapes

    idx = cfg.first_k_dense_replace if moe else 0
    shapes = block_shapes(cfg, idx)
    total = sum(math.prod(s) for k, s in shapes.items() if not k.endswith("e_score_correction_bias"))
    routed = sum(math.prod(s) for k, s in shapes.items() if ".mlp.experts." in k)
    return total, routed


def param_split(cfg: ModelConfig, include_mtp: bool = True) -> ParamSplit:
    counts = count_params(cfg)
    d, v = cfg.hidden_size, cfg.vocab_size
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    dense_block, _ = _block_params(cfg, moe=False)
    moe_block, moe_routed = _block_params(cfg, moe=True) if cfg.is_moe else (0, 0)
    mtp = 0
    n_mtp = cfg.num_nextn_predict_layers if include_mtp else 0
    if n_mtp:
        # count_params' mtp includes a copy of the embedding and the head per module.
        mtp = counts["mtp"] - n_mtp * 2 * v * d
    routed = (n_moe + (n_mtp if cfg.is_moe else 0)) * moe_routed
    return ParamSplit(counts["total"], counts["activated"], mtp, routed, max(dense_block, moe_block))


# ------------------------------------------------------------------ activations


def layer_activation_elements_per_token(cfg: ModelConfig, moe: bool, seq_len: int,
                                         attention_scores: bool = True) -> tuple[int, int]:
    """(16-bit elements, fp32 elements) one block keeps per token for its backward pass.

    Tensor by tensor (Korthikanti et al. §4.1, without dropout masks): every matmul keeps its
    input, RMSNorm its input, SwiGLU gate and up outputs plus their product (the down
    projection's input), attention Q, K, V, its softmax output (heads × seq_len per token, what
    a non-fused attention keeps) and the o_proj input. RoPE is linear and keeps nothing.
    """
    d, a = cfg.hidden_size, cfg.num_attention_heads
    half = 2 * d              # the two RMSNorm inputs (attention, MLP)
    half += d                 # the normed input to q/kv projections (one tensor feeds both)
    if cfg.attention_type == "mla":
        if cfg.q_lora_rank is None:
            q_path = 0
        else:
            q_path = 2 * cfg.q_lora_rank          # q_a_layernorm input, q_b_proj input
        kv_path = 2 * cfg.kv_lora_rank            # kv_a_layernorm input, kv_b_proj input
        qk = 2 * a * cfg.qk_head_dim              # Q and K (K materialised per head)
        v_and_o = 2 * a * cfg.v_head_dim          # V, o_proj input
        half += q_path + kv_path + qk + v_and_o
    else:
        hd, g = cfg.head_dim, cfg.num_key_value_heads
        half += 2 * a * hd + 2 * g * hd           # Q and o_proj input; K and V
    if attention_scores:
        half += a * seq_len                       # softmax output
    half += d                                     # the normed MLP input (router and experts)
    fp32 = 0
    if moe:
        f = cfg.moe_intermediate_size
        k = cfg.num_experts_per_tok
        half += k * (d + 3 * f)   # each routed copy: expert input, gate, up, gate·up
        half += k * d             # expert outputs, kept for the routing-weight gradient
        half += 3 * cfg.n_shared_experts * f
        fp32 += cfg.n_routed_experts  # router scores (kept in fp32)
    else:
        half += 3 * cfg.intermediate_size
    return half, fp32


def _layer_bytes(cfg: ModelConfig, moe: bool, tokens: int, seq_len: int, scores: bool) -> float:
    half, fp32 = layer_activation_elements_per_token(cfg, moe, seq_len, scores)
    return tokens * (BF16 * half + FP32 * fp32)


def head_activation_bytes(cfg: ModelConfig, tokens: int) -> float:
    """Final RMSNorm input + head input (bf16) and the fp32 logits the cross-entropy keeps."""
    return tokens * (BF16 * 2 * cfg.hidden_size + FP32 * cfg.vocab_size)


@dataclass(frozen=True)
class Activations:
    full: float        # bytes, every layer's activations kept
    recompute: float   # bytes, full recomputation (layer inputs + one layer being recomputed)


def activation_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, include_mtp: bool = True,
                     tp: int = 1, attention_scores: bool = True) -> Activations:
    """Activation memory of one micro-batch on one GPU; `tp` ways of tensor parallelism with
    sequence parallelism divide every per-layer tensor (Korthikanti §4.2.2)."""
    tokens = micro_batch * seq_len
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    n_dense = cfg.num_hidden_layers - n_moe
    n_mtp = cfg.num_nextn_predict_layers if include_mtp else 0
    dense = _layer_bytes(cfg, False, tokens, seq_len, attention_scores) / tp
    moe = _layer_bytes(cfg, True, tokens, seq_len, attention_scores) / tp if cfg.is_moe else 0.0
    mtp_layer = moe if cfg.is_moe else dense
    # An MTP module: its block, the two normed inputs and eh_proj's input (3·d), its own head.
    mtp_extra = n_mtp * (mtp_layer + tokens * BF16 * 3 * cfg.hidden_size / tp
                         + head_activation_bytes(cfg, tokens) / tp)
    head = head_activation_bytes(cfg, tokens) / tp
    full = n_dense * dense + n_moe * moe + mtp_extra + head
    n_layers = cfg.num_hidden_layers + n_mtp
    inputs = n_layers * tokens * BF16 * cfg.hidden_size / tp
    recompute = inputs + max(dense, moe) + head * (1 + n_mtp)
    return Activations(full, recompute)


# ------------------------------------------------------------------ model states (ZeRO)


def state_bytes(params: float, stage: int, n: int) -> float:
    """Bytes/GPU of weights + gradients + Adam for `params` parameters on `n` data-parallel
    ranks at ZeRO `stage` (0 = plain data parallelism). ZeRO §5."""
    if stage == 0:
        per = 16.0
    elif stage == 1:
        per = 4.0 + 12.0 / n
    elif stage == 2:
        per = 2.0 + 14.0 / n
    elif stage == 3:
        per = 16.0 / n
    else:
        raise ValueError(f"ZeRO stage must be 0..3, got {stage}")
    return params * per


def gathered_bytes(layer_params: float, stage: int) -> float:
    """ZeRO-3 materialises one block's bf16 weights and gradients at a time."""
    return (BF16 + BF16) * layer_params if stage == 3 else 0.0


# ------------------------------------------------------------------ KV cache


def kv_values_per_token_layer(cfg: ModelConfig) -> int:
    """Cached values per token per layer: MLA's latent + RoPE key, or GQA's K and V heads."""
    if cfg.attention_type == "mla":
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.head_dim


def mha_kv_values_per_token_layer(cfg: ModelConfig) -> int:
    """The same model with a full multi-head cache (what MLA is compared with)."""
    if cfg.attention_type == "mla":
        return cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    return 2 * cfg.num_attention_heads * cfg.head_dim


def kv_cache_bytes(cfg: ModelConfig, batch: int, context: int, bytes_per_value: int = BF16) -> float:
    return float(kv_values_per_token_layer(cfg) * cfg.num_hidden_layers * batch * context * bytes_per_value)


# ------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class StageFit:
    stage: int
    min_gpus: int | None   # None: no number of data-parallel GPUs fits
    min_nodes: int | None
    bytes_at_cluster: float  # per GPU on the profile's whole cluster
    fits_cluster: bool


@dataclass(frozen=True)
class Plan:
    model: str
    profile: dict
    params: dict
    memory_gb: dict          # per GPU, the profile's cluster, no sharding unless stated
    activations_gb: dict
    kv_cache: dict
    step: dict
    zero: list
    verdict: str
    parallelism: dict

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _min_gpus(need_fixed: float, shardable: float, budget: float, stage: int) -> int | None:
    """Smallest n with need_fixed + shardable/n <= budget (stage 0: n irrelevant)."""
    room = budget - need_fixed
    if room <= 0:
        return None
    if stage == 0 or shardable <= 0:
        return 1
    return max(1, math.ceil(shardable / room))


def zero_fits(ps: ParamSplit, act: float, prof: ClusterProfile) -> list[StageFit]:
    out = []
    psi = ps.trained
    budget = prof.usable_bytes
    for stage in range(4):
        fixed = act + gathered_bytes(ps.max_layer, stage)
        if stage == 0:
            fixed += 16.0 * psi
            shard = 0.0
        else:
            fixed += {1: 4.0, 2: 2.0, 3: 0.0}[stage] * psi
            shard = {1: 12.0, 2: 14.0, 3: 16.0}[stage] * psi
        n = _min_gpus(fixed, shard, budget, stage)
        at = act + gathered_bytes(ps.max_layer, stage) + state_bytes(psi, stage, prof.total_gpus)
        nodes = math.ceil(n / prof.gpus_per_node) if n is not None else None
        out.append(StageFit(stage, n, nodes, at, at <= budget))
    return out


def _ep_bytes(ps: ParamSplit, act: float, ep: int, n: int, stage: int, max_layer: float) -> float:
    """Per GPU with `ep`-way expert parallelism over n GPUs: dense states ZeRO-sharded over all
    n ranks, each expert shard's states over the n/ep ranks that hold it."""
    dense = state_bytes(ps.dense, stage, n)
    experts = state_bytes(ps.routed_experts / ep, stage, max(1, n // ep))
    return act + dense + experts + gathered_bytes(max_layer, stage)


def plan(cfg: ModelConfig, prof: ClusterProfile, name: str = "model") -> Plan:
    ps = param_split(cfg, prof.include_mtp)
    acts = activation_bytes(cfg, prof.micro_batch, prof.seq_len, prof.include_mtp,
                            attention_scores=prof.attention_scores)
    psi = ps.trained
    memory = {
        "parameters (bf16)": BF16 * psi / GB,
        "gradients (bf16)": BF16 * psi / GB,
        "optimizer (fp32 master + Adam m, v)": 12 * psi / GB,
        "activations": acts.full / GB,
        "activations, full recomputation": acts.recompute / GB,
    }
    ctx = prof.serve_context
    kv = {
        "values/token/layer": kv_values_per_token_layer(cfg),
        "values/token/layer, full MHA": mha_kv_values_per_token_layer(cfg),
        "batch": prof.serve_batch,
        "context": ctx,
        "kv_cache_gb": kv_cache_bytes(cfg, prof.serve_batch, ctx) / GB,
        "kv_cache_gb, full MHA": mha_kv_values_per_token_layer(cfg) * cfg.num_hidden_layers
        * prof.serve_batch * ctx * BF16 / GB,
        "weights_gb (bf16)": BF16 * ps.total / GB,
        "weights_gb (fp8)": 1 * ps.total / GB,
    }
    # Step time: the profile's whole cluster, one micro-batch per GPU per micro-step.
    tokens = prof.micro_batch * prof.seq_len * prof.grad_accum * prof.total_gpus
    flops = 6.0 * ps.activated * tokens
    compute_s = flops / (prof.total_gpus * prof.peak_tflops * 1e12 * prof.mfu)
    # Ring all-reduce of bf16 gradients: each GPU sends/receives 2·(N-1)/N × 2Ψ bytes, at the
    # inter-node NIC rate once the ring leaves a node (ZeRO §7: stages 1-2 same volume, 3 ×1.5).
    n = prof.total_gpus
    bw = (prof.interconnect_gb_s if prof.nodes > 1 else prof.nvlink_gb_s) * GB
    allreduce_s = 2 * (n - 1) / n * BF16 * psi / bw if n > 1 else 0.0
    step = {
        "tokens/step": tokens,
        "flops/step": flops,
        "mfu": prof.mfu,
        "compute_s": compute_s,
        "dp_allreduce_s (pure DP, not overlapped)": allreduce_s,
        "tokens/s": tokens / compute_s,
    }
    fits_rc = zero_fits(ps, acts.recompute, prof)
    fits_full = zero_fits(ps, acts.full, prof)
    zero = [{"stage": f.stage, "recompute": True, "min_gpus": f.min_gpus, "min_nodes": f.min_nodes,
             "gb_per_gpu_on_cluster": f.bytes_at_cluster / GB, "fits_cluster": f.fits_cluster}
            for f in fits_rc]
    zero += [{"stage": f.stage, "recompute": False, "min_gpus": f.min_gpus, "min_nodes": f.min_nodes,
              "gb_per_gpu_on_cluster": f.bytes_at_cluster / GB, "fits_cluster": f.fits_cluster}
             for f in fits_full]
    verdict, par = _parallelism(cfg, ps, prof, fits_rc, fits_full, acts)
    return Plan(name, prof.model_dump(), {
        "total": ps.total, "activated": ps.activated, "mtp_trained": ps.mtp_trained,
        "trained": psi, "routed_experts": ps.routed_experts, "largest_block": ps.max_layer},
        memory, {"full_gb": acts.full / GB, "recompute_gb": acts.recompute / GB},
        kv, step, zero, verdict, par)


def _parallelism(cfg, ps, prof, fits_rc, fits_full, acts) -> tuple[str, dict]:
    budget = prof.usable_bytes
    n = prof.total_gpus
    for fits, rc in ((fits_full, False), (fits_rc, True)):
        ok = [f for f in fits if f.fits_cluster]
        if ok:
            f = ok[0]
            how = "plain data parallelism" if f.stage == 0 else f"data parallelism + ZeRO-{f.stage}"
            return (f"{how}{' with activation recomputation' if rc else ''} fits the "
                    f"{prof.nodes}-node cluster ({f.bytes_at_cluster / GB:.1f} GB/GPU of "
                    f"{budget / GB:.1f} usable)", {"kind": "data", "zero": f.stage, "recompute": rc})
    # Data parallelism is not enough on this cluster: shard the model itself.
    if cfg.is_moe:
        moe_block, moe_routed = _block_params(cfg, moe=True)
        eps = [2 ** i for i in range(1, 21)
               if 2 ** i <= min(n, cfg.n_routed_experts) and cfg.n_routed_experts % 2 ** i == 0]
        for stage in (1, 2, 3):   # the least communication first, then the fewest EP ranks
            for e in eps:
                layer = max(moe_block - moe_routed + moe_routed / e, _block_params(cfg, False)[0])
                need = _ep_bytes(ps, acts.recompute, e, n, stage, layer)
                if need <= budget:
                    return (f"data parallelism is not enough: expert parallelism over {e} GPUs "
                            f"(EP={e}, {cfg.n_routed_experts // e} routed experts per GPU) + ZeRO-{stage}"
                            f" + recomputation: {need / GB:.1f} GB/GPU",
                            {"kind": "expert", "ep": e, "zero": stage, "recompute": True,
                             "gb_per_gpu": need / GB})
        return _too_small(ps, prof, acts, "data + expert parallelism")
    tps = [2 ** i for i in range(1, 11)
           if 2 ** i <= prof.gpus_per_node and cfg.num_attention_heads % 2 ** i == 0]
    for stage in (1, 2, 3):
        for t in tps:  # TP stays inside a node: it all-reduces activations every layer (NVLink)
            a = activation_bytes(cfg, prof.micro_batch, prof.seq_len, prof.include_mtp, tp=t,
                                 attention_scores=prof.attention_scores).recompute
            need = a + state_bytes(ps.trained / t, stage, max(1, n // t)) + gathered_bytes(ps.max_layer / t, stage)
            if need <= budget:
                return (f"data parallelism is not enough: tensor parallelism {t} ways inside a node "
                        f"(TP={t}, sequence parallel) + ZeRO-{stage} + recomputation: {need / GB:.1f} GB/GPU",
                        {"kind": "tensor", "tp": t, "zero": stage, "recompute": True, "gb_per_gpu": need / GB})
    return _too_small(ps, prof, acts, f"data + tensor parallelism (TP up to {prof.gpus_per_node})")


def _too_small(ps, prof, acts, tried: str) -> tuple[str, dict]:
    """The cluster is too small for any sharding tried: the floor is the 16 bytes/parameter of
    training state spread over every GPU next to one micro-batch's recomputed activations."""
    room = prof.usable_bytes - acts.recompute
    gpus = math.ceil(ADAM_BYTES_PER_PARAM * ps.trained / room) if room > 0 else None
    if gpus is None:
        return (f"{tried} is not enough: one micro-batch's activations alone exceed a GPU; lower "
                "--micro-batch / --seq-len or add tensor/context parallelism", {"kind": "activations"})
    nodes = math.ceil(gpus / prof.gpus_per_node)
    return (f"{tried} is not enough on {prof.total_gpus} GPUs: the training states are "
            f"{ADAM_BYTES_PER_PARAM * ps.trained / GB:,.0f} GB, so >= {gpus} GPUs ({nodes} nodes) even "
            "fully sharded; add nodes, then shard experts/tensors and pipeline the layers",
            {"kind": "more nodes", "min_gpus": gpus, "min_nodes": nodes})
