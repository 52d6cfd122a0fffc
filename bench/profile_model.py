#!/usr/bin/env python3
"""Where seekline's CPU time goes: TensorFlow-profiler op statistics of training, prefill and decode.

    SEEKLINE_OPS=off .venv/bin/python bench/profile_model.py      # ~2-3 min on 2 cores
    .venv/bin/python bench/profile_model.py --workloads decode --steps 2

Model: preset `small` (MLA + MoE, 16 routed experts top-4, 1 shared, 6 layers), fp32, 2 intra-op
threads and 1 inter-op thread (as bench/bench_train.py and bench/bench_model.py run it).
Workloads, each captured with tf.profiler.experimental into a temporary logdir after warm-up:

* train: the engine's compiled step (training.loop.Trainer, CausalLMTask: CE + MTP + balance
  loss, clipping, AdamW, bias update) on B=4 x T=256 packed rows, --steps steps;
* prefill: model.generation.prefill (the compiled prefill generate runs) of a 1024-token prompt,
  batch 1, --steps calls; the model without its MTP module (what generation runs);
* decode: --decode-tokens calls of generate's compiled one-token step (absorbed MLA) with a
  1024-token cache behind it.

The captured XSpace (the profiler's .xplane.pb) is read directly: every TensorFlow op event on
the /host:CPU plane (event name "op_name:OpType") gets its self time (its duration minus the
op events nested inside it on the same thread), then the self times are summed by op type
(oneDNN's `_Mkl` rewrite prefix dropped: _MklMatMul is MatMul) and by model component, from
the op name's name scopes (`component_of`). TF 2.16's own converter
(_pywrap_profiler.xspace_to_tools_data) has no `tensorflow_stats` tool and its
`framework_op_stats` answer is a proto whose Python class the wheel does not ship.

Component scopes: the model's Keras layers already name most ops (layers_3/self_attn/...,
mlp/shared_experts/...). The MoE router, the routed-expert path (dispatch + expert matmuls +
combine), RoPE and the losses are plain functions/methods without a scope of their own; for the
profile they run inside tf.name_scope wrappers (`scoped_model`, names only: the graph computes
the same). Writes bench/results/profile_<off|on>.json (on: model.ops.available() says the
custom ops are in use).

Reading the numbers: op self time covers ~98% of a train step's or prefill's wall time but only
~70-75% of a decode step's (the rest is the per-token function call and host work between
ops). "LM head + loss" holds the MTP depth's pass through the shared head and its embedding
lookup is under "embedding" (the decoder calls both outside the MTP module's scope); "MTP
module + loss" is the MTP block, its projections and norms and its CE. Ops a custom gradient
creates (tf.nn.silu's backward: Sigmoid, Mul) carry no forward scope and land in "other".
Shares move between runs when other jobs share the cores: compare runs made back to back.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import importlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (REPO, os.path.join(REPO, "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

RESULTS_DIR = os.path.join(REPO, "bench", "results")
WORKLOADS = ("train", "prefill", "decode")

# Components in report order, with their table labels.
COMPONENTS = {
    "attention": "attention (MLA)",
    "moe_routed": "MoE routed experts",
    "moe_router": "MoE router",
    "moe_shared": "MoE shared experts",
    "moe_other": "MoE other (reshape, combine)",
    "dense_mlp": "dense MLP",
    "rmsnorm": "RMSNorm",
    "rope": "RoPE",
    "embedding": "embedding",
    "lm_head_loss": "LM head + loss",
    "mtp": "MTP module + loss",
    "aux_loss": "balance loss",
    "optimizer": "optimizer (clip + AdamW)",
    "other": "other",
}

# Function-call / control-flow ops: their body's ops are separate events (nested, so not double
# counted in self time when on the same thread); what is left is the call's own overhead.
CONTAINER_TYPES = frozenset({"If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase",
                             "PartitionedCall", "StatefulPartitionedCall"})

_OP_EVENT = re.compile(r"^([A-Za-z0-9_.\-/>]+):([A-Za-z_][A-Za-z0-9_]*)$")
_SUFFIX = re.compile(r"(_\d+)+$")
_LAYER = re.compile(r"^layers_(\d+)")


# ---------------------------------------------------------------------- pure helpers (tested)
def normalize_op_type(op_type: str) -> str:
    """oneDNN's graph rewrite renames ops (_MklMatMul, _MklNativeBatchMatMulV2, _MklFusedMatMul):
    the same computation, so report the plain name (MatMul, BatchMatMulV2, FusedMatMul)."""
    for prefix in ("_MklNative", "_Mkl"):
        if op_type.startswith(prefix) and len(op_type) > len(prefix):
            return op_type[len(prefix):].lstrip("_")
    return op_type


def scope_base(segment: str) -> str:
    """A name-scope segment without TF's / Keras' uniquifying suffixes: 'mlp_1' -> 'mlp',
    'layers_3_1' -> 'layers', 'SparseSoftmaxCrossEntropyWithLogits_1' -> its base."""
    return _SUFFIX.sub("", segment)


def component_of(op_name: str, dense_layers=frozenset()) -> str:
    """Model component of a TF op from its name scopes (forward and gradient ops alike: a
    gradient op is named gradient_tape/<forward op's scopes>/...). dense_layers: indices of the
    decoder layers whose `mlp` is a dense SwiGLU (the rest are MoE). First match wins, in this
    order: optimizer, MTP (its block has attention / MoE of its own), balance loss, RMSNorm
    (also the norms inside attention), RoPE, MoE parts, dense MLP, attention, embedding,
    head + loss, other."""
    segs = op_name.split("/")
    bases = [scope_base(s) for s in segs]
    low = [b.lower() for b in bases]
    if any(b in ("adamw", "adam", "sgd", "optimizer", "global_norm", "clip_by_global_norm") for b in low):
        return "optimizer"
    if any(b in ("mtp", "mtp_loss") for b in low):
        return "mtp"
    if "aux_loss" in low:
        return "aux_loss"
    if any(b.endswith("layernorm") or b in ("norm", "rmsnorm") for b in low):
        return "rmsnorm"
    if "rope" in low:
        return "rope"
    if "mlp" in low:
        i = low.index("mlp")
        inner = low[i + 1:-1]            # scopes below mlp (the last segment is the op itself)
        if "router" in inner or "gate" in inner:
            return "moe_router"
        if "routed_experts" in inner:
            return "moe_routed"
        if "shared_experts" in inner:
            return "moe_shared"
        layer = next((int(m.group(1)) for s in segs[:i] if (m := _LAYER.match(s))), None)
        if layer is not None and layer in dense_layers:
            return "dense_mlp"
        return "moe_other"
    if any(b in ("self_attn", "mla", "attention") for b in low):
        return "attention"
    if "embed_tokens" in low:
        return "embedding"
    if any(b in ("lm_head", "lm_loss") or b.startswith("sparsesoftmaxcrossentropywithlogits") for b in low):
        return "lm_head_loss"
    return "other"


def self_times(spans):
    """spans [(start, end)] of one thread's events -> self time of each (end - start minus the
    spans directly nested inside it), in input order. Events on one thread nest or are disjoint;
    a child that overruns its parent (clock jitter) is clipped to the parent."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], -spans[i][1]))
    out = [e - s for s, e in spans]
    stack: list[int] = []
    for i in order:
        s, e = spans[i]
        while stack and spans[stack[-1]][1] <= s:
            stack.pop()
        if stack:
            parent = stack[-1]
            out[parent] -= min(e, spans[parent][1]) - s
        stack.append(i)
    return out


