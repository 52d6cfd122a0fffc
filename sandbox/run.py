"""run_python: one program, in its own sandbox, to completion or to a limit."""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from common.errors import UserError
from sandbox.isolation import check_level, isolation_level, wrap
from sandbox.limits import ExecResult, SandboxLimits

MARKER = "SEEKLINE_SANDBOX_ID"  # env var carried by every process of one execution
_POLL_S = 0.05  # how often the read loop notices that the program has exited


def _workdir_files(workdir: str, code: str, stdin: str | None, files: dict[str, str] | None):
    for name, text in (files or {}).items():
        norm = os.path.normpath(name)
        if os.path.isabs(name) or norm == ".." or norm.startswith("../") or norm in ("main.py", "."):
            raise UserError(f"sandbox files: {name!r} must be a relative path inside the work "
                            "dir (and not main.py)")
        path = os.path.join(workdir, norm)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
        f.write(code)
    # stdin comes from a file, so a program that never reads it cannot block a writer.
    with open(os.path.join(workdir, ".stdin"), "w", encoding="utf-8") as f:
        f.write(stdin or "")


def _env(workdir: str, exec_id: str) -> dict[str, str]:
    """A fresh environment: nothing is inherited from the parent (its secrets stay there)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
            "PYTHONUNBUFFERED": "1", MARKER: exec_id}


def leftovers(prefix: str = "") -> list[int]:
    """Pids of live processes started by a sandbox (optionally only executions whose id starts
    with `prefix`, e.g. f"{os.getpid()}-" for this process's). A finished run leaves none."""
    needle = f"{MARKER}={prefix}".encode()
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            continue
        if needle in env and not zombie:
            out.append(int(pid))
    return out


def kill_marked(exec_id: str) -> int:
    """SIGKILL every process whose environment carries this execution's marker, until none is
    left (a forking process may spawn between scans); returns how many were killed. This is
    what catches a daemon that setsid()ed out of the process group when no PID namespace does."""
    needle = f"{MARKER}={exec_id}\0".encode()
    killed = 0
    for _ in range(100):
        found = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if needle not in f.read():
                        continue
                os.kill(int(pid), signal.SIGKILL)
                found += 1
            except OSError:  # gone, or not ours to read
                continue
        killed += found
        if not found:
            break
        time.sleep(0.01)
    return killed


def _kill_group(proc: subprocess.Popen) -> None:
    try:  # the wrapper leads its own session/group; under namespaces its death ends them all
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_capped(fd: int, buf: bytearray, cap: int, trunc: list[bool], i: int) -> bool:
    """Read what fd has into buf, keeping at most cap bytes (trunc[i] set when more came).
    False at end of file."""
    chunk = os.read(fd, 65536)
    if not chunk:
        return False
    room = cap - len(buf)
    buf += chunk[:room]
    trunc[i] |= len(chunk) > room
    return True


def _capture(proc, deadline: float, cap: int):
    """Read stdout and stderr together until both close or the program exits (a daemon may
    hold them open), the deadline passes or one stream passes `cap` bytes."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, 0)
    sel.register(proc.stderr, selectors.EVENT_READ, 1)
    bufs, trunc = (bytearray(), bytearray()), [False, False]
    timed_out, exited_at = False, None
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        elif exited_at is not None and now - exited_at > 0.2:
            break  # exited, and what it wrote is drained; open pipes belong to stragglers
        for key, _ in sel.select(min(deadline - now, _POLL_S)):
            if not read_capped(key.fd, bufs[key.data], cap, trunc, key.data):
                sel.unregister(key.fileobj)
        if any(trunc):
            break
    sel.close()
    return bufs, trunc, timed_out


def _status(rc, stderr: str, timed_out: bool, truncated: bool) -> str:
    if truncated:
        return "output_limit"
    if timed_out or rc in (-signal.SIGXCPU,):
        return "timeout"
    if rc is None:
        return "killed"
    if any(line.startswith("MemoryError") for line in stderr.strip().splitlines()[-2:]):
        return "memory"
    if rc < 0:
        return "killed"
    return "ok" if rc == 0 else "error"


def _remove(workdir: str) -> None:
    def fix(func, path, _exc):  # a program may chmod its own files/dirs to 000
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)
    shutil.rmtree(workdir, onerror=fix)


def run_python(code: str, *, stdin: str | None = None, limits: SandboxLimits = SandboxLimits(),
               files: dict[str, str] | None = None, isolation: str | None = None) -> ExecResult:
    """Run `code` as main.py with this interpreter (``python -s -B main.py``) in a fresh
    sandbox: private work dir (removed afterwards; `files` are written into it and importable),
    `stdin` as standard input, a scrubbed environment, `limits`, and the strongest isolation
    this machine has (`isolation` forces a weaker level, e.g. for tests). Never raises for what
    the program does; raises UserError for bad `files` names and RuntimeError when the sandbox
    itself could not be set up."""
    level = check_level(isolation) if isolation else isolation_level()
    exec_id = f"{os.getpid()}-{uuid.uuid4().hex}"  # the parent's pid first: see leftovers()
    workdir = tempfile.mkdtemp(prefix="seekline-sandbox-")
    status_r, status_w = os.pipe()
    proc = None
    try:
        _workdir_files(workdir, code, stdin, files)
        program = [sys.executable, "-s", "-B", "main.py"]
        argv = wrap(level, workdir, program, limits.rlimits(), status_w,
                    pid_max=max(301, limits.max_processes + 2))
        start = time.monotonic()
        with open(os.path.join(workdir, ".stdin"), "rb") as stdin_f:
            proc = subprocess.Popen(argv, stdin=stdin_f, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=workdir,
                                    env=_env(workdir, exec_id), start_new_session=True,
                                    pass_fds=(status_w,))
        os.close(status_w)
        status_w = None
        bufs, trunc, timed_out = _capture(proc, start + limits.timeout_s, limits.output_bytes)
        if timed_out or any(trunc):
            _kill_group(proc)
        try:
            proc.wait(timeout=max(0.0, start + limits.timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:  # closed its pipes but kept running
            timed_out = True
            _kill_group(proc)
            proc.wait()
        duration = time.monotonic() - start
        rc = proc.returncode
        if level != "rlimits":
            os.set_blocking(status_r, False)  # a killed init may not have written (or died) yet
            try:
                report = os.read(status_r, 65536).decode()
            except BlockingIOError:
                report = ""
            got = json.loads(report) if report.strip() else {}
            if "setup_error" in got:
                raise RuntimeError(f"sandbox setup failed ({level}): {got['setup_error']}")
            rc = got.get("returncode")  # None: killed before the program finished
        if timed_out or any(trunc):
            rc = None  # we killed it: whatever status the kill left is not the program's
        out, err = (b.decode("utf-8", errors="replace") for b in bufs)
        return ExecResult(status=_status(rc, err, timed_out, any(trunc)), returncode=rc,
                          stdout=out, stderr=err, duration_s=duration,
                          stdout_truncated=trunc[0], stderr_truncated=trunc[1], isolation=level)
    finally:
        if proc is not None:
            _kill_group(proc)
            proc.wait()
            for f in (proc.stdout, proc.stderr):
                f.close()
        kill_marked(exec_id)
        os.close(status_r)
        if status_w is not None:
            os.close(status_w)
        _remove(workdir)
