"""Reward functions for GRPO: a registry of named factories, weighted sets of them, and the
scoring that never lets one broken function stop a run.

Every reward function has one signature (TRL's)::

    fn(prompts: list[str], completions: list[str], **fields) -> list[float | None]

`fields` are column lists aligned with `completions`: every Task field (tasks.FIELDS: task_id,
kind, answer, tests, test, entry_point) plus ``completion_lengths`` (list[int], tokens) and
``truncated`` (list[bool]). None means "unscorable for this sample" (e.g. exact_answer on a
code task). Functions take what they need by keyword and ignore the rest (``**_``).

This module holds the verifiable rewards (exact_answer, format, length, truncated) and
registers code_tests (code_reward.py) and the keyword heuristics (heuristics.py).
docs/grpo_rewards.md gives every reward's exact semantics.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from common.errors import ConfigError
from components.grpo import heuristics
from components.grpo.code_reward import CodeTestsReward

RewardFn = Callable[..., list]
REGISTRY: dict[str, Callable[..., RewardFn]] = {}


def register(name: str):
    """Decorator: add a factory ``factory(**params) -> reward fn`` under `name`."""
    def add(factory):
        if name in REGISTRY:
            raise ValueError(f"reward function {name!r} is already registered")
        REGISTRY[name] = factory
        return factory
    return add


@dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)  # keyword arguments of the factory


@dataclass
class RewardScores:
    per_function: dict[str, np.ndarray]  # name -> (N,) float64, NaN where the function gave None or failed
    total: np.ndarray  # (N,) weighted sum over the functions that scored each sample; NaN if none did
    errors: list[dict]  # {"function", "index" (None: the whole call), "error": "Type: message"}

    def summary(self) -> dict:
        """{name: {"mean", "std" (population), "scored", "errors"}} per function and for "total";
        mean/std are None when no sample was scored."""
        out = {}
        for name, values in [*self.per_function.items(), ("total", self.total)]:
            scored = values[~np.isnan(values)]
            out[name] = {
                "mean": float(scored.mean()) if scored.size else None,
                "std": float(scored.std()) if scored.size else None,
                "scored": int(scored.size),
                "errors": sum(e["function"] == name for e in self.errors) if name in self.per_function else
                len(self.errors),
            }
        return out


class RewardSet:
    """Named reward functions with weights (build_rewards makes one)."""

    def __init__(self, names: Sequence[str], weights: Sequence[float], functions: Sequence[RewardFn]):
        self.names, self.weights, self.functions = list(names), [float(w) for w in weights], list(functions)

    def score(self, prompts: Sequence[str], completions: Sequence[str], fields: Mapping[str, Sequence]) -> RewardScores:
        """Score every completion with every function. A function that raises, returns the wrong
        number of values or a value that is not a finite number is recorded in `errors` and gives
        NaN there; nothing a reward function does makes this raise. Raises ValueError only when
        the caller's columns do not line up."""
        n = len(completions)
        bad = {k: len(v) for k, v in fields.items() if len(v) != n}
        if len(prompts) != n or bad:
            raise ValueError(f"RewardSet.score: {n} completions but {len(prompts)} prompts; field lengths {bad}")
        per_function, errors = {}, []
        for name, fn in zip(self.names, self.functions, strict=True):
            values = np.full(n, np.nan)  # (N,)
            try:
                got = fn(list(prompts), list(completions), **{k: list(v) for k, v in fields.items()})
            except Exception as e:  # noqa: BLE001 - a broken reward is recorded, never stops the run
                errors.append({"function": name, "index": None, "error": _describe(e)})
                got = None
            if isinstance(got, np.ndarray):
                got = got.tolist()
            if got is not None and (not isinstance(got, Sequence) or isinstance(got, str) or len(got) != n):
                size = len(got) if isinstance(got, Sequence) and not isinstance(got, str) else type(got).__name__
                errors.append({"function": name, "index": None,
                               "error": f"ValueError: returned {size} values for {n} completions"})
                got = None
            for i, v in enumerate(got or ()):
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                    errors.append({"function": name, "index": i,
                                   "error": f"ValueError: reward must be a finite number or None, got {v!r}"})
                    continue
                values[i] = float(v)
            per_function[name] = values
        stacked = np.stack([per_function[k] * w for k, w in zip(self.names, self.weights, strict=True)])  # (F, N)
        scored = ~np.isnan(stacked)
        total = np.where(scored.any(axis=0), np.where(scored, stacked, 0.0).sum(axis=0), np.nan)  # (N,)
        return RewardScores(per_function, total, errors)

    def close(self) -> None:
        """Release what the functions hold (code_tests' sandbox pool)."""
        for fn in self.functions:
            if hasattr(fn, "close"):
                fn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def build_rewards(specs: Sequence[RewardSpec | Mapping]) -> RewardSet:
    """A RewardSet from specs (RewardSpec or {"name", "weight"?, "params"?} dicts, e.g. from
    YAML). Raises ConfigError naming the spec for an unknown name, a duplicate, a bad weight or
    parameters the factory rejects."""
    if not specs:
        raise ConfigError("rewards: at least one reward function is needed")
    names, weights, fns = [], [], []
    for i, spec in enumerate(specs):
        where = f"rewards[{i}]"
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"name", "weight", "params"}
            if unknown or "name" not in spec:
                raise ConfigError(f"{where}: expected keys name, weight?, params?; got {sorted(spec)}")
            spec = RewardSpec(spec["name"], spec.get("weight", 1.0), dict(spec.get("params") or {}))
        if spec.name not in REGISTRY:
            raise ConfigError(f"{where}.name: unknown reward function {spec.name!r}; known: {', '.join(sorted(REGISTRY))}")
        if spec.name in names:
            raise ConfigError(f"{where}.name: {spec.name!r} is listed twice")
        w = spec.weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise ConfigError(f"{where}.weight: must be a finite number, got {w!r}")
        if not isinstance(spec.params, Mapping):
            raise ConfigError(f"{where}.params: must be a mapping, got {type(spec.params).__name__}")
        try:
            fn = REGISTRY[spec.name](**spec.params)
        except ConfigError as e:
            raise ConfigError(f"{where} ({spec.name}).params: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where} ({spec.name}).params: {e}") from None
        names.append(spec.name)
        weights.append(float(w))
        fns.append(fn)
    return RewardSet(names, weights, fns)


