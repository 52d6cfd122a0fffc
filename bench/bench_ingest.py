#!/usr/bin/env python3
"""Data-path benchmark: tokens/s/worker of the whole ingest path vs raw `tokenizers` encoding.

    .venv/bin/python bench/bench_ingest.py            # or: make bench   (~2.5 min on 2 cores)

On a hash-ordered sample of the running interpreter's standard library (--max-files):
1. ingest (Beam: read, decode, normalise, filters, exact + near dedup, split, write) and
   pack (Beam: tokenize with the trained tokenizer, pack to --seq-len rows, write) run on the
   DirectRunner for each of --workers (1 = in-process, N > 1 = N worker processes); the
   tokenizer is trained once between them (timed, but not part of the path: a one-off per
   corpus). Fixed costs (worker start-up, TF import in each worker) are included: on a small
   corpus they dominate the multi-process numbers.
   path tokens/s/worker = tokens written / (ingest s + pack s) / workers.
2. The ceiling, in the same run: `Tokenizer.encode_batch_fast` of the same tokenizer on the
   same deduplicated texts, in this process, one thread (TOKENIZERS_PARALLELISM=false — one
   worker's share), batches of --batch; median of --reps.
   ratio = path tokens/s/worker / ceiling tokens/s.
The seed plan's floor is 10K tokens/s/worker. Writes bench/results/ingest.json, prints a table.
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

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before tokenizers is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RESULTS = os.path.join(REPO, "bench", "results", "ingest.json")
FLOOR = 10_000  # tokens/s/worker, the seed plan's


def run_path(icfg, pcfg, files, workers: int, tmp: str, tokenizer_uri: str | None):
    """ingest (+ tokenizer training when ``tokenizer_uri`` is None) + pack on ``workers``."""
    from components.common.metrics import local_pipeline
    from components.ingest.ingest import run_ingest
    from components.pack.pack import run_pack
    from components.tokenizer import tokenizer as tkz
    from configs.schema import TokenizerConfig

    mode = "multi_processing" if workers > 1 else "in_memory"
    out = f"{tmp}/w{workers}"
    t0 = time.perf_counter()
    ingest = run_ingest(icfg, f"{out}/ingest", files=files, pipeline=local_pipeline(workers, mode))
    t_ingest = time.perf_counter() - t0
    t_tok = None
    if tokenizer_uri is None:
        tokenizer_uri = f"{tmp}/tok"
        t0 = time.perf_counter()
        tkz.train_from_examples(f"{out}/ingest", tokenizer_uri, TokenizerConfig(vocab_size=VOCAB, roundtrip_check_docs=0))
        t_tok = time.perf_counter() - t0
    t0 = time.perf_counter()
    pack = run_pack(f"{out}/ingest", tokenizer_uri, f"{out}/pack", pcfg, pipeline=local_pipeline(workers, mode))
    t_pack = time.perf_counter() - t0
    tokens = sum(pack["tokens_written"].values())
    return {
        "workers": workers,
        "direct_running_mode": mode,
        "seconds": {"ingest": round(t_ingest, 2), "pack": round(t_pack, 2)}
        | ({"tokenizer_training": round(t_tok, 2)} if t_tok is not None else {}),
        "tokens_written": tokens,
        "documents_written": sum(ingest["documents"].values()),
        "path_tokens_per_s_per_worker": round(tokens / (t_ingest + t_pack) / workers),
        "pack_tokens_per_s_per_worker": round(tokens / t_pack / workers),
        "_out": out,
        "_tokenizer": tokenizer_uri,
        "_docs": sum(pack["documents_packed"].values()),
        "_ingest": ingest,
    }


VOCAB = 8192


def main(argv: list[str] | None = None) -> int:
    global VOCAB
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-files", type=int, default=800)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    VOCAB = args.vocab_size

    import logging

    logging.getLogger().setLevel(logging.ERROR)
    from components.ingest.sources import list_corpus_files
    from components.tokenizer import tokenizer as tkz
    from configs.schema import IngestConfig, PackConfig

    icfg = IngestConfig(max_files=args.max_files, eval_percent=5, num_shards=4)
    pcfg = PackConfig(seq_len=args.seq_len, num_shards=4)
    files = list_corpus_files(icfg)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tokenizer_uri = None
        for w in [int(x) for x in args.workers.split(",")]:
            runs.append(run_path(icfg, pcfg, files, w, tmp, tokenizer_uri))
            tokenizer_uri = runs[0]["_tokenizer"]  # one tokenizer for every run: same rows

        # The ceiling: the same tokenizer on the same (deduplicated) texts, nothing else.
        first = runs[0]["_out"]
        texts = [t for s in ("train", "eval") for _, t, _ in tkz.iter_split(f"{first}/ingest", s)]
        tok = tkz.load(tokenizer_uri)
        tok.encode_batch_fast(texts[: args.batch], add_special_tokens=False)  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            n_raw = 0
            for i in range(0, len(texts), args.batch):
                n_raw += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i : i + args.batch], add_special_tokens=False))
            times.append(time.perf_counter() - t0)
        t_raw = statistics.median(times)
    raw_tps = n_raw / t_raw

    for r in runs:
        # every run wrote the documents' tokens + BOS + EOS each: the same count raw encoding gives
        assert r["tokens_written"] - 2 * r["_docs"] == n_raw, (r["tokens_written"], n_raw)
        r["ratio_to_raw"] = round(r["path_tokens_per_s_per_worker"] / raw_tps, 4)
        r["multiple_of_floor"] = round(r["path_tokens_per_s_per_worker"] / FLOOR, 2)
    ing = runs[0]["_ingest"]
    result = {
        "corpus": {"files": len(files), "documents_written": sum(ing["documents"].values()),
                   "bytes_written": sum(ing["bytes"].values()),
                   "exact_duplicates": ing["exact_duplicates"], "near_duplicates": ing["near_duplicates"]},
        "seq_len": args.seq_len, "vocab_size": args.vocab_size,
        "raw_encode": {"tokens": n_raw, "seconds_median": round(t_raw, 3), "tokens_per_s_one_thread": round(raw_tps)},
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "floor_tokens_per_s_per_worker": FLOOR,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print(f"corpus: {len(files)} files → {result['corpus']['documents_written']} documents, {n_raw:,} document tokens")
    print(f"raw tokenizers encode_batch_fast, one thread (the ceiling): {raw_tps:>10,.0f} tokens/s")
    print(f"{'workers':>8}{'mode':>18}{'ingest s':>10}{'pack s':>9}{'path tok/s/worker':>19}{'ratio':>8}{'x floor':>9}")
    for r in runs:
        s = r["seconds"]
        print(f"{r['workers']:>8}{r['direct_running_mode']:>18}{s['ingest']:>10}{s['pack']:>9}"
              f"{r['path_tokens_per_s_per_worker']:>19,}{r['ratio_to_raw']:>8.3f}{r['multiple_of_floor']:>9.1f}")
    print(f"(ratio = path tokens/s/worker ÷ raw; floor {FLOOR:,} tokens/s/worker) wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
