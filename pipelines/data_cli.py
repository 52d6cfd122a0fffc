"""`seekline data`: build agent-distillation data from the command line.

  trajectories   a teacher (an OpenAI-compatible endpoint or a local seekline model folder) solves
                 agent tasks with tools → a trajectory JSONL (resumes when re-run with the same
                 --out) + its quality report (<out>.report.json / .png) + a summary on stdout
  segment        trajectory JSONL → the same lines plus "spans" [[start, end, label]]
  agent-dataset  trajectory JSONL → token rows with the span / process-supervision masks, in the
                 split-folder layout training/data.py opens

Thin: check the flags, call components/agent, print what happened. Bad input is a one-line
UserError naming the file or flag (exit 2, as every seekline command).
"""
from __future__ import annotations

import argparse
import os
import sys

from common.errors import UserError

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "none"  # --api-key-env none: a local endpoint that checks no key


def add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="agent distillation data: teacher trajectories, segmentation, token datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    p = dsub.add_parser(
        "trajectories", help="a teacher solves agent tasks with tools → trajectory JSONL + quality report",
        description="run the agent loop (Thought / Action / Observation, tools python, retrieve, finish) with a "
        "teacher on HumanEval / procedural coding / arithmetic tasks; one JSON line per trajectory, appended and "
        "fsynced one by one, so re-running with the same --out resumes. The quality report goes beside it as "
        "OUT.report.json and OUT.report.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TRAJECTORY_EXAMPLES)
    src = p.add_argument_group("teacher (exactly one: --teacher-url with --teacher-model, or --teacher-model-dir)")
    src.add_argument("--teacher-url", metavar="URL", help="OpenAI-compatible base URL, e.g. https://api.x.com/v1")
    src.add_argument("--teacher-model", metavar="NAME", help="the model name the endpoint serves")
    src.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="VAR",
                     help=f"environment variable holding the API key (default {DEFAULT_API_KEY_ENV}; "
                     f"'{NO_KEY}' for a local endpoint that checks no key)")
    src.add_argument("--teacher-model-dir", metavar="DIR",
                     help="a seekline model folder (HF layout with tokenizer.json) run in this process")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="trajectory JSONL (appended to; resumes)")
    tasks = p.add_argument_group("tasks (at least one count > 0)")
    tasks.add_argument("--humaneval", type=int, default=0, metavar="N", help="the first N HumanEval problems")
    tasks.add_argument("--coding", type=int, default=0, metavar="N", help="N procedural coding tasks")
    tasks.add_argument("--arithmetic", type=int, default=0, metavar="N", help="N procedural arithmetic tasks")
    p.add_argument("--samples-per-task", type=int, default=1, metavar="K", help="trajectories per task (default 1)")
    p.add_argument("--max-steps", type=int, default=8, metavar="S", help="teacher replies per trajectory (default 8)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="T", help="tokens per teacher reply (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="X", help="sampling temperature (default 0)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="task generation seed and the teacher's sampling seed (+ sample index); default 0")
    p.add_argument("--corpus", metavar="DIR",
                   help="enables the retrieve tool (BM25): an ingest output folder or a folder of .txt/.md/.py files")
    p.add_argument("--rpm", type=int, metavar="N", help="teacher requests per minute (client-side limit)")
    p.add_argument("--tpm", type=int, metavar="N", help="teacher tokens per minute (client-side limit)")
    p.set_defaults(fn=cmd_trajectories)

    p = dsub.add_parser(
        "segment", help="add REASON / ACT / OBSERVATION character spans to each trajectory line",
        description="read a JSONL whose lines have a 'text' trajectory; write each line again with 'spans' "
        "[[start, end, label]] (character offsets, end exclusive). Malformed lines are left out and listed "
        "as FILE:LINE.")
    p.add_argument("input", metavar="IN.jsonl")
    p.add_argument("output", metavar="OUT.jsonl")
    p.set_defaults(fn=cmd_segment)

    p = dsub.add_parser(
        "agent-dataset", help="trajectory JSONL → token rows with reason/action (+ process-step) masks",
        description="tokenize trajectories (segmenting the ones without 'spans') into seq_len rows with "
        "reason_mask / action_mask / loss_mask and, unless --no-process-supervision, the tool-name, JSON-validity "
        "and observation-integration masks; writes OUT_DIR/Split-train, Split-eval, config.json, report.json.")
    p.add_argument("input", metavar="IN.jsonl")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--tokenizer-path", required=True, metavar="DIR",
                   help="a folder with tokenizer.json (a tokenizer artifact or a model folder) or the file itself")
    p.add_argument("--seq-len", type=int, required=True, metavar="N", help="tokens per row (longer rows are cut)")
    p.add_argument("--no-process-supervision", action="store_true",
                   help="leave out the tool-name / JSON-validity / integration masks")
    p.add_argument("--eval-fraction", type=float, default=0.1, metavar="F",
                   help="share of tasks in Split-eval, by a hash of the task id (default 0.1)")
    p.add_argument("--require-success", action="store_true", help="keep only trajectories whose success is true")
    p.add_argument("--no-format-targets", action="store_true",
                   help="masks exactly the spans' tokens: the labels (Thought:, Action:, the Observation: that ends a "
                   "turn) get no loss, so a student does not learn to write the format")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="split hash and train-order seed (default 0)")
    p.set_defaults(fn=cmd_agent_dataset)


