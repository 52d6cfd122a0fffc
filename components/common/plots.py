"""Report figures (matplotlib, Agg backend: no display needed), written atomically as PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from components.common.fileio import atomic_write_bytes  # noqa: E402


def save_png(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.tight_layout()  # keeps long bar labels clear of the neighbouring panel
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def bars(ax, labels: Sequence[str], values: Sequence[float], title: str) -> None:
    ax.barh(list(labels)[::-1], list(values)[::-1], color="#4878a8")
    for i, v in enumerate(list(values)[::-1]):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)


def log2_histogram(ax, counts: dict[str, int], title: str, xlabel: str) -> None:
    """counts: {str(k): n} with k the floor(log2(value)) bin."""
    ks = sorted(int(k) for k in counts)
    ax.bar([2**k for k in ks], [counts[str(k)] for k in ks], width=[2**k for k in ks], align="edge",
           color="#5a9e6f", edgecolor="white")
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=8)


def figure(nrows: int, ncols: int, size=(11, 4)):
    return plt.subplots(nrows, ncols, figsize=size)
