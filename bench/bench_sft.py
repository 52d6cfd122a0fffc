#!/usr/bin/env python3
"""SFT and distillation benchmark: seekline's training step against transformers (PyTorch).

    .venv/bin/python bench/bench_sft.py              # or: make bench   (~3-5 min on 2 cores)
    .venv/bin/python bench/bench_sft.py --quick      # tiny model, seconds; what the test runs

The data is a deterministic set of chat-like examples (no tokenizer needed): lengths drawn from a
log-normal between --min-len and --seq-len, each a prompt part (loss_mask 0) followed by an
assistant part (loss_mask 1, the targets, TRL's labels != -100). The same examples in two layouts:

* packed: best-fit decreasing into rows of seq_len (components/sft/sft_packing.pack_examples),
  segment ids 1..n per row, positions restarting per example, padding (segment 0) at the end;
* padded: one example per row (pack_examples(packing=False)), padded to seq_len.

Workloads, each timed as one pass over all its rows (an "epoch") in batches of --batch rows:

* sft_padded / sft_packed: seekline's real `training.loop.Trainer` compiled step with
  `CausalLMTask(require_targets=True)` on rows with loss_mask, vs DeepseekV3ForCausalLM + torch
  AdamW with labels = input_ids where the token is an assistant target, -100 elsewhere (padded:
  attention_mask; packed: the rows rebuilt by transformers' DataCollatorWithFlattening, position
  ids restarting per example, no attention_mask);
* distill: online-teacher distillation on the packed rows: seekline's Trainer with
  `training.distill_task.DistillTask` (KD loss: alpha * T^2 * KL(teacher_T || student_T) +
  (1 - alpha) * CE) and a teacher --teacher-layers deep, vs the same in PyTorch (teacher forward
  under no_grad, student forward + backward of the same loss, AdamW).

Both sides do the same work: the model has no MTP module and the engine's aux loss and routing
bias update are off (transformers has neither). Same weights on both sides (seekline's exported
checkpoints), same threads, interleaved rounds with rotating order; per workload: rows/s, real
(non-padding) tokens/s, assistant-target tokens/s, median and best-of over rounds, spread; ratio
seekline / transformers for equal layouts, and packed / padded per side. Writes
bench/results/sft.json.
"""
from __future__ import annotations

import argparse
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

import bench_train as bt  # noqa: E402  (bench/ is the script's own folder)
from refproc import RefProcess  # noqa: E402

REF_SCRIPT = os.path.join(REPO, "bench", "ref_sft_transformers.py")
RESULTS = os.path.join(REPO, "bench", "results", "sft.json")
LAYOUTS = ("padded", "packed")
ROW_KEYS = ("input_ids", "segment_ids", "positions", "loss_mask")
PAD_ID = 0


