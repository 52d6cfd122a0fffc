"""Keeps bench/bench_train.py runnable without .venv-ref: its seekline side (the real Trainer
step) for 2 timed steps on a 2-layer `tiny` model, and the pure helpers.

    .venv/bin/python -m pytest bench/bench_train_test.py -q        # ~10-20 s on 2 cores
"""
import json

import bench_train as bt
import pytest


def test_model_flops_and_mfu():
    out = bt.model_flops(1000.0, 1_000_000)
    assert out["flops_per_token"] == 6_000_000 and out["achieved_tflops"] == pytest.approx(6e-3)
    assert "mfu" not in out
    assert bt.model_flops(1000.0, 1_000_000, peak_tflops=0.06)["mfu"] == pytest.approx(0.1)


def test_breakdown_shares_splits_moe_and_leaves_other():
    pieces = {"attention": 1.0, "moe": 2.0, "moe_router": 0.2, "moe_shared": 0.3,
              "moe_expert_matmuls": 1.0, "head_loss": 0.5, "optimizer": 0.5, "optimizer_apply_only": 0.4}
    sh = bt.breakdown_shares(pieces, 5.0)
    assert sh["moe_dispatch"]["s"] == pytest.approx(0.5)
    assert sh["other"]["s"] == pytest.approx(1.0)           # 5 - (1 + 2 + 0.5 + 0.5)
    assert sh["attention"]["share"] == pytest.approx(0.2)
    # sub-pieces are not double counted in "other"
    assert sum(sh[k]["s"] for k in (*bt.TOP_PIECES, "other") if k in sh) == pytest.approx(5.0)


def test_active_params_small():
    cfg = bt.bench_config("small", 256)
    p = bt.active_params(cfg)
    assert p["main"] < p["total_params"] and p["mtp"] > 0
    # the MTP module runs one MoE block (top-4 of 16 experts), eh_proj and the V x D head matmul
    assert p["mtp"] > cfg.vocab_size * cfg.hidden_size + 2 * cfg.hidden_size ** 2
    assert bt.active_params(bt.bench_config("small", 256, mtp=False))["mtp"] == 0


@pytest.fixture
def restore_determinism():
    from tensorflow.python.framework import config as tf_config
    was = tf_config.is_op_determinism_enabled()
    yield
    if not was:                       # the Trainer turns it on (TrainerConfig.deterministic)
        tf_config.disable_op_determinism()


def test_seekline_side_two_steps(tmp_path, restore_determinism):
    out = tmp_path / "train.json"
    bt.main(["--preset", "tiny", "--layers", "2", "--batch", "2", "--seq-len", "32", "--warmup", "1",
             "--rounds", "1", "--steps-per-round", "2", "--skip-reference", "--skip-matched",
             "--skip-breakdown", "--no-determinism-check", "--out", str(out)])
    r = json.loads(out.read_text())["train"]
    e = r["seekline"]["engine"]
    assert len(e["all_s"]) == 2 and len(e["losses"]) == 3 and e["all_finite"]
    assert e["traces_after_all_steps"] == 1                  # no retrace across steps
    assert e["tokens_counted_per_step"] == 2 * 32
    assert e["tokens_per_s"] == pytest.approx(64 / e["median_s"])
    assert r["model_flops"]["seekline_engine"]["achieved_tflops"] > 0
    assert "transformers" not in r and "breakdown" not in r


@pytest.mark.slow
def test_seekline_side_with_breakdown(tmp_path, restore_determinism):
    out = tmp_path / "train.json"
    bt.main(["--preset", "tiny", "--layers", "2", "--batch", "2", "--seq-len", "32", "--warmup", "1",
             "--rounds", "1", "--steps-per-round", "1", "--skip-reference", "--breakdown-reps", "1",
             "--out", str(out)])
    r = json.loads(out.read_text())["train"]
    assert set(r["seekline"]) == {"engine", "matched"}
    sh = r["breakdown"]["shares_cpu"]
    assert set(sh) == set(r["breakdown"]["shares_wall"])
    for k in ("attention", "moe", "moe_router", "moe_shared", "moe_expert_matmuls", "moe_dispatch",
              "dense_ffn", "head_loss", "mtp", "optimizer", "grad_accumulation", "other"):
        assert k in sh, k
    assert r["seekline"]["engine"]["op_determinism_off"]["tokens_per_s"] > 0


if __name__ == "__main__":      # `make bench` runs every bench/bench_*.py, this file included
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
