"""SandboxPool: many programs, each in its own sandbox, a few at a time."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from common.errors import ConfigError
from sandbox.isolation import isolation_level
from sandbox.limits import ExecResult, SandboxLimits
from sandbox.run import run_python


class SandboxPool:
    """Runs programs in parallel, `workers` at a time. Each worker thread only launches and
    watches a subprocess, so threads are enough (the GIL is released while they wait)."""

    def __init__(self, workers: int, limits: SandboxLimits = SandboxLimits()):
        if workers < 1:
            raise ConfigError(f"SandboxPool.workers: must be >= 1, got {workers!r}")
        self.workers, self.limits = workers, limits

    def _one(self, code: str, stdin: str | None) -> ExecResult:
        start = time.monotonic()
        try:
            return run_python(code, stdin=stdin, limits=self.limits)
        except Exception as e:  # noqa: BLE001 - one broken execution must not sink the batch
            return ExecResult(status="error", returncode=None, stdout="",
                              stderr=f"sandbox failure: {type(e).__name__}: {e}",
                              duration_s=time.monotonic() - start, stdout_truncated=False,
                              stderr_truncated=False, isolation=isolation_level())

    def map(self, codes: Iterable[str], stdins: Iterable[str | None] | None = None) -> list[ExecResult]:
        """One ExecResult per program, in the order given. `stdins`, if given, pairs with codes."""
        codes = list(codes)
        stdins = list(stdins) if stdins is not None else [None] * len(codes)
        if len(stdins) != len(codes):
            raise ConfigError(f"SandboxPool.map: {len(codes)} programs but {len(stdins)} stdins")
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(self._one, codes, stdins))