def op_records(xspace, plane_name: str = "/host:CPU"):
    """XSpace proto -> [(op name, op type, self time ps)] of every TF op event on the plane.
    Op events are named "op_name:OpType" (display name = OpType); the executor's own events
    (ExecutorState::Process, ParallelFor, EagerExecute, ...) are not ops: they are skipped, and
    op self times are computed among op events only, so work an op hands to its ParallelFor
    stays the op's."""
    recs = []
    for plane in xspace.planes:
        if plane.name != plane_name:
            continue
        for line in plane.lines:
            ops = []
            for ev in line.events:
                md = plane.event_metadata[ev.metadata_id]
                m = _OP_EVENT.match(md.name)
                if not m or (md.display_name and md.display_name != m.group(2)):
                    continue
                ops.append((m.group(1), m.group(2), ev.offset_ps, ev.offset_ps + ev.duration_ps))
            selfs = self_times([(s, e) for _, _, s, e in ops])
            recs += [(name, typ, st) for (name, typ, _, _), st in zip(ops, selfs, strict=True)]
    return recs


def summarize(records, units: int, unit: str, dense_layers=frozenset(), top: int = 15) -> dict:
    """[(name, type, self ps)] over `units` steps / tokens -> op-type and component tables:
    ms per unit, share of the total op time, op count per unit; types sorted by time (the top
    `top`, the rest summed as "(other types)"); components in COMPONENTS order; the `top`
    costliest (component, op type) pairs (which op types make a component expensive)."""
    total_ps = sum(r[2] for r in records)
    by_type, count, by_pair = defaultdict(int), defaultdict(int), defaultdict(int)
    by_comp = dict.fromkeys(COMPONENTS, 0)
    for name, typ, ps in records:
        t, c = normalize_op_type(typ), component_of(name, dense_layers)
        by_type[t] += ps
        count[t] += 1
        by_comp[c] += ps
        by_pair[(c, t)] += ps

    def row(ps, n=None):
        r = {"ms_per_unit": ps / 1e9 / units, "share": ps / total_ps if total_ps else 0.0}
        if n is not None:
            r["ops_per_unit"] = n / units
        return r
    ranked = sorted(by_type, key=by_type.get, reverse=True)
    types = {t: row(by_type[t], count[t]) for t in ranked[:top]}
    rest = ranked[top:]
    if rest:
        types["(other types)"] = row(sum(by_type[t] for t in rest), sum(count[t] for t in rest))
    custom = {t: row(by_type[t], count[t]) for t in ranked if t.startswith("Seekline")}
    return {"unit": unit, "units": units, "op_ms_per_unit": total_ps / 1e9 / units,
            "ops_per_unit": len(records) / units, "op_types": types, "custom_op_types": custom,
            "components": {k: row(v) for k, v in by_comp.items()},
            "top_component_op_types": [{"component": c, "op_type": t, **row(ps)} for (c, t), ps in
                                       sorted(by_pair.items(), key=lambda kv: kv[1], reverse=True)[:top]]}


