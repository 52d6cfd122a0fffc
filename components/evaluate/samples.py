"""Generated samples (JSONL lines of task_id + completion) with per-line faults kept as data.

Samples come from a model, so one broken line must not stop an evaluation of thousands: a
line that is not JSON, lacks a field or names an unknown task becomes a Sample with an
``error`` that the evaluator records as that sample's result without running anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from components.evaluate.jsonl import iter_json_lines


@dataclass(frozen=True)
class Sample:
    line: int  # 1-based line in the samples file
    task_id: str | None  # None when the line could not be read far enough to know it
    completion: str | None
    error: str | None = None  # why this sample is not run; None for a well-formed sample


def read_samples(path: str | os.PathLike[str], known_tasks: set[str] | None = None) -> list[Sample]:
    """All samples of a .jsonl / .jsonl.gz, in file order; malformed lines carry ``error``.

    Only an unreadable file (missing, broken gzip) raises InputDataError.
    """
    out: list[Sample] = []
    for lineno, row, err in iter_json_lines(path):
        if err:
            out.append(Sample(lineno, None, None, f"malformed sample line {lineno}: {err}"))
            continue
        if not isinstance(row, dict):
            out.append(Sample(lineno, None, None, f"malformed sample line {lineno}: expected a JSON object"))
            continue
        task_id = row.get("task_id")
        if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
            out.append(Sample(lineno, None, None, f"malformed sample line {lineno}: field 'task_id' missing or not a string"))
            continue
        task_id = str(task_id)
        completion = row.get("completion")
        if not isinstance(completion, str):
            error = f"malformed sample line {lineno}: field 'completion' missing or not a string"
            out.append(Sample(lineno, task_id, None, error))
            continue
        if known_tasks is not None and task_id not in known_tasks:
            out.append(Sample(lineno, task_id, completion, f"unknown task_id {task_id!r} (not in the problems file)"))
            continue
        out.append(Sample(lineno, task_id, completion))
    return out
