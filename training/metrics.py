"""Run metrics: TensorBoard scalars, a resumable metrics.jsonl and the loss-curve PNG."""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

METRICS_FILE = "metrics.jsonl"


def expert_load_stats(loads: list[np.ndarray]) -> dict[str, float]:
    """Per MoE layer: max/min load as a share of the mean and the coefficient of variation."""
    out: dict[str, float] = {}
    for i, load in enumerate(loads):
        load = np.asarray(load, np.float64)
        mean = load.mean()
        if mean <= 0:
            continue
        out[f"expert_load/layer{i}_max_over_mean"] = float(load.max() / mean)
        out[f"expert_load/layer{i}_min_over_mean"] = float(load.min() / mean)
        out[f"expert_load/layer{i}_cv"] = float(load.std() / mean)
    return out


class MetricsLog:
    """Chief-only writer: TensorBoard events under tensorboard/, one JSON line per logged step.

    On resume the JSONL keeps only lines up to the restored step, so a curve never shows steps
    from a run segment whose weights were lost with the kill.
    """

    def __init__(self, output_dir: str, enabled: bool, resume_step: int):
        self.enabled = enabled
        self.path = os.path.join(output_dir, METRICS_FILE)
        self.rows: list[dict] = []
        if not enabled:
            return
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a torn last line from a kill mid-write
                    if row.get("step", 0) <= resume_step:
                        self.rows.append(row)
            self._rewrite()
        self.writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))

    def _rewrite(self) -> None:
        # Whole-file rewrite + rename through tf.io.gfile: object stores (gs://, s3://) have no
        # append, and a reader never sees a torn file. The file is one line per logged step.
        tmp = self.path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.rows))
        tf.io.gfile.rename(tmp, self.path, overwrite=True)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self.rows.append(row)
        self._rewrite()
        with self.writer.as_default(step=step):
            for k, v in values.items():
                tf.summary.scalar(k, float(v))
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def plot_loss_curve(rows: list[dict], path: str, title: str) -> None:
    """train loss (+ eval loss where logged) against step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    lm = [(r["step"], r["lm_loss"]) for r in rows if "lm_loss" in r]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if lm:
        # the held-out number is next-token CE: plot the train CE beside it, the objective
        # (CE + λ·MTP + α·balance) apart so the two are not read as a gap
        ax.plot(*zip(*lm, strict=True), label="train next-token loss", lw=1.4)
        ax.plot(*zip(*tr, strict=True), label="train objective (+ MTP, balance)", lw=0.9, ls="--", alpha=0.7)
    elif tr:
        ax.plot(*zip(*tr, strict=True), label="train loss", lw=1.2)
    if ev:
        ax.plot(*zip(*ev, strict=True), "o-", label="held-out loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