def format_tables(name: str, s: dict) -> str:
    """Two text tables (top op types, component shares) of one workload's summary."""
    u = s["unit"]
    head = (f"{name}: {s['op_ms_per_unit']:.2f} ms of op self time per {u} "
            f"({s['ops_per_unit']:.0f} ops per {u})")
    if "wall_ms_per_unit" in s:
        head += (f"; wall {s['wall_ms_per_unit']:.2f} ms per {u} unprofiled, "
                 f"{s['wall_ms_per_unit_profiled']:.2f} profiled (op time covers "
                 f"{100 * s['op_ms_per_unit'] / s['wall_ms_per_unit_profiled']:.0f}%)")
    lines = [head, f"  {'op type':<28}{'ms/' + u:>12}{'share':>9}{'ops/' + u:>14}"]
    for t, r in s["op_types"].items():
        lines.append(f"  {t:<28}{r['ms_per_unit']:>12.3f}{100 * r['share']:>8.1f}%{r['ops_per_unit']:>14.1f}")
    lines.append(f"  {'component':<28}{'ms/' + u:>12}{'share':>9}")
    for k, r in s["components"].items():
        if r["ms_per_unit"] > 0:
            lines.append(f"  {COMPONENTS[k]:<28}{r['ms_per_unit']:>12.3f}{100 * r['share']:>8.1f}%")
    pairs = s["top_component_op_types"][:8]
    lines.append("  costliest (component, op type): " + "; ".join(
        f"{COMPONENTS[p['component']]} {p['op_type']} {100 * p['share']:.1f}%" for p in pairs))
    return "\n".join(lines)


