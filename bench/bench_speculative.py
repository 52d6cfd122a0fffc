"""MTP speculative decoding (model/generation/speculative.py) against plain greedy `generate`.

Model: the newest pretrained tiny pipeline model with its MTP module
(outputs/tiny/pipeline/pretrain/model/N/final, made by `make run`) or --model DIR. Prompts: real
Python source the model has not necessarily seen (fixed stdlib files, tokenized with the model
folder's tokenizer.json), one window of --prompt-len tokens each. For each prompt, batch 1
(the latency case speculative decoding is for), the same greedy request runs through `generate`
and through `speculative_generate` with each --drafts k, sides rotating every rep after one
untimed warm-up per side; the outputs must be identical token for token (checked, printed).

Reported per k: acceptance rate (accepted / offered drafts), tokens per verify step (new tokens
after the first / rounds), tokens/s and speedup = plain median time / speculative median time of
the whole call (prefill included; both sides pay it).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import sysconfig
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Fixed files (present in every CPython 3.10 stdlib), so every run uses the same prompts.
PROMPT_FILES = ("argparse.py", "json/decoder.py", "textwrap.py", "difflib.py", "csv.py",
                "heapq.py", "string.py", "shlex.py")


def newest_pretrained(root: str) -> str | None:
    """outputs/<preset>/pipeline/pretrain/model/<N>/final with the largest N, or None."""
    dirs = glob.glob(os.path.join(root, "pipeline", "pretrain", "model", "*", "final"))
    dirs = [d for d in dirs if os.path.basename(os.path.dirname(d)).isdigit()
            and os.path.exists(os.path.join(d, "model.safetensors"))]
    return max(dirs, key=lambda d: int(os.path.basename(os.path.dirname(d)))) if dirs else None


def make_prompts(tokenizer_path: str, n: int, length: int) -> list[list[int]]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    lib = sysconfig.get_paths()["stdlib"]
    prompts = []
    for name in PROMPT_FILES[:n]:
        with open(os.path.join(lib, name), encoding="utf-8") as f:
            ids = tok.encode(f.read()).ids
        # a window from the middle of the file: past the license header / module docstring
        start = max(0, len(ids) // 2 - length // 2)
        prompts.append(ids[start:start + length])
    return prompts


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (HF config.json + model.safetensors + tokenizer.json "
                    "with MTP weights); default: the newest outputs/tiny pretrained model")
    ap.add_argument("--drafts", default="1,2,3", help="comma-separated draft counts k")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interop-threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "speculative.json"))
    args = ap.parse_args(argv)

    model_dir = args.model or newest_pretrained(os.path.join(REPO, "outputs", "tiny"))
    if model_dir is None:
        sys.exit("bench_speculative: no pretrained model: run `make run` (tiny pipeline) or give "
                 "--model DIR (a `seekline train pretrain` output's final/)")
    tok_path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.exists(tok_path):
        sys.exit(f"bench_speculative: {tok_path}: missing (the model folder needs its tokenizer)")

    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.interop_threads)
    from model.checkpoint.hf import load_hf_checkpoint
    from model.generation import GenerationConfig, generate
    from model.generation.speculative import speculative_generate

    model = load_hf_checkpoint(model_dir)
    if not model.mtp:
        sys.exit(f"bench_speculative: {model_dir}: the checkpoint has no MTP weights")
    prompts = make_prompts(tok_path, args.prompts, args.prompt_len)
    ks = [int(x) for x in args.drafts.split(",")]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens)
    sides = ["plain"] + [f"k{k}" for k in ks]

    def run(side, prompt):
        t0 = time.perf_counter()
        r = (generate(model, [prompt], cfg) if side == "plain"
             else speculative_generate(model, [prompt], cfg, num_draft=int(side[1:])))
        return time.perf_counter() - t0, r

    for side in sides:                                   # warm-up: traces every function
        run(side, prompts[0])
    times = {s: [] for s in sides}
    stats = {s: {"rounds": 0, "drafted": 0, "accepted": 0, "tokens": 0} for s in sides}
    identical = {s: 0 for s in sides[1:]}
    for rep in range(args.reps):
        for pi, prompt in enumerate(prompts):
            order = sides[(rep + pi) % len(sides):] + sides[:(rep + pi) % len(sides)]
            per = {}
            for side in order:
                dt, r = run(side, prompt)
                per[side] = (dt, r)
            for side, (dt, r) in per.items():
                times[side].append(dt)
                if rep == 0:
                    stats[side]["tokens"] += len(r.sequences[0])
                    if side != "plain":
                        stats[side]["rounds"] += r.rounds
                        stats[side]["drafted"] += r.drafted
                        stats[side]["accepted"] += r.accepted
                        identical[side] += r.sequences == per["plain"][1].sequences
    # speedup per call: each prompt's total over reps, summed over prompts
    total = {s: float(np.sum(times[s])) for s in sides}
    rows = {}
    print(f"model {model_dir}  ({args.prompts} prompts x {args.prompt_len} tokens, "
          f"{args.new_tokens} new, greedy, batch 1, {args.reps} reps)")
    print(f"{'side':>6} {'accept':>7} {'tok/verify':>10} {'tok/s':>8} {'speedup':>8} {'identical':>10}")
    for s in sides:
        tokens = stats[s]["tokens"]
        tps = tokens * args.reps / total[s]
        row = {"tokens": tokens, "tokens_per_s": tps, "time": summarize(times[s]),
               "speedup": total["plain"] / total[s]}
        if s != "plain":
            st = stats[s]
            row.update(acceptance_rate=st["accepted"] / max(st["drafted"], 1), rounds=st["rounds"],
                       drafted=st["drafted"], accepted=st["accepted"],
                       tokens_per_verify=(tokens - args.prompts) / max(st["rounds"], 1),
                       identical_prompts=identical[s])
            print(f"{s:>6} {row['acceptance_rate']:7.3f} {row['tokens_per_verify']:10.2f} {tps:8.1f} "
                  f"{row['speedup']:7.2f}x {identical[s]:>4}/{args.prompts}")
        else:
            print(f"{s:>6} {'-':>7} {'1.00':>10} {tps:8.1f} {1.0:7.2f}x {'-':>10}")
        rows[s] = row
    result = {"model": model_dir, "config": model.cfg.to_hf_dict(), "prompts": args.prompts,
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps,
              "prompt_files": list(PROMPT_FILES[:args.prompts]),
              "threads": {"intra_op": args.threads, "inter_op": args.interop_threads},
              "load_avg": os.getloadavg(), "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
              "sides": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if any(identical[s] != args.prompts for s in identical):
        sys.exit("bench_speculative: speculative output differs from plain greedy decoding")


if __name__ == "__main__":
    main()
