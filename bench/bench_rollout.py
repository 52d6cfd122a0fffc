#!/usr/bin/env python3
"""GRPO rollout throughput: seekline's batched cached `generate` vs transformers `generate`.

    .venv/bin/python bench/bench_rollout.py            # ~3-5 min on 2 cores; writes bench/results/rollout.json
    .venv/bin/python bench/bench_rollout.py --quick    # one small row, 1 rep (~1 min)

A GRPO rollout samples G completions for each of P prompts: one batch of B = P·G rows, each
prompt repeated G times, left-padded (prompts of mixed lengths), temperature 1.0, top-p off
(or --top-p), a fixed number of new tokens and no stop token, so both sides generate exactly
rows × new_tokens tokens (counted, not assumed).

* seekline: `model.generation.generate(model, prompts, GenerationConfig(...))` exactly as the
  GRPO phase calls it, in both compile modes: the default (graph-mode tf.function step) and
  GenerationConfig(jit_compile=True) (XLA-compiled model step).
* transformers: `model.generate(ids, attention_mask=mask, do_sample=True, ...)` on the same
  weights (seekline's `save_hf_checkpoint`, loaded with AutoModelForCausalLM: default sdpa
  attention, DynamicCache), in .venv-ref through bench/ref_transformers.py `generate_batch`.

Both sides: 2 intra-op / 1 inter-op threads, one untimed warm-up call (seekline's compiles),
then --reps rounds whose side order rotates, so both see the same background load; median and
best-of. tokens/s = generated tokens / wall time of the whole call (prefill included: a rollout
pays for it); the prefill / decode split comes from per-token time stamps. Sanity checks of the
same run: greedy tokens of both sides on the same padded batch (same model, same padding
semantics), and how many of each group's G sampled completions differ (sampling happened).
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
from dataclasses import asdict, dataclass

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import bench_model as bm  # noqa: E402  (bench/ is the script's own folder)
from refproc import RefProcess  # noqa: E402

from common.fileio import atomic_write_json  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results", "rollout.json")
DEFAULT_ROWS = ("tiny:8x8:32-128:128", "small:8x8:32-128:64")   # GRPO defaults: 8 prompts × G 8
SIDES = ("seekline", "seekline_xla", "transformers")


# ---------------------------------------------------------------------- pure helpers (tested)
@dataclass(frozen=True)
class RowSpec:
    """One benchmark row: `preset:PxG:min-max:new`, e.g. tiny:8x8:32-128:128 = 8 prompts x 8
    completions (64 rows), prompt lengths uniform in [32, 128], 128 new tokens per row."""
    preset: str
    prompts: int
    group: int
    min_len: int
    max_len: int
    new_tokens: int

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    @property
    def tokens(self) -> int:
        return self.rows * self.new_tokens

    @classmethod
    def parse(cls, text: str) -> RowSpec:
        try:
            preset, pg, lens, new = text.split(":")
            p, g = (int(x) for x in pg.lower().split("x"))
            lo, hi = (int(x) for x in lens.split("-"))
            spec = cls(preset, p, g, lo, hi, int(new))
        except ValueError:
            raise SystemExit(f"bench: --row {text!r}: expected preset:PxG:min-max:new, "
                             "e.g. tiny:8x8:32-128:128") from None
        if min(p, g, lo, spec.new_tokens) < 1 or lo > hi:
            raise SystemExit(f"bench: --row {text!r}: counts must be >= 1 and min <= max")
        return spec


def rollout_prompts(spec: RowSpec, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """P random prompts (lengths uniform in [min_len, max_len], ids in [2, vocab): 0 is the pad
    id, 1 the tiny presets' eos), each repeated G times in a row: the batch a GRPO rollout
    samples, B = P·G rows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(spec.prompts):
        n = int(rng.integers(spec.min_len, spec.max_len + 1))
        out += [rng.integers(2, vocab_size, n).tolist()] * spec.group
    return out


def count_generated(sequences, new_tokens: int) -> int:
    """Tokens generated over all rows; every row must hold exactly new_tokens (no stop token)."""
    lens = {len(s) for s in sequences}
    if lens != {new_tokens}:
        raise SystemExit(f"bench: rows generated {sorted(lens)} tokens, expected {new_tokens} each")
    return len(sequences) * new_tokens


def distinct_in_groups(sequences, group: int) -> float:
    """Mean fraction of distinct completions within each group of G consecutive rows
    (1.0: all G samples differ; 1/G: sampling produced one completion G times)."""
    seqs = [tuple(s) for s in sequences]
    groups = [seqs[i:i + group] for i in range(0, len(seqs), group)]
    return float(np.mean([len(set(g)) / len(g) for g in groups]))


def rate_summary(records: list[dict], tokens: int) -> dict:
    """Per-call records {"generate_s", "prefill_s", "decode_s", "cpu_s"} -> medians, best-of,
    spread (max / min wall time) and tokens/s (median, best-of, per CPU second)."""
    s = bm.summarize(records, "generate_s")
    s.update({f"{k}_median_s": statistics.median(r[k] for r in records)
              for k in ("prefill_s", "decode_s", "cpu_s")})
    s.update(tokens_per_s=tokens / s["median_s"], tokens_per_s_best=tokens / s["min_s"],
             tokens_per_cpu_s=tokens / s["cpu_s_median_s"])
    return s


def ratios(a: dict, b: dict) -> dict:
    """a / b on tokens/s: median, best-of and per CPU second (> 1: a faster)."""
    return {"ratio": a["tokens_per_s"] / b["tokens_per_s"],
            "ratio_best": a["tokens_per_s_best"] / b["tokens_per_s_best"],
            "ratio_cpu": a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]}


