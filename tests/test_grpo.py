"""The GRPO phase end to end on a tiny model folder (CPU, a few steps each): outputs and metrics,
exact resume (at a rollout-window boundary and inside one), and the bad-input paths.

A randomly initialised tiny model earns no exact-answer reward, so the runs that must learn
something add a test-only reward with variance across a group: the share of digits in the
completion (its values are recomputed here from the saved rollout samples).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, InputDataError
from components.grpo import rewards as rewards_mod
from configs.training import GRPOConfig

DIGITS, RAISES, ZERO = "test_grpo_digit_share", "test_grpo_raises", "test_grpo_always_zero"
HALF = "test_grpo_flat_on_addition"   # constant (zero-std group) on "+" prompts, digit share on "−"
G, PROMPTS, STEPS = 4, 2, 4
BASE = {
    "families": ["arithmetic"], "num_train_tasks": 20, "num_eval_tasks": 2, "eval_samples_per_task": 2,
    "num_generations": G, "prompts_per_step": PROMPTS, "max_prompt_tokens": 32, "max_completion_tokens": 8,
    "rewards": [{"name": "exact_answer"}, {"name": DIGITS}],
    "beta": 0.04, "num_iterations": 2,
    "trainer": {"steps": STEPS, "micro_batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0,
                "mtp_weight": 0.0, "checkpoint_every": 1, "log_every": 1, "seed": 3},
}
REQUIRED_METRICS = ("reward_mean", "reward_std", "reward/exact_answer_mean", "reward/exact_answer_std",
                    f"reward/{DIGITS}_mean", f"reward/{DIGITS}_std", "kl", "clip_ratio/low_mean",
                    "clip_ratio/high_mean", "entropy", "completion_length_mean", "frac_reward_zero_std",
                    "rollout_tokens_per_s")


def digit_share(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in visible) / len(visible) if visible else 0.0


def _raises(prompts, completions, **_):
    raise RuntimeError("this reward is broken on purpose")


@pytest.fixture(scope="module", autouse=True)
def test_rewards():
    """Test-only reward functions, removed from the registry afterwards."""
    rewards_mod.register(DIGITS)(lambda: lambda prompts, completions, **_: [digit_share(c) for c in completions])
    rewards_mod.register(RAISES)(lambda: _raises)
    rewards_mod.register(ZERO)(lambda: lambda prompts, completions, **_: [0.0] * len(completions))
    rewards_mod.register(HALF)(lambda: lambda prompts, completions, **_: [
        1.0 if "+" in p else digit_share(c) for p, c in zip(prompts, completions, strict=True)])
    yield
    for name in (DIGITS, RAISES, ZERO, HALF):
        rewards_mod.REGISTRY.pop(name, None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from components.grpo.testdata import grpo_model_dir
    return grpo_model_dir(str(tmp_path_factory.mktemp("grpo_model")))


def _cfg(**over) -> GRPOConfig:
    d = json.loads(json.dumps(BASE))
    trainer = over.pop("trainer", {})
    d.update(over)
    d["trainer"].update(trainer)
    return GRPOConfig.model_validate(d)


def _run(cfg, model_dir, out, **kw):
    from components.grpo.grpo import run_grpo
    return run_grpo(cfg, model_dir, str(out), progress=False, **kw)


def _strict_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a NaN/Infinity anywhere fails the parse."""
    def no_constants(c):
        raise AssertionError(f"{path}: non-finite value {c}")
    return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines() if line]