TRAJECTORY_EXAMPLES = """\
examples:
  seekline data trajectories --teacher-url https://api.deepseek.com/v1 --teacher-model deepseek-chat \\
      --api-key-env DEEPSEEK_API_KEY --humaneval 164 --coding 200 --out data/traj.jsonl --rpm 60
  seekline data trajectories --teacher-url http://127.0.0.1:8000/v1 --teacher-model local --api-key-env none \\
      --arithmetic 50 --out traj.jsonl
  seekline data trajectories --teacher-model-dir out/model --coding 20 --out traj.jsonl --samples-per-task 4 \\
      --temperature 0.7
  seekline data segment traj.jsonl traj.spans.jsonl
  seekline data agent-dataset traj.spans.jsonl data/agent --tokenizer-path out/model --seq-len 1024
"""


# ---------------------------------------------------------------------------------------
# trajectories


def _at_least(flag: str, value, low) -> None:
    if value is not None and value < low:
        raise UserError(f"{flag} must be >= {low} (got {value})")


def _teacher(args: argparse.Namespace):
    from components.agent.teacher import ModelTeacher, OpenAITeacher

    remote = args.teacher_url is not None or args.teacher_model is not None
    if remote and args.teacher_model_dir is not None:
        raise UserError("give one teacher: --teacher-url/--teacher-model or --teacher-model-dir, not both")
    if args.teacher_model_dir is not None:
        if args.rpm is not None or args.tpm is not None:
            raise UserError("--rpm/--tpm limit a remote teacher; --teacher-model-dir runs in this process")
        if not os.path.isdir(args.teacher_model_dir):
            raise UserError(f"--teacher-model-dir {args.teacher_model_dir}: no such folder")
        return ModelTeacher(args.teacher_model_dir)
    if not remote:
        raise UserError("no teacher: give --teacher-url URL --teacher-model NAME, or --teacher-model-dir DIR")
    if args.teacher_url is None or args.teacher_model is None:
        missing = "--teacher-url" if args.teacher_url is None else "--teacher-model"
        raise UserError(f"a remote teacher needs both --teacher-url and --teacher-model ({missing} is missing)")
    if not args.teacher_url.startswith(("http://", "https://")):
        raise UserError(f"--teacher-url {args.teacher_url!r}: expected an http(s):// base URL, e.g. "
                        "https://api.openai.com/v1")
    key_env = None if args.api_key_env.lower() == NO_KEY else args.api_key_env
    return OpenAITeacher(args.teacher_url, args.teacher_model, api_key_env=key_env,
                         requests_per_minute=args.rpm, tokens_per_minute=args.tpm)


