#!/usr/bin/env python3
"""transformers side of bench/bench_model.py. Runs in the reference venv (.venv-ref, torch CPU),
never in .venv, as a small server driven by bench_model.py over stdin/stdout:

    .venv-ref/bin/python bench/ref_transformers.py --ckpt DIR --inputs in.npz [--new-tokens N]

DIR is the HF checkpoint seekline's save_hf_checkpoint wrote, so both sides run the identical
model; in.npz holds `prompt` (1, P) int32. Each stdin line is one command; each answer is one
stdout line starting with `@@ ` followed by JSON (other stdout lines are ignored by the caller):

  forward    time one model(prompt, use_cache=False) (full forward)   -> {"forward_s"}
  generate   time one greedy model.generate(prompt, max_new_tokens=N) -> {"prefill_s",
             "decode_s", "generate_s"}: a streamer stamps each new token; prefill = call start ->
             first new token, decode = first -> last new token (N - 1 decode steps)
  generate_batch {json}   (bench_rollout.py) one sampled model.generate over a left-padded
             batch: json holds "inputs" (npz with `ids` (B, P), `mask` (B, P)), "new_tokens",
             "temperature", "top_p", "seed" (torch.manual_seed), "sample" (false: greedy) and
             "return_tokens"; -> {"generate_s", "prefill_s", "decode_s", "cpu_s",
             "new_tokens_per_row", "rows"[, "tokens"]}; no top-k (top_k=0), no stop token
  info       versions, threads, implementations, the greedy tokens, the bytes per token per
             layer of transformers' own KV cache; writes --arrays (npz): the full-forward logits
             (P, V) of this model and of the same checkpoint with eager attention (the
             implementation seekline's parity fixtures use)
  quit

One command at a time, so the caller can interleave seekline and transformers repetitions: both
sides then see the same background load on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


class _Stamps:
    """A transformers streamer that only records when tokens arrive: generate calls put() once
    with the prompt, then once per new token right after it is selected."""

    def __init__(self):
        self.t = []

    def put(self, value):
        self.t.append(time.perf_counter())

    def end(self):
        pass


def _cache_tensors(cache):
    """Every tensor a transformers cache holds (DynamicCache: layers[i].keys / .values)."""
    import torch
    layers = getattr(cache, "layers", None)
    if layers is None:                               # legacy tuple-of-tuples cache
        layers = list(cache)
        return [t for layer in layers for t in layer if isinstance(t, torch.Tensor)], len(layers)
    return ([v for layer in layers for v in vars(layer).values() if isinstance(v, torch.Tensor)],
            len(layers))


def _generate_batch(model, a: dict) -> dict:
    """One model.generate over a left-padded batch (attention_mask marks the real tokens), the
    default fast path (the model's attention implementation, DynamicCache). Sampling: softmax at
    `temperature`, nucleus `top_p` (1.0 = off), top_k=0 (transformers would default to 50);
    eos_token_id None, so every row gets exactly new_tokens tokens."""
    import torch
    d = np.load(a["inputs"])
    ids = torch.from_numpy(d["ids"].astype(np.int64))                                 # (B, P)
    mask = torch.from_numpy(d["mask"].astype(np.int64))                               # (B, P)
    kw = dict(attention_mask=mask, max_new_tokens=a["new_tokens"], use_cache=True,
              eos_token_id=None, pad_token_id=0)
    if a.get("sample", True):
        kw.update(do_sample=True, temperature=a["temperature"], top_p=a["top_p"], top_k=0)
    else:
        kw.update(do_sample=False)
    torch.manual_seed(a.get("seed", 0))
    st = _Stamps()
    c0, t0 = time.process_time(), time.perf_counter()
    out = model.generate(ids, streamer=st, **kw)
    t1, c1 = time.perf_counter(), time.process_time()
    new = out[:, ids.shape[1]:]                                                       # (B, N)
    stamps = st.t[1:]                                # drop the prompt's put()
    res = {"generate_s": t1 - t0, "prefill_s": stamps[0] - t0, "decode_s": stamps[-1] - stamps[0],
           "cpu_s": c1 - c0, "new_tokens_per_row": int(new.shape[1]), "rows": int(new.shape[0])}
    if a.get("return_tokens"):
        res["tokens"] = new.tolist()
    return res


def _reply(obj):
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--arrays", required=True, help="npz written by the info command")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interop-threads", type=int, default=1)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa | eager)")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.interop_threads)
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.ckpt, dtype=torch.float32, attn_implementation=args.attn).eval()
    # Never stop early: seekline's generate has no stop tokens unless asked.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    prompt = torch.from_numpy(np.load(args.inputs)["prompt"].astype(np.int64))       # (1, P)
    n = args.new_tokens
    gen_kw = dict(attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                  max_new_tokens=n)
    _reply({"ready": True})

    for line in sys.stdin:
        op = line.strip()
        with torch.inference_mode():
            if op == "forward":
                t0 = time.perf_counter()
                model(input_ids=prompt, use_cache=False)
                _reply({"forward_s": time.perf_counter() - t0})
            elif op == "generate":
                st = _Stamps()
                t0 = time.perf_counter()
                model.generate(prompt, streamer=st, **gen_kw)
                t1 = time.perf_counter()
                stamps = st.t[1:]                        # drop the prompt's put()
                _reply({"prefill_s": stamps[0] - t0, "decode_s": stamps[-1] - stamps[0],
                        "generate_s": t1 - t0, "stamps": len(stamps)})
            elif op.startswith("generate_batch "):
                _reply(_generate_batch(model, json.loads(op[len("generate_batch "):])))
            elif op == "info":
                seq = model.generate(prompt, **gen_kw)[0, prompt.shape[1]:]
                out = model(input_ids=prompt, use_cache=True)
                eager = transformers.AutoModelForCausalLM.from_pretrained(
                    args.ckpt, dtype=torch.float32, attn_implementation="eager").eval()
                np.savez(args.arrays, logits=out.logits[0].float().numpy(),
                         logits_eager=eager(input_ids=prompt).logits[0].float().numpy())
                del eager
                tensors, n_layers = _cache_tensors(out.past_key_values)
                p = int(prompt.shape[1])
                _reply({
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "model_class": type(model).__name__,
                    "attn_implementation": model.config._attn_implementation,
                    "experts_implementation": getattr(model.config, "_experts_implementation", None),
                    "threads": {"intra_op": torch.get_num_threads(),
                                "inter_op": torch.get_num_interop_threads()},
                    "tokens": [int(t) for t in seq],
                    "kv_cache": {
                        "class": type(out.past_key_values).__name__, "layers": n_layers,
                        "layer0_tensor_shapes": [list(t.shape) for t in tensors[:2]],
                        "dtype": str(tensors[0].dtype) if tensors else None,
                        "bytes_per_token_per_layer": (sum(t.numel() * t.element_size() for t in tensors)
                                                      / (p * n_layers)) if n_layers else None},
                })
            elif op == "quit":
                break
            else:
                _reply({"error": f"unknown command {op!r}"})


if __name__ == "__main__":
    main()
