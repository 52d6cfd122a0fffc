"""The per-run data report figure: documents per stage (ingest), tokens written per split,
document length in tokens."""

from __future__ import annotations

from components.common import plots


def write_data_png(report: dict, path: str) -> None:
    fig, axes = plots.figure(1, 3, size=(15, 4.2))
    ingest = report.get("ingest") or {}
    stages = list(ingest.get("stages", []))
    stages.append(["duplicates removed", ingest.get("exact_duplicates", 0) + ingest.get("near_duplicates", 0)])
    plots.bars(axes[0], [s[0] for s in stages], [s[1] for s in stages], "documents per stage")
    splits = list(report["tokens_written"])
    plots.bars(
        axes[1],
        [f"{s} tokens" for s in splits] + [f"{s} padding" for s in splits],
        [report["tokens_written"][s] for s in splits] + [report["pad_tokens"][s] for s in splits],
        f"tokens written (seq_len {report['seq_len']})",
    )
    hist: dict[str, int] = {}
    for split_hist in report["document_tokens_histogram_log2"].values():
        for k, v in split_hist.items():
            hist[k] = hist.get(k, 0) + v
    if hist:
        plots.log2_histogram(axes[2], hist, "document length", "tokens (log2 bins)")
    plots.save_png(fig, path)
