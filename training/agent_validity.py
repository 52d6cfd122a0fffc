"""A sequence-level validity objective for agent distillation: the student's own sampled actions,
rewarded for being an executable tool call (GRPO-style, on the student's samples).

Why: the token-level terms (SAD KL / CE on the teacher's text, tool-name and JSON-argument CE)
only ever score the teacher's tokens; a student that has drifted inside a long code string
(runaway repetitions, a skipped "arguments" key) is never shown where its own continuation goes
wrong. Here, on some steps, the student writes the Action line itself at the Action positions of
the step's training rows and the policy gradient of a parse reward is added to the objective:

  prompts   the row's tokens up to and including the "Action:" label of an ACT span (the same
            context the acting evaluation gives: components/agent/action_eval.py)
  samples   G completions per prompt at temperature τ, up to the first line break; with
            greedy_member the first of each group is the greedy completion instead — the acting
            evaluation's decoding, whose runaway repetitions τ = 1 samples seldom reproduce
            (docs/agent.md, "Learning check": without it the term did not move the greedy
            valid-JSON rate)
  reward    r = 1 when the line is one JSON object naming a registry tool with an object of
            arguments — serving/agent/protocol.parse_reply decides, as the agent loop does, through
            the reward callable the phase passes in (components/agent/action_reward.py) — else 0
  advantage A = (r − mean_group r) / (std_group r + eps)  (training/grpo_objective.group_advantages:
            a group whose samples are all valid or all invalid gives no signal)
  loss      L_valid = −Σ_t m_t · A · log π(o_t) / Σ_t m_t over the completion tokens (ρ = 1: one
            update per rollout, the plain policy gradient; log-probs at τ)
  total     SAD + process terms + weight · L_valid on the steps that sample, SAD + process on the
            others — the same number of optimiser steps as any other objective.

The sampling runs on the host between compiled steps (Trainer.fit_online with ValiditySource);
the rollout rows ride in the step's batch as (accum, M, K, L) features (K = rollout rows per
training row) and AgentDistillTask adds the term when they are present.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf

from common.errors import ConfigError
from training.grpo_objective import group_advantages, token_logprobs

# Batch keys of the rollout rows (per micro-batch (M, K, L), flattened to (M·K, L) in the task).
ROLLOUT_IDS = "validity_ids"
ROLLOUT_SEG = "validity_segment_ids"
ROLLOUT_POS = "validity_positions"
ROLLOUT_MASK = "validity_completion_mask"
ROLLOUT_ADV = "validity_advantages"          # (M, K): one advantage per rollout row
ACTION_LABEL = "Action:"


@dataclass(frozen=True)
class ValiditySpec:
    """Settings of the validity term (configs/training.py ProcessSupervisionConfig.validity)."""

    weight: float = 0.0           # 0 = off
    every: int = 1                # sample on every `every`-th step …
    start_fraction: float = 0.5   # … from this share of the run on (a student from scratch writes no valid action early)
    prompts: int = 8              # Action positions per sampling step (drawn from the step's rows)
    group_size: int = 4           # G samples per position
    max_new_tokens: int = 96
    temperature: float = 1.0
    greedy_member: bool = True    # the first of each group is the greedy action (the acting evaluation's decoding)
    tool_names: tuple[str, ...] = ("python", "retrieve", "finish")

    def __post_init__(self):
        if self.weight < 0:
            raise ConfigError(f"validity weight: must be >= 0, got {self.weight}")
        if self.every < 1 or self.prompts < 1 or self.group_size < 2 or self.max_new_tokens < 1:
            raise ConfigError("validity: every, prompts, max_new_tokens must be >= 1 and group_size >= 2")
        if not 0 <= self.start_fraction <= 1:
            raise ConfigError(f"validity start_fraction: must be in [0, 1], got {self.start_fraction}")
        if not self.temperature > 0:
            raise ConfigError(f"validity temperature: must be > 0, got {self.temperature}")

    @classmethod
    def from_config(cls, validity, tool_names: Sequence[str] = ("python", "retrieve", "finish")) -> ValiditySpec:
        """From distill.process_supervision.validity (configs/training.py ActionValidityConfig)."""
        return cls(weight=validity.weight, every=validity.every, start_fraction=validity.start_fraction,
                   prompts=validity.prompts, group_size=validity.group_size, max_new_tokens=validity.max_new_tokens,
                   temperature=validity.temperature, greedy_member=validity.greedy_member, tool_names=tuple(tool_names))

    def samples_at(self, step: int, total_steps: int) -> bool:
        """Whether 0-based `step` of a `total_steps` run samples rollouts."""
        first = int(round(self.start_fraction * total_steps))
        return self.weight > 0 and step >= first and (step - first) % self.every == 0


def action_prompt_ends(input_ids: np.ndarray, action_mask: np.ndarray, piece: Callable[[int], str]) -> list[int]:
    """Exclusive ends of the Action prompts in one row (T,): for each run of action_mask tokens, the
    position right after the token that completes "Action:" inside the run (the label is a format
    target of the ACT span), or the run's start when the run holds no label (the JSON alone)."""
    ends, t, n = [], 0, len(input_ids)
    while t < n:
        if not action_mask[t]:
            t += 1
            continue
        start, text, cut = t, "", None
        while t < n and action_mask[t]:
            text += piece(int(input_ids[t]))
            if cut is None and text.rstrip(" ").endswith(ACTION_LABEL):
                cut = t + 1
            t += 1
        ends.append(cut if cut is not None else start)
    return [e for e in ends if e > 0]