# ---------------------------------------------------------------------- data (pure, tested)
def example_lengths(n: int, seq_len: int, min_len: int, median_len: float, sigma: float, seed: int):
    """n lengths drawn from a log-normal (median median_len, log-sd sigma), clipped to [min_len, seq_len]."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(np.log(median_len), sigma, size=n)
    return np.clip(np.rint(x), min_len, seq_len).astype(np.int64)


def make_examples(n: int, seq_len: int, vocab_size: int, *, min_len: int = 16, median_len: float | None = None,
                  sigma: float = 0.8, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic chat-like (ids, loss_mask) examples: a prompt of 20-80% of the length
    (mask 0, at least one token) then the assistant answer (mask 1, at least one token).
    Token ids are uniform in [1, vocab) so PAD_ID 0 never occurs inside an example."""
    if not 2 <= min_len <= seq_len:
        raise ValueError(f"min_len {min_len} must be in [2, seq_len={seq_len}]")
    lengths = example_lengths(n, seq_len, min_len, median_len or seq_len / 4, sigma, seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for length in lengths:
        prompt = int(np.clip(np.rint(rng.uniform(0.2, 0.8) * length), 1, length - 1))
        ids = rng.integers(1, vocab_size, size=length, dtype=np.int64)
        mask = np.concatenate([np.zeros(prompt, np.int64), np.ones(length - prompt, np.int64)])
        out.append((ids, mask))
    return out


def layout_rows(examples, seq_len: int, batch: int, packing: bool) -> dict:
    """The examples as rows {key: (N, T)} (pack_examples: BFD-packed or one per row), N rounded
    up to a multiple of `batch` with empty rows (all padding, no targets) so every step has the
    same shape."""
    from components.sft.sft_packing import pack_examples
    packed = pack_examples(examples, seq_len, pad_id=PAD_ID, packing=packing, truncate=False)
    if packed.stats.packed != len(examples):
        raise ValueError(f"{len(examples) - packed.stats.packed} examples were dropped by packing")
    rows = {k: getattr(packed, k) for k in ROW_KEYS}
    fill = -len(rows["input_ids"]) % batch
    if fill:
        rows = {k: np.concatenate([v, np.full((fill, seq_len), PAD_ID if k == "input_ids" else 0, v.dtype)])
                for k, v in rows.items()}
    return rows


def row_counts(rows: dict) -> dict:
    """Rows holding an example, real (segment != 0) tokens and loss targets, counted as the loss
    counts them (model.losses.shift_targets): token j is a target when loss_mask[j] == 1 and it
    is in the same non-padding example as token j - 1."""
    seg, mask = rows["segment_ids"], rows["loss_mask"]
    targets = (mask[:, 1:] == 1) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
    return {"rows": int(np.sum(np.any(seg != 0, axis=1))), "row_slots": int(seg.shape[0]),
            "tokens": int(np.sum(seg != 0)), "targets": int(np.sum(targets)),
            "padding_share": float(np.mean(seg == 0))}


def epoch_summary(epochs: list[list[dict]], counts: dict) -> dict:
    """Per-step records {"step_s", "cpu_s"} of each timed epoch -> epoch seconds (median, best,
    spread over epochs) and rates per second of the median / best epoch and per CPU second."""
    wall = [sum(s["step_s"] for s in e) for e in epochs]
    cpu = [sum(s["cpu_s"] for s in e) for e in epochs]
    s = bt.summarize(wall)
    s["cpu_median_s"] = statistics.median(cpu)
    s["all_cpu_s"] = cpu
    s["steps_per_epoch"] = len(epochs[0])
    for unit in ("rows", "tokens", "targets"):
        s[f"{unit}_per_s"] = counts[unit] / s["median_s"]
        s[f"{unit}_per_s_best"] = counts[unit] / s["min_s"]
        s[f"{unit}_per_cpu_s"] = counts[unit] / s["cpu_median_s"]
    return s


def ratios(a: dict, b: dict) -> dict:
    """a / b on real tokens per second: median, best-of and per CPU second (> 1: a faster)."""
    return {"ratio": a["tokens_per_s"] / b["tokens_per_s"],
            "ratio_best": a["tokens_per_s_best"] / b["tokens_per_s_best"],
            "ratio_cpu_time": a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]}


def layout_of(workload: str) -> str:
    """The row layout a workload trains on (distillation: the packed rows)."""
    return "padded" if workload == "sft_padded" else "packed"


def step_batches(rows: dict, batch: int) -> list[dict]:
    """Rows -> engine step batches {key: (1, B, T) int32} (grad_accum_steps 1), in row order."""
    import tensorflow as tf
    n = rows["input_ids"].shape[0]
    return [{k: tf.constant(rows[k][i:i + batch][None].astype(np.int32)) for k in ROW_KEYS}
            for i in range(0, n, batch)]


# ---------------------------------------------------------------------- seekline side
class TaskStep(bt.SeeklineStep):
    """bench_train's SeeklineStep (compile / step / traces: one Trainer.fit step with its host
    reads) around a Trainer built here, with the phase's own task."""

    def __init__(self, name, trainer):     # not SeeklineStep's: that one builds a pretraining task
        self.name, self.trainer, self.fn, self.losses = name, trainer, None, []

    def epoch(self, batches) -> list[dict]:
        return [self.step(b) for b in batches]


# ---------------------------------------------------------------------- transformers side
class Reference(RefProcess):
    """bench/ref_sft_transformers.py in .venv-ref: `epoch WORKLOAD` runs one pass, `info`."""

    def __init__(self, args, tcfg, rows_path, sft_ckpt, student_ckpt, teacher_ckpt):
        cmd = [bt.REF_PYTHON, REF_SCRIPT, "--rows", rows_path, "--batch", str(args.batch),
               "--sft-ckpt", sft_ckpt, "--threads", str(args.threads),
               "--interop-threads", str(args.interop_threads),
               "--lr", str(tcfg.lr), "--min-lr-ratio", str(tcfg.min_lr_ratio),
               "--warmup", str(tcfg.warmup_steps), "--total-steps", str(tcfg.steps),
               "--weight-decay", str(tcfg.weight_decay), "--beta1", str(tcfg.beta1),
               "--beta2", str(tcfg.beta2), "--eps", str(tcfg.eps), "--clip-norm", str(tcfg.clip_norm),
               "--alpha", str(args.alpha), "--temperature", str(args.temperature)]
        if student_ckpt:
            cmd += ["--student-ckpt", student_ckpt, "--teacher-ckpt", teacher_ckpt]
        super().__init__(cmd, args.threads, args.omp_wait_policy)


