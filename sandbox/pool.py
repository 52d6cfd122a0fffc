"""SandboxPool: many programs, each in its own sandbox, a few at a time."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from common.errors import ConfigError
from sandbox.isolation import isolation_level
from sandbox.limits import ExecResult, SandboxLimits
from sandbox.run import run_python
from sandbox.zygote import LEVEL as WARM_LEVEL
from sandbox.zygote import Zygote


class SandboxPool:
    """Runs programs in parallel, `workers` at a time. Each worker thread only launches and
    watches a sandboxed process, so threads are enough (the GIL is released while they wait).

    warm: each worker owns one zygote (sandbox/zygote.py), a sandboxed interpreter started once
    per `map` call that forks a fresh child per program; much cheaper per program than the
    one-shot path (`run_python`: two interpreter start-ups and an `unshare` per program) and
    with the same containment. None (default): warm where the isolation level is
    "userns+netns" (the only level warm mode supports), one-shot elsewhere. True there demands
    it (ConfigError elsewhere); False forces one-shot."""

    def __init__(self, workers: int, limits: SandboxLimits = SandboxLimits(), warm: bool | None = None):
        if workers < 1:
            raise ConfigError(f"SandboxPool.workers: must be >= 1, got {workers!r}")
        level = isolation_level()
        if warm and level != WARM_LEVEL:
            raise ConfigError(f"SandboxPool.warm: needs isolation {WARM_LEVEL!r}, this machine "
                              f"has {level!r}")
        self.workers, self.limits = workers, limits
        self.warm = (level == WARM_LEVEL) if warm is None else bool(warm)

    def _failure(self, e: Exception, start: float) -> ExecResult:
        return ExecResult(status="error", returncode=None, stdout="",
                          stderr=f"sandbox failure: {type(e).__name__}: {e}",
                          duration_s=time.monotonic() - start, stdout_truncated=False,
                          stderr_truncated=False,
                          isolation=WARM_LEVEL if self.warm else isolation_level())

    def _one(self, code: str, stdin: str | None) -> ExecResult:
        start = time.monotonic()
        try:
            return run_python(code, stdin=stdin, limits=self.limits)
        except Exception as e:  # noqa: BLE001 - one broken execution must not sink the batch
            return self._failure(e, start)

    def map(self, codes: Iterable[str], stdins: Iterable[str | None] | None = None) -> list[ExecResult]:
        """One ExecResult per program, in the order given. `stdins`, if given, pairs with codes.
        Warm mode: the zygotes live for this call only (started on first use, closed before it
        returns), so nothing outlives it."""
        codes = list(codes)
        stdins = list(stdins) if stdins is not None else [None] * len(codes)
        if len(stdins) != len(codes):
            raise ConfigError(f"SandboxPool.map: {len(codes)} programs but {len(stdins)} stdins")
        if not self.warm:
            with ThreadPoolExecutor(max_workers=self.workers) as ex:
                return list(ex.map(self._one, codes, stdins))
        idle: queue.SimpleQueue[Zygote] = queue.SimpleQueue()
        made: list[Zygote] = []
        lock = threading.Lock()

        def warm_one(code: str, stdin: str | None) -> ExecResult:
            start = time.monotonic()
            try:  # at most `workers` zygotes: a thread takes one back only when it is idle
                zygote = idle.get_nowait()
            except queue.Empty:
                zygote = Zygote(self.limits)
                with lock:
                    made.append(zygote)
            try:
                return zygote.run(code, stdin)
            except Exception as e:  # noqa: BLE001 - one broken execution must not sink the batch
                zygote.close(graceful=False)  # the next run starts a fresh one
                return self._failure(e, start)
            finally:
                idle.put(zygote)

        try:
            with ThreadPoolExecutor(max_workers=self.workers) as ex:
                return list(ex.map(warm_one, codes, stdins))
        finally:
            for zygote in made:
                zygote.close()
