#!/usr/bin/env python3
"""transformers side of bench/bench_sft.py. Runs in the reference venv (.venv-ref, torch CPU),
never in .venv, as a small server driven by bench_sft.py over stdin/stdout (bench/refproc.py):

    .venv-ref/bin/python bench/ref_sft_transformers.py --rows rows.npz --batch B --sft-ckpt DIR
        [--student-ckpt DIR --teacher-ckpt DIR] [options]

rows.npz holds `{padded,packed}_{input_ids,segment_ids,positions,loss_mask}`, each (N, T): the
rows seekline trains on, in the same order; step i of a pass trains on rows [i*B, (i+1)*B). The
checkpoints are seekline's save_hf_checkpoint exports (no MTP module), so both sides start from
identical weights.

SFT with an assistant-only loss, as TRL's SFTTrainer(assistant_only_loss=True) trains (TRL itself
is not needed): labels = input_ids, then -100 wherever the token is not an assistant token
(loss_mask 0) or is padding; the loss is the model's own mean cross-entropy over the labels that
are not -100 (transformers shifts them: logits[i] predicts labels[i+1]), which is TRL's loss at
gradient accumulation 1. Two layouts:

  padded   one example per row, right-padded, attention_mask = 1 on real tokens (TRL's default
           collator), default position ids;
  packed   each row rebuilt from its examples by transformers' DataCollatorWithFlattening
           (TRL's padding_free path): input_ids back to back, position_ids restarting at 0 per
           example, the first label of every example -100; then padded to T (position 0, label
           -100). No attention_mask: transformers' masking_utils detects the packed sequences
           from the restarting position_ids and builds the block-diagonal causal mask, with sdpa
           on CPU too. The collator's usual output, a whole batch flattened into ONE row of B*T
           tokens, would make sdpa's dense mask (and the attention work) B times larger than
           seekline's rows, so the rows are kept: the same layout on both sides. The rebuilt rows
           are checked against the npz rows (ids, positions, and labels = the target rule of
           seekline's loss) before anything runs.

Distillation (with --student-ckpt/--teacher-ckpt), on the packed rows:

    with torch.no_grad(): t = teacher(ids, position_ids=pos).logits       # teacher.eval()
    s = student(ids, position_ids=pos).logits
    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)

KL and CE averaged over the positions whose next label is not -100 (seekline's
training/distill_losses.kd_loss). One step = loss.backward(), clip_grad_norm_, torch AdamW
(the engine's lr, betas, eps, weight decay; none on rank-1 params), LambdaLR of the engine's
warmup-cosine schedule, zero_grad, loss.item().

Each stdin line is one command; each answer is one stdout line `@@ ` + JSON:
  warmup W   one step on the first batch of workload W (sft_padded | sft_packed | distill)
  epoch W    one pass over all batches of W -> {"steps": [{"step_s", "cpu_s", "loss"}, ...]}
  info       versions, implementations, threads, parameter counts
  quit
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_train_transformers import _reply, build_optimizer  # noqa: E402


def sft_labels(ids, seg, mask):
    """labels (N, T) with TRL's assistant-only rule: the token where it is an assistant target in
    a non-padding example, -100 elsewhere (and at every example's first token: it would be
    predicted from the previous example)."""
    labels = np.where((mask == 1) & (seg != 0), ids, -100)
    first = np.ones_like(seg, dtype=bool)
    first[:, 1:] = seg[:, 1:] != seg[:, :-1]
    labels[first] = -100
    return labels


def collator_rows(ids, seg, mask, collator):
    """Packed rows rebuilt by DataCollatorWithFlattening from each row's examples, padded to T:
    (input_ids, position_ids, labels), each (N, T) int64."""
    n, t = ids.shape
    out = [np.zeros((n, t), np.int64), np.zeros((n, t), np.int64), np.full((n, t), -100, np.int64)]
    for r in range(n):
        feats = []
        for s in np.unique(seg[r][seg[r] != 0]):                  # examples in row order
            sel = seg[r] == s
            feats.append({"input_ids": ids[r][sel].tolist(),
                          "labels": np.where(mask[r][sel] == 1, ids[r][sel], -100).tolist()})
        if not feats:                                             # an empty filler row
            continue
        b = collator(feats, return_tensors="np")                  # each (1, L)
        length = b["input_ids"].shape[1]
        out[0][r, :length], out[1][r, :length], out[2][r, :length] = (
            b["input_ids"][0], b["position_ids"][0], b["labels"][0])
    return out


def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """alpha * T^2 * KL(p_T^T || p_S^T) + (1 - alpha) * CE, means over the valid next-token targets."""
    from torch.nn import functional
    s, t = student_logits[:, :-1].float(), teacher_logits[:, :-1].float()      # (B, T-1, V)
    y = labels[:, 1:]                                                           # (B, T-1)
    valid = (y != -100).float()
    n = valid.sum().clamp(min=1.0)
    kl = functional.kl_div(functional.log_softmax(s / temperature, -1), functional.log_softmax(t / temperature, -1),
                  reduction="none", log_target=True).sum(-1)                    # (B, T-1) KL(p_T || p_S)
    ce = functional.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100)
    return alpha * temperature ** 2 * (kl * valid).sum() / n + (1 - alpha) * ce


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--sft-ckpt", required=True)
    ap.add_argument("--student-ckpt", default=None)
    ap.add_argument("--teacher-ckpt", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interop-threads", type=int, default=1)
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa | eager)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--total-steps", type=int, default=1000)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--clip-norm", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.interop_threads)
    torch.manual_seed(0)
    import transformers

    def load(path, train=True):
        m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                              attn_implementation=args.attn)
        m.train(train)
        return m

    rows = np.load(args.rows)
    b = args.batch
    pad = {k: rows[f"padded_{k}"].astype(np.int64) for k in ("input_ids", "segment_ids", "loss_mask")}
    pk = {k: rows[f"packed_{k}"].astype(np.int64) for k in ("input_ids", "segment_ids", "positions", "loss_mask")}

    # padded: TRL's default collator output
    p_labels = sft_labels(pad["input_ids"], pad["segment_ids"], pad["loss_mask"])
    padded = [dict(input_ids=torch.from_numpy(pad["input_ids"][i:i + b]),
                   attention_mask=torch.from_numpy((pad["segment_ids"][i:i + b] != 0).astype(np.int64)),
                   labels=torch.from_numpy(p_labels[i:i + b])) for i in range(0, len(p_labels), b)]
    # packed: each row rebuilt by DataCollatorWithFlattening, checked against seekline's rows
    c_ids, c_pos, c_labels = collator_rows(pk["input_ids"], pk["segment_ids"], pk["loss_mask"],
                                           transformers.DataCollatorWithFlattening())
    real = pk["segment_ids"] != 0
    want = sft_labels(pk["input_ids"], pk["segment_ids"], pk["loss_mask"])
    for name, got, ref in (("input_ids", c_ids[real], pk["input_ids"][real]),
                           ("position_ids", c_pos[real], pk["positions"][real]), ("labels", c_labels, want)):
        if not np.array_equal(got, ref):
            _reply({"error": f"DataCollatorWithFlattening rows differ from the packed rows in {name}"})
            return
    c_pos[~real] = pk["positions"][~real]
    packed = [dict(input_ids=torch.from_numpy(c_ids[i:i + b]), position_ids=torch.from_numpy(c_pos[i:i + b]),
                   labels=torch.from_numpy(c_labels[i:i + b])) for i in range(0, len(c_labels), b)]

    sft = load(args.sft_ckpt)
    sft_opt = build_optimizer(sft, args)
    student = teacher = None
    if args.student_ckpt:
        student, teacher = load(args.student_ckpt), load(args.teacher_ckpt, train=False)
        for p in teacher.parameters():
            p.requires_grad_(False)
        student_opt = build_optimizer(student, args)

    def sft_loss(batch):
        return sft(**batch, use_cache=False).loss

    def distill_loss(batch):
        with torch.no_grad():
            t = teacher(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        s = student(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        return kd_loss(s, t, batch["labels"], args.alpha, args.temperature)

    work = {"sft_padded": (sft_loss, sft_opt, padded), "sft_packed": (sft_loss, sft_opt, packed)}
    if student is not None:
        work["distill"] = (distill_loss, student_opt, packed)

    def step(w, batch):
        loss_fn, (params, opt, sched), _ = work[w]
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loss_fn(batch)
        loss.backward()
        if args.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        return {"step_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "loss": value}

    _reply({"ready": True})
    for line in sys.stdin:
        op, _, w = line.strip().partition(" ")
        if op in ("warmup", "epoch") and w not in work:
            _reply({"error": f"unknown workload {w!r}"})
        elif op == "warmup":
            _reply(step(w, work[w][2][0]))
        elif op == "epoch":
            _reply({"steps": [step(w, batch) for batch in work[w][2]]})
        elif op == "info":
            _reply({
                "torch": torch.__version__, "transformers": transformers.__version__,
                "model_class": type(sft).__name__, "attn_implementation": sft.config._attn_implementation,
                "experts_implementation": getattr(sft.config, "_experts_implementation", None),
                "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
                "sft_params": int(sum(p.numel() for p in sft.parameters())),
                "teacher_params": int(sum(p.numel() for p in teacher.parameters())) if teacher else None,
                "packed_rows_from_collator": "DataCollatorWithFlattening, checked equal to the rows",
                "labels": "TRL assistant-only: input_ids where loss_mask 1, -100 elsewhere",
            })
        elif op == "quit":
            break
        else:
            _reply({"error": f"unknown command {op!r}"})


if __name__ == "__main__":
    main()
