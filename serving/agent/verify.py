"""Chain-of-thought with self-verification (DeepSeek-V3's phase-5 recipe, the seed's "reason,
self-check with a confidence score, regenerate below a threshold").

Per attempt k (0-based): the model answers the conversation, reasoning first (COT_INSTRUCTION
joins the system text); then, in a second generation, it reads its own answer under
CHECK_PROMPT and writes a confidence in [0, 1]. At or above `threshold` the answer is taken;
below it the loop regenerates with a new seed (seed + k) until `max_attempts`. When no attempt
reaches the threshold the most confident one is returned (the first among equals).
`corrected` says the returned answer is not the first attempt's: a correction happened.

Like the agent loop this knows nothing of HTTP: it takes an async `complete(messages, seed,
sample, check)` (sample=False: greedy; check=True: a self-check, always greedy), so unit tests
script it.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

COT_INSTRUCTION = ("Think step by step: write your reasoning first, then the final answer on its own line "
                   "as 'Answer: <answer>'.")
CHECK_PROMPT = ("Check the answer above step by step: is the reasoning sound and the final answer correct? "
                "End with one line 'Confidence: X', where X is a number from 0 to 1, your confidence "
                "that the answer is correct.")

_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
# "Confidence: 0.8", "confidence = 80%", "**Confidence**: 4/5", "confidence score of 0.9"
_LABELLED = re.compile(r"confiden(?:ce|t)\b[^0-9.\n]{0,24}" + _NUM + r"\s*(%|/\s*" + _NUM + r")?", re.I)
# "I am 90% confident"
_BEFORE = re.compile(_NUM + r"\s*(%|/\s*" + _NUM + r")?\s+(?:sure|certain|confiden)", re.I)
_BARE = re.compile(r"^[^\w.]*" + _NUM + r"\s*(%|/\s*" + _NUM + r")?\W*$")


def _value(num: str, suffix: str | None, denom: str | None) -> float | None:
    x = float(num)
    if suffix == "%":
        x /= 100
    elif denom is not None:
        d = float(denom)
        if d == 0:
            return None
        x /= d
    elif x > 1 and x <= 100 and x == int(x):   # "Confidence: 85" means 85 %
        x /= 100
    return x if 0.0 <= x <= 1.0 else None


def parse_confidence(text: str) -> float:
    """The confidence a self-check states, in [0, 1]; 0.0 when there is none or it is out of
    range (an unreadable check must not pass the threshold). The last labelled value wins
    ("Confidence: 0.9" after a first draft of 0.3); failing that, a last line that is just a number."""
    found = sorted([*_LABELLED.finditer(text), *_BEFORE.finditer(text)], key=lambda m: m.start())
    for m in reversed(found):
        v = _value(m.group(1), (m.group(2) or "")[:1] or None, m.group(3))
        if v is not None:
            return v
    if found:
        return 0.0
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if lines and (m := _BARE.match(lines[-1].strip())):
        v = _value(m.group(1), (m.group(2) or "")[:1] or None, m.group(3))
        return 0.0 if v is None else v
    return 0.0


def with_cot(messages: Sequence[dict]) -> list[dict]:
    """The conversation with the reasoning instruction in its system text (added or appended)."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = (msgs[0]["content"] + "\n\n" + COT_INSTRUCTION).strip()
    else:
        msgs.insert(0, {"role": "system", "content": COT_INSTRUCTION})
    return msgs


def check_messages(messages: Sequence[dict], answer: str) -> list[dict]:
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": CHECK_PROMPT}]


@dataclass
class VerifyResult:
    answer: str
    chosen: int                                   # index of the returned attempt
    attempts: list[dict] = field(default_factory=list)   # {"answer", "check", "confidence", "seed"}

    @property
    def corrected(self) -> bool:
        return self.chosen != 0

    @property
    def confidences(self) -> list[float]:
        return [a["confidence"] for a in self.attempts]


Complete = Callable[[list[dict], int, bool, bool], Awaitable[str]]


async def self_verify(complete: Complete, messages: Sequence[dict], *, threshold: float, max_attempts: int,
                      seed: int = 0, sample_first: bool = False) -> VerifyResult:
    """Answer, self-check, regenerate below `threshold` (see the module docstring).

    `sample_first`: whether attempt 0 samples (the request's own temperature > 0); regenerations
    always sample, since a greedy regeneration would repeat the same answer."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    base = with_cot(messages)
    attempts: list[dict] = []
    for k in range(max_attempts):
        answer = await complete(base, seed + k, sample_first or k > 0, False)
        check = await complete(check_messages(base, answer), seed + k, False, True)
        conf = parse_confidence(check)
        attempts.append({"answer": answer, "check": check, "confidence": conf, "seed": seed + k})
        if conf >= threshold:
            break
    best = max(range(len(attempts)), key=lambda i: (attempts[i]["confidence"], -i))
    return VerifyResult(attempts[best]["answer"], best, attempts)
