#!/usr/bin/env python3
"""Serving load test: `seekline serve` on loopback under a fixed number of concurrent streaming
clients, against the in-process `generate()` ceiling measured in the same run.

    .venv/bin/python bench/bench_serving.py            # ~3 min on 2 cores; writes bench/results/serving.json
    .venv/bin/python bench/bench_serving.py --quick    # tiny model, short levels (~1 min)

Model: a randomly initialised preset (default `small`: DeepSeek-V3 architecture, MLA + MoE,
6 layers, hidden 256) exported in HF layout with a byte-level BPE trained here on a slice of the
standard library (vocab = the model's), so the server loads a real model folder.

Server: `seekline serve DIR` in a subprocess (its own interpreter and cores' share; the load
generator here is asyncio + httpx), once with continuous batching (--max-batch-size 8) and once
one request at a time (--max-batch-size 1). Each level runs C clients for --seconds: every
client sends streaming /v1/completions requests back to back (random token-id prompts of
--prompt-len tokens, --new-tokens tokens each, greedy, logprobs=0 so every token is its own SSE
event) and stops starting new ones at the deadline; in-flight requests finish (bounded by
--new-tokens). Reported per level: requests/s, generated tokens/s (from the usage chunk), TTFT
(request sent -> first token event) and inter-token latency (gaps between token events)
p50/p95/p99, error rate.

Ceiling: `generate(model, prompts, GenerationConfig(max_new_tokens=N))` in this process on the
same weights, batch 1 and batch 8 (same prompt lengths): tokens / wall time. The server's
tokens/s at concurrency 8 divided by the batch-8 ceiling says what HTTP, JSON, SSE and the
scheduling cost. The headline ratio: batched / one-at-a-time tokens/s at concurrency 8
(issue 12 target >= 3x).
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from common.fileio import atomic_write_json  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results", "serving.json")
KEY = "bench-key"


# ---------------------------------------------------------------------- pure helpers
def percentiles(xs, ps=(50, 95, 99)) -> dict:
    """{'p50': ms, ...} of seconds xs (nearest-rank on the sorted values); {} when empty."""
    if not xs:
        return {}
    s = sorted(xs)
    return {f"p{p}": round(1000 * s[min(len(s) - 1, max(0, int(np.ceil(p / 100 * len(s))) - 1))], 2) for p in ps}


def summarize(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    itl = [g for r in ok for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in ok)
    return {"requests": len(results), "errors": len(results) - len(ok),
            "error_rate": round((len(results) - len(ok)) / max(1, len(results)), 4),
            "wall_s": round(wall, 2), "requests_per_s": round(len(ok) / wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "ttft_ms": percentiles(ttft), "itl_ms": percentiles(itl)}


# ---------------------------------------------------------------------- model folder
def make_model_dir(root: str, preset: str, seed: int = 0) -> str:
    """A random-weight preset model + a byte-level BPE of the model's vocab size, in HF layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from model.checkpoint.hf import save_hf_checkpoint
    from model.config import ModelConfig
    from model.decoder import build_model

    cfg = ModelConfig.load(preset).to_hf_dict()
    vocab = cfg["vocab_size"]
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:60]
    texts = [open(f, encoding="utf-8", errors="replace").read() for f in files]
    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg.update(vocab_size=tok.get_vocab_size(), num_nextn_predict_layers=0, bos_token_id=1, eos_token_id=2)
    model = build_model(ModelConfig.from_hf_dict(cfg, source=preset), seed=seed)
    out = os.path.join(root, f"{preset}-model")
    save_hf_checkpoint(model, out)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_meta.json"), "w") as f:
        json.dump({"bos_id": 1, "eos_id": 2, "pad_id": 0}, f)
    return out


# ---------------------------------------------------------------------- server + clients
class Server:
    def __init__(self, model_dir: str, batch: int, max_seq_len: int, port: int, log: str):
        env = {**os.environ, "SEEKLINE_API_KEYS": KEY, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [os.path.join(REPO, ".venv", "bin", "seekline"), "serve", model_dir, "--port", str(port),
               "--model-name", "bench", "--max-batch-size", str(batch), "--max-seq-len", str(max_seq_len),
               "--rate-limit", "0"]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 180.0):
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server did not come up in {timeout:.0f} s; see {self.log.name}")

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def one_request(client, url: str, prompt: list[int], new_tokens: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "logprobs": 0, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    times, tokens, ok = [], 0, False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body,
                                 headers={"Authorization": f"Bearer {KEY}"}) as r:
            if r.status_code != 200:
                await r.aread()
                return {"ok": False, "ttft": None, "gaps": [], "tokens": 0, "status": r.status_code}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    ok = True
                    break
                ev = json.loads(data)
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
                elif ev.get("choices") and ev["choices"][0].get("logprobs"):
                    times.append(time.perf_counter())
    except Exception as e:  # noqa: BLE001 — counted as an error of this level
        return {"ok": False, "ttft": None, "gaps": [], "tokens": 0, "status": type(e).__name__}
    return {"ok": ok, "ttft": (times[0] - t0) if times else None, "gaps": list(np.diff(times)), "tokens": tokens,
            "status": 200}


