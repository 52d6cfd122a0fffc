"""Custom ops on vs off, and how close the model's forward pass gets to the machine's matmul roofline.

One process, interleaved rounds (op side and pure-TF side alternate which goes first), medians:
  roofline   the machine's measured fp32 matmul ceiling: the best GFLOP/s of large square tf.matmul
  ops        each custom op vs its pure-TF reference on the `small` preset's shapes (and a wider
             MoE shape): grouped matmul forward / dx / weight grad, MoE layer forward+backward,
             RMSNorm forward+backward, causal attention forward and forward+backward (prefill
             1x1024 and training 4x256: 8 heads, qk 48, v 32)
  forward    the `small` model's forward pass (batch 1 x 1024 tokens, tf.function) with ops on and
             off (ops.disabled() while tracing the off side): tokens/s, achieved GFLOP/s from
             2·N_active FLOPs per token plus attention's score/value matmuls, fraction of roofline
             (also against a 2048² matmul timed in the same rounds: a shared VM's ceiling drifts)
  bound      what the model's widths allow: each of the forward's weight matmuls timed alone at its
             own shape (several per tf.function call, so dispatch is not timed), attention counted at
             the full ceiling — the fraction the forward would reach if nothing but TF's own matmul
             rate at those shapes limited it
Writes bench/results/ops.json. The ratio is pure-TF time / op time (> 1: the op is faster).
Usage: .venv/bin/python bench/bench_ops.py [--rounds 15] [--threads 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OUT = Path(__file__).resolve().parent / "results" / "ops.json"


# ---------------------------------------------------------------------- pure helpers (tested)
def matmul_flops(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def forward_flops_per_token(cfg, context: int) -> float:
    """2·N_active (weights a token touches) + attention's QK^T and PV matmuls at the mean causal
    context (context / 2 keys per query), per layer: 2·heads·(qk_head + v_head)·context/2."""
    import model
    n_active = model.count_params(cfg.to_hf_dict())["activated"]
    return 2.0 * n_active + attention_flops_per_token(cfg, context)


def attention_flops_per_token(cfg, context: int) -> float:
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim if cfg.attention_type == "mla" else cfg.head_dim
    v = cfg.v_head_dim if cfg.attention_type == "mla" else cfg.head_dim
    return 2 * cfg.num_attention_heads * (qk + v) * (context / 2) * cfg.num_hidden_layers


def forward_matmul_shapes(cfg, tokens: int) -> list[tuple[str, int, int, int, int]]:
    """The forward pass's weight matmuls as (what, count, m, k, n): count × (m × k)·(k × n). Routed
    experts appear as one (tokens·top_k) × k × n product per matrix: the FLOPs every expert's rows
    add up to, at the rate one matmul over all of them would get (the grouped op's best case)."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    h = cfg.num_attention_heads
    out: list[tuple[str, int, int, int, int]] = []
    if cfg.attention_type == "mla":
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank:
            out += [("q_a_proj", layers, tokens, d, cfg.q_lora_rank), ("q_b_proj", layers, tokens, cfg.q_lora_rank, h * qk)]
        else:
            out.append(("q_proj", layers, tokens, d, h * qk))
        out += [("kv_a_proj", layers, tokens, d, cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                ("kv_b_proj", layers, tokens, cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim)),
                ("o_proj", layers, tokens, h * cfg.v_head_dim, d)]
    else:
        hd, kv = cfg.head_dim, cfg.num_key_value_heads
        out += [("q_proj", layers, tokens, d, h * hd), ("k_proj", layers, tokens, d, kv * hd),
                ("v_proj", layers, tokens, d, kv * hd), ("o_proj", layers, tokens, h * hd, d)]
    dense = layers if not cfg.n_routed_experts else min(cfg.first_k_dense_replace, layers)
    moe = layers - dense
    if dense:
        out += [("mlp gate/up", 2 * dense, tokens, d, cfg.intermediate_size),
                ("mlp down", dense, tokens, cfg.intermediate_size, d)]
    if moe:
        i, k = cfg.moe_intermediate_size, cfg.num_experts_per_tok
        out.append(("router", moe, tokens, d, cfg.n_routed_experts))
        if cfg.n_shared_experts:
            out += [("shared gate/up", 2 * moe, tokens, d, cfg.n_shared_experts * i),
                    ("shared down", moe, tokens, cfg.n_shared_experts * i, d)]
        out += [("routed gate/up", 2 * moe, tokens * k, d, i), ("routed down", moe, tokens * k, i, d)]
    out.append(("lm_head", 1, tokens, d, cfg.vocab_size))
    return out


def causal_attention_flops(b: int, t: int, heads: int, dk: int, dv: int) -> int:
    """QKᵀ and PV over the visible (causal) pairs only, T = S: 2·(Dk + Dv) per pair and head."""
    return 2 * b * heads * (dk + dv) * (t * (t + 1) // 2)


def interleaved(sides: dict, rounds: int) -> dict:
    """sides {name: fn} -> {name: [seconds per round]}; the order rotates every round so both
    sides see the same background load."""
    names = list(sides)
    out = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sides[n]()
            out[n].append(time.perf_counter() - t0)
    return out


def ratio(times: dict, ref: str = "pure_tf", new: str = "op") -> dict:
    a, b = statistics.median(times[ref]), statistics.median(times[new])
    return {f"{ref}_median_s": a, f"{new}_median_s": b, "speedup": a / b,
            "spread": max(max(v) / min(v) for v in times.values())}


# ---------------------------------------------------------------------- measurements
def _sync(x):
    import tensorflow as tf
    for t in tf.nest.flatten(x):
        t.numpy()


def roofline(tf, sizes=(1024, 2048), reps: int = 5) -> dict:
    best = {}
    for n in sizes:
        a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
        f = tf.function(lambda a, b: tf.matmul(a, b))
        _sync(f(a, b))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _sync(f(a, b))
            ts.append(time.perf_counter() - t0)
        best[n] = matmul_flops(n, n, n) / min(ts) / 1e9
    return {"gflops_by_size": best, "gflops": max(best.values())}


def matmul_rate(tf, m: int, k: int, n: int, per_graph: int = 8, reps: int = 5) -> float:
    """Best GFLOP/s of an (m × k)·(k × n) tf.matmul, `per_graph` independent ones per tf.function call
    so the per-call dispatch (~0.1-0.5 ms on a small VM, more than a small product) is not timed."""
    xs = [tf.random.normal([m, k]) for _ in range(per_graph)]
    w = tf.random.normal([k, n])
    f = tf.function(lambda xs, w: [tf.matmul(x, w) for x in xs])
    _sync(f(xs, w))
    best = min(_timed(lambda: _sync(f(xs, w))) for _ in range(reps)) / per_graph
    return matmul_flops(m, k, n) / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def attainable(tf, cfg, seq: int, roof_gflops: float) -> dict:
    """What the forward could reach if every weight matmul ran at TF's own best rate for its shape
    and attention at the full ceiling: the bound the model's widths put on the roofline fraction."""
    rows, total_s, weight_flops = [], 0.0, 0.0
    for what, count, m, k, n in forward_matmul_shapes(cfg, seq):
        gf = matmul_rate(tf, m, k, n)
        fl = count * matmul_flops(m, k, n)
        total_s += fl / gf / 1e9
        weight_flops += fl
        rows.append({"what": what, "count": count, "m": m, "k": k, "n": n, "gflops": gf,
                     "fraction_of_roofline": gf / roof_gflops})
    attn_flops = attention_flops_per_token(cfg, seq) * seq
    total_s += attn_flops / roof_gflops / 1e9
    bound = (weight_flops + attn_flops) / total_s / 1e9
    return {"matmuls": rows, "weight_matmul_flops": weight_flops, "attention_flops": attn_flops,
            "bound_gflops": bound, "bound_fraction": bound / roof_gflops}


def grouped_cases(tf, lib, rows: int, d: int, i: int, e: int, rounds: int) -> dict:
    """The grouped-matmul op vs the pure-TF split + per-expert MatMul, equal groups."""
    from model.ops.grouped_matmul import grouped_matmul_reference
    x = tf.random.normal([rows, d])
    w = tf.random.normal([e, d, i]) * 0.05
    sizes = tf.constant([rows // e] * e, tf.int32)
    dy = tf.random.normal([rows, i])
    fl = matmul_flops(rows, d, i)

    def wgrad_ref():
        return tf.stack([tf.matmul(a, b, transpose_a=True)
                         for a, b in zip(tf.split(x, sizes, num=e), tf.split(dy, sizes, num=e), strict=True)])

    cases = {
        "forward": (lambda: lib.seekline_grouped_matmul(x, w, sizes), lambda: grouped_matmul_reference(x, w, sizes)),
        "dx (transpose_w)": (lambda: lib.seekline_grouped_matmul(dy, w, sizes, transpose_w=True),
                             lambda: grouped_matmul_reference(dy, w, sizes, True)),
        "weight grad": (lambda: lib.seekline_grouped_matmul_w_grad(x, dy, sizes), wgrad_ref),
    }
    res = {}
    for name, (op_fn, ref_fn) in cases.items():
        op_fn, ref_fn = tf.function(op_fn), tf.function(ref_fn)
        _sync(op_fn()), _sync(ref_fn())
        r = ratio(interleaved({"op": lambda f=op_fn: _sync(f()), "pure_tf": lambda f=ref_fn: _sync(f())}, rounds))
        r["op_gflops"] = fl / r["op_median_s"] / 1e9
        r["pure_tf_gflops"] = fl / r["pure_tf_median_s"] / 1e9
        res[name] = r
    return res


def layer_case(tf, ops, layer, x, rounds: int) -> dict:
    """One layer's forward+backward traced twice: custom ops on, and under ops.disabled()."""
    def make():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x] + layer.trainable_variables)
        return step
    on, off = make(), make()
    _sync(on(x))
    with ops.disabled():
        _sync(off(x))                      # traced on the pure-TF path
    return ratio(interleaved({"op": lambda: _sync(on(x)), "pure_tf": lambda: _sync(off(x))}, rounds))


def attention_cases(tf, rounds: int, b: int, t: int, heads: int = 8, dk: int = 48, dv: int = 32) -> dict:
    """The fused attention op vs the pure-TF batched-matmul path (model/ops/attention.py), causal."""
    from model.layers.attention_utils import mask_bias
    from model.ops.attention import attention, attention_reference
    q, k = tf.random.normal([b, t, heads, dk]), tf.random.normal([b, t, heads, dk])
    v = tf.random.normal([b, t, heads, dv])
    pos = tf.range(t)[None]
    bias = mask_bias(pos, pos, tf.ones([1, t]))                                  # (1, 1, T, T)
    scale = dk ** -0.5

    def forward(fn):
        def f():
            return fn(q, k, v, bias, scale)
        return f

    def fwd_bwd(fn):
        def f():
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                loss = tf.reduce_sum(tf.square(fn(q, k, v, bias, scale)))
            return tape.gradient(loss, [q, k, v])
        return f

    fl = causal_attention_flops(b, t, heads, dk, dv)
    res = {}
    for name, (op_fn, ref_fn, flops) in {
            "forward": (forward(attention), forward(attention_reference), fl),
            "fwd+bwd": (fwd_bwd(attention), fwd_bwd(attention_reference), 3.5 * fl)}.items():
        op_fn, ref_fn = tf.function(op_fn), tf.function(ref_fn)
        _sync(op_fn()), _sync(ref_fn())
        r = ratio(interleaved({"op": lambda f=op_fn: _sync(f()),
                               "pure_tf": lambda f=ref_fn: _sync(f())}, rounds))
        r["op_gflops"] = flops / r["op_median_s"] / 1e9     # causal FLOPs (bwd: 2.5x fwd) per second
        res[name] = r
    return res


def pair_case(tf, ops, fn, rounds: int) -> dict:
    """fn() traced twice — custom ops on, and under ops.disabled() — and timed interleaved."""
    on = tf.function(fn)
    off = tf.function(fn)
    _sync(on())
    with ops.disabled():
        _sync(off())                        # traced on the pure-TF path
    return ratio(interleaved({"op": lambda: _sync(on()), "pure_tf": lambda: _sync(off())}, rounds))


def elementwise_cases(tf, ops, rounds: int) -> dict:
    """SwiGLU gate, RoPE on MLA's query, the MoE combine, one AdamW step: fused op vs pure path."""
    from configs.training import TrainerConfig
    from model.layers.moe import dispatch_plan
    from model.layers.rope import apply_rope_tail, rope_cos_sin, rope_inv_freq
    from model.ops.moe_combine import combine, gather_rows
    from model.ops.swiglu import swiglu
    from training.optimizer import build_optimizer, clip_scale

    def grads_of(f, *xs):
        def run():
            with tf.GradientTape() as tape:
                tape.watch(list(xs))
                y = f(*xs)
            return [tf.convert_to_tensor(d) for d in tape.gradient(y, list(xs), output_gradients=tf.ones_like(y))]
        return run

    res = {}
    g, u = tf.random.normal([4096, 128]), tf.random.normal([4096, 128])
    res["SwiGLU gate fwd+bwd (4096x128, routed experts)"] = pair_case(tf, ops, grads_of(swiglu, g, u), rounds)
    inv, amp = rope_inv_freq(16, 10000.0, None)
    cos, sin = rope_cos_sin(tf.range(256)[None] + tf.zeros([4, 1], tf.int32), inv, amp)
    q = tf.random.normal([4, 256, 8, 48])
    res["RoPE on MLA q fwd+bwd (4x256x8x48, rope 16)"] = pair_case(
        tf, ops, grads_of(lambda x: apply_rope_tail(x, cos, sin, 32, True), q), rounds)
    n, k, e = 1024, 4, 16
    idx = tf.argsort(tf.random.uniform([n, e]), axis=-1)[:, :k]
    order, token_of, _ = dispatch_plan(idx, e)
    pos = tf.reshape(tf.math.invert_permutation(order), [-1, k])
    x, w = tf.random.normal([n, 256]), tf.random.uniform([n, k])

    def moe_combine(x, w):
        if ops.active("moe_combine"):
            return combine(tf.tanh(gather_rows(x, token_of, pos)), w, pos)
        ys = tf.tanh(tf.gather(x, token_of)) * tf.gather(tf.reshape(w, [-1]), order)[:, None]
        return tf.math.unsorted_segment_sum(ys, token_of, n)
    res["MoE dispatch + combine fwd+bwd (1024 tokens x top-4, D 256)"] = pair_case(
        tf, ops, grads_of(moe_combine, x, w), rounds)
    shapes = [(256, 1024)] * 12 + [(1024,)] * 12                   # ~3.2M parameters
    variables = [tf.Variable(tf.random.normal(s) * 0.02) for s in shapes]
    opt = build_optimizer(TrainerConfig(lr=1e-3, warmup_steps=0, steps=1000, weight_decay=0.1), variables)
    grads = [tf.random.normal(s) for s in shapes]

    def adamw_step():
        opt.apply_scaled(grads, variables, clip_scale(tf.linalg.global_norm(grads), 1.0))
        return variables[0].read_value()
    res["AdamW step with clip + decay (24 variables, 3.2M parameters)"] = pair_case(tf, ops, adamw_step, rounds)
    return res


def op_cases(tf, ops, rounds: int) -> dict:
    from model.layers.moe import MoE
    from model.layers.rmsnorm import RMSNorm
    lib = ops.library()
    res = {}
    for label, shape in {"small (4096x256->128, 16 experts)": (4096, 256, 128, 16),
                         "wide (8192x512->256, 64 experts)": (8192, 512, 256, 64)}.items():
        for name, r in grouped_cases(tf, lib, *shape, rounds).items():
            res[f"grouped_matmul {name}, {label}"] = r
    x = tf.random.normal([4, 256, 256])
    res["MoE layer fwd+bwd (4x256 tokens, small preset)"] = layer_case(
        tf, ops, MoE(256, 128, 16, 1, 4, 1, 1, 2.5, True, "sigmoid", "noaux_tc"), x, rounds)
    res["RMSNorm fwd+bwd (4x256x256)"] = layer_case(tf, ops, RMSNorm(256), x, rounds)
    for label, (b, t) in {"prefill 1x1024": (1, 1024), "train 4x256": (4, 256)}.items():
        for name, r in attention_cases(tf, rounds, b, t).items():
            res[f"attention {name}, {label} (8 heads, qk 48, v 32, causal)"] = r
    res.update(elementwise_cases(tf, ops, rounds))
    return res


def forward_config(preset: str, seq: int):
    import model
    cfg = model.ModelConfig.from_preset(preset)
    return cfg.replace(rope_scaling=None, num_nextn_predict_layers=0,
                       max_position_embeddings=max(cfg.max_position_embeddings, seq))


def forward(tf, ops, rounds: int, preset: str, seq: int, roof_gflops: float) -> dict:
    import model
    cfg = forward_config(preset, seq)
    m = model.build_model(cfg, seed=0)
    ids = tf.random.uniform([1, seq], 0, cfg.vocab_size, tf.int32, seed=1)
    on = tf.function(lambda t: m(t))
    off = tf.function(lambda t: m(t))
    y_on = on(ids)
    with ops.disabled():
        y_off = off(ids)
    diff = float(tf.reduce_max(tf.abs(y_on - y_off)))
    # The ceiling is also sampled in every round (a shared VM's matmul rate drifts by 20-30% over
    # minutes): each round's forward against that round's ceiling, then the median of the ratios.
    n = 2048
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    mm = tf.function(lambda a, b: tf.matmul(a, b))
    _sync(mm(a, b))
    t = interleaved({"op": lambda: _sync(on(ids)), "pure_tf": lambda: _sync(off(ids)),
                     "ceiling": lambda: _sync(mm(a, b))}, rounds)
    r = ratio({k: t[k] for k in ("op", "pure_tf")})
    fpt = forward_flops_per_token(cfg, seq)
    ceil = [matmul_flops(n, n, n) / c / 1e9 for c in t["ceiling"]]
    r["ceiling_gflops_per_round"] = ceil
    for side in ("op", "pure_tf"):
        gf = fpt * seq / r[f"{side}_median_s"] / 1e9
        r[f"{side}_tokens_per_s"] = seq / r[f"{side}_median_s"]
        r[f"{side}_gflops"] = gf
        r[f"{side}_roofline_fraction"] = gf / roof_gflops
        r[f"{side}_same_round_fraction"] = statistics.median(
            fpt * seq / s / 1e9 / c for s, c in zip(t[side], ceil, strict=True))
    r.update(preset=preset, tokens=seq, flops_per_token=fpt, max_abs_logit_diff_on_vs_off=diff)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--skip-ops", action="store_true", help="only the roofline, the bound and the forward pass")
    args = ap.parse_args(argv)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from model import ops
    if not ops.available():
        print("custom ops not available (run `make ops`); nothing to compare", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    roof = roofline(tf)
    res = {"device": {"cpu": platform.processor() or "cpu", "cores": os.cpu_count(),
                      "loadavg_start": os.getloadavg()},
           "threads": args.threads, "tensorflow": tf.__version__, "rounds": args.rounds,
           "roofline": roof, "custom_ops": ops.describe(),
           "ops": {} if args.skip_ops else op_cases(tf, ops, args.rounds),
           "attainable": attainable(tf, forward_config(args.preset, args.seq), args.seq, roof["gflops"]),
           "forward": forward(tf, ops, args.rounds, args.preset, args.seq, roof["gflops"])}
    res["device"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"matmul roofline (best large tf.matmul, fp32, {args.threads} threads): {roof['gflops']:.0f} GFLOP/s")
    print(f"{'case':<66} {'pure TF ms':>10} {'op ms':>8} {'speedup':>8} {'spread':>7}")
    for name, r in res["ops"].items():
        print(f"{name:<66} {1e3 * r['pure_tf_median_s']:>10.2f} {1e3 * r['op_median_s']:>8.2f} "
              f"{r['speedup']:>7.2f}x {r['spread']:>7.2f}")
    f = res["forward"]
    print(f"forward {f['preset']} x {f['tokens']} tokens: ops off {f['pure_tf_tokens_per_s']:.0f} tok/s "
          f"({f['pure_tf_gflops']:.1f} GFLOP/s, {100 * f['pure_tf_roofline_fraction']:.0f}% of roofline), ops on "
          f"{f['op_tokens_per_s']:.0f} tok/s ({f['op_gflops']:.1f} GFLOP/s, "
          f"{100 * f['op_roofline_fraction']:.0f}% of roofline); speedup {f['speedup']:.2f}x; "
          f"logits on vs off max |diff| {f['max_abs_logit_diff_on_vs_off']:.1e}")
    print(f"  against the ceiling sampled in the same rounds ({min(f['ceiling_gflops_per_round']):.0f}-"
          f"{max(f['ceiling_gflops_per_round']):.0f} GFLOP/s): ops on {100 * f['op_same_round_fraction']:.0f}%, "
          f"ops off {100 * f['pure_tf_same_round_fraction']:.0f}%")
    a = res["attainable"]
    print(f"bound from the model's widths (every weight matmul at TF's best rate for its shape, attention at "
          f"the ceiling): {a['bound_gflops']:.0f} GFLOP/s = {100 * a['bound_fraction']:.0f}% of roofline")
    for row in a["matmuls"]:
        print(f"  {row['what']:<16} {row['count']:>3} x {row['m']:>5}x{row['k']:<5}x{row['n']:<6} "
              f"{row['gflops']:7.1f} GFLOP/s ({100 * row['fraction_of_roofline']:.0f}%)")
    print(f"wrote {args.out} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
