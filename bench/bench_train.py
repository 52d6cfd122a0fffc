#!/usr/bin/env python3
"""Training-step benchmark: seekline's engine step against a transformers (PyTorch) step.

    .venv/bin/python bench/bench_train.py            # or: make bench   (~2-4 min on 2 cores)

Both sides train the same DeepSeek-V3 model (preset `small` by default: MLA + MoE, 16 routed
experts top-4, 1 shared, 6 layers) from identical weights on the same packed rows (B x T, the
engine's own data stream over `training.testdata.write_packed` rows), fp32 on CPU, with the same
intra-/inter-op thread counts:

* seekline: the real `training.loop.Trainer` compiled step (`_build_train_fn`: forward + loss +
  backward, global-norm clipping, NaN guard, Keras AdamW with the warmup-cosine schedule, the
  aux-loss-free routing-bias update) with `training.lm_task.CausalLMTask` (next-token CE + MTP
  loss + sequence-wise balance loss), as `Trainer.fit` runs it: one call + the host reads of
  loss / finite / tokens. Two variants: `engine` (the default training config: MTP lambda 0.3,
  aux alpha 1e-4, bias gamma 1e-3) and `matched` (the same step on the model without its MTP
  module, aux loss and bias update off: exactly the work the transformers step does).
* transformers: DeepseekV3ForCausalLM (sdpa attention, default experts implementation) loaded
  from seekline's exported checkpoint, in .venv-ref as a subprocess
  (bench/ref_train_transformers.py): forward with labels, loss.backward(), clip_grad_norm_,
  torch.optim.AdamW step, LambdaLR step, zero_grad, loss.item().

Warm-up steps first (seekline's first one traces and optimises the graph: reported as
compile time), then --rounds interleaved rounds of --steps-per-round steps per side (side order
rotates every round, so all see the same background load); tokens/s = B*T / median step time;
ratio = seekline / transformers (> 1: seekline faster); also per CPU second of each process
(time.process_time: much less disturbed by other jobs than wall time). Also: the step-0 loss
of both sides on the same batch (same weights -> same loss), the matched variant's loss trajectory against
transformers', a breakdown of seekline's step into isolated forward+backward pieces (attention
layers, MoE layers split into router / shared expert / expert matmuls / dispatch, dense FFN,
head + loss, MTP module, gradient clipping + AdamW update) as shares of the step, engine checks
(trace count over all steps, compile time, op determinism on vs off), and model FLOP/s
(6 * N_active * tokens/s; MFU with --peak-tflops). Writes bench/results/train.json.
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
REF_SCRIPT = os.path.join(REPO, "bench", "ref_train_transformers.py")
RESULTS = os.path.join(REPO, "bench", "results", "train.json")

# Breakdown pieces that together make up the step; "other" is the step minus their sum.
TOP_PIECES = ("attention", "moe", "dense_ffn", "head_loss", "mtp", "optimizer")


# ---------------------------------------------------------------------- pure helpers (tested)
def summarize(xs) -> dict:
    """Median, best and all timings; spread = max / min (> 1.5: background load)."""
    xs = list(xs)
    return {"median_s": statistics.median(xs), "min_s": min(xs), "spread": max(xs) / min(xs),
            "all_s": xs}


def step_summary(steps, tokens: int) -> dict:
    """Per-step records {"step_s", "cpu_s"} -> wall summary + tokens/s (median and best-of) and
    the median process CPU seconds per step (load-robust: other jobs' time is not counted)."""
    s = summarize([x["step_s"] for x in steps])
    cpu = statistics.median(x["cpu_s"] for x in steps)
    s.update(tokens_per_s=tokens / s["median_s"], tokens_per_s_best=tokens / s["min_s"],
             cpu_median_s=cpu, tokens_per_cpu_s=tokens / cpu, all_cpu_s=[x["cpu_s"] for x in steps])
    return s


def model_flops(tokens_per_s: float, n_active: int, peak_tflops: float | None = None) -> dict:
    """6 * N_active FLOPs per trained token (forward 2N + backward 4N; attention scores not
    counted) -> achieved TFLOP/s and, given the device's peak, the model FLOPs utilisation."""
    achieved = 6.0 * n_active * tokens_per_s / 1e12
    out = {"flops_per_token": 6 * n_active, "achieved_tflops": achieved}
    if peak_tflops:
        out["peak_tflops"] = peak_tflops
        out["mfu"] = achieved / peak_tflops
    return out


def breakdown_shares(pieces_s: dict, step_s: float) -> dict:
    """Seconds of the isolated pieces -> shares of the measured step (both best-of). The MoE piece is split
    into router, shared expert, expert matmuls and dispatch (the rest of the MoE piece: sort,
    gather, split, concat, weighting, segment-sum and their gradients; never below 0). "other"
    = step - sum(TOP_PIECES): embedding, masks and rope, residual adds, loss glue, gradient
    accumulation (also timed alone: grad_accumulation), the aux loss, expert loads and bias
    update, the NaN guard; negative when the isolated pieces cost more than inside the step."""
    p = dict(pieces_s)
    if "moe" in p:
        parts = sum(p.get(k, 0.0) for k in ("moe_router", "moe_shared", "moe_expert_matmuls"))
        p["moe_dispatch"] = max(p["moe"] - parts, 0.0)
    p["other"] = step_s - sum(p.get(k, 0.0) for k in TOP_PIECES)
    return {k: {"s": v, "share": v / step_s} for k, v in p.items()}


def active_params(cfg) -> dict:
    """N_active of the main model (model.count_params: without the input embedding table and
    the routed experts a token skips) and of one MTP module (its block as it runs, eh_proj and
    the shared head's matmul; not its stored embedding/head copies, which seekline shares)."""
    import model
    from model.params import _numel, block_shapes
    counts = model.count_params(cfg.to_hf_dict())
    mtp = 0
    d = cfg.hidden_size
    for k in range(cfg.num_nextn_predict_layers):
        idx = cfg.num_hidden_layers + k
        blk = sum(_numel(s) for key, s in block_shapes(cfg, idx).items()
                  if not key.endswith("e_score_correction_bias"))
        if cfg.is_moe_layer(idx):
            blk -= (cfg.n_routed_experts - cfg.num_experts_per_tok) * 3 * d * cfg.moe_intermediate_size
        mtp += blk + 2 * d * d + cfg.vocab_size * d
    return {"main": counts["activated"], "mtp": mtp, "total_params": counts["total"]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------- seekline side
def bench_config(preset: str, seq_len: int, mtp: bool = True, layers: int | None = None):
    """The preset as pretraining builds it (model_overrides rope_scaling None), long enough for
    seq_len; mtp=False drops the MTP module (the matched variant, transformers' model);
    layers overrides num_hidden_layers."""
    import model
    cfg = model.ModelConfig.from_preset(preset)
    cfg = cfg.replace(rope_scaling=None, max_position_embeddings=max(cfg.max_position_embeddings, seq_len))
    if layers:
        cfg = cfg.replace(num_hidden_layers=layers)
    return cfg if mtp else cfg.replace(num_nextn_predict_layers=0)


class SeeklineStep:
    """One Trainer and its compiled engine step; `step(batch)` is what Trainer.fit runs per step."""

    def __init__(self, name, cfg, tcfg, runtime, out_dir):
        import model
        from training.lm_task import CausalLMTask
        from training.loop import Trainer
        self.name = name
        self.trainer = Trainer(tcfg, runtime, lambda: model.build_model(cfg, seed=0),
                               CausalLMTask(tcfg.mtp_weight, tcfg.aux_loss_alpha), out_dir,
                               title=f"bench {name}")
        self.fn = None
        self.losses: list[dict] = []

    def compile(self, batch) -> dict:
        """Trace (get_concrete_function) and the first call (graph optimisation + one step)."""
        self.fn = self.trainer._build_train_fn()
        t0 = time.perf_counter()
        self.fn.get_concrete_function(batch)
        t1 = time.perf_counter()
        first = self.step(batch)
        return {"trace_s": t1 - t0, "first_call_s": first["step_s"]}

    def step(self, batch) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        metrics, _gnorm, finite, _loads, tokens = self.fn(batch)
        # Trainer.fit's per-step host reads
        ok, n_tok, loss = bool(finite), float(tokens), float(metrics["loss"])
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = {"step_s": dt, "cpu_s": cpu, "loss": loss, "lm_loss": float(metrics.get("lm_loss", metrics["loss"])),
               "finite": ok, "tokens": n_tok}
        self.losses.append(rec)
        return rec

    def traces(self) -> int:
        return int(self.fn.experimental_get_tracing_count())


def _capture(m, batch, use_mtp: bool):
    """Eager forward of the model's pieces (as DecoderLM.forward runs them) recording each piece's
    real input activations: attention inputs, FFN inputs, the pre-norm output; plus rope / mask."""
    import tensorflow as tf

    from model.layers.attention_utils import mask_bias
    ids, seg, pos = (batch[k][0] for k in ("input_ids", "segment_ids", "positions"))   # (B, T)
    b, t = ids.shape
    cos, sin = m.rope(pos)
    seq = tf.tile(tf.range(t)[None, :], [b, 1])
    bias = mask_bias(seq, seq, tf.ones([b, t], tf.int32), seg, seg)
    x = m.embed_tokens(ids)
    attn_in, ffn_in = [], []
    for blk in m.blocks:
        attn_in.append(x)
        x = x + blk.self_attn(blk.input_layernorm(x), cos, sin, bias)
        ffn_in.append(x)
        x, _ = blk._ffn(x, True)
    return {"ids": ids, "seg": seg, "cos": cos, "sin": sin, "bias": bias, "attn_in": attn_in,
            "ffn_in": ffn_in, "final": x, "use_mtp": use_mtp}


def _timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process) of one call. CPU time counts only this process's
    threads, so unlike wall time it barely moves when other jobs share the cores."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _grad_runner(forward, inputs, variables):
    """A zero-argument call of a compiled forward + backward: loss = forward(*inputs) (a scalar),
    gradients for the inputs (as the real step backpropagates into earlier layers) and for
    `variables`; returns when the result reached the host."""
    import tensorflow as tf
    variables = list(variables)

    @tf.function(autograph=False)
    def run(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            loss = forward(*xs)
        grads = tape.gradient(loss, list(xs) + variables)
        return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) for g in grads if g is not None])

    return lambda: run(*inputs).numpy()


