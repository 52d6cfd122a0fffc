"""Cold-start synthetic SFT data from a teacher model, and mixing it with the real data.

generate_synthetic runs rounds of two batched generation passes with the teacher (an
in-process seekline model or one imported with model.load_hf_checkpoint):
  1. instruction prompts (prompts.instruction_messages: seeds_per_prompt real instructions,
     sampled with the spec's seed) → candidate instructions, filtered
     (synthetic_filters.check_instruction) and deduplicated against the eval data
     (decontamination), the real train data and the instructions already answered;
  2. each surviving instruction is given to the kind (reasoning / plain) furthest from its
     quota and answered (prompts.answer_messages / reasoning_messages); the answer is filtered
     (check_answer) and the whole example deduplicated the same way.
Rounds continue until both quotas are met or max_attempts_factor × num_examples instruction
prompts have been tried; the report then says how many are missing (it never pads).
Every prompt goes through the chat template's encode_prompt, so the teacher sees the format it
was trained on; generation stops at the template's stop ids. Outputs are decoded with special
tokens kept, so a teacher that writes a role header shows it (and is dropped: control_tokens).

mix(real, synthetic, ratio, seed) builds the final train set where `ratio` is the synthetic
share; write_jsonl saves conversations one JSON object per line (with their source).
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from components.common.errors import InputDataError
from components.common.fileio import atomic_write_bytes
from components.sft import prompts
from components.sft.formats import Conversation, Message, to_record
from components.sft.synthetic_filters import (
    THINK_CLOSE,
    THINK_OPEN,
    Deduper,
    check_answer,
    check_instruction,
    clean_instruction,
)
from components.sft.synthetic_spec import SyntheticSpec
from model.generation import GenerationConfig, generate

__all__ = ["SyntheticSpec", "generate_synthetic", "mix", "write_jsonl", "SOURCE_INSTRUCTION",
           "SOURCE_REASONING"]

SOURCE_INSTRUCTION = "synthetic:instruction"
SOURCE_REASONING = "synthetic:reasoning"


def first_user_text(conv: Conversation) -> str | None:
    return next((m.content for m in conv.messages if m.role == "user" and m.content.strip()), None)


def conversation_text(conv: Conversation) -> str:
    """All turns' contents joined by newlines: the whole-example text dedup compares."""
    return "\n".join(m.content for m in conv.messages if m.content)


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens except the think markers (a reasoning answer has those)."""
    specials = (t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special)
    return tuple(sorted(t for t in specials if t not in (THINK_OPEN, THINK_CLOSE)))


def think_prefix_ids(tokenizer) -> list[int]:
    """Ids that open a reasoning answer: the <think> special token when the tokenizer has one
    (seekline's does; its encode treats the string as plain bytes), else the string's bytes."""
    tid = tokenizer.token_to_id(THINK_OPEN)
    return [tid] if tid is not None else tokenizer.encode(THINK_OPEN, add_special_tokens=False).ids


def _call_seed(spec: SyntheticSpec, call: int) -> int:
    """A distinct, reproducible int32 seed for each generate call of a run."""
    return (spec.seed * 1_000_003 + 7919 * (call + 1)) % (2**31 - 1)


class _Teacher:
    """Batched completion of token-id prompts with the spec's sampling; counts the calls."""

    def __init__(self, model, template, tokenizer, spec: SyntheticSpec):
        self.model, self.template, self.tok, self.spec = model, template, tokenizer, spec
        self.calls = 0
        self.generated_tokens = 0
        self.context = int(model.cfg.max_position_embeddings)

    def fits(self, prompt: Sequence[int], max_new: int) -> bool:
        return len(prompt) + max_new <= self.context

    def complete(self, prompts_ids: list[list[int]], max_new: int) -> list[tuple[str, str]]:
        """(decoded text, finish_reason) per prompt, generated spec.batch_size at a time."""
        out: list[tuple[str, str]] = []
        bs = self.spec.batch_size
        for i in range(0, len(prompts_ids), bs):
            cfg = GenerationConfig(max_new_tokens=max_new, temperature=self.spec.temperature,
                                   top_p=self.spec.top_p, stop_token_ids=tuple(self.template.stop_ids),
                                   pad_token_id=_pad_id(self.tok), seed=_call_seed(self.spec, self.calls))
            self.calls += 1
            res = generate(self.model, prompts_ids[i:i + bs], cfg)
            for ids, reason in zip(res.sequences, res.finish_reasons, strict=True):
                self.generated_tokens += len(ids)
                out.append((self.tok.decode(ids, skip_special_tokens=False), reason))
        return out


def _pad_id(tokenizer) -> int:
    for name in ("<|pad|>", "<|endoftext|>"):
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return tid
    return 0


def _quota(spec: SyntheticSpec) -> dict[str, int]:
    # floor(x + 0.5): round half up, so hand-computed counts do not depend on banker's rounding.
    reasoning = math.floor(spec.num_examples * spec.reasoning_fraction + 0.5)
    return {"instruction": spec.num_examples - reasoning, "reasoning": reasoning}


def _assign_kinds(n: int, remaining: dict[str, int]) -> list[str | None]:
    """Give each of n new instructions the kind with the larger remaining need (ties: plain);
    None once both quotas are covered."""
    left = dict(remaining)
    kinds: list[str | None] = []
    for _ in range(n):
        kind = max(("instruction", "reasoning"), key=lambda k: left[k])
        if left[kind] <= 0:
            kinds.append(None)
            continue
        left[kind] -= 1
        kinds.append(kind)
    return kinds


def generate_synthetic(teacher_model, template, real_train: Sequence[Conversation], *,
                       spec: SyntheticSpec, eval_convs: Sequence[Conversation] = (),
                       tokenizer=None) -> tuple[list[Conversation], dict[str, Any]]:
    """Teacher-written instruction and reasoning conversations plus a report of what was dropped.

    template: a chat template (components/sft/chat_template.py) with encode_prompt(messages) and
    stop_ids; tokenizer: an HF ``tokenizers.Tokenizer`` for decoding (default: template.tokenizer).
    Conversations are [user instruction, assistant answer] with source "synthetic:instruction" or
    "synthetic:reasoning" (answer '<think>thought</think>final answer', as the teacher wrote it).
    """
    tok = tokenizer if tokenizer is not None else template.tokenizer
    controls = control_tokens(tok)
    # Seeds: real first user turns within the instruction length bounds; one holding a control
    # token string would not encode as a prompt (the template rejects it).
    seeds = [t for t in (first_user_text(c) for c in real_train)
             if t is not None and spec.min_instruction_chars <= len(t.strip()) <= spec.max_instruction_chars
             and not any(c in t for c in controls)]
    if not seeds:
        raise InputDataError(
            "synthetic data: no real train conversation has a user turn of "
            f"{spec.min_instruction_chars}..{spec.max_instruction_chars} characters to use as a seed instruction")
    dedup = Deduper(spec)
    for source, convs in (("eval", eval_convs), ("real", real_train)):
        for c in convs:
            instr = first_user_text(c)
            if instr is not None:
                dedup.add_instruction(source, instr)
            dedup.add_example(source, conversation_text(c))

    rng = np.random.default_rng(spec.seed)
    teacher = _Teacher(teacher_model, template, tok, spec)
    think_ids = think_prefix_ids(tok) if spec.force_think_prefix else []
    quota = _quota(spec)
    kept: dict[str, list[Conversation]] = {"instruction": [], "reasoning": []}
    dropped_instr: Counter = Counter()
    dropped_ex: Counter = Counter()
    stats = Counter()
    max_attempts = spec.max_attempts_factor * spec.num_examples

    def remaining() -> dict[str, int]:
        return {k: quota[k] - len(kept[k]) for k in quota}

    while sum(remaining().values()) > 0 and stats["instruction_prompts"] < max_attempts:
        # 1. new instructions, self-instruct style
        n = min(spec.batch_size, max_attempts - stats["instruction_prompts"])
        stats["instruction_prompts"] += n
        k = min(spec.seeds_per_prompt, len(seeds))
        batch = []
        for _ in range(n):
            shown = [seeds[i] for i in rng.choice(len(seeds), size=k, replace=False)]
            ids = template.encode_prompt(prompts.instruction_messages(shown))
            if teacher.fits(ids, spec.max_instruction_tokens):
                batch.append(ids)
            else:
                dropped_instr["prompt_too_long"] += 1
        instructions = []
        for text, finish in (teacher.complete(batch, spec.max_instruction_tokens) if batch else []):
            stats["instructions_generated"] += 1
            text = clean_instruction(text)
            reason = check_instruction(text, finish, spec, controls) or dedup.check(text)
            if reason is not None:
                dropped_instr[reason] += 1
                continue
            # Indexed at once: a repeat later in this batch or in a later round is a duplicate.
            dedup.add_instruction("synthetic", text)
            instructions.append(text)

        # 2. answers, by kind
        todo = []
        for instr, kind in zip(instructions, _assign_kinds(len(instructions), remaining()), strict=True):
            if kind is None:
                stats["unused_instructions"] += 1
                continue
            make = prompts.reasoning_messages if kind == "reasoning" else prompts.answer_messages
            ids = template.encode_prompt(make(instr))
            prefix = think_ids if kind == "reasoning" else []
            ids = list(ids) + prefix
            if not teacher.fits(ids, spec.max_new_tokens):
                dropped_ex["prompt_too_long"] += 1
                continue
            todo.append((instr, kind, ids, THINK_OPEN if prefix else ""))
        outs = teacher.complete([t[2] for t in todo], spec.max_new_tokens) if todo else []
        for (instr, kind, _, opened), (text, finish) in zip(todo, outs, strict=True):
            stats["answers_generated"] += 1
            answer = (opened + text).strip()
            reason = check_answer(instr, answer, kind == "reasoning", finish, spec, controls)
            full = instr + "\n" + answer
            # The instruction itself was checked (and indexed) in step 1: compare the whole example.
            reason = reason or dedup.check(full_text=full)
            if reason is not None:
                dropped_ex[reason] += 1
                continue
            dedup.add_example("synthetic", full)
            source = SOURCE_REASONING if kind == "reasoning" else SOURCE_INSTRUCTION
            kept[kind].append(Conversation((Message("user", instr), Message("assistant", answer)), source))

    # Plain examples, then reasoning ones, each in generation order (mix() shuffles anyway).
    out = kept["instruction"] + kept["reasoning"]
    report = {
        "requested": spec.num_examples,
        "kept": len(out),
        "shortfall": spec.num_examples - len(out),
        "quota_by_kind": quota,
        "kept_by_kind": {k: len(v) for k, v in kept.items()},
        "seed_instructions": len(seeds),
        "instruction_prompts": stats["instruction_prompts"],
        "instructions_generated": stats["instructions_generated"],
        "answers_generated": stats["answers_generated"],
        "unused_instructions": stats["unused_instructions"],
        "dropped_instructions": dict(sorted(dropped_instr.items())),
        "dropped_examples": dict(sorted(dropped_ex.items())),
        "teacher_calls": teacher.calls,
        "teacher_generated_tokens": teacher.generated_tokens,
        "spec": asdict(spec),
    }
    return out, report


def mix(real: Sequence[Conversation], synthetic: Sequence[Conversation], ratio: float,
        seed: int) -> tuple[list[Conversation], dict[str, Any]]:
    """All real examples plus enough synthetic ones that they make up `ratio` of the result.

    ratio = synthetic share of the final train set: 0 → the real data only, 1 → the synthetic
    data only (all of it). Otherwise wanted = floor(ratio·R / (1 − ratio) + 0.5) synthetic
    examples for R real ones; when fewer exist, all are used and the report's ratio_achieved says
    what that gives (nothing is repeated to reach the ratio). The synthetic subset and the order
    of the result are drawn with `seed`: the same inputs and seed give the same list.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mix: ratio must be in [0, 1], got {ratio}")
    rng = np.random.default_rng(seed)
    if ratio == 1.0:
        real_used, wanted = [], len(synthetic)
    else:
        real_used = list(real)
        wanted = math.floor(ratio * len(real_used) / (1.0 - ratio) + 0.5)
    used_n = min(wanted, len(synthetic))
    pick = sorted(rng.permutation(len(synthetic))[:used_n].tolist())
    combined = real_used + [synthetic[i] for i in pick]
    order = rng.permutation(len(combined)).tolist()
    mixed = [combined[i] for i in order]
    return mixed, {
        "ratio_requested": ratio,
        "ratio_achieved": (used_n / len(mixed)) if mixed else None,
        "real_used": len(real_used),
        "synthetic_available": len(synthetic),
        "synthetic_wanted": wanted,
        "synthetic_used": used_n,
        "mixed_total": len(mixed),
    }


def write_jsonl(path: str, convs: Sequence[Conversation]) -> int:
    """Write conversations as conversation-format JSONL (formats.to_record, what
    formats.read_sft_files reads back) plus each one's "source", atomically (gzipped when the path
    ends in .gz); returns the line count."""
    lines = [json.dumps({**to_record(c), "source": c.source}, ensure_ascii=False) for c in convs]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime 0: the same conversations give the same bytes
    atomic_write_bytes(path, data)
    return len(lines)
