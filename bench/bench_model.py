#!/usr/bin/env python3
"""Model-core benchmarks: KV-cache size, decode and prefill/forward speed against transformers.

    .venv/bin/python bench/bench_model.py            # or: make bench   (~2-4 min on 2 cores)

1. KV cache bytes per token per layer, read from the cache tensors seekline really allocates
   (`init_cache`, and the cache `prefill` returns): sum(nbytes) / (batch * max_len * layers),
   against a full multi-head K/V cache of the same config. The DeepSeek-V3 671B row uses a
   1-layer model with the preset's full attention shapes (only FFN width and vocab shrunk: they
   hold no cache state), so nothing close to 671B parameters is allocated.
2. Decode tokens/s at 1K context, seekline `generate` vs transformers `generate`, greedy, on the
   identical model (seekline's weights exported with save_hf_checkpoint, loaded by transformers).
3. Prefill (prompt -> cache + first token) and full-forward tokens/s on the same model and input.

transformers runs in the separate reference venv (.venv-ref, torch CPU) as a subprocess
(bench/ref_transformers.py) that answers one timing command at a time, so the repetitions of
the two sides are interleaved and see the same background load. Both sides get the same thread
counts and untimed warm-up calls; reported: the median (and best) of --reps timed calls, and
the ratios seekline / transformers measured in this run. Also a seekline-only profile of where
decode and prefill time goes. Writes bench/results/model.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from refproc import RefProcess  # noqa: E402  (bench/ is the script's own folder)

REF_PYTHON = os.path.join(REPO, ".venv-ref", "bin", "python")
REF_SCRIPT = os.path.join(REPO, "bench", "ref_transformers.py")
RESULTS = os.path.join(REPO, "bench", "results", "model.json")


# ---------------------------------------------------------------------- pure helpers (tested)
def cache_values_per_token(cfg) -> int:
    """Values seekline caches per token per layer (the formula the measurement must match).
    MLA: RMSNorm(latent) + roped k_pe. GQA: K and V per KV head."""
    if cfg.attention_type == "mla":
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.head_dim


def mha_values_per_token(cfg) -> int:
    """A full multi-head cache of the same config: K and V for every attention head.
    MLA: K = qk_nope + qk_rope (192 for V3), V = v_head_dim (128)."""
    h = cfg.num_attention_heads
    if cfg.attention_type == "mla":
        return h * (cfg.qk_head_dim + cfg.v_head_dim)
    return 2 * h * cfg.head_dim


def nbytes(t) -> int:
    """Bytes of a numpy array or TF tensor (shape x itemsize, no copy)."""
    if hasattr(t, "nbytes"):
        return int(t.nbytes)
    return int(np.prod(t.shape.as_list())) * t.dtype.size


def cache_bytes_per_token(cache, batch: int, max_len: int) -> float:
    """cache: per-layer tuples of tensors -> sum(nbytes) / (batch * max_len * layers)."""
    total = sum(nbytes(t) for layer in cache for t in layer)
    return total / (batch * max_len * len(cache))


def agreement(a, b) -> dict:
    """Greedy token agreement: identical prefix length and fraction of equal positions."""
    a, b = list(map(int, a)), list(map(int, b))
    n = min(len(a), len(b))
    prefix = next((i for i in range(n) if a[i] != b[i]), n)
    equal = sum(x == y for x, y in zip(a[:n], b[:n], strict=True))
    return {"tokens": n, "identical_prefix": prefix, "equal_fraction": equal / n if n else 0.0,
            "all_equal": prefix == n and len(a) == len(b)}


# Logit differences above this mean the two sides computed something different at a position
# (fp32 reordering alone stays near 1e-6 on these models).
DIVERGENCE_TOL = 1e-3
# A routing margin below this is a near-tie that fp32 rounding noise (~1e-7 in the scores) can flip.
NEAR_TIE = 1e-5


def first_divergence(a, b, tol: float = DIVERGENCE_TOL) -> dict:
    """Where two (positions, vocab) logit arrays part: the first position whose max abs
    difference exceeds `tol`, how many positions do, and the largest difference before it."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(axis=-1)
    over = np.flatnonzero(d > tol)
    first = int(over[0]) if over.size else None
    return {"tol": tol, "positions": int(d.size), "positions_over_tol": int(over.size),
            "first_position": first,
            "max_before_first": float(d[:first].max()) if first else (float(d.max()) if first is None else 0.0),
            "max_at_first": float(d[first]) if first is not None else None}


