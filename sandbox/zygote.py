"""Warm mode: a long-lived sandboxed interpreter ("zygote") that forks once per execution.

One Zygote per pool worker. It is started once under the same isolation as the one-shot path
(``unshare`` user+net+pid+mount namespaces, every mount read-only but its own scratch root,
scrubbed environment; see _zygote.py for what happens inside) and then runs programs in forks
of itself, each in a fresh PID namespace with no capabilities and the rlimits applied. That
saves the two interpreter start-ups and the ``unshare`` of every one-shot execution.

Used from one thread at a time (SandboxPool gives each worker thread its own).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid

from sandbox.isolation import wrap_zygote
from sandbox.limits import ExecResult, SandboxLimits
from sandbox.run import _env, _remove, _status, kill_marked, read_capped

LEVEL = "userns+netns"  # the only level warm mode runs at (it needs unshare(CLONE_NEWPID))
RESERVED_PIDS = 300  # as in _zygote.py: the zygote's namespace only uses pids 300..pid_max-1
_HEADER = struct.Struct("!Q")
_START_TIMEOUT_S = 30.0  # unshare + one interpreter start-up; generous for a loaded machine
_SETTLE_S = 10.0  # after a SIGKILL, how long the zygote may take to reap (~300 processes
# after a fork bomb, on a loaded machine) and clean up; past it the zygote is replaced


class ZygoteDiedError(Exception):
    """The zygote went away (or stopped answering) during an execution."""


class Zygote:
    """A warm sandbox. `run` never raises for what the program does; a zygote that dies is
    replaced on the next `run` (that execution's result says "killed"). Call `close`."""

    def __init__(self, limits: SandboxLimits = SandboxLimits()):
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.scratch: str | None = None
        self.marker: str | None = None
        self.starts = 0  # how many zygote processes this object has started (restarts + 1)

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="seekline-sandbox-zygote-")
        # the parent's pid first, like every execution's marker: see run.leftovers()
        self.marker = f"{os.getpid()}-zygote-{uuid.uuid4().hex}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid_max = RESERVED_PIDS + max(301, self.limits.max_processes + 2) - 2
        argv = wrap_zygote(self.scratch, theirs.fileno(), self.limits.rlimits(), pid_max)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, cwd=self.scratch,
                                         env=_env(self.scratch, self.marker),
                                         start_new_session=True, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.sock = ours
        self.starts += 1
        ours.settimeout(_START_TIMEOUT_S)
        try:
            first = ours.recv(65536)
        except OSError:
            first = b""
        if first != b"R":
            err = first[1:].decode(errors="replace") if first.startswith(b"E") else ""
            self.close(graceful=False)
            raise RuntimeError(f"sandbox zygote failed to start ({LEVEL}): "
                               f"{err or 'no ready message'}")
        self.proc.stderr.close()  # only start-up errors would have been worth reading
        ours.settimeout(None)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self, graceful: bool = True) -> None:
        """Stop the zygote (and with it its PID namespace) and remove its scratch root.
        graceful: close its socket and let it exit (so `unshare` reaps it and its CPU time
        reaches our RUSAGE_CHILDREN), SIGKILL only if it is still there after a second."""
        if self.proc is not None:
            if graceful and self.sock is not None:
                self.sock.close()
                self.sock = None
                try:
                    self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # unshare --kill-child takes PID 1 along
            except ProcessLookupError:
                pass
            self.proc.wait()
            if self.proc.stderr and not self.proc.stderr.closed:
                self.proc.stderr.close()
            self.proc = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.marker is not None:
            kill_marked(self.marker)  # second line of defence, as for one-shot executions
            self.marker = None
        if self.scratch is not None:
            _remove(self.scratch)
            self.scratch = None

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one execution ---------------------------------------------------------------------
    def run(self, code: str, stdin: str | None = None) -> ExecResult:
        """Run `code` as ``__main__`` in a fork of the zygote (see _zygote.py), with `stdin`
        as standard input and this zygote's limits."""
        if not self.alive():
            self.close(graceful=False)
            self._start()
        exec_id = f"{os.getpid()}-{uuid.uuid4().hex}"
        limits = self.limits
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        pidfd = None
        bufs, trunc, timed_out, died = (bytearray(), bytearray()), [False, False], False, False
        start = time.monotonic()
        try:
            body = json.dumps({"code": code, "stdin": stdin, "exec_id": exec_id}).encode()
            try:
                socket.send_fds(self.sock, [_HEADER.pack(len(body))], [out_w, err_w, st_w])
                self.sock.sendall(body)
            finally:
                for fd in (out_w, err_w, st_w):
                    os.close(fd)
            try:
                pidfd = self._started(start + limits.timeout_s + _START_TIMEOUT_S)
                bufs, trunc, timed_out, done, died = _capture(self.sock, out_r, err_r,
                                                              start + limits.timeout_s,
                                                              limits.output_bytes)
                duration = time.monotonic() - start  # a kill ends it here, not when reaped
                if died:
                    raise ZygoteDiedError("control socket closed")
                if not done:
                    if timed_out or any(trunc):
                        _kill(pidfd)  # the execution's init: its PID namespace goes with it
                    self._wait_done()
            except ZygoteDiedError:
                died = True
                self.close(graceful=False)  # a fresh one is started by the next run
                duration = time.monotonic() - start
            rc, setup_error = _read_status(st_r)
            if setup_error:
                raise RuntimeError(f"sandbox setup failed (warm, {LEVEL}): {setup_error}")
            if timed_out or any(trunc) or died:
                rc = None  # we (or the zygote's death) killed it: not the program's status
            out, err = (b.decode("utf-8", errors="replace") for b in bufs)
            status = "killed" if died and not (timed_out or any(trunc)) else \
                _status(rc, err, timed_out, any(trunc))
            return ExecResult(status=status, returncode=rc, stdout=out, stderr=err,
                              duration_s=duration, stdout_truncated=trunc[0],
                              stderr_truncated=trunc[1], isolation=LEVEL)
        finally:
            for fd in (out_r, err_r, st_r):
                os.close(fd)
            if pidfd is not None:
                os.close(pidfd)
            kill_marked(exec_id)

    def _started(self, deadline: float) -> int | None:
        """The zygote's "S" message: a pidfd of the execution's init (None if it never forked)."""
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, 1, 1)
        except OSError as e:
            raise ZygoteDiedError(str(e)) from e
        finally:
            self.sock.settimeout(None)
        if msg != b"S":
            for fd in fds:
                os.close(fd)
            raise ZygoteDiedError(f"unexpected message {msg!r}")
        return fds[0] if fds else None

    def _wait_done(self) -> None:
        self.sock.settimeout(_SETTLE_S)
        try:
            msg = self.sock.recv(1)
        except OSError as e:
            raise ZygoteDiedError(str(e)) from e
        finally:
            self.sock.settimeout(None)
        if msg != b"D":
            raise ZygoteDiedError(f"unexpected message {msg!r}")


