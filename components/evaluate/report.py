"""report.png (pass@k bars: candidate vs teacher vs baseline) and a small self-contained report.html."""
from __future__ import annotations

import html
import io
import json
import os

from common.fileio import atomic_write_bytes, atomic_write_text

ROLES = ("candidate", "teacher", "baseline")


def _ks(summary: dict) -> list[str]:
    """pass@k keys every evaluated model has, in k order."""
    roles = [r for r in ROLES if r in summary]
    keys = [set(k for k in summary[r] if k.startswith("pass@")) for r in roles]
    common = set.intersection(*keys) if keys else set()
    return sorted(common, key=lambda k: int(k.split("@")[1]))


def plot_png(summary: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [r for r in ROLES if r in summary]
    ks = _ks(summary)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    width = 0.8 / max(len(roles), 1)
    for i, role in enumerate(roles):
        xs = [j + (i - (len(roles) - 1) / 2) * width for j in range(len(ks))]
        vals = [summary[role][k] for k in ks]
        bars = ax.bar(xs, vals, width, label=role)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8)
    ax.set_xticks(range(len(ks)), ks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass@k")
    verdict = "BLESSED" if summary["blessing"]["blessed"] else "NOT BLESSED"
    ax.set_title(f"{len(summary['problems'])} problems, n={summary['settings']['n_samples']} — {verdict}")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_html(summary: dict, per_problem: dict[str, list[dict]]) -> str:
    esc = html.escape
    roles = [r for r in ROLES if r in summary]
    ks = _ks(summary)
    b = summary["blessing"]
    head = "".join(f"<th>{esc(k)}</th>" for k in ks)
    rows = "".join(
        f"<tr><td>{esc(r)}</td><td>{esc(str(summary[r].get('model', '')))}</td>"
        f"<td>{esc(str(summary[r].get('prompt_mode', '')))}</td>"
        + "".join(f"<td>{summary[r][k]:.4f}</td>" for k in ks) + "</tr>" for r in roles)
    rules = "".join(f"<li>{'✔' if x['passed'] else '✘'} <b>{esc(x['rule'])}</b>: {esc(x['reason'])}</li>"
                    for x in b["rules"])
    by_task = {r: {p["task_id"]: p for p in per_problem.get(r, [])} for r in roles}
    prob_head = "".join(f"<th>{esc(r)} c/n</th>" for r in roles)
    prob_rows = "".join(
        f"<tr><td>{esc(t)}</td>" + "".join(
            f"<td>{by_task[r][t]['c']}/{by_task[r][t]['n']}</td>" if t in by_task[r] else "<td>-</td>" for r in roles)
        + "</tr>" for t in summary["problems"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>seekline evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body><h1>Evaluation: {'BLESSED' if b['blessed'] else 'NOT BLESSED'}</h1>
<img src="report.png" alt="pass@k bars">
<h2>pass@k</h2><table><tr><th>role</th><th>model</th><th>prompt</th>{head}</tr>{rows}</table>
<h2>Blessing rules</h2><ul>{rules}</ul>
<h2>Settings</h2><pre>{esc(json.dumps(summary['settings'], indent=1))}</pre>
<h2>Problems</h2><table><tr><th>task</th>{prob_head}</tr>{prob_rows}</table>
</body></html>
"""


def write_report(summary: dict, output_dir: str) -> None:
    """OUTPUT/report.png + OUTPUT/report.html (per-problem counts read from OUTPUT/<role>/per_problem.jsonl)."""
    per_problem: dict[str, list[dict]] = {}
    for role in ROLES:
        path = os.path.join(output_dir, role, "per_problem.jsonl")
        if role in summary and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                per_problem[role] = [json.loads(line) for line in f if line.strip()]
    atomic_write_bytes(os.path.join(output_dir, "report.png"), plot_png(summary))
    atomic_write_text(os.path.join(output_dir, "report.html"), render_html(summary, per_problem))
