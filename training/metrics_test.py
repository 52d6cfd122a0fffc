"""Run metrics: expert-load statistics and the resumable metrics.jsonl."""
import json
import math
import os

import pytest

from training.metrics import METRICS_FILE, MetricsLog, expert_load_stats, plot_loss_curve


def test_expert_load_stats_hand_values():
    # loads 2, 4, 6: mean 4, population std sqrt(8/3); an all-zero layer (no tokens) is skipped.
    got = expert_load_stats([[2, 4, 6], [0, 0, 0]])
    assert got == pytest.approx({"expert_load/layer0_max_over_mean": 1.5,
                                 "expert_load/layer0_min_over_mean": 0.5,
                                 "expert_load/layer0_cv": math.sqrt(8 / 3) / 4})


def _steps(path):
    return [json.loads(line)["step"] for line in open(path)]


def test_resume_drops_lines_after_the_restored_step(tmp_path):
    log = MetricsLog(str(tmp_path), enabled=True, resume_step=0)
    for s in range(1, 6):
        log.log(s, {"loss": 1.0 / s})
    log.close()
    path = tmp_path / METRICS_FILE
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')          # torn by a kill mid-write
    log = MetricsLog(str(tmp_path), enabled=True, resume_step=3)   # checkpoint was at step 3
    assert [r["step"] for r in log.rows] == [1, 2, 3]
    log.log(4, {"loss": 0.2})
    log.close()
    assert _steps(path) == [1, 2, 3, 4]
    assert os.listdir(tmp_path / "tensorboard")
    plot_loss_curve(log.rows, str(tmp_path / "c.png"), "t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_disabled_log_writes_nothing(tmp_path):
    log = MetricsLog(str(tmp_path), enabled=False, resume_step=0)
    log.log(1, {"loss": 1.0})
    log.close()
    assert os.listdir(tmp_path) == []