async def run_level(url: str, concurrency: int, seconds: float, prompt_len: int, new_tokens: int,
                    vocab: int, seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    deadline = time.perf_counter() + seconds
    results: list[dict] = []

    async def worker(client):
        while time.perf_counter() < deadline:
            prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
            results.append(await one_request(client, url, prompt, new_tokens))

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return summarize(results, time.perf_counter() - t0)


def ceiling(model_dir: str, batch: int, prompt_len: int, new_tokens: int, vocab: int, reps: int) -> dict:
    """In-process generate() tokens/s (best of reps after a warm-up) for `batch` greedy rows."""
    from model.checkpoint.hf import load_hf_checkpoint
    from model.generation import GenerationConfig, generate

    model = ceiling.model = getattr(ceiling, "model", None) or load_hf_checkpoint(model_dir, with_mtp=False)
    rng = random.Random(batch)
    prompts = [[rng.randrange(3, vocab) for _ in range(prompt_len)] for _ in range(batch)]
    cfg = GenerationConfig(max_new_tokens=new_tokens)
    generate(model, prompts, cfg)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        res = generate(model, prompts, cfg)
        n = sum(len(s) for s in res.sequences)
        best = max(best, n / (time.perf_counter() - t0))
    return {"batch": batch, "tokens_per_s": round(best, 1)}


def print_level(side: str, c: int, s: dict):
    t, i = s["ttft_ms"], s["itl_ms"]
    print(f"{side:<10}{c:>4}{s['requests_per_s']:>8.2f}{s['tokens_per_s']:>10.1f}"
          f"{t.get('p50', 0):>9.0f}{t.get('p95', 0):>8.0f}{t.get('p99', 0):>8.0f}"
          f"{i.get('p50', 0):>8.1f}{i.get('p95', 0):>8.1f}{i.get('p99', 0):>8.1f}{s['error_rate']:>8.1%}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--levels", default="1,4,8,16", help="concurrency levels of the batched server")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each level")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="the batched server's --max-batch-size")
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--quick", action="store_true", help="tiny preset, levels 1,8, 6 s each")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.levels, args.seconds = "tiny", "1,8", 6.0
    levels = [int(x) for x in args.levels.split(",")]
    t_start = time.time()
    tmp = tempfile.mkdtemp(prefix="bench_serving_")
    model_dir = make_model_dir(tmp, args.preset)
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    max_seq = 32 * -(-args.prompt_len // 32) + args.new_tokens
    results = {"preset": args.preset, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "seconds_per_level": args.seconds, "batch": args.batch,
               "device": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "loadavg_start": list(os.getloadavg())},
               "ceiling": [], "levels": []}
    print(f"model: {args.preset} (random weights, vocab {vocab}); prompts {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens, greedy; {args.seconds:g} s per level", flush=True)
    for b in sorted({1, args.batch}):
        results["ceiling"].append(ceiling(model_dir, b, args.prompt_len, args.new_tokens, vocab, reps=2))
        print(f"in-process generate(), batch {b}: {results['ceiling'][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
    ceiling.model = None
    print(f"\n{'server':<10}{'C':>4}{'req/s':>8}{'tok/s':>10}{'TTFT p50':>9}{'p95':>8}{'p99':>8}"
          f"{'ITL p50':>8}{'p95':>8}{'p99':>8}{'errors':>8}")
    runs = [("batched", args.batch, levels), ("one-at-a-time", 1, [8])]
    for side, batch, lv in runs:
        srv = Server(model_dir, batch, max_seq, args.port, os.path.join(tmp, f"server-{batch}.log"))
        try:
            srv.wait_ready()
            for c in lv:
                s = asyncio.run(run_level(srv.url, c, args.seconds, args.prompt_len, args.new_tokens, vocab, seed=c))
                results["levels"].append({"server": side, "max_batch_size": batch, "concurrency": c, **s})
                print_level(side[:10], c, s)
        finally:
            srv.stop()
    by = {(r["server"], r["concurrency"]): r for r in results["levels"]}
    ceil = {c["batch"]: c["tokens_per_s"] for c in results["ceiling"]}
    ratios = {}
    if ("batched", 8) in by and ("one-at-a-time", 8) in by:
        ratios["batched_vs_one_at_a_time_c8"] = round(by[("batched", 8)]["tokens_per_s"]
                                                     / by[("one-at-a-time", 8)]["tokens_per_s"], 2)
        if args.batch in ceil:
            ratios["batched_c8_vs_generate_ceiling"] = round(by[("batched", 8)]["tokens_per_s"] / ceil[args.batch], 2)
        if 1 in ceil:
            ratios["one_at_a_time_c8_vs_generate_batch1"] = round(by[("one-at-a-time", 8)]["tokens_per_s"] / ceil[1], 2)
    results["ratios"] = ratios
    from model import ops  # the server process inherits SEEKLINE_OPS; record what it means here
    results["custom_ops"] = ops.describe()
    results["device"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = round(time.time() - t_start, 1)
    print()
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x" + ("   (target >= 3x)" if k.startswith("batched_vs") else ""))
    d = results["device"]
    print(f"device: {d['cpu']} ({d['cores']} cores), load average {d['loadavg_start'][0]:.1f} at start, "
          f"{d['loadavg_end'][0]:.1f} at end")
    atomic_write_json(args.out, results)
    print(f"wrote {os.path.relpath(args.out, REPO)} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
