"""The GRPO phase: rollouts → verifiable rewards → group advantages → clipped policy updates.

run_grpo drives the shared engine (training/loop.py, Trainer.fit_online) with a batch source
that, every num_iterations steps, samples prompts_per_step training tasks, generates G
completions of each (components/grpo/rollout.py), scores them with the configured reward
functions (components/grpo/rewards.py), turns rewards into group-relative advantages
(training/grpo_objective.py) and returns fixed-shape rows with the rollout-time (old) and
reference log-probs when the objective needs them. Everything a step draws is seeded by
(trainer.seed, step), and the rollout batch a step trains on is saved before the step runs
(OUTPUT/rollouts/), so a killed run resumes exactly: from a checkpoint at a step inside a
num_iterations window it reloads that window's rollouts instead of regenerating them.

Held-out evaluation samples eval_samples_per_task completions of each held-out task with a
fixed seed (the same draws before and after training) and reports the reward means, the
success rate and the KL of the policy to the reference on those completions.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from common.errors import ConfigError, InputDataError
from common.fileio import atomic_write_text
from components.grpo.rollout import (
    PromptEncoder,
    Rollouts,
    SamplingSpec,
    check_prompt_room,
    generate_rollouts,
)
from components.grpo.tasks import Task, arithmetic_tasks, coding_tasks, read_task_file, task_fields
from configs.training import GRPOConfig
from training.grpo_objective import ObjectiveSpec, group_advantages
from training.grpo_task import OLD_LOGP, REF_LOGP, GRPOTask
from training.rollout_batch import batch_logprobs, build_rows, engine_layout

ROLLOUT_DIR = "rollouts"
KEEP_SAMPLE_FILES = 20


# ---------------------------------------------------------------------------------- tasks
@dataclass
class TaskSplits:
    train: list[Task]
    eval: list[Task]
    report: dict


def load_tasks(cfg: GRPOConfig) -> TaskSplits:
    """Training and held-out tasks from the procedural families and the task files."""
    train, held, report = [], [], {}
    seed = cfg.trainer.seed
    for fam in cfg.families:
        make = (lambda n, split: arithmetic_tasks(n, seed=seed, split=split, max_operand=cfg.max_operand,
                                                ops=cfg.arithmetic_ops)) \
            if fam == "arithmetic" else (lambda n, split: coding_tasks(n, seed=seed, split=split))
        try:
            tr, ev = make(cfg.num_train_tasks, "train"), make(cfg.num_eval_tasks, "eval")
        except ConfigError as e:
            raise ConfigError(f"grpo.num_train_tasks / num_eval_tasks ({fam}): {e}") from None
        train += tr
        held += ev
        report[fam] = {"train": len(tr), "eval": len(ev)}
    for path in cfg.task_files:
        if not os.path.exists(path):
            raise ConfigError(f"grpo.task_files: {path} does not exist")
        tasks = read_task_file(path)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(tasks))
        n_eval = max(1, int(round(cfg.eval_fraction * len(tasks)))) if len(tasks) > 1 else 0
        held += [tasks[i] for i in order[:n_eval]]
        train += [tasks[i] for i in order[n_eval:]]
        report[path] = {"train": len(tasks) - n_eval, "eval": n_eval}
    if cfg.eval_tasks:
        held = held[:cfg.eval_tasks]
    return TaskSplits(train, held, report)


def encode_tasks(tasks: list[Task], encoder: PromptEncoder, max_prompt_tokens: int) -> tuple[list[Task], list, int]:
    """(tasks that fit, their prompt ids, how many were skipped for a prompt longer than max_prompt_tokens)."""
    kept, ids, skipped = [], [], 0
    for t in tasks:
        p = encoder.encode(t.prompt)
        if len(p) > max_prompt_tokens:
            skipped += 1
            continue
        kept.append(t)
        ids.append(p)
    return kept, ids, skipped


def reward_inputs(tasks: list[Task], ro: Rollouts, mode: str) -> tuple[list[str], list[str], dict]:
    """(prompts, completions, fields) rows for RewardSet.score, aligned with the rollouts."""
    from components.evaluate.generate_samples import extract_code

    rows = [tasks[i] for i in ro.prompt_index]
    texts = list(ro.texts)
    if mode == "chat":   # a chat answer carries its code in a fenced block
        texts = [extract_code(x)[0] if t.kind == "code" else x for t, x in zip(rows, texts, strict=True)]
    fields = task_fields(rows)
    fields["completion_lengths"] = ro.completion_lengths.tolist()
    fields["truncated"] = ro.truncated.tolist()
    return [t.prompt for t in rows], texts, fields


def _reward_metrics(scores, prefix: str) -> dict[str, float]:
    out = {}
    for name, s in scores.summary().items():
        key = "reward" if name == "total" else f"reward/{name}"
        if s["mean"] is not None:
            out[f"{prefix}{key}_mean"] = s["mean"]
            out[f"{prefix}{key}_std"] = s["std"]
        if name != "total":
            out[f"{prefix}{key}_errors"] = float(s["errors"])
    return out


def sampling_spec(cfg: GRPOConfig) -> SamplingSpec:
    return SamplingSpec(cfg.max_completion_tokens, cfg.temperature, cfg.top_p, cfg.top_k, tuple(cfg.stop),
                        cfg.generation_batch_size, cfg.rollout_jit_compile)


# ---------------------------------------------------------------------------------- the source
class RolloutSource:
    """Trainer.fit_online's batch source (see the module docstring)."""

    def __init__(self, cfg: GRPOConfig, trainer, ref_model, encoder: PromptEncoder, tasks: list[Task],
                 prompt_ids: list, rewards, output_dir: str, replicas: int):
        self.cfg, self.trainer, self.ref = cfg, trainer, ref_model
        self.encoder, self.tasks, self.prompt_ids, self.rewards = encoder, tasks, prompt_ids, rewards
        self.dir = os.path.join(output_dir, ROLLOUT_DIR)
        self.rows = cfg.prompts_per_step * cfg.num_generations
        self.accum = trainer.cfg.grad_accum_steps
        self.seq_len = cfg.max_prompt_tokens + cfg.max_completion_tokens
        self.sampling = sampling_spec(cfg)
        self._cached: tuple[int, dict | None, dict] | None = None
        self.errors_seen = 0

    def _buffer_path(self, g: int) -> str:
        return os.path.join(self.dir, f"buffer_{g:07d}.npz")

    def batch(self, step: int):
        g = step - step % self.cfg.num_iterations           # the step whose weights made the rollouts
        if self._cached is None or self._cached[0] != g:
            self._cached = self._load(g) or self._make(g)
        _, batch, host = self._cached
        return batch, {**host, "iteration": float(step - g)}

    def _load(self, g: int):
        path = self._buffer_path(g)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "rb") as f:
            z = dict(np.load(f, allow_pickle=False))
        if int(z.pop("__step")) != g:
            return None
        host = json.loads(str(z.pop("__host")))
        return g, (z or None), host

    def _save(self, g: int, batch: dict | None, host: dict, samples: list[dict]) -> None:
        if not self.trainer.rt.is_chief:
            return
        os.makedirs(self.dir, exist_ok=True)
        import io
        buf = io.BytesIO()
        np.savez(buf, __step=np.int64(g), __host=json.dumps(host), **(batch or {}))
        tmp = self._buffer_path(g) + ".tmp"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(buf.getvalue())
        tf.io.gfile.rename(tmp, self._buffer_path(g), overwrite=True)
        self._prune_buffers()
        atomic_write_text(os.path.join(self.dir, f"step_{g:07d}.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
        old = sorted(x for x in os.listdir(self.dir) if x.startswith("step_"))[:-KEEP_SAMPLE_FILES]
        for name in old:
            os.remove(os.path.join(self.dir, name))

    def _prune_buffers(self) -> None:
        """A resume restores the newest checkpoint, so it needs the rollouts of that checkpoint's
        window or of later ones, never earlier ones. One buffer per window: when checkpoint_every
        is not a multiple of num_iterations, a run killed after starting a later window still
        has the window its newest checkpoint is inside."""
        latest = self.trainer.store.latest
        done = int(latest.rsplit("-", 1)[1]) if latest else 0
        keep_from = done - done % self.cfg.num_iterations
        for name in os.listdir(self.dir):
            if name.startswith("buffer_") and name.endswith(".npz") and int(name[7:-4]) < keep_from:
                os.remove(os.path.join(self.dir, name))

    def _make(self, g: int):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.trainer.seed, g])
        group, n_prompts = cfg.num_generations, cfg.prompts_per_step
        kept_rows: list[dict] = []
        host: dict[str, float] = {}
        scores_all, lengths, truncs, gen_s, gen_tokens, zero_std, groups_seen, samples = [], [], [], 0.0, 0, 0, 0, []
        rounds = 1 + (cfg.max_resample_rounds if cfg.dynamic_sampling else 0)
        done_rounds = 0
        for r in range(rounds):
            need = n_prompts - len(kept_rows)
            if need <= 0:
                break
            done_rounds += 1
            pick = rng.choice(len(self.tasks), size=min(n_prompts if r == 0 else need, len(self.tasks)), replace=False)
            tasks = [self.tasks[i] for i in pick]
            ro = generate_rollouts(self.trainer.model, self.encoder, [self.prompt_ids[i] for i in pick], group,
                                   self.sampling, seed=int(rng.integers(0, 2**31 - 1)))
            gen_s += ro.seconds
            gen_tokens += int(ro.completion_lengths.sum())
            prompts, completions, fields = reward_inputs(tasks, ro, self.encoder.mode)
            scores = self.rewards.score(prompts, completions, fields)
            self.errors_seen += len(scores.errors)
            scores_all.append(scores)
            lengths += ro.completion_lengths.tolist()
            truncs += ro.truncated.tolist()
            adv = group_advantages(scores.total, group, cfg.scale_rewards)
            zero_std += int(adv.zero_std.sum())
            groups_seen += len(tasks)
            for j, t in enumerate(tasks):
                rows = slice(j * group, (j + 1) * group)
                for i in range(j * group, (j + 1) * group):
                    samples.append({"task_id": t.task_id, "round": r, "completion": ro.texts[i],
                                    "reward": None if np.isnan(scores.total[i]) else float(scores.total[i]),
                                    "advantage": float(adv.advantages[i]), "truncated": bool(ro.truncated[i])})
                if cfg.dynamic_sampling and adv.zero_std[j]:
                    continue
                if len(kept_rows) < n_prompts:
                    kept_rows.append({"prompt": ro.prompt_ids[rows], "completion": ro.completion_ids[rows],
                                      "adv": adv.advantages[rows], "trunc": ro.truncated[rows]})
            if not cfg.dynamic_sampling:
                break
        host.update(_reward_metrics(_merge_scores(scores_all), ""))
        host.update({
            "frac_reward_zero_std": zero_std / max(groups_seen, 1),
            "completion_length_mean": float(np.mean(lengths)), "completion_length_max": float(np.max(lengths)),
            "truncated_fraction": float(np.mean(truncs)),
            "rollout_tokens_per_s": gen_tokens / max(gen_s, 1e-9),
            "rollout_groups_kept": float(len(kept_rows)), "rollout_rounds": float(done_rounds),
            "reward_errors_total": float(self.errors_seen)})
        if not kept_rows or all(not np.any(k["adv"]) for k in kept_rows) and cfg.beta == 0:
            # Nothing to learn from: every group's rewards agree (e.g. all zero). The step is
            # recorded as skipped; the engine advances the schedule without an update.
            host["skipped_no_signal"] = 1.0
            self._save(g, None, host, samples)
            return g, None, host
        prompts = [p for k in kept_rows for p in k["prompt"]]
        comps = [c for k in kept_rows for c in k["completion"]]
        rows = build_rows(prompts, comps, self.seq_len, self.encoder.pad_id)
        trunc = np.concatenate([k["trunc"] for k in kept_rows])
        if cfg.mask_truncated_completions:
            rows["completion_mask"][trunc] = 0.0
        rows["advantages"] = np.concatenate([k["adv"] for k in kept_rows]).astype(np.float32)
        rows["row_valid"] = np.ones(len(prompts), np.float32)
        mb = self.trainer.cfg.micro_batch_size
        if cfg.num_iterations > 1:
            rows[OLD_LOGP] = batch_logprobs(self.trainer.model, rows, cfg.temperature, mb)
        if cfg.beta > 0:
            rows[REF_LOGP] = batch_logprobs(self.ref, rows, cfg.temperature, mb)
        batch = engine_layout(rows, self.accum, self.rows)
        self._save(g, batch, host, samples)
        return g, batch, host