def _weights(final: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(final / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo") / "full"
    return out, _run(_cfg(), model_dir, out)


def test_run_writes_model_report_metrics_and_rollouts(full_run):
    from model.checkpoint.hf import load_hf_checkpoint

    out, report = full_run
    assert report["steps"] == STEPS and report["skipped_steps"] == 0 and report["nonfinite_steps"] == 0
    saved = json.loads((out / "report.json").read_text())
    for key in ("eval_reward_mean", "eval_kl_to_reference", "eval_success_rate"):
        assert math.isfinite(saved[key]) and math.isfinite(saved["before"][key]), key
    assert saved["steps"] == STEPS and saved["before"]["eval_kl_to_reference"] == 0.0   # π_θ = π_ref at step 0
    assert saved["eval_kl_to_reference"] > 0.0                                         # k3 ≥ 0; it moved
    assert saved["rows_per_step"] == G * PROMPTS and saved["grad_accum_steps"] == G * PROMPTS // 4
    phase = json.loads((out / "final" / "seekline_phase.json").read_text())
    assert phase["phase"] == "grpo" and phase["steps"] == STEPS
    assert (out / "final" / "tokenizer.json").exists()
    assert load_hf_checkpoint(str(out / "final")).cfg.num_hidden_layers == 2
    init = _weights(Path(report["init"]))
    assert any(not np.array_equal(init[k], w) for k, w in _weights(out / "final").items())   # it trained
    assert (out / "reward_curve.png").stat().st_size > 0 and (out / "loss_curve.png").stat().st_size > 0
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))

    rows = {r["step"]: r for r in _strict_rows(out / "metrics.jsonl") if "reward_mean" in r}
    assert sorted(rows) == [1, 2, 3, 4]
    for step, r in rows.items():
        missing = [k for k in REQUIRED_METRICS if k not in r]
        assert not missing, (step, missing)
        assert r["iteration"] == (step - 1) % 2           # num_iterations = 2 reuses each rollout batch
        assert 0 <= r["clip_ratio/low_mean"] <= 1 and 0 <= r["clip_ratio/high_mean"] <= 1
        assert r["completion_length_mean"] <= 8 and r["rollout_tokens_per_s"] > 0 and r["entropy"] > 0
    assert abs(rows[1]["kl"]) < 1e-6                       # the first update starts from the reference
    assert rows[2]["kl"] > 0 and rows[2]["ratio_mean"] != 1.0   # the second reuses step 1's rollouts

    # the rollout samples: one file per rollout batch; rewards and advantages recomputed by hand
    assert sorted(p.name for p in (out / "rollouts").glob("step_*.jsonl")) == ["step_0000000.jsonl",
                                                                               "step_0000002.jsonl"]
    for step, name in ((1, "step_0000000.jsonl"), (3, "step_0000002.jsonl")):
        samples = [json.loads(x) for x in (out / "rollouts" / name).read_text().splitlines()]
        assert len(samples) == G * PROMPTS
        digits = np.array([digit_share(s["completion"]) for s in samples])
        exact = np.array([s["reward"] for s in samples]) - digits      # total = exact_answer + digit share
        assert set(np.round(exact, 6)) <= {0.0, 1.0}
        np.testing.assert_allclose(rows[step][f"reward/{DIGITS}_mean"], digits.mean(), rtol=1e-6)
        np.testing.assert_allclose(rows[step][f"reward/{DIGITS}_std"], digits.std(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(rows[step]["reward_mean"], np.mean([s["reward"] for s in samples]), rtol=1e-6)
        r = np.array([s["reward"] for s in samples]).reshape(PROMPTS, G)
        std = r.std(axis=1, ddof=1)
        want = np.where(std[:, None] > 0, (r - r.mean(axis=1, keepdims=True)) / (std[:, None] + 1e-4), 0.0)
        np.testing.assert_allclose([s["advantage"] for s in samples], want.reshape(-1), rtol=1e-4, atol=1e-5)
        assert rows[step]["frac_reward_zero_std"] == float(np.mean(std == 0))


def test_resume_at_and_inside_a_rollout_window_is_exact(model_dir, full_run, tmp_path):
    """Stopped at step 2 (a window boundary), then at step 3 (inside the window that began at 2:
    its rollouts are reloaded, not regenerated), then finished: the same weights as one run."""
    full, report = full_run
    out = tmp_path / "resumed"
    first = _run(_cfg(), model_dir, out, max_steps=2)
    second = _run(_cfg(), model_dir, out, max_steps=3)
    third = _run(_cfg(), model_dir, out)
    assert (first["steps"], second["steps"], third["steps"]) == (2, 3, 4)
    assert (second["resumed_from_step"], third["resumed_from_step"]) == (2, 3)
    assert third["before"] == report["before"]            # the baseline is measured once
    a, b = _weights(full / "final"), _weights(out / "final")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert third["eval_reward_mean"] == report["eval_reward_mean"]


@pytest.mark.slow
def test_resume_after_a_later_window_began_is_exact(model_dir, full_run, tmp_path):
    """Killed after step 3's rollouts (window 2) were saved but before any checkpoint past step 1
    (checkpoint_every 5 is not a multiple of num_iterations 2): the resume restores step 1, inside
    window 0, and must reuse window 0's rollouts, not regenerate them from step-1 weights."""
    import shutil

    full, _ = full_run
    out = tmp_path / "killed"
    cfg = _cfg(trainer={"checkpoint_every": 5})
    _run(cfg, model_dir, out, max_steps=1)
    shutil.copytree(out / "checkpoints", tmp_path / "at_step_1")
    _run(cfg, model_dir, out, max_steps=3)                      # went on into window 2 ...
    assert (out / "rollouts" / "buffer_0000002.npz").exists()
    shutil.rmtree(out / "checkpoints")                          # ... and died before checkpointing it
    shutil.copytree(tmp_path / "at_step_1", out / "checkpoints")
    assert _run(cfg, model_dir, out)["resumed_from_step"] == 1
    a, b = _weights(full / "final"), _weights(out / "final")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_task_file_line_without_tests_or_answer(model_dir, tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"task_id": "a", "prompt": "2+2=", "answer": "4"}) + "\n"
                    + json.dumps({"task_id": "b", "prompt": "3+3="}) + "\n")
    with pytest.raises(InputDataError, match=f"{path}:2: task has no tests or answer"):
        _run(_cfg(families=[], task_files=[str(path)]), model_dir, tmp_path / "o")
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_unknown_reward_name_lists_the_known_ones(model_dir, tmp_path):
    with pytest.raises(ConfigError) as e:
        _run(_cfg(rewards=[{"name": "exact_answer"}, {"name": "no_such_reward"}]), model_dir, tmp_path / "o")
    msg = str(e.value)
    assert "rewards[1].name: unknown reward function 'no_such_reward'" in msg
    assert all(name in msg for name in ("exact_answer", "code_tests", "format", "length"))
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_every_prompt_longer_than_max_prompt_tokens(model_dir, tmp_path):
    with pytest.raises(InputDataError, match=r"every training task's prompt is longer than grpo.max_prompt_tokens=2"):
        _run(_cfg(max_prompt_tokens=2), model_dir, tmp_path / "o")