# ---------------------------------------------------------------------- the run
def run_bench(args) -> dict:
    import model
    from configs.training import TrainerConfig
    from training.distill_task import DistillSpec, DistillTask
    from training.lm_task import CausalLMTask
    from training.loop import Trainer
    from training.strategy import make_runtime

    rt = make_runtime("one_device", "fp32")
    t, b = args.seq_len, args.batch
    cfg = bt.bench_config(args.preset, t, mtp=False, layers=args.layers)
    t_layers = args.teacher_layers or 2 * cfg.num_hidden_layers
    teacher_cfg = bt.bench_config(args.preset, t, mtp=False, layers=t_layers)
    n_examples = -(-args.examples // b) * b            # whole padded batches: no empty padded rows
    examples = make_examples(n_examples, t, cfg.vocab_size, min_len=args.min_len,
                             median_len=args.median_len, sigma=args.sigma, seed=args.seed)
    rows = {lay: layout_rows(examples, t, b, packing=(lay == "packed")) for lay in LAYOUTS}
    counts = {lay: row_counts(rows[lay]) for lay in LAYOUTS}
    batches = {lay: step_batches(rows[lay], b) for lay in LAYOUTS}
    # The engine's hyper-parameters as bench_train's matched variant: no MTP, aux loss or bias update.
    tcfg = TrainerConfig(steps=1000, micro_batch_size=b, grad_accum_steps=1, warmup_steps=10, precision="fp32",
                         strategy="one_device", mtp_weight=0.0, aux_loss_alpha=0.0, bias_update_gamma=0.0)
    res = {"preset": args.preset, "layers": cfg.num_hidden_layers, "teacher_layers": t_layers,
           "batch": b, "seq_len": t, "examples": n_examples,
           "example_lengths": {"min": int(min(len(e[0]) for e in examples)),
                               "median": float(np.median([len(e[0]) for e in examples])),
                               "max": int(max(len(e[0]) for e in examples)),
                               "lognormal_median": args.median_len or t / 4, "sigma": args.sigma},
           "layouts": counts,
           "params": {"student": model.count_params(cfg.to_hf_dict()),
                      "teacher": model.count_params(teacher_cfg.to_hf_dict())},
           "trainer": {k: getattr(tcfg, k) for k in ("lr", "warmup_steps", "steps", "weight_decay", "beta1",
                                                     "beta2", "eps", "clip_norm", "mtp_weight", "aux_loss_alpha",
                                                     "bias_update_gamma", "deterministic")},
           "kd": {"alpha": args.alpha, "temperature": args.temperature},
           "rounds": args.rounds,
           "method": "one warm-up step per workload and side on its first batch (padded, packed, distill: "
                     "the first compiles), then interleaved rounds (order rotating) of one full pass over the "
                     "rows per workload and side; medians over rounds"}
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        sides = {"sft": TaskStep("sft", Trainer(tcfg, rt, lambda: model.build_model(cfg, seed=0),
                                                CausalLMTask(0.0, 0.0, require_targets=True),
                                                os.path.join(tmp, "sft"), title="bench sft"))}
        teacher = None
        if not args.skip_distill:
            with rt.strategy.scope():
                teacher = model.build_model(teacher_cfg, seed=1)
            task = DistillTask(DistillSpec(loss="kd", alpha=args.alpha, temperature=args.temperature,
                                           mtp_weight=0.0, aux_loss_alpha=0.0), teacher=teacher)
            sides["distill"] = TaskStep("distill", Trainer(tcfg, rt, lambda: model.build_model(cfg, seed=0), task,
                                                           os.path.join(tmp, "distill"), title="bench distill"))
        ref = None
        if not args.skip_reference:
            rows_path = os.path.join(tmp, "rows.npz")
            np.savez(rows_path, **{f"{lay}_{k}": rows[lay][k] for lay in LAYOUTS for k in ROW_KEYS})
            ckpts = {"sft": os.path.join(tmp, "hf_sft")}
            model.save_hf_checkpoint(sides["sft"].trainer.model, ckpts["sft"])
            if "distill" in sides:
                ckpts["student"], ckpts["teacher"] = os.path.join(tmp, "hf_student"), os.path.join(tmp, "hf_teacher")
                model.save_hf_checkpoint(sides["distill"].trainer.model, ckpts["student"])
                model.save_hf_checkpoint(teacher, ckpts["teacher"])
            ref = Reference(args, tcfg, rows_path, ckpts["sft"], ckpts.get("student"), ckpts.get("teacher"))
        # workload -> (seekline side, its batches)
        work = {"sft_padded": ("sft", batches["padded"]), "sft_packed": ("sft", batches["packed"])}
        if "distill" in sides:
            work["distill"] = ("distill", batches["packed"])
        try:
            # Warm-up, the same sequence on both sides: padded batch 0 (step-0 loss on the same
            # weights), packed batch 0, distill batch 0. The seekline SFT step serves both
            # layouts (same shapes: traced once).
            warm = {}
            for w, (name, bs) in work.items():
                side = sides[name]
                rec = side.compile(bs[0]) if side.fn is None else {"first_call_s": side.step(bs[0])["step_s"]}
                rec["loss"] = side.losses[-1]["loss"]
                warm[f"seekline_{w}"] = rec
                if ref:
                    warm[f"transformers_{w}"] = ref(f"warmup {w}")
            units = [(s, w) for s in ("seekline", "transformers") if s == "seekline" or ref for w in work]
            timed = {u: [] for u in units}
            for r in range(args.rounds):
                k = r % len(units)
                for side_name, w in units[k:] + units[:k]:
                    if side_name == "seekline":
                        name, bs = work[w]
                        timed[(side_name, w)].append(sides[name].epoch(bs))
                    else:
                        timed[(side_name, w)].append(ref(f"epoch {w}")["steps"])
            info = ref("info") if ref else None
        finally:
            if ref:
                ref.close()

        res["warmup"] = warm
        res["seekline"] = {}
        for w, (name, _) in work.items():
            s = epoch_summary(timed[("seekline", w)], counts[layout_of(w)])
            side = sides[name]
            s["traces_after_all_steps"] = side.traces()
            s["all_finite"] = all(x["finite"] for x in side.losses)
            res["seekline"][w] = s
        # The engine's own count of real tokens per pass (Trainer's `tokens`) against row_counts.
        res["engine_token_count_check"] = {
            w: {"engine": sum(x["tokens"] for x in timed[("seekline", w)][0]),
                "rows": counts[layout_of(w)]["tokens"]} for w in work}
        if ref:
            res["transformers"] = {"info": info}
            res["ratios_seekline_over_transformers"] = {}
            for w in work:
                s = epoch_summary(timed[("transformers", w)], counts[layout_of(w)])
                res["transformers"][w] = s
                res["ratios_seekline_over_transformers"][w] = ratios(res["seekline"][w], s)
            res["loss_check"] = {w: {"seekline": warm[f"seekline_{w}"]["loss"],
                                     "transformers": warm[f"transformers_{w}"]["loss"],
                                     "abs_diff": abs(warm[f"seekline_{w}"]["loss"] - warm[f"transformers_{w}"]["loss"])}
                                 for w in work}
        res["packed_over_padded"] = {"seekline": ratios(res["seekline"]["sft_packed"], res["seekline"]["sft_padded"])}
        if ref:
            res["packed_over_padded"]["transformers"] = ratios(res["transformers"]["sft_packed"],
                                                               res["transformers"]["sft_padded"])
    return res


# ---------------------------------------------------------------------- report
LABELS = {"sft_padded": "SFT padded (one example per row)", "sft_packed": "SFT packed (BFD rows)",
          "distill": "distill (online teacher, KD, packed)"}


def print_report(results):
    d, r = results["device"], results["sft"]
    print(f"\ndevice: {d['cpu']} ({d['cores']} cores, load average {d['loadavg_start'][0]:.1f} at start, "
          f"{d['loadavg_end'][0]:.1f} at end); threads intra-op {results['threads']['intra_op']} / inter-op "
          f"{results['threads']['inter_op']} on both sides; torch OMP_WAIT_POLICY "
          f"{results['threads']['torch_OMP_WAIT_POLICY']}")
    el, p = r["example_lengths"], r["params"]
    print(f"preset {r['preset']}: student {r['layers']} layers ({p['student']['total'] / 1e6:.1f}M params), "
          f"teacher {r['teacher_layers']} layers ({p['teacher']['total'] / 1e6:.1f}M); {r['examples']} examples, "
          f"lengths {el['min']}-{el['max']} (median {el['median']:.0f}); batch {r['batch']} x {r['seq_len']}; "
          f"{r['rounds']} interleaved rounds of one pass per workload and side")
    for lay, c in r["layouts"].items():
        print(f"  {lay}: {c['rows']} rows ({c['row_slots']} with filler), {c['tokens']} real tokens, "
              f"{c['targets']} assistant targets, padding {100 * c['padding_share']:.0f}%")
    print(f"{'workload':<38}{'side':<14}{'pass s':>8}{'spread':>8}{'rows/s':>8}{'tokens/s':>10}"
          f"{'targets/s':>11}{'ratio':>8}{'best-of':>9}{'CPU ratio':>11}")
    for w, s in r["seekline"].items():
        rows = [("seekline", s, r.get("ratios_seekline_over_transformers", {}).get(w))]
        if "transformers" in r:
            rows.append(("transformers", r["transformers"][w], None))
        for side, x, rat in rows:
            rs = (f"{rat['ratio']:>7.2f}x{rat['ratio_best']:>8.2f}x{rat['ratio_cpu_time']:>10.2f}x" if rat else
                  (f"{'1.00x':>8}{'1.00x':>9}{'1.00x':>11}" if side == "transformers" else f"{'-':>8}{'-':>9}{'-':>11}"))
            print(f"{LABELS[w] if side == 'seekline' else '':<38}{side:<14}{x['median_s']:>8.2f}{x['spread']:>8.2f}"
                  f"{x['rows_per_s']:>8.1f}{x['tokens_per_s']:>10.0f}{x['targets_per_s']:>11.0f}{rs}")
    for side, rat in r["packed_over_padded"].items():
        print(f"packed / padded, real tokens/s, {side}: {rat['ratio']:.2f}x (best-of {rat['ratio_best']:.2f}x, "
              f"CPU {rat['ratio_cpu_time']:.2f}x)")
    if "loss_check" in r:
        print("same weights, same rows, warm-up losses (padded: step 0; packed: after one update; distill: "
              "step 0): " + "; ".join(f"{w} {c['seekline']:.5f} vs {c['transformers']:.5f}"
                                      for w, c in r["loss_check"].items()))
        info = r["transformers"]["info"]
        print(f"transformers {info['transformers']} / torch {info['torch']}, attn {info['attn_implementation']}; "
              f"packed rows from DataCollatorWithFlattening: {info['packed_rows_from_collator']}")
    spreads = [x["spread"] for x in r["seekline"].values()] + \
        [x["spread"] for k, x in r.get("transformers", {}).items() if k != "info"]
    if max(spreads) > 1.5:
        print(f"NOTE: timings were disturbed by other load (wall max/min up to {max(spreads):.1f}x): the best-of "
              f"and CPU-time ratios are the quiet-machine estimates")


QUICK = {"preset": "tiny", "layers": 2, "teacher_layers": 3, "batch": 2, "seq_len": 64, "examples": 8,
         "min_len": 8, "rounds": 1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny run for tests: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    ap.add_argument("--preset", default="small", help="model preset (default small)")
    ap.add_argument("--layers", type=int, default=None, help="student / SFT model depth (default the preset's)")
    ap.add_argument("--teacher-layers", type=int, default=None, help="teacher depth (default 2 x --layers)")
    ap.add_argument("--batch", type=int, default=4, help="rows per step (B)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row (T)")
    ap.add_argument("--examples", type=int, default=48, help="examples (rounded up to a multiple of --batch)")
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--median-len", type=float, default=None, help="log-normal median (default seq_len / 4)")
    ap.add_argument("--sigma", type=float, default=0.8, help="log-normal log-sd of the lengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved passes per workload and side")
    ap.add_argument("--alpha", type=float, default=0.5, help="KD: weight of the soft (KL) term")
    ap.add_argument("--temperature", type=float, default=2.0, help="KD temperature")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    ap.add_argument("--interop-threads", type=int, default=1, help="inter-op threads, both sides")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for the torch process ('' = leave unset; see bench/README.md)")
    ap.add_argument("--skip-reference", action="store_true", help="seekline side only (no .venv-ref)")
    ap.add_argument("--skip-distill", action="store_true")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    if args.rounds < 1 or args.batch < 1:
        ap.error("--rounds and --batch must be >= 1")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from common.fileio import atomic_write_json
    try:        # fails when TF already ran ops in this process (tests): the run keeps TF's threads
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    except RuntimeError:
        pass
    if not args.skip_reference and not os.path.exists(bt.REF_PYTHON):
        sys.exit(f"bench: {bt.REF_PYTHON} not found (make setup-ref; see bench/README.md); use --skip-reference")
    t0 = time.time()
    results = {
        "device": {"cpu": bt.cpu_model(), "cores": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "torch_OMP_WAIT_POLICY": args.omp_wait_policy or "unset"},
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
        "args": vars(args),
    }
    results["sft"] = run_bench(args)
    results["device"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.time() - t0
    atomic_write_json(args.out, results)
    print_report(results)
    print(f"\nwrote {os.path.relpath(args.out, REPO)} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