def markdown_tables(name: str, s: dict) -> str:
    """The same two tables as Markdown (for docs/performance.md)."""
    u = s["unit"]
    out = [f"**{name}** ({s['op_ms_per_unit']:.2f} ms op time per {u})", "",
           f"| op type | ms/{u} | share |", "|---|---:|---:|"]
    out += [f"| {t} | {r['ms_per_unit']:.3f} | {100 * r['share']:.1f}% |" for t, r in s["op_types"].items()]
    out += ["", f"| component | ms/{u} | share |", "|---|---:|---:|"]
    out += [f"| {COMPONENTS[k]} | {r['ms_per_unit']:.3f} | {100 * r['share']:.1f}% |"
            for k, r in s["components"].items() if r["ms_per_unit"] > 0]
    return "\n".join(out)


# ---------------------------------------------------------------------- name-scope instrumentation
def _in_scope(fn, scope: str | None):
    """fn run inside tf.name_scope(scope); scope None: the layer's own name (a method's self)."""
    import tensorflow as tf

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        with tf.name_scope(scope or a[0].name):
            return fn(*a, **kw)
    return wrapped


@contextlib.contextmanager
def scoped_model():
    """Run the model's unscoped pieces under name scopes (router, routed_experts, rope, lm_loss,
    mtp_loss, aux_loss) while tracing, so that component_of can tell them apart; and the cached
    (prefill / decode) path, which calls blocks and attention through call_cached rather than
    Keras' __call__, under the layers' own names (layers_3/self_attn/...) as the forward has
    them. Only op names change. Yields the list of patched targets (missing ones are skipped:
    the model may move)."""
    targets = [("model.layers.block", "DecoderBlock", "call_cached", None),
               ("model.layers.mla", "MultiHeadLatentAttention", "call_cached", None),
               ("model.layers.gqa", "GroupedQueryAttention", "call_cached", None),
               ("model.layers.moe", "MoE", "router", "router"),
               ("model.layers.moe", "MoE", "routed_experts", "routed_experts"),
               ("model.layers.moe", "MoE", "gathered_experts", "routed_experts"),
               ("model.decoder", "DecoderLM", "rope", "rope"),
               ("model.layers.mla", None, "apply_rope", "rope"),
               ("model.layers.mla", None, "apply_rope_tail", "rope"),
               ("model.layers.gqa", None, "apply_rope_tail", "rope"),
               ("training.lm_task", None, "causal_lm_loss", "lm_loss"),
               ("training.lm_task", None, "mtp_loss", "mtp_loss"),
               ("training.lm_task", None, "total_sequence_aux_loss", "aux_loss")]
    undo, done = [], []
    try:
        for mod_name, cls, attr, scope in targets:
            try:
                owner = importlib.import_module(mod_name)
            except ImportError:
                continue
            if cls is not None:
                owner = getattr(owner, cls, None)
            fn = getattr(owner, attr, None) if owner is not None else None
            if fn is None:
                continue
            # class attributes: the plain function from the class dict, not a bound method
            raw = owner.__dict__.get(attr, fn) if isinstance(owner, type) else fn
            setattr(owner, attr, _in_scope(raw, scope))
            undo.append((owner, attr, raw))
            done.append(f"{mod_name}.{cls + '.' if cls else ''}{attr} -> {scope or '<layer name>'}/")
        yield done
    finally:
        for owner, attr, raw in reversed(undo):
            setattr(owner, attr, raw)