def _half_sq(y):
    """0.5 * sum(y^2): a scalar whose gradient w.r.t. y is y (a dense upstream gradient)."""
    import tensorflow as tf
    y = tf.cast(y, tf.float32)
    return 0.5 * tf.reduce_sum(y * y)


def piece_runners(side: SeeklineStep, batch) -> dict:
    """Zero-argument calls of each piece of the step alone (forward + backward, tf.function, the
    same shapes and the real activations of `batch`), of the optimizer update (global norm,
    clipping, AdamW apply_gradients on gradients of the real shapes) and of the engine's
    gradient accumulation."""
    import tensorflow as tf

    from model import ops
    from model.layers.moe import dispatch_plan
    from model.losses import causal_lm_loss, mtp_loss
    tr = side.trainer
    m, cfg = tr.model, tr.model.cfg
    task = tr.task
    c = _capture(m, batch, use_mtp=bool(m.mtp) and task.mtp_weight > 0)
    cos, sin, bias = c["cos"], c["sin"], c["bias"]
    moe_blocks = [i for i, blk in enumerate(m.blocks) if blk.is_moe]
    dense_blocks = [i for i, blk in enumerate(m.blocks) if not blk.is_moe]

    def vars_of(*layers):
        return [v for layer in layers for v in layer.trainable_variables]

    out = {}

    def attention(*xs):
        return tf.add_n([_half_sq(m.blocks[i].self_attn(m.blocks[i].input_layernorm(x), cos, sin, bias))
                         for i, x in enumerate(xs)])
    out["attention"] = _grad_runner(attention, c["attn_in"], vars_of(
        *[layer for blk in m.blocks for layer in (blk.input_layernorm, blk.self_attn)]))

    if moe_blocks:
        blocks = [m.blocks[i] for i in moe_blocks]
        moe_in = [c["ffn_in"][i] for i in moe_blocks]
        d = cfg.hidden_size

        def moe(*xs):
            return tf.add_n([_half_sq(blk.mlp(blk.post_attention_layernorm(x)))
                             for blk, x in zip(blocks, xs, strict=True)])
        out["moe"] = _grad_runner(moe, moe_in, vars_of(
            *[layer for blk in blocks for layer in (blk.post_attention_layernorm, blk.mlp)]))

        normed = [tf.reshape(blk.post_attention_layernorm(x), [-1, d]) for blk, x in zip(blocks, moe_in,
                                                                                       strict=True)]

        def router(*xs):
            total = []
            for blk, x in zip(blocks, xs, strict=True):
                r = blk.mlp.router(x)
                total += [_half_sq(r.topk_weight), _half_sq(r.scores)]
            return tf.add_n(total)
        out["moe_router"] = _grad_runner(router, normed, vars_of(*[blk.mlp.gate for blk in blocks]))

        shared = [blk.mlp.shared_experts for blk in blocks if blk.mlp.shared_experts is not None]
        if shared:
            def shared_fn(*xs):
                return tf.add_n([_half_sq(s(x)) for s, x in zip(shared, xs, strict=False)])
            out["moe_shared"] = _grad_runner(shared_fn, normed[:len(shared)], vars_of(*shared))

        # The expert matmuls alone on the rows the router really sends each expert (already
        # gathered in expert order): what the routed path costs without its dispatch.
        plans = []
        for blk, x in zip(blocks, normed, strict=True):
            _, token_of, counts = dispatch_plan(blk.mlp.router(x).topk_idx, blk.mlp.n_routed_experts)
            plans.append((tf.gather(x, token_of), counts))

        def experts(*xs):
            total = []
            for blk, xsorted, (_, counts) in zip(blocks, xs, plans, strict=True):
                # the path the step itself takes: the grouped-matmul op when active (model/ops)
                if blk.mlp.use_grouped_op and ops.active("grouped_matmul"):
                    loop = blk.mlp._experts_grouped
                else:
                    loop = blk.mlp._experts_unrolled if blk.mlp.expert_loop == "unrolled" else blk.mlp._experts_while
                total.append(_half_sq(loop(xsorted, counts, xsorted.dtype)))
            return tf.add_n(total)
        out["moe_expert_matmuls"] = _grad_runner(
            experts, [p[0] for p in plans],
            [v for blk in blocks for v in (blk.mlp.experts_gate, blk.mlp.experts_up, blk.mlp.experts_down)])

    if dense_blocks:
        blocks_d = [m.blocks[i] for i in dense_blocks]

        def dense(*xs):
            return tf.add_n([_half_sq(blk.mlp(blk.post_attention_layernorm(x)))
                             for blk, x in zip(blocks_d, xs, strict=True)])
        out["dense_ffn"] = _grad_runner(dense, [c["ffn_in"][i] for i in dense_blocks], vars_of(
            *[layer for blk in blocks_d for layer in (blk.post_attention_layernorm, blk.mlp)]))

    ids, seg = c["ids"], c["seg"]

    def head_loss(x):
        return causal_lm_loss(m.head(m.norm(x)), ids, None, segment_ids=seg)
    head_vars = vars_of(m.norm) + (vars_of(m.lm_head) if m.lm_head is not None else [m.embed_tokens.weight])
    out["head_loss"] = _grad_runner(head_loss, [c["final"]], head_vars)

    if c["use_mtp"]:
        b, t = ids.shape

        def mtp(x):
            h, logits = m.norm(x), []
            for k, mod in enumerate(m.mtp, start=1):
                shifted = tf.concat([ids[:, k:], tf.zeros([b, k], ids.dtype)], axis=1)
                h, normed_k = mod(h, m.embed_tokens(shifted), cos, sin, bias)
                logits.append(m.head(normed_k))
            return mtp_loss(logits, ids, None, weight=task.mtp_weight, segment_ids=seg)
        out["mtp"] = _grad_runner(mtp, [c["final"]], vars_of(*m.mtp) + head_vars + [m.embed_tokens.weight])

    # Optimizer update as the step runs it: global norm, clipping, AdamW apply (Keras).
    variables, opt, clip = tr.variables, tr.optimizer, tr.cfg.clip_norm
    g = tf.random.Generator.from_seed(1)
    grads = [g.normal(v.shape, stddev=1e-3) for v in variables]

    def update(grads, clip_first: bool):
        if clip_first:
            gnorm = tf.linalg.global_norm(grads)
            grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=gnorm)
        opt.apply_gradients(zip(grads, variables, strict=True))
        return tf.constant(0)

    for name, clip_first in (("optimizer", True), ("optimizer_apply_only", False)):
        fn = tf.function(lambda gs, cf=clip_first: update(gs, cf), autograph=False)
        out[name] = lambda fn=fn: fn(grads).numpy()

    # The engine's gradient accumulation as the step runs it with grad_accum_steps=1: zero
    # buffers for every variable, plus the micro-batch's gradients (IndexedSlices densified).
    def accumulate(gs):
        acc = [tf.zeros(v.shape, tf.float32) for v in variables]
        acc = [a + tf.cast(b, tf.float32) for a, b in zip(acc, gs, strict=True)]
        return tf.add_n([tf.reduce_sum(a[..., :1]) for a in acc])
    acc_fn = tf.function(accumulate, autograph=False)
    out["grad_accumulation"] = lambda: acc_fn(grads).numpy()
    return out