def _merge_scores(parts):
    from components.grpo.rewards import RewardScores
    if len(parts) == 1:
        return parts[0]
    names = parts[0].per_function.keys()
    return RewardScores({k: np.concatenate([p.per_function[k] for p in parts]) for k in names},
                        np.concatenate([p.total for p in parts]), [e for p in parts for e in p.errors])


# ---------------------------------------------------------------------------------- evaluation
def success_rate(scores, weights) -> float:
    """Share of the scored samples that got the full reward (1 × weight) of every positively
    weighted function that scored them (e.g. the exact answer, or all unit tests passed). A
    function that gives None for a sample (code_tests on an arithmetic task) does not count
    against it: with the default [exact_answer, code_tests], each task is scored by one of them.
    Samples no positively weighted function scored (only a penalty did) are left out."""
    best = np.zeros(scores.total.size)                                   # (N,)
    for values, w in zip(scores.per_function.values(), weights, strict=True):
        if w > 0:
            best += np.where(np.isnan(values), 0.0, w)
    judged = best > 0
    return float(np.mean(scores.total[judged] >= best[judged] - 1e-9)) if judged.any() else 0.0


def evaluate_policy(cfg: GRPOConfig, model, ref_model, encoder: PromptEncoder, tasks: list[Task], prompt_ids: list,
                    rewards, micro_batch: int) -> dict[str, float]:
    """Held-out reward of `model`: eval_samples_per_task samples per task, a fixed seed."""
    from training.grpo_objective import kl_estimate

    if not tasks:
        return {}
    ro = generate_rollouts(model, encoder, prompt_ids, cfg.eval_samples_per_task, sampling_spec(cfg),
                           seed=cfg.trainer.seed + 7)
    prompts, completions, fields = reward_inputs(tasks, ro, encoder.mode)
    scores = rewards.score(prompts, completions, fields)
    out = _reward_metrics(scores, "eval_")
    total = scores.total
    out["eval_samples"] = float(total.size)
    out["eval_scored"] = float(np.sum(~np.isnan(total)))
    out["eval_success_rate"] = success_rate(scores, rewards.weights)
    out["eval_completion_length_mean"] = float(ro.completion_lengths.mean())
    out["eval_truncated_fraction"] = float(ro.truncated.mean())
    if ref_model is not None:
        rows = build_rows(ro.prompt_ids, ro.completion_ids, cfg.max_prompt_tokens + cfg.max_completion_tokens,
                          encoder.pad_id)
        lp = batch_logprobs(model, rows, cfg.temperature, micro_batch)
        ref = batch_logprobs(ref_model, rows, cfg.temperature, micro_batch)
        kl = kl_estimate(tf.constant(lp), tf.constant(ref), "k3").numpy()
        m = rows["completion_mask"]
        out["eval_kl_to_reference"] = float((kl * m).sum() / max(m.sum(), 1.0))
    return out