def test_a_raising_reward_is_counted_and_the_run_goes_on(model_dir, tmp_path):
    out = tmp_path / "o"
    cfg = _cfg(rewards=[{"name": DIGITS}, {"name": RAISES}], beta=0.0, num_iterations=1, trainer={"steps": 2})
    report = _run(cfg, model_dir, out)
    assert report["steps"] == 2 and report["skipped_steps"] == 0
    rows = [r for r in _strict_rows(out / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:           # one failed call per rollout batch; the other function still scored
        assert r[f"reward/{RAISES}_errors"] == 1.0 and f"reward/{RAISES}_mean" not in r
        assert r[f"reward/{DIGITS}_errors"] == 0.0 and r["reward_mean"] == r[f"reward/{DIGITS}_mean"]
    assert rows[-1]["reward_errors_total"] == 2.0
    assert report[f"eval_reward/{RAISES}_errors"] == 1.0


def test_all_zero_rewards_without_kl_skip_every_step(model_dir, tmp_path):
    out = tmp_path / "o"
    cfg = _cfg(rewards=[{"name": ZERO}], beta=0.0, num_iterations=1, trainer={"steps": 2})
    report = _run(cfg, model_dir, out)
    assert report["steps"] == 2 and report["skipped_steps"] == 2
    assert json.loads((out / "report.json").read_text())["skipped_steps"] == 2
    rows = [r for r in _strict_rows(out / "metrics.jsonl") if "reward_mean" in r]   # no NaN anywhere
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["skipped_no_signal"] == 1.0 and r["frac_reward_zero_std"] == 1.0 and r["reward_std"] == 0.0
        assert "grad_norm" not in r and "policy_loss" not in r
    # no update was applied: the exported weights are the starting ones
    a, b = _weights(Path(model_dir)), _weights(out / "final")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert os.path.exists(out / "reward_curve.png")


def test_success_rate_counts_only_the_functions_that_scored_a_sample():
    """The default rewards [exact_answer, code_tests] score disjoint tasks (math / code): a right
    answer is a success even though code_tests gave it None. Hand-made scores, weights 1 and 2."""
    from components.grpo.grpo import success_rate
    from components.grpo.rewards import RewardScores

    nan = np.nan
    exact = np.array([1.0, 0.0, nan, nan, nan, 1.0])
    tests = np.array([nan, nan, 1.0, 0.5, nan, 1.0])
    total = np.array([1.0, 0.0, 2.0, 1.0, nan, 3.0])     # exact·1 + tests·2 over the functions that scored
    scores = RewardScores({"exact_answer": exact, "code_tests": tests}, total, [])
    # scored samples 0, 1, 2, 3, 5; full marks on 0 (answer), 2 (all tests), 5 (both)
    assert success_rate(scores, [1.0, 2.0]) == 3 / 5
    # a negatively weighted penalty is not a reward to earn: samples only it scored (2, 3, 4) are
    # not judged, and when it bites it turns a right answer into a miss (5)
    pen = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    total = np.where(np.isnan(exact), 0.0, exact) - 0.5 * pen          # [1, 0, 0, 0, 0, 0.5]
    assert success_rate(RewardScores({"exact_answer": exact, "penalty": pen}, total, []), [1.0, -0.5]) == 1 / 3
    assert success_rate(RewardScores({"a": np.full(2, nan)}, np.full(2, nan), []), [1.0]) == 0.0


def test_dynamic_sampling_drops_zero_std_groups_and_resamples(model_dir, tmp_path):
    """Groups of "+" prompts all score 1 (no signal): with dynamic sampling they are dropped and
    more prompts are drawn (up to max_resample_rounds extra rollouts); the trained rows are only
    the kept groups', the rest of the fixed-shape batch is padding."""
    out = tmp_path / "o"
    cfg = _cfg(rewards=[{"name": HALF}], beta=0.0, num_iterations=1, dynamic_sampling=True, max_resample_rounds=3,
               prompts_per_step=2, trainer={"steps": 2})
    report = _run(cfg, model_dir, out)
    assert report["steps"] == 2
    rows = [r for r in _strict_rows(out / "metrics.jsonl") if "reward_mean" in r]
    for step_row in rows:
        step = step_row["step"] - 1
        samples = [json.loads(x) for x in (out / "rollouts" / f"step_{step:07d}.jsonl").read_text().splitlines()]
        groups: dict[tuple[int, str], list[dict]] = {}
        for smp in samples:
            groups.setdefault((smp["round"], smp["task_id"]), []).append(smp)
        assert all(len(g) == G for g in groups.values())
        flat = [k for k, g in groups.items() if len({x["reward"] for x in g}) == 1]
        signal = [k for k in groups if k not in flat]
        assert all(k in flat for k in groups if "+" in k[1])     # "+" groups carry no signal
        # every flat group has zero advantages; rounds continue until 2 groups with signal or the cap
        assert all(x["advantage"] == 0.0 for k in flat for x in groups[k])
        rounds = 1 + max(r for r, _ in groups)
        assert step_row["rollout_rounds"] == rounds <= 4
        assert step_row["rollout_groups_kept"] == min(len(signal), 2)
        assert step_row["frac_reward_zero_std"] == pytest.approx(len(flat) / len(groups))
        if len(signal) < 2:
            assert rounds == 4
        # the trained rows are exactly the kept groups' (the batch buffer; older windows' are pruned)
        buf = out / "rollouts" / f"buffer_{step:07d}.npz"
        if step_row["step"] == 2 and signal:
            z = np.load(buf)
            assert z["row_valid"].reshape(-1).sum() == G * min(len(signal), 2)
            assert z["row_valid"].size == G * 2      # the fixed shape: prompts_per_step × G rows
