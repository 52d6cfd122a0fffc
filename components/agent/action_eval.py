"""How well a model acts: free-running Action generation at every teacher step of held-out
trajectories.

For each step of a trajectory whose Action the teacher wrote in the canonical form (the agent
loop's "Action: <json>" line), the model gets the row's context up to and including "Action:"
(the same tokens it was trained on: the full row is tokenized once and cut at that character)
and greedily writes the rest of the line. Scores over all probed steps:
  tool_name_accuracy  the generated action names the teacher's tool (the parsed "name", or — when
                      the rest of the line does not parse — a leading `{"name": "<tool>"`)
  valid_json_rate     the generated line is one JSON object with a string "name" that is a
                      registry tool and an object "arguments" (what the loop can execute)
  exact_action_rate   name and arguments equal the teacher's
A generated line that does not parse counts against every rate. See docs/agent.md.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from components.agent.dataset import _encode, default_prompt
from components.agent.process import DEFAULT_TOOLS

_ACTION_LINE = re.compile(r"^Action:(?= )", re.M)
_NAME_PREFIX = re.compile(r'^\s*\{\s*"name"\s*:\s*"([^"\\]*)"')


@dataclass(frozen=True)
class Probe:
    record_id: str
    prompt_ids: list[int]
    gold: dict          # {"name": str, "arguments": dict}


def probes(records: Sequence[dict], tokenizer, *, prompt_fn: Callable[[dict], str] = default_prompt,
           max_prompt_tokens: int | None = None) -> list[Probe]:
    """One probe per canonical Action line (json.loads-able, {"name", "arguments"}) in each record."""
    out = []
    for rec in records:
        text = rec.get("text")
        if not isinstance(text, str):
            continue
        prefix = prompt_fn(rec)
        ids, offsets = _encode(tokenizer, prefix + text)
        for m in _ACTION_LINE.finditer(text):
            line_end = text.find("\n", m.end())
            try:
                gold = json.loads(text[m.end():line_end if line_end >= 0 else None])
            except json.JSONDecodeError:
                continue
            if not isinstance(gold, dict) or not isinstance(gold.get("name"), str):
                continue
            cut = len(prefix) + m.end()                      # characters up to and including "Action:"
            n = int(np.searchsorted(offsets[:, 1], cut, side="right"))   # tokens ending at or before it
            if n == 0 or (max_prompt_tokens is not None and n > max_prompt_tokens):
                continue
            out.append(Probe(str(rec.get("id")), [int(t) for t in ids[:n]], gold))
    return out


def parse_action_line(text: str, tool_names: Sequence[str] = DEFAULT_TOOLS) -> tuple[dict | None, bool]:
    """(action or None, valid) for the generated rest of an Action line: its first balanced {...}
    before a line break, read with json.loads — what the agent loop would execute."""
    from components.agent.loop import balanced_object

    line = text.split("\n", 1)[0]
    span = balanced_object(line)
    if span is None or line[:span[0]].strip():
        return None, False
    try:
        obj = json.loads(line[span[0]:span[1]])
    except json.JSONDecodeError:
        return None, False
    if not isinstance(obj, dict):
        return None, False
    valid = isinstance(obj.get("name"), str) and obj["name"] in tool_names and isinstance(obj.get("arguments"), dict)
    return obj, valid


def evaluate_actions(model, tokenizer, records: Sequence[dict], *, max_new_tokens: int = 96, batch_size: int = 128,
                     pad_id: int = 0, tool_names: Sequence[str] = DEFAULT_TOOLS,
                     prompt_fn: Callable[[dict], str] = default_prompt) -> dict:
    """The three rates (None without probes), the probe count and per-tool accuracy."""
    from model.generation.config import GenerationConfig
    from model.generation.generate import generate

    context = model.cfg.max_position_embeddings
    # longest first: each batch pads to similar lengths, and few distinct shapes are traced
    ps = sorted(probes(records, tokenizer, prompt_fn=prompt_fn, max_prompt_tokens=context - max_new_tokens),
                key=lambda p: -len(p.prompt_ids))
    newline = [i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.decode([i])]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, pad_token_id=pad_id,
                           stop_token_ids=tuple(sorted(newline)))
    named = valid = exact = 0
    per_tool: dict[str, list[int]] = {}
    for i in range(0, len(ps), batch_size):
        chunk = ps[i:i + batch_size]
        res = generate(model, [p.prompt_ids for p in chunk], cfg)
        for p, seq, stop in zip(chunk, res.sequences, res.stop_tokens, strict=True):
            # the stop token is left out of seq but may hold the end of the line ("}\n")
            text = tokenizer.decode(seq + ([stop] if stop is not None else []), skip_special_tokens=False)
            action, ok = parse_action_line(text, tool_names)
            if action is not None:
                name = action.get("name")
            else:
                m = _NAME_PREFIX.match(text)
                name = m.group(1) if m else None
            right = name == p.gold["name"]
            named += right
            valid += ok
            exact += ok and right and action.get("arguments") == p.gold.get("arguments")
            per_tool.setdefault(p.gold["name"], [0, 0])
            per_tool[p.gold["name"]][0] += right
            per_tool[p.gold["name"]][1] += 1
    n = len(ps)
    return {"probes": n, "tool_name_accuracy": named / n if n else None, "valid_json_rate": valid / n if n else None,
            "exact_action_rate": exact / n if n else None,
            "per_tool_accuracy": {k: v[0] / v[1] for k, v in sorted(per_tool.items())}}