# ---------------------------------------------------------------------- capture
def profile_records(fn, logdir: str):
    """Run fn() under the TF profiler (host tracer, no Python tracer) into logdir and return
    (op records, wall s of fn)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    opts = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0,
                                                    device_tracer_level=1)
    tf.profiler.experimental.start(logdir, options=opts)
    try:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    finally:
        tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one .xplane.pb under {logdir}, found {paths}")
    xs = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        xs.ParseFromString(f.read())
    return op_records(xs), wall


def ops_label() -> tuple[str, str]:
    """('on' | 'off', why): 'on' only when model.ops exists and says its custom ops are in use."""
    try:
        ops = importlib.import_module("model.ops")
        on = bool(ops.available())
        return ("on" if on else "off"), f"model.ops.available() = {on}"
    except Exception as e:        # the module is optional (pure TF without it)
        return "off", f"model.ops not usable ({type(e).__name__}: {e})"


# ---------------------------------------------------------------------- workloads
def workload_train(tmp: str, steps: int, batch: int = 4, seq_len: int = 256):
    """The engine's compiled step as bench_train runs it. Returns (records, wall dict, info)."""
    import tensorflow as tf
    from bench_train import SeeklineStep, bench_config

    from configs.training import TrainerConfig
    from training.data import open_packed
    from training.strategy import make_runtime
    from training.testdata import write_packed
    cfg = bench_config("small", seq_len)
    tcfg = TrainerConfig(steps=1000, micro_batch_size=batch, grad_accum_steps=1, warmup_steps=10,
                         precision="fp32", strategy="one_device")
    write_packed(os.path.join(tmp, "data"), seq_len, cfg.vocab_size, train_rows=max(4 * batch, 16),
                 eval_rows=2, shards=1)
    side = SeeklineStep("engine", cfg, tcfg, make_runtime("one_device", "fp32"), os.path.join(tmp, "engine"))
    it = side.trainer._dist_train(open_packed(os.path.join(tmp, "data")), 0)
    batches = [{k: tf.constant(v) for k, v in next(it).items()} for _ in range(steps + 3)]
    comp = side.compile(batches[0])
    warm = [side.step(batches[i])["step_s"] for i in (1, 2)]

    def run():
        for i in range(steps):
            side.step(batches[3 + i])
    recs, wall = profile_records(run, os.path.join(tmp, "log_train"))
    return recs, {"unprofiled_s": statistics.median(warm), "profiled_s": wall / steps}, {
        "batch": batch, "seq_len": seq_len, "tokens_per_step": batch * seq_len, **comp,
        "traces": side.traces(), "dense_layers": _dense_layers(cfg)}


def _dense_layers(cfg) -> list[int]:
    return [i for i in range(cfg.num_hidden_layers) if not cfg.is_moe_layer(i)]


def _gen_model():
    from bench_model import speed_config

    import model
    cfg = speed_config("small")
    return model.build_model(cfg, seed=0), cfg


def workload_prefill(tmp: str, calls: int, prompt_len: int = 1024, new_tokens: int = 32):
    """generate's compiled prefill of one prompt_len-token prompt (cache for prompt + new)."""
    from model.generation import prefill
    m, cfg = _gen_model()
    prompt = np.random.default_rng(0).integers(2, cfg.vocab_size, (1, prompt_len)).astype(np.int32)
    mask = np.ones_like(prompt)

    def once():
        prefill(m, prompt, mask, prompt_len + new_tokens)[0].numpy()
    once()                                    # trace + graph optimisation
    t0 = time.perf_counter()
    once()
    warm = time.perf_counter() - t0

    def run():
        for _ in range(calls):
            once()
    recs, wall = profile_records(run, os.path.join(tmp, "log_prefill"))
    return recs, {"unprofiled_s": warm, "profiled_s": wall / calls}, {
        "prompt_tokens": prompt_len, "batch": 1, "calls": calls, "dense_layers": _dense_layers(cfg)}