def report_paths(out_jsonl: str) -> tuple[str, str]:
    """(json, png) of the quality report beside a trajectory file: OUT.report.json / OUT.report.png."""
    return f"{out_jsonl}.report.json", f"{out_jsonl}.report.png"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def summary_lines(summary: dict, run: dict) -> list[str]:
    """The one-screen summary of a trajectory file (report.summarize) and of this run."""
    verdict = "meets" if summary["meets_target"] else "below"
    hist = ", ".join(f"{k}: {v}" for k, v in summary["steps_histogram"].items()) or "none"
    mean = summary["mean_steps"]
    lines = [
        f"this run: {run['generated']} generated, {run['skipped']} already in the file"
        + (f", {run['torn_lines_dropped']} torn last line regenerated" if run["torn_lines_dropped"] else ""),
        f"trajectories: {summary['trajectories']} ({summary['finished']} finished; verified "
        f"{summary['verified']['passed']} passed, {summary['verified']['failed']} failed, "
        f"{summary['verified']['unchecked']} unchecked; {summary['teacher_errors']} ended by teacher errors)",
        f"success rate: {_pct(summary['success_rate'])} ({summary['successful']}/{summary['trajectories']}), "
        f"{verdict} the {summary['success_target']:.0%} target",
        f"tool error rate: {_pct(summary['tool_error_rate'])} ({summary['tool_errors']}/{summary['tool_calls']} calls); "
        f"format error rate: {_pct(summary['format_error_rate'])}",
        f"steps per trajectory: mean {'n/a' if mean is None else f'{mean:.2f}'} (histogram {hist})",
        "calls per tool: " + (", ".join(f"{k} {v} ({summary['per_tool_errors'][k]} errors)"
                                        for k, v in summary["per_tool_calls"].items()) or "none"),
    ]
    return lines


def cmd_trajectories(args: argparse.Namespace) -> int:
    from components.agent.loop import generate_trajectories, load_tasks, read_records
    from components.agent.report import write_report
    from components.agent.tools import build_tools, load_corpus

    for flag, value, low in (("--humaneval", args.humaneval, 0), ("--coding", args.coding, 0),
                             ("--arithmetic", args.arithmetic, 0), ("--samples-per-task", args.samples_per_task, 1),
                             ("--max-steps", args.max_steps, 1), ("--max-tokens", args.max_tokens, 1),
                             ("--temperature", args.temperature, 0), ("--rpm", args.rpm, 1), ("--tpm", args.tpm, 1)):
        _at_least(flag, value, low)
    if not args.humaneval + args.coding + args.arithmetic:
        raise UserError("no tasks: give --humaneval N, --coding N and/or --arithmetic N")
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: is a folder; give the trajectory file, e.g. {args.out}/traj.jsonl")
    corpus = load_corpus(args.corpus) if args.corpus else None   # before the teacher: fail fast on a bad path
    tasks = load_tasks(humaneval=args.humaneval, coding=args.coding, arithmetic=args.arithmetic, seed=args.seed)
    teacher = _teacher(args)
    print(f"{len(tasks)} tasks × {args.samples_per_task} samples, teacher {teacher.name} → {args.out}",
          file=sys.stderr)
    run = generate_trajectories(teacher, tasks, args.out, samples_per_task=args.samples_per_task,
                                tools=build_tools(corpus), max_steps=args.max_steps, max_tokens=args.max_tokens,
                                temperature=args.temperature, seed=args.seed)
    records, _ = read_records(args.out)
    report_json, report_png = report_paths(args.out)
    summary = write_report(records, os.path.dirname(os.path.abspath(args.out)),
                           os.path.basename(report_json)[: -len(".json")])
    for line in summary_lines(summary, run):
        print(line)
    stats = getattr(teacher, "stats", None)
    if stats:
        errors = {k: v for k, v in stats.get("errors", {}).items() if v}
        print(f"teacher: {stats.get('requests', 0)} requests, {stats.get('retries', 0)} retries, "
              f"{stats.get('failures', 0)} failures" + (f" (errors: {errors})" if errors else ""))
    print(f"report: {report_json}, {report_png}")
    return 0