def breakdown(side: SeeklineStep, batch, step_batches, reps: int) -> dict:
    """Each piece once (untimed: trace + warm-up), then `reps` rounds of [one engine step, every
    piece once]. Shares are per round (piece / the step of the same round, so load that drifts
    over the minute the breakdown takes cancels out), then the median over rounds; on CPU time
    (this process's threads only: robust to other jobs on the machine) and on wall time."""
    import tensorflow as tf
    runners = piece_runners(side, batch)
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")        # each piece is its own tf.function: not a retrace
    try:
        for fn in runners.values():
            fn()
    finally:
        tf.get_logger().setLevel(level)
    wall = {k: [] for k in ("step", *runners)}
    cpu = {k: [] for k in ("step", *runners)}
    for r in range(reps):
        def step(bt=step_batches[r % len(step_batches)]):
            return side.step(bt)
        for name, fn in (("step", step), *runners.items()):
            w, c = _timed(fn)
            wall[name].append(w)
            cpu[name].append(c)

    def shares(rec):
        per_round = [breakdown_shares({k: rec[k][r] for k in runners}, rec["step"][r]) for r in range(reps)]
        return {k: statistics.median(x[k]["share"] for x in per_round) for k in per_round[0]}
    return {"pieces_wall_s": {k: statistics.median(v) for k, v in wall.items()},
            "pieces_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
            "shares_cpu": shares(cpu), "shares_wall": shares(wall), "reps": reps,
            "all_wall_s": wall, "all_cpu_s": cpu}


