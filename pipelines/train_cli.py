"""`seekline train PHASE`: one training phase's plain function, outside TFX.

The same command a Kubeflow TFJob worker runs (TF_CONFIG picks MultiWorkerMirroredStrategy);
re-running it with the same --output resumes from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import os

from common.errors import UserError

PHASES = ("pretrain", "context_extension", "sft", "grpo", "distill")
# The phase whose newest model a phase starts from (--init default).
INIT_FROM = {"context_extension": ("pretrain",), "sft": ("context_extension", "pretrain"), "grpo": ("sft",),
             "distill": ("grpo", "sft")}
# What _print_report shows (each key only when the phase's report has it).
REPORT_KEYS = ("steps", "target_steps", "eval_loss", "eval_perplexity", "eval_unigram_entropy", "eval_kl_to_teacher",
               "eval_reward_mean", "eval_success_rate", "eval_kl_to_reference", "skipped_steps", "tokens_per_s")


def add_train_parser(sub, config_args) -> None:
    p = sub.add_parser(
        "train", help="run one training phase outside TFX (resumes when re-run with the same --output)",
        description="run one training phase's plain function outside TFX: the command a TFJob worker "
        "runs. Re-running it with the same --output resumes from the newest checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAIN_EXAMPLES)
    p.add_argument("phase", choices=PHASES, metavar="PHASE", help=f"one of: {', '.join(PHASES)}")
    config_args(p)
    p.add_argument("--data", metavar="DIR",
                   help="pretrain: packed rows (a pack artifact folder); context_extension, sft: text examples "
                   "(an ingest artifact folder; sft also reads sft.data_files); distill: packed rows with "
                   "loss masks (default: the teacher's SFT rows, TEACHER/data, or for a GRPO teacher the rows of "
                   "the SFT model it started from); grpo: none (its tasks are "
                   "grpo.families / grpo.task_files). Default: the newest one of this config's local pipeline")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="tokenizer artifact; default: the one in --init's final/ (context_extension), else "
                   "the one --data was packed with (ML Metadata)")
    p.add_argument("--init", metavar="DIR",
                   help="the model the phase starts from (an output folder or its final/): "
                   "context_extension: the pretrained model; sft: the base model (default: the newest "
                   "context_extension, else pretrain artifact); grpo: the policy to optimise, also the frozen "
                   "KL reference (default: grpo.init, else the newest sft artifact); distill: the teacher "
                   "(default: the newest grpo, else sft artifact)")
    p.add_argument("--output", required=True, metavar="DIR", help="where checkpoints, reports and final/ go")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after step N (resume later for the rest)")
    p.add_argument("--checkpoint-every", type=int, metavar="K", help="checkpoint every K steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(fn=cmd_train)


TRAIN_EXAMPLES = """\
examples:
  seekline train pretrain --output runs/pt                      # newest packed data of the tiny pipeline
  seekline train pretrain --output runs/pt --max-steps 50       # stop at 50; re-run to finish
  seekline train pretrain --data outputs/tiny/pipeline/pack/packed/3 --output runs/pt \\
      --set pretrain.trainer.lr=1e-3
  seekline train context_extension --init runs/pt --output runs/ce
  seekline train sft --init runs/ce --output runs/sft --set sft.data_files=chats.jsonl
  seekline train sft --init qwen2.5-0.5b/ --output runs/lora --set sft.lora.enabled=true
  seekline train grpo --init runs/sft --output runs/grpo --max-steps 20   # tokenizer + tasks: no --data
  seekline train grpo --init runs/sft --output runs/grpo --set 'grpo.task_files=[mbpp.jsonl]' \\
      --set 'grpo.families=[]'
  seekline train distill --init runs/grpo --output runs/student   # rows: runs/sft/data (via runs/grpo's init)
  TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
      seekline train pretrain --output /shared/pt                # one per worker (a TFJob does this)