# ---- exact_answer ----

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    r"""The contents of the last ``\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None  # unclosed


def extract_answer(completion: str) -> str | None:
    r"""The answer a completion gives: the last ``<answer>…</answer>``, else the last
    ``\boxed{…}``, else the first number on the completion's first line; None if none."""
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    lines = completion.replace("\u2212", "-").strip().splitlines()
    m = _NUMBER.search(lines[0]) if lines else None
    return m.group(0) if m else None


def parse_number(text: str) -> Fraction | None:
    """An exact value for "85", "-3", "0.5", "3/4", "1,000", "$12$", "1e3"; None otherwise."""
    s = re.sub(r"\s+", "", text.replace("\u2212", "-")).strip("$").rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("$").rstrip(".").strip()).lower()


def answers_match(given: str, expected: str) -> bool:
    """Numerically equal when both parse as numbers, else equal after normalization
    (case, surrounding whitespace/$, a trailing period, runs of whitespace)."""
    a, b = parse_number(given), parse_number(expected)
    if a is not None and b is not None:
        return a == b
    return _normalize(given) == _normalize(expected)


@register("exact_answer")
def exact_answer():
    def reward(prompts, completions, *, kind, answer, **_):
        out = []
        for c, k, a in zip(completions, kind, answer, strict=True):
            if k != "math" or a is None:
                out.append(None)
                continue
            got = extract_answer(c)
            out.append(float(got is not None and answers_match(got, str(a))))
        return out
    return reward


# ---- format ----

FORMAT_PATTERN = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"


@register("format")
def format_reward(pattern: str = FORMAT_PATTERN):
    """1.0 when the whole completion matches `pattern` (re.fullmatch, re.DOTALL), else 0.0."""
    try:
        regex = re.compile(pattern, re.S)
    except (re.error, TypeError) as e:
        raise ConfigError(f"pattern: not a valid regular expression ({e})") from None

    def reward(prompts, completions, **_):
        return [float(regex.fullmatch(c) is not None) for c in completions]
    return reward


# ---- length ----

LENGTH_MODES = ("soft_overlong", "linear")


@register("length")
def length_reward(max_tokens: int, cache_tokens: int | None = None, mode: str = "soft_overlong"):
    """DAPO's soft overlong punishment (mode soft_overlong, needs cache_tokens) or −len/max_tokens
    (mode linear), from the completion_lengths field."""
    if mode not in LENGTH_MODES:
        raise ConfigError(f"mode: must be one of {', '.join(LENGTH_MODES)}, got {mode!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens: must be an integer >= 1, got {max_tokens!r}")
    if mode == "soft_overlong":
        if isinstance(cache_tokens, bool) or not isinstance(cache_tokens, int) or not 0 < cache_tokens < max_tokens:
            raise ConfigError(f"cache_tokens: mode soft_overlong needs an integer in 1..max_tokens-1, got {cache_tokens!r}")

    def soft(n: int) -> float:
        free = max_tokens - cache_tokens  # lengths up to here are not punished
        if n <= free:
            return 0.0
        if n <= max_tokens:
            return (free - n) / cache_tokens
        return -1.0

    def reward(prompts, completions, *, completion_lengths, **_):
        if mode == "linear":
            return [-n / max_tokens for n in completion_lengths]
        return [soft(n) for n in completion_lengths]
    return reward


@register("truncated")
def truncated_reward(value: float = -1.0):
    """`value` for a completion cut at the length limit, 0.0 otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"value: must be a finite number, got {value!r}")

    def reward(prompts, completions, *, truncated, **_):
        return [float(value) if t else 0.0 for t in truncated]
    return reward


register("code_tests")(CodeTestsReward)
for _name, _factory in heuristics.FACTORIES.items():
    register(_name)(_factory)