def routing_margin(scores, bias, top_k: int, n_group: int = 1, topk_group: int = 1,
                   topk_method: str = "noaux_tc"):
    """Per token (rows of `scores`, the router's (N, E) affinities): how far the routing
    decision is from flipping, i.e. the gap between the last chosen and the first rejected
    selection score, for the experts and (group-limited routing) for the groups, whichever is
    smaller. Mirrors model/layers/moe.py:route."""
    choice = np.asarray(scores, np.float64) + (0.0 if bias is None else np.asarray(bias, np.float64))
    n, e = choice.shape
    group_margin = np.full(n, np.inf)
    if topk_method != "greedy" and n_group > 1:
        grouped = choice.reshape(n, n_group, e // n_group)
        top = np.sort(grouped, axis=-1)
        gscore = top[..., -2:].sum(-1) if topk_method == "noaux_tc" else top[..., -1]
        ordered = np.sort(gscore, axis=-1)[:, ::-1]
        group_margin = ordered[:, topk_group - 1] - ordered[:, topk_group]
        kept = np.argsort(-gscore, axis=-1, kind="stable")[:, :topk_group]
        mask = np.zeros((n, n_group), bool)
        np.put_along_axis(mask, kept, True, axis=-1)
        choice = np.where(np.repeat(mask, e // n_group, axis=-1), choice, -np.inf)
    ordered = np.sort(choice, axis=-1)[:, ::-1]
    expert_margin = ordered[:, top_k - 1] - ordered[:, top_k]     # -inf past the kept groups
    expert_margin = np.where(np.isfinite(expert_margin), expert_margin, np.inf)
    return np.minimum(expert_margin, group_margin)


def explain_divergence(div: dict, routing: dict | None) -> str:
    """One line on why logits differ although greedy tokens may agree."""
    if div["first_position"] is None:
        return f"all {div['positions']} positions agree within {div['tol']:.0e}"
    p = div["first_position"]
    line = (f"agree to {div['max_before_first']:.1e} up to position {p}, differ there by "
            f"{div['max_at_first']:.1e} ({div['positions_over_tol']} of {div['positions']} positions "
            f"over {div['tol']:.0e})")
    if routing is None:
        return line
    if routing["margin"] < NEAR_TIE:
        return (line + f"; at position {p} seekline's routing in layer {routing['layer']} is a "
                f"near-tie (margin {routing['margin']:.1e}): fp32 rounding picks a different "
                "expert on one side, and attention carries the change to later positions")
    return (line + f"; no routing near-tie at position {p} (smallest margin {routing['margin']:.1e}, "
            f"layer {routing['layer']}): not a routing flip")


def routing_at(m, ids, position: int) -> dict | None:
    """The smallest routing margin over seekline's MoE layers at `position` (None: no MoE)."""
    from model.layers.moe import MoE
    out = m.forward(ids, return_router=True)
    layers = [i for i, blk in enumerate(m.blocks) if isinstance(blk.mlp, MoE)]
    best = None
    for layer, r in zip(layers, out["router"], strict=False):
        moe = m.blocks[layer].mlp
        bias = None if moe.e_score_correction_bias is None else moe.e_score_correction_bias.numpy()
        margin = routing_margin(r.scores.numpy()[position:position + 1], bias, moe.num_experts_per_tok,
                                moe.n_group, moe.topk_group, moe.topk_method)[0]
        if best is None or margin < best["margin"]:
            best = {"layer": layer, "margin": float(margin)}
    return best


def median_time(fn, reps: int):
    """One untimed warm-up call, then the median (and all) of `reps` wall-clock timings."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------- 1. KV cache
def _cache_config(name: str):
    """The preset, reduced to what a cache measurement needs: one layer (per-layer shapes
    unchanged), a tiny vocab, no MTP; the 671B FFN is shrunk too (no cache state in it)."""
    import model
    cfg = model.ModelConfig.from_preset(name)
    kw = dict(num_hidden_layers=1, vocab_size=256, num_nextn_predict_layers=0,
              fp8_weight_block_size=None, max_position_embeddings=max(cfg.max_position_embeddings, 512))
    if cfg.hidden_size >= 4096:
        kw.update(intermediate_size=256, moe_intermediate_size=min(cfg.moe_intermediate_size, 256))
    if name in ("tiny", "small", "tiny-qwen2"):
        kw = dict(num_nextn_predict_layers=0)       # small enough: measure the whole model
    return cfg, cfg.replace(**kw)


def bench_kv_cache(presets, batch=2, max_len=256, prompt_len=8):
    import tensorflow as tf

    import model
    from model.generation import prefill
    rows = []
    for name in presets:
        full, cfg = _cache_config(name)
        m = model.build_model(cfg, seed=0)
        cache = m.init_cache(batch, max_len)
        ids = np.random.default_rng(0).integers(2, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
        _, filled, _, _ = prefill(m, ids, np.ones_like(ids), max_len)
        bpt = cache_bytes_per_token(cache, batch, max_len)
        bpt_filled = cache_bytes_per_token(filled, batch, max_len)
        itemsize = cache[0][0].dtype.size
        bf16 = m.init_cache(batch, max_len, dtype=tf.bfloat16)
        values = bpt / itemsize
        mha = mha_values_per_token(full)
        rows.append({
            "preset": name, "attention": full.attention_type,
            "measured_config_layers": cfg.num_hidden_layers,
            "cache_tensor_shapes": [t.shape.as_list() for t in cache[0]],
            "cache_dtype": cache[0][0].dtype.name,
            "bytes_per_token_per_layer": bpt,
            "bytes_per_token_per_layer_after_prefill": bpt_filled,
            "bytes_per_token_per_layer_bf16": cache_bytes_per_token(bf16, batch, max_len),
            "values_per_token_per_layer": values,
            "values_formula": cache_values_per_token(full),
            "matches_formula": values == cache_values_per_token(full) and bpt_filled == bpt,
            "mha_values_per_token_per_layer": mha,
            "ratio_mha_over_seekline": mha / values,
            "full_model_layers": full.num_hidden_layers,
            "full_model_KiB_per_token_bf16": values * 2 * full.num_hidden_layers / 1024,
            "full_model_mha_KiB_per_token_bf16": mha * 2 * full.num_hidden_layers / 1024,
        })
        del m, cache, filled, bf16
    return rows


# ---------------------------------------------------------------------- 2/3. speed
def speed_config(preset: str):
    import model
    return model.ModelConfig.from_preset(preset).replace(num_nextn_predict_layers=0)


def generate_once(m, prompt, gcfg) -> dict:
    """One call of seekline's public `generate`, time-stamping each token as it reaches the host
    (the module's `_fetch`, its one host sync per token, is wrapped for the call; nothing in
    model/ changes; token selection itself runs inside the compiled step). prefill = call
    start -> first new token, decode = first -> last new token (N - 1 steps): the same points the
    transformers streamer stamps."""
    import importlib
    # the module, not the function of the same name that model.generation re-exports
    g = importlib.import_module("model.generation.generate")
    orig, stamps = g._fetch, []

    def stamped(*a, **kw):
        out = orig(*a, **kw)
        stamps.append(time.perf_counter())
        return out

    g._fetch = stamped
    try:
        t0 = time.perf_counter()
        res = g.generate(m, [prompt], gcfg)
        t1 = time.perf_counter()
    finally:
        g._fetch = orig
    return {"prefill_s": stamps[0] - t0, "decode_s": stamps[-1] - stamps[0], "generate_s": t1 - t0,
            "stamps": len(stamps), "tokens": res.sequences[0]}


class Reference(RefProcess):
    """bench/ref_transformers.py running in .venv-ref, answering one command at a time."""

    def __init__(self, ckpt, inputs, arrays, new_tokens, threads, interop, omp_wait_policy):
        self.cmd = [REF_PYTHON, REF_SCRIPT, "--ckpt", ckpt, "--inputs", inputs, "--arrays", arrays,
                    "--new-tokens", str(new_tokens), "--threads", str(threads),
                    "--interop-threads", str(interop)]
        super().__init__(self.cmd, threads, omp_wait_policy)


def summarize(samples, key):
    """Median, best and all timings; spread = max / min (> 1.5: background load on the machine)."""
    xs = [s[key] for s in samples]
    return {"median_s": statistics.median(xs), "min_s": min(xs), "spread": max(xs) / min(xs),
            "all_s": xs}


def _step_ms(m, prompt, new_tokens, reps, absorb=True, jit=False):
    """ms per call of generate's compiled decode step alone (no sampling, no host bookkeeping),
    over new_tokens - 1 steps after a prefill; and how many times it was traced."""
    import tensorflow as tf

    from model.generation import prefill
    from model.generation.generate import _step_fn
    b, p = prompt.shape
    _, cache, key_valid, next_pos = prefill(m, prompt, np.ones_like(prompt), p + new_tokens)
    tok, kv = tf.constant([[5]], tf.int32), tf.constant(key_valid)
    step = _step_fn(m, absorb, jit)

    def run():
        c = cache
        for i in range(new_tokens - 1):
            logits, c = step(tok, c, tf.constant([p + i], tf.int32), tf.constant(next_pos + i), kv)
        logits.numpy()
    t, _ = median_time(run, reps)
    return 1e3 * t / (new_tokens - 1), step.experimental_get_tracing_count()


def profile_seekline(m, prompt, new_tokens, reps):
    """Where seekline's time goes (seekline only). Decode: the compiled step alone (absorbed /
    naive attention; MoE vs a dense twin, with and without XLA), retracing across generate calls.
    Prefill: call_cached eager vs tf.function (generate runs the compiled one); the dense twin's forward
    with and without XLA; MLA prefill scores as two einsums (as model/layers/mla.py computed
    them before) vs one matmul (its current layout) over [q_nope|q_pe]·[k_nope|k_pe] in (B, H, T, d) layout."""
    import tensorflow as tf

    import model
    from model.generation import GenerationConfig, generate
    from model.generation.generate import _step_fn
    out = {}
    for absorb in (True, False):
        out[f"step_ms_absorb_{absorb}"], out[f"step_traces_absorb_{absorb}"] = _step_ms(
            m, prompt, new_tokens, reps, absorb=absorb)
    step = _step_fn(m, True, False)
    traces = [step.experimental_get_tracing_count()]
    for cut in (0, 1, 2, 3):                 # the same prompt length, then 3 new lengths
        generate(m, [prompt[0].tolist()[cut:]], GenerationConfig(max_new_tokens=4))
        traces.append(step.experimental_get_tracing_count())
    out["step_trace_count_over_generate_calls"] = traces
    # Dense twin: every MoE layer replaced by a dense SwiGLU of intermediate_size (same attention).
    dense = model.build_model(m.cfg.replace(n_routed_experts=0, n_shared_experts=0,
                                            num_experts_per_tok=0, moe_intermediate_size=0,
                                            first_k_dense_replace=0), seed=0)
    out["dense_twin_step_ms"], _ = _step_ms(dense, prompt, new_tokens, reps)
    out["dense_twin_step_ms_xla"], _ = _step_ms(dense, prompt, new_tokens, reps, jit=True)
    # Prefill: generate runs call_cached eagerly; the same call under tf.function.
    b, p = prompt.shape
    max_len = p + new_tokens
    pre_fn = tf.function(lambda ids, c, w, pos, kv: m.call_cached(ids, c, w, pos, kv, absorb=False))
    init = m.init_cache(b, max_len)
    write = tf.constant(np.arange(p, dtype=np.int32)[None])
    kvp = np.zeros((b, max_len), np.int32)
    kvp[:, :p] = 1
    kvp, ids = tf.constant(kvp), tf.constant(prompt)
    out["prefill_call_cached_eager_s"], _ = median_time(
        lambda: m.call_cached(ids, init, write, write, kvp, absorb=False)[0].numpy(), reps)
    out["prefill_call_cached_tf_function_s"], _ = median_time(
        lambda: pre_fn(ids, init, write, write, kvp)[0].numpy(), reps)
    d_fn = tf.function(lambda x: dense(x))
    d_xla = tf.function(lambda x: dense(x), jit_compile=True)
    out["dense_twin_forward_tf_function_s"], _ = median_time(lambda: d_fn(ids).numpy(), reps)
    out["dense_twin_forward_xla_s"], _ = median_time(lambda: d_xla(ids).numpy(), reps)
    # MLA scores for one layer at T = prompt length (random activations of the real shapes).
    cfg = m.cfg
    h, dn, dr = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
    g = tf.random.Generator.from_seed(0)
    q_nope, k_nope = g.normal([b, p, h, dn]), g.normal([b, p, h, dn])
    q_pe, k_pe = g.normal([b, p, h, dr]), g.normal([b, p, dr])
    two = tf.function(lambda: tf.einsum("bthd,bshd->bhts", q_nope, k_nope)
                      + tf.einsum("bthd,bsd->bhts", q_pe, k_pe))

    def one_matmul():
        q = tf.transpose(tf.concat([q_nope, q_pe], -1), [0, 2, 1, 3])            # (B, H, T, dn+dr)
        k = tf.concat([k_nope, tf.broadcast_to(k_pe[:, :, None], [b, p, h, dr])], -1)
        return tf.matmul(q, tf.transpose(k, [0, 2, 1, 3]), transpose_b=True)      # (B, H, T, S)
    one = tf.function(one_matmul)
    out["mla_scores_two_einsums_ms"] = 1e3 * median_time(lambda: two().numpy(), reps)[0]
    out["mla_scores_one_matmul_ms"] = 1e3 * median_time(lambda: one().numpy(), reps)[0]
    return out


def bench_speed(preset, prompt_len, new_tokens, reps, threads, interop, omp_wait_policy,
                skip_reference=False):
    """Warm up both sides, then `reps` interleaved rounds (order alternating each round) so that
    seekline and transformers see the same background load."""
    import tensorflow as tf

    import model
    from model.generation import GenerationConfig
    cfg = speed_config(preset)
    m = model.build_model(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(2, cfg.vocab_size, (1, prompt_len)).astype(np.int32)
    ids, plist = tf.constant(prompt), prompt[0].tolist()
    gcfg = GenerationConfig(max_new_tokens=new_tokens)
    fwd_fn = tf.function(lambda x: m(x))

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    seek_ops = {
        "forward": lambda: {"forward_s": timed(lambda: m(ids).numpy())},
        "forward_tf_function": lambda: {"forward_tf_function_s": timed(lambda: fwd_fn(ids).numpy())},
        "generate": lambda: generate_once(m, plist, gcfg),
    }
    res = {"preset": preset, "config": {k: getattr(cfg, k) for k in (
        "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
        "intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
        "num_experts_per_tok", "first_k_dense_replace")},
        "params": model.count_params(cfg.to_hf_dict()),
        "prompt_tokens": prompt_len, "new_tokens": new_tokens, "reps": reps,
        "method": "1-2 untimed warm-up calls per op, then interleaved rounds; medians"}
    with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
        ref = None
        if not skip_reference:
            ckpt = os.path.join(tmp, "ckpt")
            model.save_hf_checkpoint(m, ckpt)
            inputs = os.path.join(tmp, "inputs.npz")
            np.savez(inputs, prompt=prompt)
            arrays = os.path.join(tmp, "ref_logits.npz")
            ref = Reference(ckpt, inputs, arrays, new_tokens, threads, interop, omp_wait_policy)
        try:
            for op in ("forward", "forward", "forward_tf_function", "forward_tf_function", "generate"):
                seek_ops[op]()
            if ref:
                for op in ("forward", "forward", "generate"):
                    ref(op)
            seek = {op: [] for op in seek_ops}
            theirs = {"forward": [], "generate": []}
            for r in range(reps):
                order = ["seek", "ref"] if r % 2 == 0 else ["ref", "seek"]
                for op in ("forward", "generate"):
                    for side in order:
                        if side == "seek":
                            seek[op].append(seek_ops[op]())
                        elif ref:
                            theirs[op].append(ref(op))
                seek["forward_tf_function"].append(seek_ops["forward_tf_function"]())
            info = ref("info") if ref else None
            ref_logits = dict(np.load(arrays)) if ref else None
        finally:
            if ref:
                ref.close()
    tokens = seek["generate"][-1]["tokens"]
    res["seekline"] = {
        "forward": summarize(seek["forward"], "forward_s"),
        "forward_tf_function": summarize(seek["forward_tf_function"], "forward_tf_function_s"),
        "prefill": summarize(seek["generate"], "prefill_s"),
        "decode": summarize(seek["generate"], "decode_s"),
        "generate": summarize(seek["generate"], "generate_s"),
    }
    res["seekline_profile"] = profile_seekline(m, prompt, new_tokens, max(2, reps // 2))
    if ref is None:
        return res
    res["transformers"] = {
        "forward": summarize(theirs["forward"], "forward_s"),
        "prefill": summarize(theirs["generate"], "prefill_s"),
        "decode": summarize(theirs["generate"], "decode_s"),
        "generate": summarize(theirs["generate"], "generate_s"),
        **{k: v for k, v in info.items() if k not in ("tokens", "last_logits")},
    }
    res["greedy_agreement"] = agreement(tokens, info["tokens"])
    logits = m(ids)[0].numpy()                                          # (P, V)
    res["logits_max_abs_diff"] = {
        "seekline_vs_transformers_eager": float(np.abs(logits - ref_logits["logits_eager"]).max()),
        "seekline_vs_transformers_timed": float(np.abs(logits - ref_logits["logits"]).max()),
        "transformers_timed_vs_eager": float(np.abs(ref_logits["logits"] - ref_logits["logits_eager"]).max()),
        "positions": prompt_len}
    # Greedy tokens can agree while one prompt position differs a lot: say where, and whether
    # a near-tied MoE routing choice explains it.
    res["logits_divergence"] = {}
    for name, key in (("vs transformers eager", "logits_eager"), ("vs transformers timed", "logits")):
        div = first_divergence(logits, ref_logits[key])
        routing = routing_at(m, ids, div["first_position"]) if div["first_position"] is not None else None
        res["logits_divergence"][name] = {**div, "routing": routing, "explanation": explain_divergence(div, routing)}
    res["tokens"] = {"seekline": list(map(int, tokens)), "transformers": info["tokens"]}

    def rates(side, key, count):
        d = res[side][key]
        return count / d["median_s"], count / d["min_s"]

    pt, nd = prompt_len, new_tokens - 1
    rows = {"decode": ("decode", "decode", nd), "prefill": ("prefill", "prefill", pt),
            "forward": ("forward", "forward", pt),
            "forward_tf_function": ("forward_tf_function", "forward", pt)}
    res["tokens_per_s"] = {}
    for name, (sk, tk, count) in rows.items():
        s_med, s_best = rates("seekline", sk, count)
        t_med, t_best = rates("transformers", tk, count)
        res["tokens_per_s"][name] = {
            "seekline": s_med, "transformers": t_med, "ratio_seekline_over_transformers": s_med / t_med,
            "seekline_best": s_best, "transformers_best": t_best,
            "ratio_best": s_best / t_best}
    return res


# ---------------------------------------------------------------------- report
def print_table(results):
    d = results["device"]
    print(f"\ndevice: {d['cpu']} ({d['cores']} cores, load average {d['loadavg_start'][0]:.1f} at start, "
          f"{d['loadavg_end'][0]:.1f} at end), threads intra-op {results['threads']['intra_op']} / "
          f"inter-op {results['threads']['inter_op']} on both sides; torch OMP_WAIT_POLICY "
          f"{results['threads']['torch_OMP_WAIT_POLICY']}")
    print("\nKV cache per token per layer, measured from the allocated cache tensors "
          "(init_cache and the cache prefill returns; 'formula' = kv_lora_rank + qk_rope_head_dim "
          "for MLA, 2 * kv_heads * head_dim for GQA)")
    print(f"{'preset':<18}{'attn':<6}{'values':>8}{'B fp32':>8}{'B bf16':>8}{'full-MHA values':>17}"
          f"{'MHA/ours':>10}{'formula':>9}{'KiB/token bf16, all layers: ours vs MHA':>42}")
    for r in results["kv_cache"]:
        print(f"{r['preset']:<18}{r['attention']:<6}{r['values_per_token_per_layer']:>8.0f}"
              f"{r['bytes_per_token_per_layer']:>8.0f}{r['bytes_per_token_per_layer_bf16']:>8.0f}"
              f"{r['mha_values_per_token_per_layer']:>17,}{r['ratio_mha_over_seekline']:>9.1f}x"
              f"{'ok' if r['matches_formula'] else 'MISMATCH':>9}"
              f"{r['full_model_KiB_per_token_bf16']:>16.1f} vs {r['full_model_mha_KiB_per_token_bf16']:.1f}"
              f" ({r['full_model_layers']} layers)")
    s = results.get("speed")
    if not s:
        return
    if "tokens_per_s" in s:
        ref = s["transformers"]
        print(f"\nspeed: preset {s['preset']} without MTP ({s['params']['total'] / 1e6:.1f}M params), "
              f"prompt {s['prompt_tokens']} tokens + {s['new_tokens']} new tokens greedy, batch 1, fp32; "
              f"median of {s['reps']} interleaved reps")
        print(f"transformers {ref['transformers']} / torch {ref['torch']}: attn {ref['attn_implementation']}, "
              f"experts {ref['experts_implementation']}, its KV cache "
              f"{ref['kv_cache']['bytes_per_token_per_layer']:.0f} B/token/layer")
        print(f"{'tokens/s':<22}{'seekline':>10}{'transformers':>14}{'ratio':>8}{'ratio (best-of)':>17}")
        for k, v in s["tokens_per_s"].items():
            print(f"{k:<22}{v['seekline']:>10.1f}{v['transformers']:>14.1f}"
                  f"{v['ratio_seekline_over_transformers']:>7.2f}x{v['ratio_best']:>16.2f}x")
        spread = {f"{side} {k}": v["spread"] for side in ("seekline", "transformers")
                  for k, v in s[side].items() if isinstance(v, dict) and "spread" in v}
        worst = max(spread, key=spread.get)
        if spread[worst] > 1.5:
            print(f"NOTE: timings were disturbed by other load on the machine (max/min up to "
                  f"{spread[worst]:.1f}x, {worst}); the best-of ratio is the quiet-machine estimate")
        a = s["greedy_agreement"]
        e = s["logits_max_abs_diff"]
        print(f"greedy tokens: {a['identical_prefix']}/{a['tokens']} identical "
              f"({'agree' if a['all_equal'] else 'DIFFER'}); logits max abs diff over all {e['positions']} "
              f"prompt positions: vs transformers eager {e['seekline_vs_transformers_eager']:.1e}, vs "
              f"{ref['attn_implementation']} {e['seekline_vs_transformers_timed']:.1e} "
              f"(transformers {ref['attn_implementation']} vs its own eager: "
              f"{e['transformers_timed_vs_eager']:.1e})")
        for name, d in s.get("logits_divergence", {}).items():
            if d["first_position"] is not None:
                print(f"  logits {name}: {d['explanation']}")
    pr = s["seekline_profile"]
    per_tok = 1e3 * s["seekline"]["decode"]["median_s"] / (s["new_tokens"] - 1)
    print(f"seekline decode profile (ms/token): inside generate {per_tok:.1f}; step alone "
          f"{pr['step_ms_absorb_True']:.1f} absorbed / {pr['step_ms_absorb_False']:.1f} naive; dense twin "
          f"{pr['dense_twin_step_ms']:.1f} graph / {pr['dense_twin_step_ms_xla']:.1f} XLA; step traces "
          f"over generate calls {pr['step_trace_count_over_generate_calls']}")
    print(f"seekline prefill profile: call_cached eager {pr['prefill_call_cached_eager_s']:.2f} s / "
          f"tf.function {pr['prefill_call_cached_tf_function_s']:.2f} s; dense twin forward "
          f"{pr['dense_twin_forward_tf_function_s']:.2f} s graph / {pr['dense_twin_forward_xla_s']:.2f} s XLA; "
          f"MLA scores per layer {pr['mla_scores_two_einsums_ms']:.0f} ms (2 einsums) / "
          f"{pr['mla_scores_one_matmul_ms']:.0f} ms (1 matmul)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model for the speed runs (default small)")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    ap.add_argument("--interop-threads", type=int, default=1, help="inter-op threads, both sides")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for the torch process ('' = leave unset). PASSIVE: idle "
                         "OpenMP threads sleep instead of spinning; on a shared machine spinning "
                         "made torch 3-20x slower and its timings unrepeatable (bench/README.md)")
    ap.add_argument("--skip-speed", action="store_true", help="KV-cache table only")
    ap.add_argument("--skip-reference", action="store_true", help="seekline side only")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    t0 = time.time()
    results = {
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(),
                   "loadavg_start": list(os.getloadavg())},
        "threads": {"intra_op": args.threads, "inter_op": args.interop_threads,
                    "torch_OMP_WAIT_POLICY": args.omp_wait_policy or "unset"},
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
        "custom_ops": __import__("model.ops", fromlist=["describe"]).describe(),   # SEEKLINE_OPS
        "kv_cache": bench_kv_cache(["deepseek-v3-671b", "small", "tiny-qwen2", "qwen2.5-0.5b"]),
    }
    if not args.skip_speed:
        if not args.skip_reference and not os.path.exists(REF_PYTHON):
            sys.exit(f"bench: {REF_PYTHON} not found (see bench/README.md); use --skip-reference")
        results["speed"] = bench_speed(args.preset, args.prompt_len, args.new_tokens, args.reps,
                                       args.threads, args.interop_threads, args.omp_wait_policy,
                                       args.skip_reference)
    results["device"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.time() - t0
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)
    print(f"\nwrote {os.path.relpath(args.out, REPO)} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