# ---------------------------------------------------------------------------------- the phase
def objective_spec(cfg: GRPOConfig) -> ObjectiveSpec:
    return ObjectiveSpec(loss_type=cfg.loss_type, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                         delta=cfg.delta, importance_sampling=cfg.importance_sampling, beta=cfg.beta,
                         kl_estimator=cfg.kl_estimator, max_completion_len=cfg.max_completion_tokens)


def run_grpo(cfg: GRPOConfig, init_dir: str | None, output_dir: str, *, runtime=None, max_steps: int | None = None,
             checkpoint_every: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Optimise the HF-layout model in init_dir (or cfg.init) with GRPO into output_dir; returns the report."""
    import model as model_core
    from components.evaluate.generate_samples import phase_info
    from components.grpo.rewards import build_rewards
    from components.pretrain.pretrain import check_output_dir, export_final
    from training.loop import Trainer, tokens_per_second
    from training.strategy import make_runtime

    check_output_dir(output_dir)
    init_dir = cfg.init or init_dir
    if not init_dir:
        raise ConfigError("grpo: no model to optimise (set grpo.init or run after SFT)")
    for name in ("config.json", "tokenizer.json"):
        if not os.path.exists(os.path.join(init_dir, name)):
            raise InputDataError(f"{init_dir}: not an HF-layout model folder with its tokenizer (no {name})")
    rt = runtime or make_runtime(cfg.trainer.strategy, cfg.trainer.precision)
    model_cfg = model_core.ModelConfig.from_json_file(os.path.join(init_dir, "config.json"))
    check_prompt_room(cfg.max_prompt_tokens, cfg.max_completion_tokens, model_cfg.max_position_embeddings)
    rows_per_step = cfg.prompts_per_step * cfg.num_generations
    per_pass = cfg.trainer.micro_batch_size * rt.num_replicas
    if rows_per_step % per_pass:
        raise ConfigError(f"grpo: prompts_per_step × num_generations = {rows_per_step} rows per step is not a "
                          f"multiple of trainer.micro_batch_size × replicas = {per_pass}")
    tc = cfg.trainer.model_copy(update={"grad_accum_steps": rows_per_step // per_pass})
    encoder = PromptEncoder.for_model(init_dir, cfg.prompt_mode, model_cfg.eos_token_ids)
    splits = load_tasks(cfg)
    train, train_ids, skipped_train = encode_tasks(splits.train, encoder, cfg.max_prompt_tokens)
    held, held_ids, skipped_eval = encode_tasks(splits.eval, encoder, cfg.max_prompt_tokens)
    if not train:
        raise InputDataError(f"grpo: every training task's prompt is longer than grpo.max_prompt_tokens="
                             f"{cfg.max_prompt_tokens} tokens ({skipped_train} skipped)")
    if len(train) < cfg.prompts_per_step:
        raise ConfigError(f"grpo: {len(train)} training tasks fit, fewer than prompts_per_step={cfg.prompts_per_step}")
    rewards = build_rewards([{"name": r.name, "weight": r.weight,
                              "params": ({"workers": cfg.reward_workers} | r.params) if r.name == "code_tests"
                              else r.params} for r in cfg.rewards])
    task = GRPOTask(objective_spec(cfg), temperature=cfg.temperature, aux_loss_alpha=tc.aux_loss_alpha)
    trainer = Trainer(tc, rt, lambda: model_core.load_hf_checkpoint(init_dir), task, output_dir, title="grpo")
    ref_model = model_core.load_hf_checkpoint(init_dir)       # frozen: the KL term and the eval KL
    source = RolloutSource(cfg, trainer, ref_model, encoder, train, train_ids, rewards, output_dir, rt.num_replicas)

    def evaluate():
        return evaluate_policy(cfg, trainer.model, ref_model, encoder, held, held_ids, rewards, tc.micro_batch_size)

    try:
        before_path = os.path.join(output_dir, "eval_before.json")
        if tf.io.gfile.exists(before_path):
            before = json.loads(tf.io.gfile.GFile(before_path).read())
        else:
            trainer.store.restore_latest()
            before = evaluate() if int(trainer.step.numpy()) == 0 else {}
            if rt.is_chief and before:
                atomic_write_text(before_path, json.dumps(before))
        t0 = time.perf_counter()
        result = trainer.fit_online(source, max_steps=max_steps, checkpoint_every=checkpoint_every,
                                    progress=progress, evaluate=evaluate)
        wall = time.perf_counter() - t0
    finally:
        rewards.close()
    report: dict[str, Any] = {
        "phase": "grpo", "steps": result.steps, "target_steps": tc.steps, "init": init_dir,
        "resumed_from_step": result.resumed_from, "nonfinite_steps": result.nonfinite_steps,
        "skipped_steps": result.skipped_steps,
        "train_seconds": wall, "tokens_per_s": tokens_per_second(result.history),
        "prompt_mode": encoder.mode, "tasks": splits.report,
        "prompts_skipped_too_long": {"train": skipped_train, "eval": skipped_eval},
        "rows_per_step": rows_per_step, "grad_accum_steps": tc.grad_accum_steps,
        "rewards": [r.model_dump() for r in cfg.rewards], "objective": vars(objective_spec(cfg)),
        "before": before, **result.final_eval}
    if "eval_reward_mean" in before and "eval_reward_mean" in result.final_eval:
        report["eval_reward_improvement"] = result.final_eval["eval_reward_mean"] - before["eval_reward_mean"]
    if not rt.is_chief:
        return report
    template = phase_info(init_dir).get("chat_template")
    report["final"] = export_final(result.model, output_dir, init_dir, {
        "seekline_phase.json": json.dumps({"phase": "grpo", "steps": result.steps, "chat_template": template})})
    atomic_write_text(os.path.join(output_dir, "config.json"), cfg.model_dump_json(indent=1))
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True))
    from components.grpo.report import plot_rewards
    plot_rewards(result.history, os.path.join(output_dir, "reward_curve.png"), before)
    return report
