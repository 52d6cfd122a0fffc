"""`seekline plan [MODEL]`: the capacity planner's command line (formulas in planning/plan.py)."""
from __future__ import annotations

import argparse
import json

from common.errors import UserError

PLAN_EXAMPLES = """\
examples:
  seekline plan -c cluster                               # the cluster preset's pretrain model and shape
  seekline plan deepseek-v3-671b --nodes 32 --gpu h100   # a model preset (or config.json / checkpoint dir)
  seekline plan deepseek-v3-671b --gpu h200 --nodes 16 --seq-len 4096 --micro-batch 1 --flash-attention
  seekline plan path/to/config.json --json
"""


def add_plan_parser(sub, config_args) -> None:
    p = sub.add_parser(
        "plan", help="capacity plan: memory per GPU, step time, nodes needed and the parallelism a model needs",
        description="memory per GPU (weights, gradients, AdamW state, activations with/without recomputation, "
        "MLA/GQA KV cache), step time at an assumed MFU, the nodes data parallelism (+ZeRO-1/2/3) needs, and "
        "whether expert or tensor parallelism is needed (docs/scaling.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PLAN_EXAMPLES)
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="model preset name, config.json or checkpoint dir; default: the config's pretrain.model "
                   "sized by its tokenizer, with its pack.seq_len, micro-batch and pretrain GPUs per node")
    config_args(p)
    p.add_argument("--gpu", choices=["h100", "h200", "a100"], default="h100",
                   help="datasheet defaults: memory, peak BF16 TFLOPS, NVLink and InfiniBand (default h100)")
    p.add_argument("--gpus-per-node", type=int, metavar="N", help="default 8 (or the config's pretrain GPUs)")
    p.add_argument("--gpu-memory-gb", type=float, metavar="G", help="default: the GPU's (80 / 141)")
    p.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes in the cluster (default 1)")
    p.add_argument("--seq-len", type=int, metavar="L", help="training row length (default 4096, or pack.seq_len)")
    p.add_argument("--micro-batch", type=int, metavar="B", help="rows per GPU per micro-step (default 1, or the "
                   "config's pretrain micro_batch_size)")
    p.add_argument("--grad-accum", type=int, metavar="K", help="micro-steps per optimizer step")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed (default 0.4)")
    p.add_argument("--serve-batch", type=int, default=1, metavar="B", help="sequences for the KV cache (default 1)")
    p.add_argument("--serve-context", type=int, metavar="T", help="tokens per sequence for the KV cache "
                   "(default: --seq-len)")
    p.add_argument("--usable-fraction", type=float, default=0.9, metavar="F",
                   help="share of GPU memory a plan may fill (default 0.9)")
    p.add_argument("--flash-attention", action="store_true",
                   help="fused attention: do not count the kept softmax (heads × seq_len per token)")
    p.add_argument("--no-mtp", action="store_true", help="leave the MTP modules out of training")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(fn=cmd_plan)


def _from_pipeline_config(args):
    """(ModelConfig, name, shape defaults) of the -c config's pretraining phase."""
    from configs.schema import load_config
    from model.config import ModelConfig

    config = load_config(args.config, args.overrides)
    pre = config.pretrain
    base = ModelConfig.load(pre.model).to_hf_dict()
    over = dict(pre.model_overrides)
    base.update(over)
    # As components/pretrain sizes it: vocab from the tokenizer, context from the packed rows.
    base["vocab_size"] = config.tokenizer.vocab_size
    base["max_position_embeddings"] = max(int(over.get("max_position_embeddings", 0)), config.pack.seq_len)
    cfg = ModelConfig.from_hf_dict(base, source=f"pretrain.model ({pre.model})")
    gpus = config.resources.for_component("pretrain").gpu
    shape = {"seq_len": config.pack.seq_len, "micro_batch": pre.trainer.micro_batch_size,
             "grad_accum": pre.trainer.grad_accum_steps, "gpus_per_node": gpus or 8}
    return cfg, f"{pre.model} (pretrain.model of {args.config})", shape


