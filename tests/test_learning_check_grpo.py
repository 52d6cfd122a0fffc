"""GRPO learning check (tiny DeepSeek-V3, CPU): held-out exact-answer accuracy before → after,
3 seeds.

Setup. A tiny 2-layer DeepSeek-V3 (MLA + MoE) with a project BPE tokenizer
(components/grpo/testdata.py) is SFT'd for SFT_STEPS on the arithmetic family's training split
("{a}{op}{b}=", + and −, operands 0-15) through the chat template, from an imperfect teacher:
30% of the SFT answers are off by one (answer + 1), the rest right — the model learns the
family and the teacher's systematic slip. GRPO then optimises it on the same family's training
split with one verifiable reward, exact_answer (1 for the right number). Held-out: 90 problems
of the family's disjoint eval split × 8 samples at temperature 1 (720 samples, the same sampler
seed before and after within a seed).

Check: for every seed the held-out reward (= exact-answer accuracy) after GRPO exceeds the one
before by more than the spread (max − min) of the after-values over the seeds, and the held-out
KL to the reference (k3 on the held-out samples) stays below 0.5 (the seed's bound).
"""
from __future__ import annotations

import json
import random
import statistics

import pytest

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)
SFT_STEPS = 400
GRPO_STEPS = 100
MAX_OPERAND, OPS, N_TRAIN, N_EVAL = 15, "+-", 400, 90
SLIP_FRACTION = 0.3


def _spread(xs):
    return {"values": [round(x, 4) for x in xs], "mean": round(statistics.mean(xs), 4),
            "std": round(statistics.pstdev(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    from components.grpo.tasks import arithmetic_tasks
    from components.grpo.testdata import grpo_model_dir
    from components.sft.sft import run_sft
    from configs.training import SFTConfig, TrainerConfig

    root = tmp_path_factory.mktemp("grpo_learning")
    base = grpo_model_dir(str(root), layers=2, seq=128)
    data = root / "arith.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for t in arithmetic_tasks(N_TRAIN, seed=0, split="train", max_operand=MAX_OPERAND, ops=OPS):
            slip = random.Random(t.task_id).random() < SLIP_FRACTION
            f.write(json.dumps({"prompt": t.prompt,
                                "completion": str(int(t.answer) + 1) if slip else t.answer}) + "\n")
    cfg = SFTConfig(data_files=[str(data)], corpus_instructions=0, seq_len=64, eval_fraction=0.05,
                    trainer=TrainerConfig(steps=SFT_STEPS, micro_batch_size=32, lr=3e-3, warmup_steps=10,
                                          mtp_weight=0.0, checkpoint_every=10_000, log_every=50, eval_batches=4))
    run_sft(cfg, base, None, base, str(root / "sft"), progress=False)
    return root, str(root / "sft" / "final")


def test_grpo_raises_heldout_accuracy_beyond_seed_spread_with_bounded_kl(sft_model):
    from components.grpo.grpo import run_grpo
    from configs.training import GRPOConfig, TrainerConfig

    root, init = sft_model
    keys = ("eval_reward_mean", "eval_success_rate", "eval_kl_to_reference", "eval_completion_length_mean")
    rows = {f"{w}:{k}": [] for k in keys for w in ("before", "after")}
    for seed in SEEDS:
        cfg = GRPOConfig(
            families=["arithmetic"], num_train_tasks=N_TRAIN, num_eval_tasks=N_EVAL, max_operand=MAX_OPERAND,
            arithmetic_ops=OPS, prompts_per_step=8, num_generations=16, max_prompt_tokens=32,
            max_completion_tokens=8, eval_samples_per_task=8, reward_workers=2, rewards=[{"name": "exact_answer"}],
            beta=0.0, loss_type="dapo",
            trainer=TrainerConfig(steps=GRPO_STEPS, micro_batch_size=32, lr=1e-4, warmup_steps=2, weight_decay=0.0,
                                  mtp_weight=0.0, log_every=10, checkpoint_every=10_000, bias_update_gamma=0.0,
                                  seed=seed))
        rep = run_grpo(cfg, init, str(root / f"grpo{seed}"), progress=False)
        for k in keys:
            rows[f"before:{k}"].append(rep["before"][k])
            rows[f"after:{k}"].append(rep[k])
        assert rep["nonfinite_steps"] == 0
    results = {"sft_steps": SFT_STEPS, "grpo_steps": GRPO_STEPS, "rows_per_step": 8 * 16,
               "heldout_samples_per_seed": N_EVAL * 8, **{k: _spread(v) for k, v in rows.items()}}
    (root / "grpo_learning_check.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    before, after = rows["before:eval_reward_mean"], rows["after:eval_reward_mean"]
    noise = max(after) - min(after)
    gains = [a - b for a, b in zip(after, before, strict=True)]
    assert min(gains) > noise, (gains, noise)
    assert max(rows["after:eval_kl_to_reference"]) < 0.5, rows["after:eval_kl_to_reference"]
