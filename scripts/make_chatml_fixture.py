#!/usr/bin/env python3
"""Render reference conversations with transformers' apply_chat_template and Qwen2.5's jinja template.

Runs in the SEPARATE reference venv (transformers installed), never in the project venv:

    .venv-ref/bin/python scripts/make_chatml_fixture.py     # (re)writes tests/fixtures/sft/chatml_expected.json

The template is Qwen2.5-Instruct's tokenizer_config.json "chat_template" (a public format),
stored as tests/fixtures/sft/qwen2_5_chat_template.jinja. apply_chat_template needs a tokenizer
object, but with tokenize=False only the template matters: a tiny untrained BPE with the ChatML
special tokens stands in for Qwen's. For each case the fixture keeps the messages (OpenAI style,
as seekline's SFT reader accepts them), the full rendering ("text") and the generation prompt of
the history before the last assistant turn ("prompt"); components/sft/chat_template_test.py
checks seekline's chatml template reproduces both exactly.
"""
from __future__ import annotations

import json
import os

import transformers
from tokenizers import Tokenizer, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "sft")


def call(name: str, args: dict) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": args}}


CASES = {
    "single_turn_default_system": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?\nBe brief."},
        {"role": "assistant", "content": "Green.\n\nDone."},
    ],
    "tool_calls_and_results": [
        {"role": "user", "content": "Weather in Zürich and Oslo, then log it."},
        {"role": "assistant", "content": "", "tool_calls": [call("weather", {"city": "Zürich"}),
                                                            call("weather", {"city": "Oslo", "units": "C"})]},
        {"role": "tool", "name": "weather", "content": "{\"temp\": 3}"},
        {"role": "tool", "name": "weather", "content": "{\"temp\": -2}"},
        {"role": "assistant", "content": "Logging both.", "tool_calls": [
            call("log", {"entries": [3, -2], "ok": True, "note": None})]},
        {"role": "tool", "content": "logged"},
        {"role": "assistant", "content": "Zürich 3C, Oslo -2C."},
    ],
    "system_in_the_middle": [
        {"role": "system", "content": "First system."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Now be formal."},
        {"role": "user", "content": "hi again"},
        {"role": "assistant", "content": "Good day."},
    ],
    "code_answer": [
        {"role": "user", "content": "Write `add(a, b)`."},
        {"role": "assistant", "content": "```python\ndef add(a, b):\n    return a + b\n```"},
    ],
}


def main() -> None:
    with open(os.path.join(FIX, "qwen2_5_chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    bpe = Tokenizer(models.BPE())
    bpe.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                               pad_token="<|endoftext|>")
    tok.chat_template = template
    cases = []
    for name, messages in CASES.items():
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        cases.append({
            "name": name,
            "messages": messages,
            "text": tok.apply_chat_template(messages, tokenize=False),
            "prompt": tok.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True),
        })
    out = {"transformers_version": transformers.__version__, "template_file": "qwen2_5_chat_template.jinja",
           "cases": cases}
    with open(os.path.join(FIX, "chatml_expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {FIX}/chatml_expected.json")


if __name__ == "__main__":
    main()