# ---------------------------------------------------------------------- transformers side
class Reference(RefProcess):
    """bench/ref_train_transformers.py running in .venv-ref, answering one command at a time."""

    def __init__(self, ckpt, batches, tcfg, threads, interop, omp_wait_policy, experts=None):
        self.cmd = [REF_PYTHON, REF_SCRIPT, "--ckpt", ckpt, "--batches", batches,
                    "--threads", str(threads), "--interop-threads", str(interop),
                    "--lr", str(tcfg.lr), "--min-lr-ratio", str(tcfg.min_lr_ratio),
                    "--warmup", str(tcfg.warmup_steps), "--total-steps", str(tcfg.steps),
                    "--weight-decay", str(tcfg.weight_decay), "--beta1", str(tcfg.beta1),
                    "--beta2", str(tcfg.beta2), "--eps", str(tcfg.eps), "--clip-norm", str(tcfg.clip_norm)]
        if experts:
            self.cmd += ["--experts", experts]
        super().__init__(self.cmd, threads, omp_wait_policy)


# ---------------------------------------------------------------------- the run
def run_bench(args) -> dict:
    import tensorflow as tf

    import model
    from configs.training import TrainerConfig
    from training.data import open_packed
    from training.strategy import make_runtime
    from training.testdata import write_packed

    gpus = tf.config.list_physical_devices("GPU")
    rt = make_runtime("one_device", args.precision)
    b, t = args.batch, args.seq_len
    cfg = bench_config(args.preset, t, mtp=True, layers=args.layers)
    cfg_matched = bench_config(args.preset, t, mtp=False, layers=args.layers)
    n_steps = args.warmup + args.rounds * args.steps_per_round
    tcfg = TrainerConfig(steps=1000, micro_batch_size=b, grad_accum_steps=1, warmup_steps=10,
                         precision=args.precision, strategy="one_device", jit_compile=args.jit_compile)
    tcfg_matched = tcfg.model_copy(update={"mtp_weight": 0.0, "aux_loss_alpha": 0.0,
                                           "bias_update_gamma": 0.0})
    params = active_params(cfg)
    res = {"preset": args.preset, "layers": cfg.num_hidden_layers, "batch": b, "seq_len": t, "tokens_per_step": b * t,
           "precision": rt.compute_dtype, "jit_compile": args.jit_compile,
           "config": {k: getattr(cfg, k) for k in (
               "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank",
               "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
               "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
               "first_k_dense_replace", "num_nextn_predict_layers")},
           "params": params,
           "trainer": {k: getattr(tcfg, k) for k in (
               "lr", "warmup_steps", "steps", "weight_decay", "beta1", "beta2", "eps", "clip_norm",
               "mtp_weight", "aux_loss_alpha", "bias_update_gamma", "deterministic")},
           "warmup_steps_per_side": args.warmup, "rounds": args.rounds,
           "steps_per_round": args.steps_per_round,
           "method": "untimed warm-up steps per side, then interleaved rounds (side order rotating); "
                     "medians of all timed steps; the same batches in the same order on every side"}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        write_packed(os.path.join(tmp, "data"), t, cfg.vocab_size, train_rows=max(4 * b, 16),
                     eval_rows=2, shards=1)
        data = open_packed(os.path.join(tmp, "data"))
        sides = {"engine": SeeklineStep("engine", cfg, tcfg, rt, os.path.join(tmp, "engine"))}
        if not args.skip_matched and cfg.num_nextn_predict_layers > 0:
            sides["matched"] = SeeklineStep("matched", cfg_matched, tcfg_matched, rt, os.path.join(tmp, "matched"))
        # The engine's own data stream: n_steps optimizer-step batches {feature: (1, B, T)}.
        it = sides["engine"].trainer._dist_train(data, 0)
        batches, pulls = [], []
        for _ in range(n_steps):
            t0 = time.perf_counter()
            batches.append(next(it))
            pulls.append(time.perf_counter() - t0)
        # steady state (the first pull starts the pipeline): what fit waits for per step at most
        res["input_stream_s_per_step"] = statistics.median(pulls[1:] or pulls)
        batches = [{k: tf.constant(v) for k, v in bt.items()} for bt in batches]
        ref = None
        if not args.skip_reference:
            ckpt = os.path.join(tmp, "ckpt")
            hf_model = sides["matched"].trainer.model if "matched" in sides else \
                model.build_model(cfg_matched, seed=0)
            model.save_hf_checkpoint(hf_model, ckpt)
            rows = os.path.join(tmp, "rows.npz")
            np.savez(rows, **{k: np.stack([bt[k].numpy()[0] for bt in batches])
                              for k in ("input_ids", "segment_ids", "positions")})
            ref = Reference(ckpt, rows, tcfg, args.threads, args.interop_threads, args.omp_wait_policy,
                            args.experts)
        try:
            compile_info = {}
            for name, side in sides.items():
                compile_info[name] = side.compile(batches[0])
                for i in range(1, args.warmup):
                    side.step(batches[i])
            ref_warm = [ref("step") for _ in range(args.warmup)] if ref else []
            timed = {name: [] for name in sides}
            timed["transformers"] = []
            order = list(sides) + (["transformers"] if ref else [])
            for r in range(args.rounds):
                k = r % len(order)
                for name in order[k:] + order[:k]:
                    for j in range(args.steps_per_round):
                        i = args.warmup + r * args.steps_per_round + j
                        timed[name].append(ref("step") if name == "transformers" else sides[name].step(batches[i]))
            info = ref("info") if ref else None
        finally:
            if ref:
                ref.close()

        eng = sides["engine"]
        res["seekline"] = {}
        for name, side in sides.items():
            s = step_summary(timed[name], b * t)
            s.update(compile_info[name], traces_after_all_steps=side.traces(),
                     losses=[x["loss"] for x in side.losses],
                     lm_losses=[x["lm_loss"] for x in side.losses],
                     all_finite=all(x["finite"] for x in side.losses),
                     tokens_counted_per_step=side.losses[-1]["tokens"])
            res["seekline"][name] = s
        # Engine checks: op determinism (TrainerConfig.deterministic, on by default) on vs off.
        if args.determinism_check:
            from tensorflow.python.framework import config as tf_config  # no public disable in 2.16
            was = tf_config.is_op_determinism_enabled()
            tf_config.disable_op_determinism()
            try:
                eng.step(batches[-1])
                off = [eng.step(batches[i % n_steps]) for i in range(args.steps_per_round + 1)]
            finally:
                if was:
                    tf.config.experimental.enable_op_determinism()
            res["seekline"]["engine"]["op_determinism_off"] = step_summary(off, b * t)
            res["seekline"]["engine"]["traces_after_determinism_check"] = eng.traces()
        if not args.skip_breakdown:
            t0 = time.perf_counter()
            res["breakdown"] = breakdown(eng, batches[0], batches, args.breakdown_reps)
            res["breakdown"]["wall_s"] = time.perf_counter() - t0
        if ref:
            tr_s = step_summary(timed["transformers"], b * t)
            tr_s.update(warmup_step_s=[x["step_s"] for x in ref_warm], **info)
            # its step split: forward + backward vs the optimizer part (clip, AdamW, zero_grad)
            tr_s["split"] = {k: statistics.median(x[k] for x in timed["transformers"]) for k in (
                "forward_backward_s", "forward_backward_cpu_s", "optimizer_s", "optimizer_cpu_s")}
            res["transformers"] = tr_s
            res["ratios"] = {}
            for name in sides:
                s = res["seekline"][name]
                res["ratios"][name] = {
                    "ratio_seekline_over_transformers": s["tokens_per_s"] / tr_s["tokens_per_s"],
                    "ratio_best": s["tokens_per_s_best"] / tr_s["tokens_per_s_best"],
                    "ratio_cpu_time": s["tokens_per_cpu_s"] / tr_s["tokens_per_cpu_s"]}
            ref_losses = info["losses"]
            res["loss_check"] = {
                "step0_lm_loss_seekline": eng.losses[0]["lm_loss"], "step0_loss_transformers": ref_losses[0],
                "step0_abs_diff": abs(eng.losses[0]["lm_loss"] - ref_losses[0])}
            if "matched" in sides:
                ml = [x["loss"] for x in sides["matched"].losses]
                n = min(len(ml), len(ref_losses))
                res["loss_check"]["matched_vs_transformers_max_abs_diff"] = float(
                    np.max(np.abs(np.array(ml[:n]) - np.array(ref_losses[:n]))))
                res["loss_check"]["steps_compared"] = n
    # Model FLOPs: the main model's N_active for every side (the work both do); the engine's MTP
    # module adds params["mtp"] more per token.
    res["model_flops"] = {}
    for name, s in res["seekline"].items():
        res["model_flops"][f"seekline_{name}"] = model_flops(s["tokens_per_s"], params["main"], args.peak_tflops)
    if cfg.num_nextn_predict_layers and "engine" in res["seekline"]:
        res["model_flops"]["seekline_engine_incl_mtp"] = model_flops(
            res["seekline"]["engine"]["tokens_per_s"], params["main"] + params["mtp"], args.peak_tflops)
    if "transformers" in res:
        res["model_flops"]["transformers"] = model_flops(res["transformers"]["tokens_per_s"], params["main"],
                                                         args.peak_tflops)
    res["gpus"] = [g.name for g in gpus]
    return res