def workload_decode(tmp: str, tokens: int, prompt_len: int = 1024):
    """`tokens` calls of generate's compiled decode step (absorbed MLA, no sampling), as
    bench_model._step_ms times it, after a prompt_len-token prefill."""
    import tensorflow as tf

    from model.generation import prefill
    from model.generation.generate import _step_fn
    m, cfg = _gen_model()
    prompt = np.random.default_rng(0).integers(2, cfg.vocab_size, (1, prompt_len)).astype(np.int32)
    _, cache, key_valid, next_pos = prefill(m, prompt, np.ones_like(prompt), prompt_len + 2 * tokens + 8)
    tok, kv = tf.constant([[5]], tf.int32), tf.constant(key_valid)
    step = _step_fn(m, True, False)
    state = {"c": cache, "i": 0}

    def steps(n):
        c, logits = state["c"], None
        for _ in range(n):
            i = state["i"]
            logits, c = step(tok, c, tf.constant([prompt_len + i], tf.int32), tf.constant(next_pos + i), kv)
            state["i"] += 1
        state["c"] = c
        logits.numpy()
    steps(2)                                  # trace + first call
    t0 = time.perf_counter()
    steps(8)
    warm = (time.perf_counter() - t0) / 8
    recs, wall = profile_records(lambda: steps(tokens), os.path.join(tmp, "log_decode"))
    return recs, {"unprofiled_s": warm, "profiled_s": wall / tokens}, {
        "context": prompt_len + 10, "tokens": tokens, "absorb": True,
        "traces": step.experimental_get_tracing_count(), "dense_layers": _dense_layers(cfg)}


# ---------------------------------------------------------------------- the run
def run(args) -> dict:
    import tensorflow as tf
    label, why = ops_label()
    res = {"ops": label, "ops_reason": why, "SEEKLINE_OPS": os.environ.get("SEEKLINE_OPS", ""),
           "preset": "small", "precision": "fp32",
           "device": {"cpu": _cpu_model(), "cores": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
           "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                       "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
           "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
           "method": "tf.profiler host trace after warm-up; self time of each TF op event on /host:CPU "
                     "(minus nested op events), summed by op type (oneDNN _Mkl prefix dropped) and by "
                     "name-scope component; unprofiled wall from warm-up calls",
           "workloads": {}}
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="profile_model_") as tmp, scoped_model() as patched:
        res["name_scopes_added"] = patched
        for w in args.workloads:
            t0 = time.time()
            if w == "train":
                recs, wall, info = workload_train(tmp, args.steps)
                units, unit = args.steps, "step"
            elif w == "prefill":
                recs, wall, info = workload_prefill(tmp, args.steps)
                units, unit = args.steps, "prefill"
            else:
                recs, wall, info = workload_decode(tmp, args.decode_tokens)
                units, unit = args.decode_tokens, "token"
            s = summarize(recs, units, unit, frozenset(info["dense_layers"]), top=args.top)
            s.update(wall_ms_per_unit=1e3 * wall["unprofiled_s"], wall_ms_per_unit_profiled=1e3 * wall["profiled_s"],
                     info=info, wall_s=time.time() - t0)
            if w == "prefill":
                s["op_ms_per_token"] = s["op_ms_per_unit"] / info["prompt_tokens"]
            res["workloads"][w] = s
            print("\n" + format_tables(w, s), flush=True)
    res["device"]["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.time() - t_all
    return res


def _cpu_model() -> str:
    from bench_train import cpu_model
    return cpu_model()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: train,prefill,decode")
    ap.add_argument("--steps", type=int, default=3, help="profiled train steps / prefill calls")
    ap.add_argument("--decode-tokens", type=int, default=32, help="profiled decode steps")
    ap.add_argument("--top", type=int, default=15, help="op types listed per workload")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
    ap.add_argument("--interop-threads", type=int, default=1, help="inter-op threads")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    ap.add_argument("--out", default=None, help="default bench/results/profile_<off|on>.json")
    args = ap.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad or not args.workloads:
        ap.error(f"--workloads: choose from {','.join(WORKLOADS)}, got {bad or 'nothing'}")
    if args.steps < 1 or args.decode_tokens < 1:
        ap.error("--steps and --decode-tokens must be >= 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    try:        # fails when TF already ran ops in this process: the run keeps TF's threads
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    except RuntimeError:
        pass
    res = run(args)
    out = args.out or os.path.join(RESULTS_DIR, f"profile_{res['ops']}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    if args.markdown:
        for w, s in res["workloads"].items():
            print("\n" + markdown_tables(w, s))
    print(f"\nops {res['ops']} ({res['ops_reason']}); wrote {os.path.relpath(out, REPO)} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
