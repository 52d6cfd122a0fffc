"""Rollouts: G sampled completions per task prompt with the model core's batched cached decode.

Prompts are encoded once (raw task prompt after BOS for a completion-style model, or one user
turn through the model's chat template). Each prompt is repeated G times and the rows go through
model.generation.generate in batches (left-padded, one compiled prefill/decode per shape, a
seeded stateless sampler). A completion ends at a stop token (EOS / the template's end of turn:
the token is kept, the policy must learn to emit it), at a stop string (cut right after the
first one, at the shortest token prefix whose text contains it) or at max_completion_tokens
(then it is flagged truncated).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError


@dataclass
class PromptEncoder:
    """Task prompt text -> token ids for one model folder."""

    tokenizer: object                   # tokenizers.Tokenizer
    mode: str                           # completion | chat
    template: object = None             # ChatTemplate in chat mode
    bos_id: int | None = None
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0

    @classmethod
    def for_model(cls, model_dir: str, prompt_mode: str, eos_ids: Sequence[int]) -> PromptEncoder:
        from components.evaluate.generate_samples import resolve_prompt_mode
        from components.tokenizer.tokenizer import META_FILE, load, load_meta

        mode, template_name = resolve_prompt_mode(prompt_mode, model_dir)
        tok = load(model_dir)
        template = None
        stops = set(int(i) for i in eos_ids)
        if mode == "chat":
            from components.sft.chat_template import get_template
            template = get_template(template_name, model_dir)
            stops |= set(template.stop_ids)
        has_meta = os.path.exists(os.path.join(model_dir, META_FILE))
        bos = load_meta(model_dir)["bos_id"] if has_meta and mode == "completion" else None
        pad = tok.token_to_id("<|pad|>")
        return cls(tok, mode, template, bos, tuple(sorted(stops)), 0 if pad is None else pad)

    def encode(self, prompt: str) -> list[int]:
        if self.mode == "chat":
            from components.sft.formats import Message
            return self.template.encode_prompt([Message("user", prompt)])
        head = [self.bos_id] if self.bos_id is not None else []
        return head + self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


@dataclass(frozen=True)
class SamplingSpec:
    max_completion_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 64
    jit_compile: bool = False


@dataclass
class Rollouts:
    prompt_index: np.ndarray                    # (N,) index of each row's prompt in the call's prompt list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]             # stop token included when one ended the row
    texts: list[str]                            # decoded completion (special tokens dropped)
    truncated: np.ndarray                       # (N,) bool: hit max_completion_tokens without a stop
    seconds: float = 0.0                        # generation wall time
    stats: dict = field(default_factory=dict)

    @property
    def completion_lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.completion_ids], np.int64)


def cut_at_stop_string(ids: list[int], decode, stops: Sequence[str]) -> tuple[list[int], str, bool]:
    """(ids, text, found): the shortest token prefix whose text contains a stop string (text cut
    right after it), else all ids. Prefix containment is monotone, so a binary search finds it."""
    text = decode(ids)
    hits = [i + len(s) for s in stops if s and (i := text.find(s)) >= 0]
    if not hits:
        return ids, text, False

    def contains(k):
        t = decode(ids[:k])
        return any(s and s in t for s in stops)
    lo, hi = 1, len(ids)            # contains(hi) is true
    while lo < hi:
        mid = (lo + hi) // 2
        if contains(mid):
            hi = mid
        else:
            lo = mid + 1
    kept = ids[:lo]
    t = decode(kept)
    ends = [i + len(s) for s in stops if s and (i := t.find(s)) >= 0]
    return kept, t[:min(ends)], True


def generate_rollouts(model, encoder: PromptEncoder, prompt_ids: Sequence[list[int]], group_size: int,
                      spec: SamplingSpec, seed: int) -> Rollouts:
    """group_size completions of each prompt (rows ordered prompt by prompt: group i is rows
    [i·G, (i+1)·G))."""
    from model.generation.config import GenerationConfig
    from model.generation.generate import generate

    rows = [(i, p) for i, p in enumerate(prompt_ids) for _ in range(group_size)]
    t0 = time.perf_counter()
    completions, texts, truncated = [], [], []
    by_stop_string = 0
    for call, s in enumerate(range(0, len(rows), spec.batch_size)):
        chunk = rows[s:s + spec.batch_size]
        cfg = GenerationConfig(max_new_tokens=spec.max_completion_tokens, temperature=spec.temperature,
                               top_p=spec.top_p, top_k=spec.top_k, stop_token_ids=encoder.stop_ids,
                               pad_token_id=encoder.pad_id, jit_compile=spec.jit_compile, seed=(seed * 1_000_003 + 7919 * (call + 1)) % (2**31 - 1))
        res = generate(model, [p for _, p in chunk], cfg)
        for seq, stop_tok in zip(res.sequences, res.stop_tokens, strict=True):
            seq = list(seq)
            seq, text, found = cut_at_stop_string(seq, encoder.decode, spec.stop) if spec.stop else \
                (seq, encoder.decode(seq), False)
            by_stop_string += found
            if stop_tok is not None and not found:
                seq = seq + [int(stop_tok)]
            completions.append(seq)
            texts.append(text)
            truncated.append(stop_tok is None and not found)
    seconds = time.perf_counter() - t0
    return Rollouts(np.array([i for i, _ in rows], np.int64), [list(p) for _, p in rows], completions, texts,
                    np.array(truncated, bool), seconds, {"stopped_by_string": by_stop_string})


def check_prompt_room(max_prompt_tokens: int, max_completion_tokens: int, context: int) -> None:
    if max_prompt_tokens + max_completion_tokens > context:
        raise ConfigError(f"grpo.max_prompt_tokens ({max_prompt_tokens}) + max_completion_tokens "
                          f"({max_completion_tokens}) exceed the model's context ({context} tokens)")
