"""Which isolation this machine allows, and the command line that wraps a program in it.

Levels, strongest first (docs/sandbox.md says what each contains):
  "bwrap":        bubblewrap: every namespace unshared, read-only root, private /tmp and /dev.
  "userns+netns": the util-linux ``unshare`` binary: user, network, PID and mount namespaces;
                  the in-child bootstrap (_boot.py) makes every mount read-only but the work dir.
  "rlimits":      no namespaces: rlimits, a new session and a /proc scan that kills every
                  process carrying the execution's marker. No network or filesystem isolation.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys

log = logging.getLogger(__name__)

LEVELS = ("bwrap", "userns+netns", "rlimits")
BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot.py")
ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")
UNSHARE_FLAGS = ["--user", "--map-root-user", "--net", "--pid", "--fork", "--mount",
                 "--mount-proc", "--kill-child"]


def _bwrap_flags(workdir: str) -> list[str]:
    # Later mounts go on top: the work dir (under /tmp) is bound back over the private /tmp.
    return ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", workdir, workdir, "--chdir", workdir]


def _probe(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def isolation_level() -> str:
    """The strongest level that works here (probed once per process by running `true` in it).
    Logs one warning when it is weaker than "userns+netns"."""
    bwrap, unshare = shutil.which("bwrap"), shutil.which("unshare")
    if bwrap and _probe([bwrap] + _bwrap_flags("/tmp") + ["true"]):
        return "bwrap"
    if unshare and _probe([unshare] + UNSHARE_FLAGS + ["true"]):
        return "userns+netns"
    log.warning("sandbox: neither bubblewrap nor unprivileged user namespaces work here; "
                "running code with rlimits only: NO network or filesystem isolation "
                "(install bubblewrap or enable user namespaces); see docs/sandbox.md")
    return "rlimits"


def check_level(level: str) -> str:
    """A forced level must be known and no stronger than what this machine supports."""
    if level not in LEVELS:
        raise ValueError(f"sandbox isolation: unknown level {level!r}; one of {LEVELS}")
    if LEVELS.index(level) < LEVELS.index(isolation_level()):
        raise ValueError(f"sandbox isolation: {level!r} is not available here "
                         f"(best is {isolation_level()!r})")
    return level


def wrap(level: str, workdir: str, program: list[str], rlimits: dict, status_fd: int,
         pid_max: int) -> list[str]:
    """The full argv: the isolation wrapper, then the bootstrap that applies limits and runs
    `program` (see _boot.py for what each mode does)."""
    mode = {"bwrap": "reaper", "userns+netns": "userns", "rlimits": "exec"}[level]
    cfg = {"mode": mode, "workdir": workdir, "argv": program, "rlimits": rlimits,
           "status_fd": status_fd, "pid_max": pid_max}
    # -S -s: the bootstrap needs no site-packages; it is not the program's interpreter.
    boot = [sys.executable, "-s", "-S", "-B", BOOT, json.dumps(cfg)]
    if level == "bwrap":
        return [shutil.which("bwrap")] + _bwrap_flags(workdir) + boot
    if level == "userns+netns":
        return [shutil.which("unshare")] + UNSHARE_FLAGS + boot
    return boot


def wrap_zygote(scratch: str, sock_fd: int, rlimits: dict, pid_max: int) -> list[str]:
    """The argv of a warm-mode zygote (see _zygote.py): the "userns+netns" wrapper around this
    interpreter running _zygote.py, which programs then run in (so ``-s`` but not ``-S``: the
    same sys.path as the one-shot ``python -s -B main.py``)."""
    cfg = {"scratch": scratch, "sock_fd": sock_fd, "rlimits": rlimits, "pid_max": pid_max}
    return ([shutil.which("unshare")] + UNSHARE_FLAGS
            + [sys.executable, "-s", "-B", ZYGOTE, json.dumps(cfg)])