def round_order(r: int) -> list[str]:
    """Side order of round r: rotated each round so no side always runs first (or last)."""
    k = r % len(SIDES)
    return list(SIDES[k:] + SIDES[:k])


# ---------------------------------------------------------------------- seekline side
def seekline_generate(m, prompts, gcfg) -> dict:
    """One call of seekline's public generate with the per-token time stamps bench_model uses
    (its `_fetch`, the one host sync per token, wrapped for the call)."""
    import importlib
    g = importlib.import_module("model.generation.generate")   # the module, not the function
    orig, stamps = g._fetch, []

    def stamped(*a, **kw):
        out = orig(*a, **kw)
        stamps.append(time.perf_counter())
        return out

    g._fetch = stamped
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        res = g.generate(m, prompts, gcfg)
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        g._fetch = orig
    return {"generate_s": t1 - t0, "prefill_s": stamps[0] - t0, "decode_s": stamps[-1] - stamps[0],
            "cpu_s": c1 - c0, "sequences": res.sequences}


class Reference(RefProcess):
    """bench/ref_transformers.py in .venv-ref; this bench uses its `generate_batch` command."""

    def __init__(self, ckpt, inputs, tmp, args):
        cmd = [bm.REF_PYTHON, bm.REF_SCRIPT, "--ckpt", ckpt, "--inputs", inputs,
               "--arrays", os.path.join(tmp, "unused.npz"), "--threads", str(args.threads),
               "--interop-threads", str(args.interop_threads)]
        super().__init__(cmd, args.threads, args.omp_wait_policy)
        self.inputs = inputs

    def generate(self, new_tokens, temperature, top_p, seed, sample=True, return_tokens=False) -> dict:
        return self("generate_batch " + json.dumps(dict(
            inputs=self.inputs, new_tokens=new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, sample=sample, return_tokens=return_tokens)))


