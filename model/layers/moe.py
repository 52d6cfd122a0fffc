"""DeepSeekMoE: shared experts + fine-grained routed experts with (group-limited) top-k routing.

Routing (V3, topk_method "noaux_tc"):
  s = sigmoid(x·Wg) in fp32; choice = s + e_score_correction_bias (bias only steers selection);
  group score = sum of the top-2 `choice` per group; keep `topk_group` groups, mask the rest with
  −inf (0 would let masked experts win when every kept score is negative); top-k of `choice`;
  weights = s at the chosen experts, / their sum when norm_topk_prob, × routed_scaling_factor.
V2 ("greedy" / "group_limited_greedy", softmax scores) is supported for imported V2 checkpoints.

Compute scales with top-k, not with the number of experts: the N·K (token, expert) pairs are
sorted by expert, split into per-expert contiguous runs and each expert runs one matmul on only
its rows; results are weighted and scattered back with unsorted_segment_sum.

LoRA on routed experts (optional; model/lora.py attaches it with include_experts): each routed
projection P in gate / up / down may carry stacked adapters, one rank-r pair per expert,
A_P (E, in, r) and B_P (E, r, out), with scale s = alpha / r (rsLoRA: alpha / √r). A starts per
expert as PEFT's kaiming-uniform U(−1/√in, 1/√in), B at zero, so attaching changes nothing; the
base stacks are frozen while adapters are attached. `_expert_weights()` returns W_P + s·A_P·B_P
(einsum in fp32, cast back to the variable dtype) and every expert path (unrolled loop, while
loop, the gathered decode path) multiplies by what it returns, so training, evaluation and
generation all see the adapters. Without adapters it returns the variables themselves: the
no-adapter graph is the same as before adapters existed.
Adapter dropout is NOT applied to expert adapters: the adapter is folded into the stacked
weights before the per-expert matmuls, so there is no separate x·A term to drop out (dropping
entries of the folded weights would be a different regulariser). Folding costs one
(E, in, r)·(E, r, out) einsum per adapted projection per call, independent of the token count;
for long generation runs merge first (`merge_expert_lora`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from model import ops
from model.layers.linear import Linear
from model.layers.mlp import SwiGLU
from model.ops.grouped_matmul import grouped_matmul
from model.ops.moe_combine import combine, gather_rows
from model.ops.swiglu import swiglu

# Routed projections that may carry adapters, in the HF order gate_proj, up_proj, down_proj.
EXPERT_PROJECTIONS = ("gate", "up", "down")


class RouterOutput(NamedTuple):
    """What the trainer needs from one MoE layer for one step (all fp32 / int32).

    scores: (N, E) unbiased affinities s (sigmoid or softmax); topk_idx: (N, K) chosen experts;
    topk_weight: (N, K) combine weights.
    """
    scores: tf.Tensor
    topk_idx: tf.Tensor
    topk_weight: tf.Tensor


def route(logits, bias, *, top_k: int, n_group: int, topk_group: int, scoring_func: str,
          topk_method: str, norm_topk_prob: bool, routed_scaling_factor: float) -> RouterOutput:
    """logits (N, E) fp32, bias (E,) or None -> RouterOutput. Pure function (tested directly)."""
    if scoring_func == "sigmoid":
        scores = tf.sigmoid(logits)                                        # (N, E)
    else:
        scores = tf.nn.softmax(logits, axis=-1)
    choice = scores + bias[None, :] if bias is not None else scores       # selection only
    grouped = topk_method != "greedy" and n_group > 1
    if ops.active("route_topk"):
        # the same choice in one kernel pass per token (model/ops/cc/route.cc): same experts, same order
        mode = ("top2_sum" if topk_method == "noaux_tc" else "max") if grouped else "none"
        topk_idx = ops.library().seekline_route_top_k(choice, top_k=top_k, n_group=n_group, topk_group=topk_group,
                                                       group_mode=mode)       # (N, K) int32
    else:
        topk_idx = _route_top_k_reference(choice, top_k, n_group, topk_group, topk_method, grouped)
    topk_weight = tf.gather(scores, topk_idx, batch_dims=1)                # (N, K) unbiased
    if norm_topk_prob:
        topk_weight = topk_weight / (tf.reduce_sum(topk_weight, -1, keepdims=True) + 1e-20)
    topk_weight = topk_weight * routed_scaling_factor
    return RouterOutput(scores, tf.cast(topk_idx, tf.int32), topk_weight)


def _route_top_k_reference(choice, top_k: int, n_group: int, topk_group: int, topk_method: str, grouped: bool):
    """choice (N, E) -> (N, K) expert ids: top_k over the experts of the topk_group best groups."""
    n_experts = choice.shape[-1]
    if grouped:
        per = n_experts // n_group
        per_group = tf.reshape(choice, [-1, n_group, per])                 # (N, G, E/G)
        if topk_method == "noaux_tc":
            group_score = tf.reduce_sum(tf.math.top_k(per_group, k=2).values, axis=-1)  # (N, G)
        else:  # group_limited_greedy (V2): best expert per group
            group_score = tf.reduce_max(per_group, axis=-1)
        keep = tf.math.top_k(group_score, k=topk_group).indices           # (N, topk_group)
        group_mask = tf.reduce_sum(tf.one_hot(keep, n_group, dtype=tf.float32), axis=1) > 0  # (N, G)
        expert_mask = tf.reshape(tf.repeat(group_mask[:, :, None], per, axis=2), [-1, n_experts])
        choice = tf.where(expert_mask, choice, tf.fill(tf.shape(choice), float("-inf")))
    return tf.math.top_k(choice, k=top_k).indices                          # (N, K)


def dispatch_plan(topk_idx, n_experts: int):
    """Sort the N·K (token, expert) pairs by expert.

    Returns (order, token_of, counts): `order` permutes the flattened pairs into expert-major
    order, token_of[j] is the token of sorted pair j, counts (E,) the rows each expert gets.
    sum(counts) == N·K — the experts see exactly the chosen pairs, nothing more.
    """
    k = topk_idx.shape[-1]
    flat_expert = tf.reshape(topk_idx, [-1])                               # (N*K,)
    order = tf.argsort(flat_expert, stable=True)                           # (N*K,)
    token_of = order // k
    counts = tf.math.bincount(flat_expert, minlength=n_experts, maxlength=n_experts,
                              dtype=tf.int32)                              # (E,)
    return order, token_of, counts


@keras.saving.register_keras_serializable(package="seekline")
class MoE(keras.layers.Layer):
    def __init__(self, hidden_size: int, moe_intermediate_size: int, n_routed_experts: int,
                 n_shared_experts: int, num_experts_per_tok: int, n_group: int = 1,
                 topk_group: int = 1, routed_scaling_factor: float = 1.0,
                 norm_topk_prob: bool = False, scoring_func: str = "sigmoid",
                 topk_method: str = "noaux_tc", initializer_range: float = 0.02,
                 expert_loop: str = "auto", **kwargs):
        """expert_loop: "auto" | "grouped" | "unrolled" | "while". auto and grouped run all
        experts through the grouped-matmul custom op (model/ops) when it is active, else the
        pure-TF loop (unrolled up to 32 experts, a while loop above); unrolled / while force
        that pure-TF loop."""
        super().__init__(**kwargs)
        if expert_loop not in ("auto", "grouped", "unrolled", "while"):
            raise ValueError(f"expert_loop must be auto, grouped, unrolled or while, got {expert_loop!r}")
        self.use_grouped_op = expert_loop in ("auto", "grouped")
        self.expert_loop = (("unrolled" if n_routed_experts <= 32 else "while") if self.use_grouped_op
                            else expert_loop)
        self.hidden_size = hidden_size
        self.moe_intermediate_size = moe_intermediate_size
        self.n_routed_experts = n_routed_experts
        self.n_shared_experts = n_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.norm_topk_prob = norm_topk_prob
        self.scoring_func = scoring_func
        self.topk_method = topk_method
        self.initializer_range = initializer_range
        e, d, i = n_routed_experts, hidden_size, moe_intermediate_size
        init = keras.initializers.RandomNormal(stddev=initializer_range)
        self.gate = Linear(d, e, initializer_range=initializer_range, name="gate")  # kernel (D, E)
        # Adjusted by the aux-loss-free balancing rule (model.balance), never by gradients.
        self.e_score_correction_bias = (
            self.add_weight(shape=(e,), name="e_score_correction_bias", initializer="zeros",
                            trainable=False)
            if topk_method == "noaux_tc" else None)
        # Stacked expert weights: (E, D, I), (E, D, I), (E, I, D).
        self.experts_gate = self.add_weight(shape=(e, d, i), name="experts_gate", initializer=init)
        self.experts_up = self.add_weight(shape=(e, d, i), name="experts_up", initializer=init)
        self.experts_down = self.add_weight(shape=(e, i, d), name="experts_down", initializer=init)
        self.shared_experts = (SwiGLU(d, i * n_shared_experts, initializer_range, name="shared_experts")
                               if n_shared_experts else None)
        # Routed-expert adapters (see the module docstring): per projection A (E, in, r), B (E, r, out).
        self.experts_gate_lora_a = self.experts_gate_lora_b = None
        self.experts_up_lora_a = self.experts_up_lora_b = None
        self.experts_down_lora_a = self.experts_down_lora_b = None
        self.expert_lora_rank = 0
        self.expert_lora_alpha = 0.0
        self.expert_lora_scale = 0.0
        self._expert_base_trainable: tuple[bool, ...] = ()
        self.built = True

    # ------------------------------------------------------------------ routed-expert LoRA
    def _stack(self, proj: str):
        if proj not in EXPERT_PROJECTIONS:
            raise ValueError(f"{self.name}: expert projection must be one of {EXPERT_PROJECTIONS}, got {proj!r}")
        return getattr(self, f"experts_{proj}")

    def expert_dims(self, proj: str) -> tuple[int, int]:
        """(in, out) of one expert's `proj` matrix: gate/up (D, I), down (I, D)."""
        _, n_in, n_out = self._stack(proj).shape
        return int(n_in), int(n_out)

    def expert_lora(self, proj: str):
        """(A (E, in, r), B (E, r, out)) variables of `proj`'s adapters, or None."""
        self._stack(proj)
        a = getattr(self, f"experts_{proj}_lora_a")
        return None if a is None else (a, getattr(self, f"experts_{proj}_lora_b"))

    @property
    def expert_lora_projections(self) -> tuple[str, ...]:
        """The routed projections that carry adapters, in EXPERT_PROJECTIONS order."""
        return tuple(p for p in EXPERT_PROJECTIONS if getattr(self, f"experts_{p}_lora_a") is not None)

    @property
    def has_expert_lora(self) -> bool:
        return bool(self.expert_lora_projections)

    def enable_expert_lora(self, rank: int, alpha: float, use_rslora: bool = False,
                           projections=EXPERT_PROJECTIONS, seed: int | None = None) -> None:
        """Attach stacked adapters to the routed `projections` (A per expert kaiming-uniform as
        PEFT, B zeros) and freeze every routed base stack. seed: A's initialiser (projection k
        uses seed + k so gate and up, which have the same shape, get different draws)."""
        if self.has_expert_lora:
            raise ValueError(f"{self.name}: routed-expert LoRA adapters are already attached")
        if isinstance(projections, str) or not projections or any(p not in EXPERT_PROJECTIONS for p in projections):
            raise ValueError(f"{self.name}: expert projections must be a non-empty subset of "
                             f"{EXPERT_PROJECTIONS}, got {projections!r}")
        if int(rank) != rank or rank < 1:
            raise ValueError(f"{self.name}: LoRA rank must be a positive integer, got {rank!r}")
        rank, e = int(rank), self.n_routed_experts
        locked = self._tracker.locked   # Keras may lock a built layer's lists; adding is deliberate
        self._tracker.unlock()
        try:
            for k, proj in enumerate(EXPERT_PROJECTIONS):
                if proj not in projections:
                    continue
                n_in, n_out = self.expert_dims(proj)
                bound = 1.0 / math.sqrt(n_in)     # PEFT kaiming_uniform_(a=√5) on (r, in): U(±1/√in)
                a = self.add_weight(
                    shape=(e, n_in, rank), name=f"experts_{proj}_lora_A",
                    initializer=keras.initializers.RandomUniform(
                        -bound, bound, seed=None if seed is None else seed + k))
                b = self.add_weight(shape=(e, rank, n_out), name=f"experts_{proj}_lora_B",
                                    initializer="zeros")
                setattr(self, f"experts_{proj}_lora_a", a)
                setattr(self, f"experts_{proj}_lora_b", b)
        finally:
            if locked:
                self._tracker.lock()
        base = [self._stack(p) for p in EXPERT_PROJECTIONS]
        self._expert_base_trainable = tuple(v.trainable for v in base)
        for v in base:
            v.trainable = False
        self.expert_lora_rank, self.expert_lora_alpha = rank, float(alpha)
        self.expert_lora_scale = float(alpha) / (math.sqrt(rank) if use_rslora else rank)

    def _expert_weights(self):
        """The stacked routed weights every expert path multiplies by: gate (E, D, I),
        up (E, D, I), down (E, I, D), in the variables' dtype. Without adapters: the variables
        themselves (no extra op). With adapters: W + s·A·B per expert, computed in fp32."""
        out = []
        for proj in EXPERT_PROJECTIONS:
            w, ab = self._stack(proj), self.expert_lora(proj)
            if ab is None:
                out.append(w)
                continue
            a, b = ab
            delta = tf.einsum("eir,ero->eio", tf.cast(a, tf.float32), tf.cast(b, tf.float32))  # (E, in, out)
            out.append(tf.cast(tf.cast(w, tf.float32) + self.expert_lora_scale * delta, w.dtype))
        return tuple(out)

    def merge_expert_lora(self) -> None:
        """W ← W + s·A·B for every adapted projection (float64, rounded once to the stack's
        dtype), then remove the adapters and restore the stacks' trainability."""
        if not self.has_expert_lora:
            raise ValueError(f"{self.name}: no routed-expert LoRA adapters to merge")
        for proj in self.expert_lora_projections:
            w = self._stack(proj)
            a, b = (np.asarray(v.numpy(), np.float64) for v in self.expert_lora(proj))
            merged = np.asarray(w.numpy(), np.float64) + self.expert_lora_scale * np.einsum("eir,ero->eio", a, b)
            w.assign(merged.astype(w.dtype))
        self.remove_expert_lora()

    def remove_expert_lora(self) -> None:
        """Drop the routed-expert adapters without merging them."""
        if not self.has_expert_lora:
            return
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            for proj in self.expert_lora_projections:
                for v in self.expert_lora(proj):
                    self._tracker.untrack(v)
                setattr(self, f"experts_{proj}_lora_a", None)
                setattr(self, f"experts_{proj}_lora_b", None)
        finally:
            if locked:
                self._tracker.lock()
        for proj, t in zip(EXPERT_PROJECTIONS, self._expert_base_trainable, strict=True):
            self._stack(proj).trainable = t
        self.expert_lora_rank, self.expert_lora_alpha, self.expert_lora_scale = 0, 0.0, 0.0

    def router(self, x2d) -> RouterOutput:
        """x2d (N, D) -> RouterOutput; the router runs in fp32 whatever the compute dtype."""
        logits = tf.matmul(tf.cast(x2d, tf.float32), tf.cast(self.gate.kernel, tf.float32))  # (N, E)
        bias = (tf.cast(self.e_score_correction_bias, tf.float32)
                if self.e_score_correction_bias is not None else None)
        return route(logits, bias, top_k=self.num_experts_per_tok, n_group=self.n_group,
                     topk_group=self.topk_group, scoring_func=self.scoring_func,
                     topk_method=self.topk_method, norm_topk_prob=self.norm_topk_prob,
                     routed_scaling_factor=self.routed_scaling_factor)

    def routed_experts(self, x2d, r: RouterOutput):
        """x2d (N, D) -> (N, D): Σ_k w_k · SwiGLU_{e_k}(x), touching only the chosen pairs."""
        n = tf.shape(x2d)[0]
        e = self.n_routed_experts
        order, token_of, counts = dispatch_plan(r.topk_idx, e)
        dt = x2d.dtype
        if self.use_grouped_op and ops.active("grouped_matmul") and ops.active("moe_combine"):
            # gathers both ways through pos = the sort's inverse (model/ops/moe_combine.py): no
            # scatter-adds, no (N*K, D) weight Mul, the weights used in their (N, K) layout
            pos = tf.reshape(tf.math.invert_permutation(order), [-1, self.num_experts_per_tok])  # (N, K)
            xs = gather_rows(x2d, token_of, pos)                             # (N*K, D) expert-major
            return combine(self._experts_grouped(xs, counts, dt), r.topk_weight, pos)  # (N, D)
        xs = tf.gather(x2d, token_of)                                       # (N*K, D) expert-major
        w = tf.gather(tf.reshape(r.topk_weight, [-1]), order)               # (N*K,)
        if self.use_grouped_op and ops.active("grouped_matmul"):
            ys = self._experts_grouped(xs, counts, dt)
        elif self.expert_loop == "unrolled":
            ys = self._experts_unrolled(xs, counts, dt)
        else:
            ys = self._experts_while(xs, counts, dt)
        ys = ys * tf.cast(w, dt)[:, None]                                   # (N*K, D)
        return tf.math.unsorted_segment_sum(ys, token_of, n)                # (N, D)

    def _experts_grouped(self, xs, counts, dt):
        """All experts in three grouped-matmul ops (custom kernel; gradients registered with it)."""
        gate, up, down = (tf.cast(v, dt) for v in self._expert_weights())   # (E, D, I) ×2, (E, I, D)
        h = swiglu(grouped_matmul(xs, gate, counts), grouped_matmul(xs, up, counts))   # (N*K, I)
        return grouped_matmul(h, down, counts)                               # (N*K, D)

    def _experts_unrolled(self, xs, counts, dt):
        """One matmul chain per expert in the graph: fastest per step, trace time ∝ E."""
        e = self.n_routed_experts
        pieces = tf.split(xs, counts, num=e, axis=0)                        # E × (n_e, D)
        # unstack once: the gradient is one stacked tensor, not E full-size slices.
        gates, ups, downs = (tf.unstack(tf.cast(v, dt), num=e) for v in self._expert_weights())
        outs = [tf.matmul(tf.nn.silu(tf.matmul(p, g)) * tf.matmul(p, u), dn)   # (n_e, D)
                for p, g, u, dn in zip(pieces, gates, ups, downs, strict=False)]
        return tf.concat(outs, axis=0)                                      # (N*K, D)

    def _experts_while(self, xs, counts, dt):
        """A tf.while_loop over experts: graph size independent of E (256-expert models trace in
        seconds); compute is still ∝ N·K. Inputs and weights enter through TensorArrays
        (split / unstack), whose gradients are a concat / stack — reading loop-invariant tensors
        by index instead would accumulate a dense full-size gradient every iteration."""
        e = self.n_routed_experts
        xs_ta = tf.TensorArray(dt, size=e, infer_shape=False).split(xs, counts)   # E × (n_e, D)
        g_ta, u_ta, d_ta = (tf.TensorArray(dt, size=e).unstack(tf.cast(v, dt))
                            for v in self._expert_weights())
        out_ta = tf.TensorArray(dt, size=e, infer_shape=False,
                                element_shape=tf.TensorShape([None, self.hidden_size]))

        def body(i, out_ta):
            p = xs_ta.read(i)                                                # (n_i, D)
            y = tf.matmul(tf.nn.silu(tf.matmul(p, g_ta.read(i))) * tf.matmul(p, u_ta.read(i)),
                          d_ta.read(i))
            return i + 1, out_ta.write(i, y)

        _, out_ta = tf.while_loop(lambda i, _: i < e, body, (tf.constant(0), out_ta))
        return out_ta.concat()                                              # (N*K, D)

    def gathered_experts(self, x2d, r: RouterOutput):
        """x2d (N, D) -> (N, D), the same Σ_k w_k · SwiGLU_{e_k}(x) with fixed shapes: gather each
        token's K experts' weights and run batched matmuls. No data-dependent split, so XLA can
        compile it; but it copies N·K weight triples, so it is meant for a handful of tokens
        (single-token decode), never prefill or training. Terms are summed per token in ascending
        expert order, the order unsorted_segment_sum adds them in on the dispatch path."""
        dt = x2d.dtype
        idx = tf.sort(r.topk_idx, axis=-1)                                   # (N, K) expert order
        w = tf.gather(r.topk_weight, tf.argsort(r.topk_idx, axis=-1, stable=True),
                      batch_dims=1)                                          # (N, K) matching idx
        w_gate, w_up, w_down = self._expert_weights()
        gate = tf.cast(tf.gather(w_gate, idx), dt)                          # (N, K, D, I)
        up = tf.cast(tf.gather(w_up, idx), dt)                              # (N, K, D, I)
        down = tf.cast(tf.gather(w_down, idx), dt)                          # (N, K, I, D)
        xk = x2d[:, None, None, :]                                           # (N, 1, 1, D)
        h = tf.nn.silu(tf.matmul(xk, gate)) * tf.matmul(xk, up)             # (N, K, 1, I)
        ys = tf.matmul(h, down)[:, :, 0, :] * tf.cast(w, dt)[:, :, None]    # (N, K, D)
        y = ys[:, 0]
        for k in range(1, self.num_experts_per_tok):                        # sequential, in order
            y = y + ys[:, k]
        return y                                                             # (N, D)

    def call(self, x, return_router: bool = False, gather_experts: bool = False):
        """x (B, T, D). gather_experts: use the fixed-shape gathered path (single-token decode)."""
        shape = tf.shape(x)
        x2d = tf.reshape(x, [-1, self.hidden_size])                         # (N, D)
        r = self.router(x2d)
        # The gathered path exists for XLA's fixed shapes; outside XLA the grouped-matmul op runs
        # the same few decode rows without copying N·K weight triples (17% of a decode step, profiled).
        gather = gather_experts and not (self.use_grouped_op and ops.active("grouped_matmul"))
        y = (self.gathered_experts if gather else self.routed_experts)(x2d, r)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x2d)                                # shared: unscaled
        y = tf.reshape(y, shape)
        return (y, r) if return_router else y

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size,
                "moe_intermediate_size": self.moe_intermediate_size,
                "n_routed_experts": self.n_routed_experts, "n_shared_experts": self.n_shared_experts,
                "num_experts_per_tok": self.num_experts_per_tok, "n_group": self.n_group,
                "topk_group": self.topk_group, "routed_scaling_factor": self.routed_scaling_factor,
                "norm_topk_prob": self.norm_topk_prob, "scoring_func": self.scoring_func,
                "topk_method": self.topk_method, "initializer_range": self.initializer_range,
                "expert_loop": "auto" if self.use_grouped_op else self.expert_loop}