def _kill(pidfd: int | None) -> None:
    if pidfd is None:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _capture(sock: socket.socket, out_r: int, err_r: int, deadline: float, cap: int):
    """Read stdout and stderr (each cut at `cap` bytes) until both reach EOF and the zygote
    says "D" (done: the execution's namespace is gone), the deadline passes or a stream
    overflows, or the control socket closes (`died`: the zygote, and the execution with it, is gone)."""
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ, 0)
    sel.register(err_r, selectors.EVENT_READ, 1)
    sel.register(sock, selectors.EVENT_READ, "sock")
    bufs, trunc = (bytearray(), bytearray()), [False, False]
    timed_out = done = died = False
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            for key, _ in sel.select(deadline - now):
                if key.data == "sock":
                    try:
                        done = sock.recv(1) == b"D"
                    except OSError:
                        done = False
                    died = not done
                    sel.unregister(sock)
                    continue
                if not read_capped(key.fd, bufs[key.data], cap, trunc, key.data):
                    sel.unregister(key.fd)
            if any(trunc):
                break
            if died:
                break
    finally:
        sel.close()
    return bufs, trunc, timed_out, done, died


def _read_status(st_r: int):
    """(returncode, setup_error) from the execution init's report: returncode None when it
    wrote none (killed first); setup_error None unless the execution could not be set up."""
    os.set_blocking(st_r, False)
    try:
        report = os.read(st_r, 65536).decode()
    except BlockingIOError:
        report = ""
    got = json.loads(report) if report.strip() else {}
    return got.get("returncode"), got.get("setup_error")
