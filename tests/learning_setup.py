"""The real tiny pipeline the learning checks train on (tests/test_learning_check*.py): the tiny
preset's data phases on its stdlib slice, plus pretraining, through the real DAG; and the spread /
results helpers they share."""
from __future__ import annotations

import json
import statistics

from pipelines.artifacts import latest_execution_artifacts
from pipelines.cli import main


def tiny_pipeline(root, pretrain_steps: int, seed: int = 0) -> dict:
    """Runs the DAG into root/out (evaluate and export of the pretrained model are left out: no
    check reads them) -> the artifact paths the checks use and an empty results dict."""
    out = root / "out"
    sets = [f"pipeline.output_dir={out}", "context_extension.enabled=false", "sft.enabled=false",
            "evaluate.enabled=false", f"pretrain.trainer.steps={pretrain_steps}", f"pretrain.trainer.seed={seed}"]
    if pretrain_steps < 10:
        sets.append("pretrain.trainer.warmup_steps=0")
    assert main(["run", *[a for kv in sets for a in ("--set", kv)]]) == 0
    arts = latest_execution_artifacts(out / "metadata.sqlite", "seekline-tiny", "pack")
    pt = latest_execution_artifacts(out / "metadata.sqlite", "seekline-tiny", "pretrain")
    return {"root": root, "packed": arts["outputs"]["packed"], "tokenizer": arts["inputs"]["tokenizer"],
            "examples": arts["inputs"]["examples"], "pretrain0": pt["outputs"]["model"],
            "results": {}}


def spread(xs) -> dict:
    return {"values": [round(x, 4) for x in xs], "mean": round(statistics.mean(xs), 4),
            "std": round(statistics.pstdev(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def save_results(pipeline: dict) -> None:
    """OUTPUT/learning_checks.json, also printed (pytest -s shows it)."""
    path = pipeline["root"] / "learning_checks.json"
    path.write_text(json.dumps(pipeline["results"], indent=1))
    print(json.dumps(pipeline["results"], indent=1))
