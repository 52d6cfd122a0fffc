"""What one sandboxed execution may use (SandboxLimits) and what it did (ExecResult)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from common.errors import ConfigError

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")


@dataclass(frozen=True)
class SandboxLimits:
    """Per-execution limits. Sizes in MiB except ``output_bytes``.

    timeout_s:     wall clock; past it the whole execution (every process it started) is killed.
    memory_mb:     RLIMIT_AS (address space) of each process.
    cpu_s:         RLIMIT_CPU of each process; None means ceil(timeout_s).
    file_size_mb:  RLIMIT_FSIZE: the largest file a process may write.
    max_processes: RLIMIT_NPROC (not enforced for uid 0, see docs/sandbox.md) and, where the kernel
                   has per-namespace pid_max, a cap on the PID namespace (at least ~300 there).
    open_files:    RLIMIT_NOFILE.
    output_bytes:  captured stdout and stderr are each cut at this many bytes; past it the
                   execution is killed and the result says which stream was truncated.
    """
    timeout_s: float = 10.0
    memory_mb: int = 1024
    cpu_s: int | None = None
    file_size_mb: int = 16
    max_processes: int = 64
    open_files: int = 256
    output_bytes: int = 1_048_576

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes", "open_files",
                     "output_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"SandboxLimits.{name}: must be > 0, got {getattr(self, name)!r}")
        if self.cpu_s is not None and not self.cpu_s > 0:
            raise ConfigError(f"SandboxLimits.cpu_s: must be > 0 or None, got {self.cpu_s!r}")

    @property
    def cpu_seconds(self) -> int:
        return int(self.cpu_s) if self.cpu_s is not None else max(1, math.ceil(self.timeout_s))

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """resource.RLIMIT_* name -> (soft, hard), as the in-child bootstrap applies them.
        CPU gets one second of hard headroom so the soft limit's SIGXCPU (not SIGKILL) fires."""
        mib = 1024 * 1024
        return {
            "RLIMIT_AS": (self.memory_mb * mib,) * 2,
            "RLIMIT_CPU": (self.cpu_seconds, self.cpu_seconds + 1),
            "RLIMIT_FSIZE": (self.file_size_mb * mib,) * 2,
            "RLIMIT_NPROC": (self.max_processes,) * 2,
            "RLIMIT_NOFILE": (self.open_files,) * 2,
            "RLIMIT_CORE": (0, 0),
        }


@dataclass(frozen=True)
class ExecResult:
    """One execution's outcome.

    status: "ok" (exit 0), "error" (non-zero exit), "timeout" (wall clock or CPU limit),
            "memory" (died of MemoryError), "output_limit" (printed more than output_bytes),
            "killed" (died of a signal for another reason).
    returncode: the program's exit code, negative for a signal (as in subprocess); None when
            the sandbox killed it before it reported one.
    isolation: the level it ran under: "bwrap" | "userns+netns" | "rlimits".
    """
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    stdout_truncated: bool
    stderr_truncated: bool
    isolation: str
