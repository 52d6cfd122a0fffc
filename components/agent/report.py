"""Quality report of a trajectory set (JSON + PNG): success rate against the seed's 90 % target,
tool error rate, format error rate, steps per trajectory, calls per tool.

Rates: success = successful trajectories / trajectories; tool error rate = failed tool calls /
tool calls (a call is a step whose Action parsed); format error rate = replies that could not be
parsed / teacher replies (steps)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

from components.common.fileio import atomic_write_json

SUCCESS_TARGET = 0.90  # seed "DeepCoder" plan: >= 90 % successful trajectories


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(records: Sequence[dict]) -> dict:
    n = len(records)
    steps = [len(r["steps"]) for r in records]
    calls, errors = Counter(), Counter()
    for r in records:
        for s in r["steps"]:
            if s.get("action"):
                name = s["action"]["name"]
                calls[name] += 1
                errors[name] += s.get("error") is not None
    n_calls, n_replies = sum(calls.values()), sum(steps)
    success = sum(bool(r["success"]) for r in records)
    rate = _rate(success, n)
    return {
        "trajectories": n,
        "successful": success,
        "success_rate": rate,
        "success_target": SUCCESS_TARGET,
        "meets_target": rate is not None and rate >= SUCCESS_TARGET,
        "finished": sum(bool(r["finished"]) for r in records),
        "verified": {"passed": sum(r["verified"] is True for r in records),
                     "failed": sum(r["verified"] is False for r in records),
                     "unchecked": sum(r["verified"] is None for r in records)},
        "teacher_errors": sum(bool(r.get("error")) and str(r["error"]).startswith("teacher:") for r in records),
        "tool_calls": n_calls,
        "tool_errors": sum(r["tool_errors"] for r in records),
        "tool_error_rate": _rate(sum(r["tool_errors"] for r in records), n_calls),
        "format_errors": sum(r["format_errors"] for r in records),
        "format_error_rate": _rate(sum(r["format_errors"] for r in records), n_replies),
        "steps_histogram": {str(k): v for k, v in sorted(Counter(steps).items())},
        "mean_steps": _rate(n_replies, n),
        "per_tool_calls": dict(sorted(calls.items())),
        "per_tool_errors": {k: errors[k] for k in sorted(calls)},
        "teachers": sorted({r["teacher"] for r in records}),
    }


def write_report(records: Sequence[dict], out_dir: str, name: str = "agent_quality") -> dict:
    """summarize(records) written as <out_dir>/<name>.json and a 3-panel <name>.png."""
    from components.common import plots

    summary = summarize(records)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(os.path.join(out_dir, f"{name}.json"), summary)
    fig, (a, b, c) = plots.figure(1, 3, size=(13, 3.8))
    rates = [("success", summary["success_rate"]), ("tool errors", summary["tool_error_rate"]),
             ("format errors", summary["format_error_rate"])]
    a.bar([k for k, _ in rates], [v or 0.0 for _, v in rates], color=["#5a9e6f", "#c0504d", "#d99a3c"])
    a.axhline(SUCCESS_TARGET, color="#5a9e6f", ls="--", lw=1, label=f"success target {SUCCESS_TARGET:.0%}")
    a.set_ylim(0, 1)
    a.set_title(f"rates over {summary['trajectories']} trajectories", fontsize=10)
    a.legend(fontsize=7)
    hist = summary["steps_histogram"]
    b.bar([int(k) for k in hist], list(hist.values()), color="#4878a8")
    b.set_xlabel("steps (teacher replies)", fontsize=8)
    b.set_title("steps per trajectory", fontsize=10)
    plots.bars(c, list(summary["per_tool_calls"]), list(summary["per_tool_calls"].values()), "calls per tool")
    plots.save_png(fig, os.path.join(out_dir, f"{name}.png"))
    return summary