"""


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise UserError(f"{name} must be >= 1 (got {v})")


def resolve_inputs(config, phase: str, data: str | None, tokenizer: str | None) -> tuple[str, str]:
    """--data / --tokenizer, defaulting to the newest pack execution of the local pipeline:
    its packed rows (pretrain) or the text examples it packed (context_extension re-packs the
    documents into longer rows), and the tokenizer it used."""
    from pipelines.artifacts import latest_execution_artifacts, producer_inputs
    from pipelines.local import local_paths

    meta = local_paths(config).metadata
    if data is None:
        arts = latest_execution_artifacts(meta, config.pipeline.name, "pack")
        data = arts["outputs"].get("packed") if phase == "pretrain" else arts["inputs"].get("examples")
        tokenizer = tokenizer or arts["inputs"].get("tokenizer")
    if tokenizer is None:
        tokenizer = producer_inputs(meta, data).get("tokenizer")
        if tokenizer is None:
            raise UserError(f"{data}: cannot tell which tokenizer these rows were packed with; pass --tokenizer")
    return data, tokenizer


def resolve_init(config, phase: str, init: str | None) -> str:
    """--init as an HF-layout folder (OUTPUT/final when given a phase's output folder); default:
    the newest model of the phase this one starts from."""
    from pipelines.artifacts import latest_execution_artifacts
    from pipelines.local import local_paths

    if init is None:
        sources = INIT_FROM[phase]
        for i, source in enumerate(sources):
            try:
                arts = latest_execution_artifacts(local_paths(config).metadata, config.pipeline.name, source)
            except UserError:
                if i == len(sources) - 1:
                    raise
                continue
            init = arts["outputs"]["model"]
            break
    final = os.path.join(init, "final")
    return final if os.path.isdir(final) else init


def _teacher_rows(teacher_final: str) -> str:
    """The SFT rows a teacher was fine-tuned on: TEACHER/data next to its final/, else (a GRPO
    teacher) the rows of the model it started from, followed through report.json's "init"."""
    import json

    from components.sft.sft import DATA_DIR

    model = teacher_final
    for _ in range(4):
        out = os.path.dirname(os.path.normpath(model))
        rows = os.path.join(out, DATA_DIR)
        if os.path.isdir(rows):
            return rows
        report = os.path.join(out, "report.json")
        if not os.path.exists(report):
            break
        with open(report, encoding="utf-8") as f:
            model = json.load(f).get("init") or ""
        if not model:
            break
    raise UserError(f"{teacher_final}: no SFT rows beside the teacher or the model it was trained from "
                    f"(looked for {DATA_DIR}/ next to final/); pass --data")


def cmd_train(args: argparse.Namespace) -> int:
    from configs.schema import save_config
    from pipelines.cli import _load

    _positive("--max-steps", args.max_steps)
    _positive("--checkpoint-every", args.checkpoint_every)
    config = _load(args)
    section = getattr(config, args.phase)
    # The strategy must exist before any other TF op (MultiWorkerMirroredStrategy).
    from training.strategy import make_runtime
    runtime = make_runtime(section.trainer.strategy, section.trainer.precision)
    init = None
    own_init = getattr(section, "init", None)      # sft.init / grpo.init name the model in the config
    if args.phase == "grpo" and own_init and args.init:
        raise UserError(f"both grpo.init ({own_init}) and --init ({args.init}) name the model; pass one")
    if args.phase in INIT_FROM and not (args.phase in ("sft", "grpo") and own_init and args.init is None):
        init = resolve_init(config, args.phase, args.init)
    tokenizer = args.tokenizer
    if tokenizer is None and init and os.path.exists(os.path.join(init, "tokenizer_meta.json")):
        tokenizer = init  # an exported model carries the tokenizer it was trained with
    if args.phase == "grpo":
        if args.data or args.tokenizer:
            raise UserError("train grpo takes no --data/--tokenizer: the tasks are grpo.families / grpo.task_files "
                            "and the tokenizer is the one in the --init model folder")
        data = None
    elif args.phase == "distill":
        data = args.data or _teacher_rows(init)
    elif args.phase == "sft" and args.data is None and not config.sft.corpus_instructions:
        data = None         # sft.data_files only
    else:
        data, tokenizer = resolve_inputs(config, args.phase, args.data, tokenizer)
    from components.pretrain.pretrain import check_output_dir
    check_output_dir(args.output)
    if runtime.is_chief:
        save_config(config, os.path.join(args.output, "config.yaml"))
    common = dict(runtime=runtime, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                  progress=not args.no_progress)
    if args.phase == "pretrain":
        from components.pretrain.pretrain import run_pretrain
        report = run_pretrain(section, data, tokenizer, args.output, **common)
    elif args.phase == "context_extension":
        from components.context_extension.extend import run_context_extension
        report = run_context_extension(section, init, data, tokenizer, args.output, **common)
    elif args.phase == "sft":
        from components.sft.sft import run_sft
        report = run_sft(section, init, data, tokenizer, args.output, **common)
    elif args.phase == "grpo":
        from components.grpo.grpo import run_grpo
        report = run_grpo(section, init, args.output, **common)
    else:
        from components.distill.distill import run_distill
        report = run_distill(section, init, data, tokenizer, args.output, **common)
    _print_report(report, args.output)
    return 0


def _print_report(report: dict, output: str) -> None:
    from rich.console import Console

    # soft_wrap: never break a line (a path split over two lines cannot be copied); the terminal wraps
    c = Console(highlight=False, soft_wrap=True)
    c.print("  ".join(f"{k}={report[k]:.4g}" if isinstance(report.get(k), float) else f"{k}={report.get(k)}"
                      for k in REPORT_KEYS if k in report))
    before = report.get("before") or {}
    if isinstance(before.get("eval_reward_mean"), float) and isinstance(report.get("eval_reward_mean"), float):
        c.print(f"held-out reward: {before['eval_reward_mean']:.4g} before -> {report['eval_reward_mean']:.4g} after")
    if "final" in report:
        c.print(f"final weights: {report['final']}")
    c.print(f"report: {os.path.join(output, 'report.json')}")