def build_plan(args):
    from pydantic import ValidationError

    from model.config import ModelConfig
    from planning.plan import ClusterProfile, plan

    if args.model:
        cfg, name, shape = ModelConfig.load(args.model), args.model, {}
    else:
        cfg, name, shape = _from_pipeline_config(args)
    flags = {"gpu": args.gpu, "nodes": args.nodes, "gpus_per_node": args.gpus_per_node,
             "gpu_memory_gb": args.gpu_memory_gb, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
             "grad_accum": args.grad_accum, "mfu": args.mfu, "serve_batch": args.serve_batch,
             "serve_context": args.serve_context, "usable_fraction": args.usable_fraction,
             "attention_scores": not args.flash_attention, "include_mtp": not args.no_mtp}
    shape.update({k: v for k, v in flags.items() if v is not None})
    try:
        prof = ClusterProfile(**shape)
    except ValidationError as e:
        err = e.errors()[0]
        field = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "plan"
        raise UserError(f"{field}: {err['msg']}") from None
    return plan(cfg, prof, name)


def cmd_plan(args: argparse.Namespace) -> int:
    result = build_plan(args)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from pipelines.cli import _console

    print_plan(result, _console())
    return 0


def _gb(x: float) -> str:
    return f"{x:,.1f} GB"


def print_plan(p, console) -> None:
    from rich.table import Table

    pr = p.profile
    console.print(f"[bold]{p.model}[/] on {pr['nodes']} × {pr['gpus_per_node']} {pr['gpu'].upper()} "
                  f"({pr['gpu_memory_gb']:g} GB, {pr['usable_fraction']:.0%} usable), seq_len {pr['seq_len']}, "
                  f"micro-batch {pr['micro_batch']}")
    t = Table(title="parameters")
    t.add_column("")
    t.add_column("count", justify="right")
    for k, v in p.params.items():
        t.add_row(k, f"{v / 1e9:,.2f} B")
    console.print(t)

    t = Table(title="training memory per GPU, one full replica (no sharding)")
    t.add_column("")
    t.add_column("per GPU", justify="right")
    for k, v in p.memory_gb.items():
        t.add_row(k, _gb(v))
    console.print(t)

    t = Table(title=f"data parallelism on {pr['nodes'] * pr['gpus_per_node']} GPUs (ZeRO stage 0 = plain DP)")
    for col in ("ZeRO", "recompute", "GB/GPU here", "fits here", "min GPUs", "min nodes"):
        t.add_column(col, justify="right")
    for z in p.zero:
        t.add_row(str(z["stage"]), "yes" if z["recompute"] else "no", _gb(z["gb_per_gpu_on_cluster"]),
                  "yes" if z["fits_cluster"] else "[red]no[/]",
                  "never" if z["min_gpus"] is None else str(z["min_gpus"]),
                  "never" if z["min_nodes"] is None else str(z["min_nodes"]))
    console.print(t)

    s = p.step
    t = Table(title=f"step time at MFU {s['mfu']:.0%} (6 × activated params × tokens)")
    t.add_column("")
    t.add_column("", justify="right")
    t.add_row("tokens / step", f"{s['tokens/step']:,}")
    t.add_row("FLOPs / step", f"{s['flops/step']:.3e}")
    t.add_row("compute time / step", f"{s['compute_s']:.3f} s")
    t.add_row("tokens / s", f"{s['tokens/s']:,.0f}")
    t.add_row("gradient all-reduce, pure DP, not overlapped", f"{s['dp_allreduce_s (pure DP, not overlapped)']:.3f} s")
    console.print(t)

    kv = p.kv_cache
    t = Table(title=f"serving: KV cache for {kv['batch']} × {kv['context']:,} tokens")
    t.add_column("")
    t.add_column("this model", justify="right")
    t.add_column("full MHA", justify="right")
    t.add_row("values / token / layer", f"{kv['values/token/layer']:,}", f"{kv['values/token/layer, full MHA']:,}")
    t.add_row("KV cache (bf16)", _gb(kv["kv_cache_gb"]), _gb(kv["kv_cache_gb, full MHA"]))
    t.add_row("weights bf16 / fp8", f"{_gb(kv['weights_gb (bf16)'])} / {_gb(kv['weights_gb (fp8)'])}", "")
    console.print(t)
    console.print(f"[bold]verdict:[/] {p.verdict}")