def validity_loss(model, batch, temperature: float):
    """(L_valid, metrics) from the rollout features of one micro-batch (module docstring)."""
    ids = tf.reshape(batch[ROLLOUT_IDS], [-1, tf.shape(batch[ROLLOUT_IDS])[-1]])          # (N, L)
    seg = tf.reshape(batch[ROLLOUT_SEG], tf.shape(ids))
    pos = tf.reshape(batch[ROLLOUT_POS], tf.shape(ids))
    mask = tf.reshape(tf.cast(batch[ROLLOUT_MASK], tf.float32), tf.shape(ids))            # (N, L)
    adv = tf.reshape(tf.cast(batch[ROLLOUT_ADV], tf.float32), [-1])                        # (N,)
    out = model.forward(ids, position_ids=pos, segment_ids=seg, training=True)
    logp = token_logprobs(tf.cast(out["logits"], tf.float32) / temperature, ids)          # (N, L)
    loss = -tf.math.divide_no_nan(tf.reduce_sum(adv[:, None] * logp * mask), tf.reduce_sum(mask))
    return loss, {"validity_loss": loss}


class ValiditySource:
    """Trainer.fit_online's batch source: the engine's own row stream (the same rows, in the same
    order, as Trainer.fit on one replica) plus, on the steps spec.samples_at picks, the rollout
    features. Host metrics: validity_reward (mean reward of the step's samples) and
    validity_groups (groups with a learning signal)."""

    def __init__(self, trainer, data, spec: ValiditySpec, tokenizer, reward: Callable[[str], float], *,
                 pad_id: int = 0):
        from training.data import train_stream

        cfg = trainer.cfg
        if trainer.rt.num_replicas != 1:
            raise ConfigError("the validity term samples on the host: it needs one replica "
                              f"(got {trainer.rt.num_replicas}); set distill.process_supervision.validity.weight=0")
        self.trainer, self.spec, self.pad_id, self.seq_len = trainer, spec, pad_id, data.seq_len
        self.reward = reward                     # decoded Action line -> 0 / 1 (components/agent/action_reward.py)
        self.total = trainer.total_steps
        vocab = tokenizer.get_vocab()
        self._pieces = {i: tokenizer.decode([i]) for i in vocab.values()}
        self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
        self.stops = tuple(sorted(i for i, s in self._pieces.items() if "\n" in s))
        # opened at the first step asked for (after fit_online restored a checkpoint: a resumed
        # run reads the rows from where it stopped, as Trainer.fit does)
        self._open = lambda start: train_stream(
            data.train_files, data.seq_len, micro_batch=cfg.micro_batch_size, accum=cfg.grad_accum_steps,
            num_replicas=1, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, num_rows=data.num_rows("train"),
            start_step=start, replica_range=(0, 1), teacher_topk=data.teacher_topk).as_numpy_iterator()
        self._rows = None
        self.rollout_rows = spec.prompts * spec.group_size
        rows_per_step = cfg.grad_accum_steps * cfg.micro_batch_size
        if self.rollout_rows % rows_per_step:
            raise ConfigError(f"validity: prompts × group_size ({self.rollout_rows}) must be a multiple of the "
                              f"step's rows ({rows_per_step})")

    def prompts(self, batch) -> list[list[int]]:
        """Every Action prompt of the step's rows (B·accum, T) that leaves room for max_new_tokens."""
        ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])                 # (R, T)
        act = batch["action_mask"].reshape(ids.shape)
        seg = batch["segment_ids"].reshape(ids.shape)
        found = []
        for r in range(ids.shape[0]):
            for end in action_prompt_ends(ids[r], act[r], self._pieces.get):
                doc = seg[r, end - 1]
                first = int(np.argmax(seg[r] == doc))       # the prompt is the action's own document
                if end - first + self.spec.max_new_tokens <= self.seq_len:
                    found.append(ids[r, first:end].tolist())
        return found

    def batch(self, step: int):
        from model.generation.config import GenerationConfig
        from model.generation.generate import generate
        from training.rollout_batch import build_rows

        if self._rows is None:
            self._rows = self._open(step)
        rows = next(self._rows)
        batch = {k: np.asarray(v) for k, v in rows.items()}
        spec = self.spec
        if not spec.samples_at(step, self.total):
            return batch, {}
        found = self.prompts(batch)
        rng = np.random.default_rng([self.trainer.cfg.seed, step])
        if not found:
            return batch, {}
        pick = rng.choice(len(found), size=spec.prompts, replace=len(found) < spec.prompts)
        prompts = [found[i] for i in pick for _ in range(spec.group_size)]                # (P·G) in groups
        gen = GenerationConfig(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                               stop_token_ids=self.stops, pad_token_id=self.pad_id,
                               seed=int(rng.integers(2**31 - 1)))

        def complete(ps, cfg):
            res = generate(self.trainer.model, ps, cfg)
            return [seq + ([stop] if stop is not None else []) for seq, stop in zip(res.sequences, res.stop_tokens,
                                                                                    strict=True)]
        g = spec.group_size
        if spec.greedy_member:
            # greedy decoding loops where sampling rarely does (runaway repetitions): score that path too
            greedy = complete([found[i] for i in pick], replace(gen, temperature=0.0))
            sampled = complete([found[i] for i in pick for _ in range(g - 1)], gen)
            comps = [c for j in range(len(pick)) for c in [greedy[j]] + sampled[j * (g - 1):(j + 1) * (g - 1)]]
        else:
            comps = complete(prompts, gen)
        rewards = np.array([self.reward(self.decode(c)) for c in comps], np.float32)
        adv = group_advantages(rewards, spec.group_size, scale="group")
        roll = build_rows(prompts, comps, self.seq_len, self.pad_id)
        accum, m = batch["input_ids"].shape[:2]
        k = self.rollout_rows // (accum * m)
        for key, name in (("input_ids", ROLLOUT_IDS), ("segment_ids", ROLLOUT_SEG), ("positions", ROLLOUT_POS),
                          ("completion_mask", ROLLOUT_MASK)):
            batch[name] = roll[key].reshape(accum, m, k, self.seq_len)
        batch[ROLLOUT_ADV] = adv.advantages.reshape(accum, m, k)
        return batch, {"validity_reward": float(rewards.mean()),
                       "validity_groups": float((~adv.zero_std).sum())}


def fit_with_validity(trainer, data, spec: ValiditySpec, tokenizer, reward: Callable[[str], float], *,
                      pad_id: int = 0, max_steps=None, checkpoint_every=None, progress: bool = True):
    """Trainer.fit with the validity term: the same rows and steps, rollouts added on the sampling steps.
    reward: the text the student wrote after "Action:" -> 1.0 for an executable tool call, else 0.0
    (components/agent/action_reward.py; the agent protocol lives above this layer)."""
    source = ValiditySource(trainer, data, spec, tokenizer, reward, pad_id=pad_id)
    return trainer.fit_online(source, max_steps=max_steps, checkpoint_every=checkpoint_every, progress=progress,
                              evaluate=lambda: trainer.evaluate(data))