# ---------------------------------------------------------------------------------------
# segment


def cmd_segment(args: argparse.Namespace) -> int:
    from components.agent.segment import segment_records

    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise UserError(f"segment: OUT.jsonl must differ from IN.jsonl ({args.input}); the input is kept as is")
    if os.path.isdir(args.output):
        raise UserError(f"segment: OUT.jsonl {args.output} is a folder")
    report = segment_records(args.input, args.output)
    for e in report["errors"]:
        print(e, file=sys.stderr)
    if report["malformed"] > len(report["errors"]):
        print(f"... and {report['malformed'] - len(report['errors'])} more malformed lines", file=sys.stderr)
    spans = ", ".join(f"{k} {v}" for k, v in report["spans"].items())
    print(f"records: {report['records']} segmented, {report['malformed']} malformed lines left out")
    print(f"spans: {spans}; records without an Action: {report['records_without_action']}")
    print(f"wrote {report['output']}")
    return 0


# ---------------------------------------------------------------------------------------
# agent-dataset


def _tokenizer_file(path: str) -> str:
    f = path if path.endswith(".json") else os.path.join(path, "tokenizer.json")
    if "://" not in f and not os.path.isfile(f):
        raise UserError(f"--tokenizer-path {path}: no tokenizer.json there (give a tokenizer or model folder, "
                        "or the tokenizer.json file)")
    return f


def cmd_agent_dataset(args: argparse.Namespace) -> int:
    from components.agent.dataset import build_agent_dataset_files

    _at_least("--seq-len", args.seq_len, 2)
    if not 0.0 <= args.eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be in [0, 1) (got {args.eval_fraction})")
    _tokenizer_file(args.tokenizer_path)
    if "://" not in args.input and not os.path.isfile(args.input):
        raise UserError(f"agent-dataset: IN.jsonl {args.input}: no such file")
    if os.path.isfile(args.out_dir):
        raise UserError(f"agent-dataset: OUT_DIR {args.out_dir} is a file")
    report = build_agent_dataset_files(args.input, args.out_dir, tokenizer_path=args.tokenizer_path,
                                       seq_len=args.seq_len, process_supervision=not args.no_process_supervision,
                                       eval_fraction=args.eval_fraction, seed=args.seed,
                                       require_success=args.require_success,
                                       format_targets=not args.no_format_targets)
    for e in report["malformed"]["first"]:
        print(e, file=sys.stderr)
    for split in ("train", "eval"):
        r = report[split]
        for why in r["skipped_reasons"][:5]:
            print(f"{args.input}: {split}: skipped {why}", file=sys.stderr)
        print(f"{split}: {r['rows']} rows from {r['records']} records ({r['skipped']} skipped, "
              f"{r['no_targets']} without targets, {r['truncated']} cut at {args.seq_len} tokens); "
              f"{r['tokens']} tokens: reason {r['reason_tokens']}, action {r['action_tokens']}"
              + (f", tool name {r['tool_name_tokens']}, json {r['json_tokens']}, "
                 f"integration {r['integration_tokens']}" if report["process_supervision"] else ""))
    dropped = report["not_successful_dropped"]
    print(f"malformed lines: {report['malformed']['count']}"
          + (f"; not successful, dropped: {dropped}" if args.require_success else ""))
    print(f"process supervision: {'on' if report['process_supervision'] else 'off'}")
    print(f"wrote {args.out_dir} (report.json, config.json)")
    return 0
