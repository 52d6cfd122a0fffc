"""The templates of the procedural coding-task family (see tasks.coding_tasks).

Each template is one small function to write, with a finite space of constants (so the
train/held-out split can be decided per problem, see tasks.py): a docstring pattern, a
reference *body* as source (kept as the task's canonical_solution) and an independent
reference *callable* that computes the expected outputs of the tests. The two are written
separately on purpose: tasks_test runs every body through the sandbox against tests the
callables produced, so a slip in either shows up.

Inputs are drawn from the task's own random generator; outputs are plain ints, bools, strs
so that ``repr`` of them is valid Python for the assert statements.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

_WORDS = ("apple", "banana", "cherry", "delta", "echo", "forest", "garden", "harbor", "island",
          "jungle", "kite", "lemon", "mango", "night", "ocean", "piano", "quartz", "river", "stone",
          "tiger", "umbrella", "violet", "window", "yellow", "zebra")


@dataclass(frozen=True)
class Template:
    key: str
    names: tuple[str, ...]  # function-name patterns, formatted with the params
    args: str  # the parameter list, e.g. "x" or "s"
    doc: str  # docstring pattern (one line)
    body: str  # reference body source pattern, indented 4 spaces
    space: Callable[[], Iterator[dict]]  # every params dict (the problem's constants)
    reference: Callable[..., object]  # reference(params, *call_args) -> expected output
    draw: Callable[[random.Random, dict], tuple]  # one random call-argument tuple
    extras: Callable[[dict], dict] = lambda params: {}  # params -> more pattern names (wording only)

    def context(self, params: dict) -> dict:
        return {**self.extras(params), **params}

    def render(self, params: dict, name: str) -> tuple[str, str]:
        """(prompt, canonical body) for these params and function name."""
        ctx = self.context(params)
        return f'def {name}({self.args}):\n    """{self.doc.format(**ctx)}"""\n', self.body.format(**ctx)


def _word(rng: random.Random) -> str:
    w = rng.choice(_WORDS)
    # mixed case so that upper()/lower() variants are really tested
    return "".join(c.upper() if rng.random() < 0.3 else c for c in w)


def _letters(rng: random.Random, must: str) -> str:
    pool = must * 3 + "abcdefghij"
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 9)))


def _ints(rng: random.Random, lo: int, hi: int, min_len: int, max_len: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(min_len, max_len))]


def _divisible_draw(rng: random.Random, p: dict) -> tuple:
    # half multiples of k, so both True and False answers are tested
    return (p["k"] * rng.randint(0, 12),) if rng.random() < 0.5 else (rng.randint(0, 100),)


_CASE = {"keep": ("", ""), "upper": (" and in upper case", ".upper()"),
         "lower": (" and in lower case", ".lower()")}
_REDUCE_DOC = {"max": "the largest element", "min": "the smallest element", "sum": "the sum of the elements",
               "product": "the product of the elements"}
_REDUCE_BODY = {"max": "    return max(xs)\n", "min": "    return min(xs)\n", "sum": "    return sum(xs)\n",
                "product": "    result = 1\n    for v in xs:\n        result *= v\n    return result\n"}
_REDUCE_REF = {"max": max, "min": min, "sum": sum, "product": math.prod}


def _reverse_ref(p: dict, s: str) -> str:
    out = "".join(reversed(s))
    return {"keep": out, "upper": out.upper(), "lower": out.lower()}[p["case"]]


TEMPLATES: tuple[Template, ...] = (
    Template(
        "add_const", ("add_{k}", "plus_{k}", "increment_by_{k}"), "x", "Return x plus {k}.",
        "    return x + {k}\n", lambda: ({"k": k} for k in range(1, 41)),
        lambda p, x: x + p["k"], lambda rng, p: (rng.randint(-50, 100),)),
    Template(
        "multiply_const", ("multiply_by_{k}", "times_{k}", "scale_by_{k}"), "x",
        "Return x multiplied by {k}.", "    return x * {k}\n", lambda: ({"k": k} for k in range(2, 16)),
        lambda p, x: x * p["k"], lambda rng, p: (rng.randint(-20, 50),)),
    Template(
        "divisible", ("is_divisible_by_{k}", "divisible_by_{k}", "is_multiple_of_{k}"), "n",
        "Return True if n is divisible by {k}, else False.", "    return n % {k} == 0\n",
        lambda: ({"k": k} for k in range(2, 16)), lambda p, n: n % p["k"] == 0, _divisible_draw),
    Template(
        "remainder", ("remainder_{k}", "mod_{k}", "modulo_{k}"), "n",
        "Return the remainder of n divided by {k}.", "    return n % {k}\n",
        lambda: ({"k": k} for k in range(2, 16)), lambda p, n: n % p["k"], lambda rng, p: (rng.randint(0, 200),)),
    Template(
        "reverse_string", ("reverse{suffix}", "reverse_string{suffix}", "reversed_text{suffix}"), "s",
        "Return s reversed{case_doc}.", "    return s[::-1]{case_call}\n",
        lambda: ({"case": c} for c in _CASE), _reverse_ref, lambda rng, p: (_word(rng),),
        lambda p: {"case_doc": _CASE[p["case"]][0], "case_call": _CASE[p["case"]][1],
                   "suffix": "" if p["case"] == "keep" else f"_{p['case']}"}),
    Template(
        "count_char", ("count_{c}", "count_letter_{c}", "num_{c}"), "s",
        "Return how many times the letter '{c}' occurs in s.", "    return s.count('{c}')\n",
        lambda: ({"c": c} for c in string.ascii_lowercase),
        lambda p, s: sum(ch == p["c"] for ch in s), lambda rng, p: (_letters(rng, p["c"]),)),
    Template(
        "list_reduce", ("list_{op}", "{op}_of_list", "find_{op}"), "xs",
        "Return {what} of xs (a non-empty list of integers).", "{body}",
        lambda: ({"op": op} for op in _REDUCE_DOC), lambda p, xs: _REDUCE_REF[p["op"]](xs),
        lambda rng, p: (_ints(rng, -5, 5, 1, 5) if p["op"] == "product" else _ints(rng, -20, 20, 1, 6),),
        lambda p: {"what": _REDUCE_DOC[p["op"]], "body": _REDUCE_BODY[p["op"]]}),
    Template(
        "repeat_string", ("repeat_{n}", "repeat_{n}_times", "echo_{n}"), "s",
        "Return s repeated {n} times{sep_doc}.", "    return {sep!r}.join([s] * {n})\n",
        lambda: ({"n": n, "sep": sep} for n in range(2, 7) for sep in ("", "-", " ", ",")),
        lambda p, s: p["sep"].join(s for _ in range(p["n"])),
        lambda rng, p: ("".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 4))),),
        lambda p: {"sep_doc": f", separated by {p['sep']!r}" if p["sep"] else ""}),
    Template(
        "clamp", ("clamp", "clamp_{lo}_{hi}", "limit_{lo}_{hi}", "bound"), "x",
        "Return x limited to the range [{lo}, {hi}]: {lo} if x < {lo}, {hi} if x > {hi}, else x.",
        "    return min(max(x, {lo}), {hi})\n",
        lambda: ({"lo": lo, "hi": hi} for lo in range(10) for hi in range(lo + 5, lo + 15)),
        lambda p, x: p["lo"] if x < p["lo"] else p["hi"] if x > p["hi"] else x,
        lambda rng, p: (rng.randint(p["lo"] - 10, p["hi"] + 10),)),
    Template(
        "count_greater", ("count_greater_than_{k}", "count_above_{k}", "num_over_{k}"), "xs",
        "Return how many elements of xs are greater than {k}.", "    return sum(1 for v in xs if v > {k})\n",
        lambda: ({"k": k} for k in range(16)),
        lambda p, xs: len([v for v in xs if v > p["k"]]), lambda rng, p: (_ints(rng, 0, 30, 0, 8),)),
)


def problem_key(template: Template, params: dict) -> str:
    """The canonical identity of a problem: template and constants, not the function name
    (two names for the same constants are the same problem, so they share a split)."""
    return f"code/{template.key}/" + ",".join(f"{k}={v!r}" for k, v in sorted(params.items()))