# ---------------------------------------------------------------------- one row
def bench_row(spec: RowSpec, args, tmp: str) -> dict:
    import model
    from model.generation import GenerationConfig, left_pad
    cfg = bm.speed_config(spec.preset)
    m = model.build_model(cfg, seed=0)
    prompts = rollout_prompts(spec, cfg.vocab_size, seed=args.seed)
    ids, mask = left_pad(prompts, 0)
    gen = {side: GenerationConfig(max_new_tokens=spec.new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, jit_compile=(side == "seekline_xla"))
           for side in SIDES[:2]}
    ref = None
    if not args.skip_reference:
        ckpt = os.path.join(tmp, f"ckpt_{spec.preset}")
        model.save_hf_checkpoint(m, ckpt)
        inputs = os.path.join(tmp, f"batch_{spec.preset}.npz")
        np.savez(inputs, ids=ids, mask=mask, prompt=np.asarray([prompts[0]], np.int32))
        ref = Reference(ckpt, inputs, tmp, args)
    out = {"spec": asdict(spec), "rows": spec.rows, "tokens_per_call": spec.tokens,
           "prompt_lengths": sorted({len(p) for p in prompts}), "padded_prompt_len": int(ids.shape[1]),
           "params": model.count_params(cfg.to_hf_dict())["total"]}
    sides = [s for s in SIDES if ref or s != "transformers"]

    def call(side, seed):
        if side == "transformers":
            r = ref.generate(spec.new_tokens, args.temperature, args.top_p, seed, return_tokens=True)
            seqs = r.pop("tokens")
            if r["rows"] != spec.rows:
                raise SystemExit(f"bench: transformers returned {r['rows']} rows, expected {spec.rows}")
        else:
            r = seekline_generate(m, prompts, GenerationConfig(**{**asdict(gen[side]), "seed": seed}))
            seqs = r.pop("sequences")
        r["tokens"] = count_generated(seqs, spec.new_tokens)
        r["distinct_in_groups"] = distinct_in_groups(seqs, spec.group)
        return r

    try:
        out["warmup_s"] = {}
        for side in sides:                       # seekline: traces + compiles on its first call
            t0 = time.perf_counter()
            call(side, 0)
            out["warmup_s"][side] = time.perf_counter() - t0
        recs = {side: [] for side in sides}
        for r in range(args.reps):
            for side in round_order(r):
                if side in recs:
                    recs[side].append(call(side, 1000 + r))
        # Greedy tokens of both sides on the same padded batch: same model, same padding.
        if ref:
            n = min(args.greedy_tokens, spec.new_tokens)
            from model.generation import generate
            mine = generate(m, prompts, GenerationConfig(max_new_tokens=n)).sequences
            theirs = ref.generate(n, 1.0, 1.0, 0, sample=False, return_tokens=True)["tokens"]
            agree = [bm.agreement(a, b) for a, b in zip(mine, theirs, strict=True)]
            out["greedy_check"] = {
                "tokens_per_row": n, "rows_identical": sum(a["all_equal"] for a in agree),
                "rows": len(agree), "mean_identical_prefix": float(np.mean([a["identical_prefix"] for a in agree]))}
    finally:
        if ref:
            ref.close()
    out["sides"] = {}
    for side, rs in recs.items():
        s = rate_summary(rs, rs[0]["tokens"])
        s["distinct_in_groups"] = statistics.mean(x["distinct_in_groups"] for x in rs)
        s["decode_ms_per_step"] = 1e3 * s["decode_s_median_s"] / (spec.new_tokens - 1) if spec.new_tokens > 1 else None
        s["records"] = rs
        out["sides"][side] = s
    if ref:
        t = out["sides"]["transformers"]
        out["ratios"] = {side: ratios(out["sides"][side], t) for side in SIDES[:2]}
    return out


