"""GRPO report figure: rollout reward, held-out reward, KL and clip fraction against step."""
from __future__ import annotations

from components.common.plots import plt, save_png


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]


def plot_rewards(rows: list[dict], path: str, before: dict | None = None) -> None:
    """Two panels: rewards (rollout mean per step, held-out mean where evaluated, the starting
    model's held-out numbers at step 0) and the policy's drift (KL to the reference, clipped-token
    fraction, entropy)."""
    if before:
        rows = [{"step": 0, **before}, *rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("reward_mean", "rollout reward (train prompts)", "-"),
                              ("eval_reward_mean", "held-out reward", "o-"),
                              ("eval_success_rate", "held-out success rate", "s--")):
        pts = _series(rows, key)
        if pts:
            a.plot(*zip(*pts, strict=True), style, label=label, lw=1.2)
    a.set_xlabel("step")
    a.set_ylabel("reward")
    a.set_title("GRPO rewards")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    for key, label in (("kl", "KL to reference (train, k-estimator)"),
                       ("eval_kl_to_reference", "KL to reference (held-out, k3)"),
                       ("clip_ratio/region_mean", "clipped token fraction"),
                       ("entropy", "entropy (nats)")):
        pts = _series(rows, key)
        if pts:
            b.plot(*zip(*pts, strict=True), label=label, lw=1.0)
    b.set_xlabel("step")
    b.set_title("policy drift")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    save_png(fig, path)
