#!/usr/bin/env python3
"""transformers side of bench/bench_train.py. Runs in the reference venv (.venv-ref, torch CPU),
never in .venv, as a small server driven by bench_train.py over stdin/stdout:

    .venv-ref/bin/python bench/ref_train_transformers.py --ckpt DIR --batches rows.npz [options]

DIR is the HF checkpoint seekline's save_hf_checkpoint wrote (the main model, no MTP module:
transformers' DeepseekV3ForCausalLM has none), so both sides start from identical weights.
rows.npz holds `input_ids`, `segment_ids`, `positions`, each (S, B, T) int32: the packed rows
of S optimizer steps, in the order seekline's engine consumes them; step i trains on rows[i % S].

One training step, as a PyTorch user writes it:

    loss = model(input_ids, position_ids=positions, labels=labels).loss   # train mode
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step(); scheduler.step(); optimizer.zero_grad(set_to_none=True)
    loss.item()

with torch.optim.AdamW (the same lr, betas, eps and weight decay as seekline's engine; rank-1
parameters, i.e. norm gains, without decay, as seekline does) and a LambdaLR of the same
warmup-cosine schedule. Packed rows: with `position_ids` that restart at each document and no
attention_mask, transformers builds the same block-diagonal causal mask as seekline (masking_utils
packed-sequence detection), and labels are -100 where the target lies in the next document, so
the loss is seekline's `causal_lm_loss` on the same rows (bench_train.py compares the step-0
losses). transformers has no MTP, no sequence-wise aux loss and no routing-bias update.

Each stdin line is one command; each answer is one stdout line `@@ ` + JSON:

  step    one timed training step on the next batch -> {"step_s", "cpu_s" (this process's CPU
          time: all its threads), "loss", "step", and the split of the step: forward_backward_s
          (forward + loss.backward()) and optimizer_s (clipping, AdamW, scheduler, zero_grad,
          loss.item()), wall and CPU}
  info    versions, threads, implementations, parameter count, every loss so far
  quit
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np


def _reply(obj):
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def packed_labels(ids, seg):
    """labels (B, T): the token itself (transformers shifts them: logits[i] predicts labels[i+1]),
    -100 where the target is not in the same non-padding document as the position before it."""
    import torch
    labels = ids.clone()
    cross = torch.zeros_like(seg, dtype=torch.bool)
    cross[:, 1:] = seg[:, 1:] != seg[:, :-1]
    labels[cross | (seg == 0)] = -100
    return labels


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """seekline's WarmupCosine as a LambdaLR factor (update count s, 0-based)."""
    def f(s):
        if s < warmup:
            return (s + 1) / max(warmup, 1)
        progress = min(max((s - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_optimizer(model, args):
    """torch AdamW with seekline's settings (no decay on rank-1 params) + its warmup-cosine
    schedule -> (trainable params, optimizer, scheduler)."""
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.total_steps, args.min_lr_ratio))
    return params, opt, sched


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--batches", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interop-threads", type=int, default=1)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa | eager)")
    ap.add_argument("--experts", default=None, help="experts_implementation (default: transformers' own)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--total-steps", type=int, default=1000)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--clip-norm", type=float, default=1.0)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.interop_threads)
    torch.manual_seed(0)
    import transformers

    kw = {"experts_implementation": args.experts} if args.experts else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.ckpt, dtype=torch.float32, attn_implementation=args.attn, **kw)
    model.train()
    params, opt, sched = build_optimizer(model, args)
    rows = np.load(args.batches)
    batches = []
    for i in range(rows["input_ids"].shape[0]):
        ids = torch.from_numpy(rows["input_ids"][i].astype(np.int64))
        seg = torch.from_numpy(rows["segment_ids"][i].astype(np.int64))
        pos = torch.from_numpy(rows["positions"][i].astype(np.int64))
        batches.append((ids, pos, packed_labels(ids, seg)))
    losses = []
    _reply({"ready": True})

    for line in sys.stdin:
        op = line.strip()
        if op == "step":
            ids, pos, labels = batches[len(losses) % len(batches)]
            t0, c0 = time.perf_counter(), time.process_time()
            loss = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False).loss
            loss.backward()
            t1, c1 = time.perf_counter(), time.process_time()       # eager CPU ops: already done
            if args.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, args.clip_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            t2, c2 = time.perf_counter(), time.process_time()
            losses.append(value)
            _reply({"step_s": t2 - t0, "cpu_s": c2 - c0, "loss": value, "step": len(losses),
                    "forward_backward_s": t1 - t0, "forward_backward_cpu_s": c1 - c0,
                    "optimizer_s": t2 - t1, "optimizer_cpu_s": c2 - c1})
        elif op == "info":
            _reply({
                "torch": torch.__version__, "transformers": transformers.__version__,
                "model_class": type(model).__name__,
                "attn_implementation": model.config._attn_implementation,
                "experts_implementation": getattr(model.config, "_experts_implementation", None),
                "threads": {"intra_op": torch.get_num_threads(),
                            "inter_op": torch.get_num_interop_threads()},
                "trainable_params": int(sum(p.numel() for p in params)),
                "optimizer": f"torch.optim.AdamW(lr={args.lr}, betas=({args.beta1}, {args.beta2}), "
                             f"eps={args.eps}, weight_decay={args.weight_decay} on rank>=2 params), "
                             f"LambdaLR warmup {args.warmup} + cosine to {args.min_lr_ratio} at "
                             f"{args.total_steps}, clip_grad_norm_({args.clip_norm})",
                "losses": losses,
            })
        elif op == "quit":
            break
        else:
            _reply({"error": f"unknown command {op!r}"})


if __name__ == "__main__":
    main()