# ---------------------------------------------------------------------- report
def print_row(row: dict, reps: int):
    sp = row["spec"]
    print(f"\n{sp['preset']} ({row['params'] / 1e6:.2f}M params): {sp['prompts']} prompts x {sp['group']} "
          f"completions = {row['rows']} rows, prompts {sp['min_len']}-{sp['max_len']} tokens "
          f"(left-padded to {row['padded_prompt_len']}), {sp['new_tokens']} new tokens/row; "
          f"median of {reps} interleaved reps")
    print(f"{'side':<16}{'tokens/s':>10}{'best':>9}{'ratio':>8}{'best-of':>9}{'CPU ratio':>11}"
          f"{'call s':>9}{'prefill s':>11}{'ms/step':>9}{'spread':>8}{'distinct':>10}")
    for side, s in row["sides"].items():
        r = row.get("ratios", {}).get(side)
        rr = (f"{r['ratio']:>7.2f}x{r['ratio_best']:>8.2f}x{r['ratio_cpu']:>10.2f}x" if r
              else f"{'':>8}{'':>9}{'':>11}")
        step = f"{s['decode_ms_per_step']:>9.1f}" if s["decode_ms_per_step"] is not None else f"{'':>9}"
        print(f"{side:<16}{s['tokens_per_s']:>10.0f}{s['tokens_per_s_best']:>9.0f}{rr}"
              f"{s['median_s']:>9.2f}{s['prefill_s_median_s']:>11.3f}{step}{s['spread']:>8.2f}"
              f"{s['distinct_in_groups']:>10.2f}")
    g = row.get("greedy_check")
    if g:
        print(f"greedy check ({g['tokens_per_row']} tokens/row, same padded batch): {g['rows_identical']}/"
              f"{g['rows']} rows identical (mean identical prefix {g['mean_identical_prefix']:.1f})")
    worst = max(s["spread"] for s in row["sides"].values())
    if worst > 1.5:
        print(f"NOTE: other load disturbed the timings (max/min up to {worst:.1f}x); compare best-of "
              "and the CPU ratio")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", dest="rows",
                    help=f"preset:PxG:min-max:new (repeatable; default {' '.join(DEFAULT_ROWS)})")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--greedy-tokens", type=int, default=8, help="tokens per row of the greedy check")
    ap.add_argument("--seed", type=int, default=0, help="prompt draw")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    ap.add_argument("--interop-threads", type=int, default=1, help="inter-op threads, both sides")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the torch process ('' = unset); see bench/README.md")
    ap.add_argument("--skip-reference", action="store_true", help="seekline side only")
    ap.add_argument("--quick", action="store_true", help="one small tiny row, 1 rep")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.reps = args.rows or ["tiny:2x4:8-40:16"], 1
    specs = [RowSpec.parse(r) for r in (args.rows or DEFAULT_ROWS)]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    try:        # fails when TF already ran ops in this process (tests): the run keeps TF's threads
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    except RuntimeError:
        pass
    if not args.skip_reference and not os.path.exists(bm.REF_PYTHON):
        sys.exit(f"bench: {bm.REF_PYTHON} not found (see bench/README.md); use --skip-reference")
    t0 = time.time()
    results = {
        "device": {"cpu": bm.cpu_model(), "cores": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "torch_OMP_WAIT_POLICY": args.omp_wait_policy or "unset"},
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__},
        "custom_ops": __import__("model.ops", fromlist=["describe"]).describe(),   # SEEKLINE_OPS
        "sampling": {"temperature": args.temperature, "top_p": args.top_p, "top_k": 0, "stop_tokens": None},
        "reps": args.reps,
        "method": "one untimed warm-up call per side, then interleaved rounds (side order rotating); "
                  "tokens/s = rows * new_tokens / wall time of the whole generate call; medians",
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        for spec in specs:
            row = bench_row(spec, args, tmp)
            results["rows"].append(row)
            print_row(row, args.reps)
    results["device"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.time() - t0
    d = results["device"]
    print(f"\ndevice: {d['cpu']} ({d['cores']} cores), load average {d['loadavg_start'][0]:.1f} at start, "
          f"{d['loadavg_end'][0]:.1f} at end; threads intra-op {args.threads} / inter-op "
          f"{args.interop_threads} both sides")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_json(args.out, results)
    print(f"wrote {os.path.relpath(args.out, REPO)} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