# ---------------------------------------------------------------------- report
def print_report(results):
    d, r = results["device"], results["train"]
    print(f"\ndevice: {d['cpu']} ({d['cores']} cores, load average {d['loadavg_start'][0]:.1f} at start, "
          f"{d['loadavg_end'][0]:.1f} at end){', GPUs ' + str(r['gpus']) if r['gpus'] else ''}; threads "
          f"intra-op {results['threads']['intra_op']} / inter-op {results['threads']['inter_op']} on both "
          f"sides; torch OMP_WAIT_POLICY {results['threads']['torch_OMP_WAIT_POLICY']}")
    p = r["params"]
    print(f"train step: preset {r['preset']} ({p['total_params'] / 1e6:.1f}M params, "
          f"{p['main'] / 1e6:.2f}M active/token, MTP module {p['mtp'] / 1e6:.2f}M active), batch "
          f"{r['batch']} x {r['seq_len']} packed tokens, {r['precision']}; {r['warmup_steps_per_side']} "
          f"warm-up + {r['rounds']} x {r['steps_per_round']} interleaved timed steps per side")
    ref = r.get("transformers")
    print(f"{'side':<46}{'step s':>8}{'tokens/s':>10}{'ratio':>8}{'best-of':>9}{'spread':>8}"
          f"{'CPU s':>8}{'CPU ratio':>11}")
    labels = {"engine": "seekline engine (MTP + aux loss + bias update)",
              "matched": "seekline matched (no MTP / aux / bias)"}
    for name, s in r["seekline"].items():
        ratio = r.get("ratios", {}).get(name)
        rs = (f"{ratio['ratio_seekline_over_transformers']:>7.2f}x{ratio['ratio_best']:>8.2f}x"
              if ratio else f"{'-':>8}{'-':>9}")
        cr = f"{ratio['ratio_cpu_time']:>10.2f}x" if ratio else f"{'-':>11}"
        print(f"{labels[name]:<46}{s['median_s']:>8.3f}{s['tokens_per_s']:>10.0f}{rs}{s['spread']:>8.2f}"
              f"{s['cpu_median_s']:>8.2f}{cr}")
    if ref:
        print(f"{'transformers ' + ref['transformers'] + ' / torch ' + ref['torch']:<46}"
              f"{ref['median_s']:>8.3f}{ref['tokens_per_s']:>10.0f}{'1.00x':>8}{'1.00x':>9}{ref['spread']:>8.2f}"
              f"{ref['cpu_median_s']:>8.2f}{'1.00x':>11}")
        sp = ref["split"]
        print(f"  transformers: attn {ref['attn_implementation']}, experts {ref['experts_implementation']}; "
              f"{ref['optimizer']}; its step: forward+backward {sp['forward_backward_cpu_s']:.2f} CPU s, "
              f"clip + AdamW + zero_grad {sp['optimizer_cpu_s']:.3f} CPU s "
              f"({100 * sp['optimizer_cpu_s'] / ref['cpu_median_s']:.1f}%)")
        lc = r["loss_check"]
        line = (f"  same weights, same rows: step-0 loss seekline {lc['step0_lm_loss_seekline']:.6f} vs "
                f"transformers {lc['step0_loss_transformers']:.6f} (|diff| {lc['step0_abs_diff']:.1e})")
        if "matched_vs_transformers_max_abs_diff" in lc:
            line += (f"; matched-variant loss over {lc['steps_compared']} steps within "
                     f"{lc['matched_vs_transformers_max_abs_diff']:.1e} of transformers'")
        print(line)
        spreads = [s["spread"] for s in r["seekline"].values()] + [ref["spread"]]
        if max(spreads) > 1.5:
            print(f"NOTE: timings were disturbed by other load (wall max/min up to {max(spreads):.1f}x): "
                  f"the best-of and CPU-time ratios are the quiet-machine estimates")
    e = r["seekline"]["engine"]
    line = (f"engine checks: compile {e['trace_s']:.1f} s trace + {e['first_call_s']:.1f} s first call; "
            f"step traced {e['traces_after_all_steps']}x over all steps")
    if "op_determinism_off" in e:
        off = e["op_determinism_off"]
        line += (f"; op determinism off: {off['median_s']:.3f} s / {off['cpu_median_s']:.2f} CPU s per step "
                 f"(on: {e['median_s']:.3f} / {e['cpu_median_s']:.2f})")
    print(line + f"; input stream {1e3 * r['input_stream_s_per_step']:.1f} ms/step (pulled alone)")
    if "breakdown" in r:
        bd = r["breakdown"]
        print(f"seekline engine step breakdown: isolated forward+backward pieces, {bd['reps']} rounds of "
              f"[step, each piece]; share = piece / step of the same round, median (engine step "
              f"{bd['pieces_cpu_s']['step']:.2f} CPU s, {bd['pieces_wall_s']['step']:.3f} s wall)")
        print(f"  {'piece':<24}{'CPU s':>8}{'share':>8}{'wall s':>9}{'share':>8}")
        order = ["attention", "moe", "moe_router", "moe_shared", "moe_expert_matmuls", "moe_dispatch",
                 "dense_ffn", "head_loss", "mtp", "optimizer", "optimizer_apply_only", "other",
                 "grad_accumulation"]
        for k in order:
            if k not in bd["shares_cpu"]:
                continue
            indent = "    " if k.startswith("moe_") or k in ("optimizer_apply_only", "grad_accumulation") else "  "
            cs, ws = bd["pieces_cpu_s"].get(k), bd["pieces_wall_s"].get(k)
            print(f"{indent}{k:<{26 - len(indent)}}{'' if cs is None else f'{cs:.3f}':>8}"
                  f"{100 * bd['shares_cpu'][k]:>7.1f}%{'' if ws is None else f'{ws:.3f}':>9}"
                  f"{100 * bd['shares_wall'][k]:>7.1f}%")
    mf = r["model_flops"]
    print("model FLOPs (6 * N_active per token): " + "; ".join(
        f"{k} {v['achieved_tflops'] * 1e3:.1f} GFLOP/s" + (f" = {100 * v['mfu']:.1f}% MFU" if "mfu" in v else "")
        for k, v in mf.items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model preset (default small)")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's num_hidden_layers")
    ap.add_argument("--batch", type=int, default=4, help="rows per step (B)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row (T)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side (the first compiles)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps-per-round", type=int, default=2)
    ap.add_argument("--breakdown-reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    ap.add_argument("--interop-threads", type=int, default=1, help="inter-op threads, both sides")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for the torch process ('' = leave unset; see bench/README.md)")
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                    help="seekline compute precision (auto: bf16 on GPU); transformers runs fp32")
    ap.add_argument("--jit-compile", action="store_true", help="compile seekline's step with XLA")
    ap.add_argument("--experts", default=None, help="transformers experts_implementation (default: its own)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak TFLOP/s at the compute precision: adds MFU (H200 bf16 dense: ~989)")
    ap.add_argument("--skip-reference", action="store_true", help="seekline side only (no .venv-ref)")
    ap.add_argument("--skip-matched", action="store_true", help="only the engine variant")
    ap.add_argument("--skip-breakdown", action="store_true")
    ap.add_argument("--no-determinism-check", dest="determinism_check", action="store_false")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.rounds < 1 or args.steps_per_round < 1:
        ap.error("--warmup, --rounds and --steps-per-round must be >= 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    try:        # fails when TF already ran ops in this process (tests): the run keeps TF's threads
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    except RuntimeError:
        pass
    if not args.skip_reference and not os.path.exists(REF_PYTHON):
        sys.exit(f"bench: {REF_PYTHON} not found (make setup-ref; see bench/README.md); use --skip-reference")
    if not args.skip_reference and tf.config.list_physical_devices("GPU"):
        print("NOTE: a GPU is visible but .venv-ref's torch is CPU-only: the transformers side runs on "
              "the CPU, so the ratio is not like-for-like (use --skip-reference for GPU runs)")
    t0 = time.time()
    results = {
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "torch_OMP_WAIT_POLICY": args.omp_wait_policy or "unset"},
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
        "custom_ops": __import__("model.ops", fromlist=["describe"]).describe(),   # SEEKLINE_OPS
        "args": vars(args),
    }
    results["train"] = run_bench(args)
    results["device"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.time() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print_report(results)
    print(f"\nwrote {os.path.relpath(args.out, REPO)} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
