"""The ingest report figure: documents per stage, drops by reason, length histogram."""

from __future__ import annotations

from components.common import plots


def write_ingest_png(report: dict, path: str) -> None:
    fig, (a, b, c) = plots.figure(1, 3, size=(15, 4.2))
    stages = report["stages"]
    plots.bars(a, [s[0] for s in stages], [s[1] for s in stages], "documents per stage")
    drops = {**{k: v for k, v in report["skipped"].items() if v}, **{f"filter: {k}": v for k, v in report["filtered"].items()}}
    drops["exact duplicates"] = report["exact_duplicates"]
    drops["near duplicates"] = report["near_duplicates"]
    plots.bars(b, list(drops), list(drops.values()), "dropped, by reason")
    hist: dict[str, int] = {}
    for split_hist in report["length_histogram_log2_bytes"].values():
        for k, v in split_hist.items():
            hist[k] = hist.get(k, 0) + v
    if hist:
        plots.log2_histogram(c, hist, "document length (kept)", "bytes (log2 bins)")
    plots.save_png(fig, path)
