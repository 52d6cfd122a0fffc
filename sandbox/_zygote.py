"""The warm sandbox's in-namespace half: run as a script (``python -s -B _zygote.py CONFIG_JSON``)
under the same ``unshare --user --map-root-user --net --pid --fork --mount --mount-proc
--kill-child`` as the one-shot path, never imported by the parent. Stdlib only.

Started once per pool worker, it is PID 1 of its own PID namespace and root (all capabilities)
inside its user namespace only. At start-up, while /proc is still writable, it caps the
namespace's pids (pid_max, and ns_last_pid so that only pids 300..pid_max-1 are ever handed
out), then remounts every mount read-only except its scratch root (``_boot._readonly_except``),
imports a few stdlib modules programs commonly use, and says ``R`` on its control socket.

Then, per request (an 8-byte length and the fds [stdout_w, stderr_w, status_w] in one message,
then a JSON body ``{"code", "stdin", "exec_id"}``), it:

1. ``unshare(CLONE_NEWPID)`` and forks the execution's init ``C`` (PID 1 of a fresh PID
   namespace), then ``setns`` back so its own later children are not put there too; sends
   ``S`` with a pidfd of ``C``: the parent's wall-clock kill is one SIGKILL to ``C``, and the
   kernel then kills every process of the execution, setsid() daemons included;
2. ``C``: new session, a fresh work dir ``SCRATCH/EXEC_ID`` with ``main.py`` and ``.stdin``;
   forks the program ``P``, closes its copies of the output pipes and reaps until ``P`` exits;
   writes ``{"returncode": int}`` (negative for a signal) to status_w and exits, which takes the
   namespace, and anything left in it, down;
3. ``P`` (not PID 1, so signals behave as for any program): stdin/stdout/stderr from the work
   dir's ``.stdin`` and the parent's pipes, every other fd closed, an empty capability bounding
   set, no capabilities, no_new_privs, the rlimits, then the program runs in this (forked,
   clean) interpreter as ``__main__``: ``exec(compile(code, "main.py", "exec"), ...)``;
   exit code as ``python main.py`` would have it;
4. the zygote reaps ``C``, empties the whole scratch root (work dir and anything else the
   program wrote there) and sends ``D``. If it cannot empty it, it exits: the parent then
   starts a fresh zygote with a fresh scratch root.

The program cannot reach the zygote: the zygote's pid does not exist in the program's PID
namespace, the filesystem is read-only, and ptrace-style access (/proc/PID/mem, fds) to a
process holding capabilities the program lacks is refused by the kernel.
"""
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import sys


def _load_boot():
    """_boot.py, the one-shot bootstrap script beside this one (its hardening is reused). Loaded
    by path: both are scripts run outside the `sandbox` package (whose __init__ pulls in the
    parent side)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot.py")
    spec = importlib.util.spec_from_file_location("_boot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_boot = _load_boot()

CLONE_NEWPID = 0x20000000
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
RESERVED_PIDS = 300  # the kernel hands out pids below this only before its cursor first wraps
PRELOAD = ("collections", "functools", "itertools", "math", "re", "string", "typing", "heapq",
           "bisect", "json", "traceback", "linecache", "types", "builtins", "atexit")
_HEADER = struct.Struct("!Q")

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _cap_pids(pid_max: int) -> None:
    """Only pids RESERVED_PIDS..pid_max-1 exist in this namespace from now on: with the cursor
    past RESERVED_PIDS the kernel wraps back to RESERVED_PIDS, not 1, so a long-lived zygote's
    cap does not shrink to one pid after the first wrap (needs per-namespace pid_max, >= 6.14)."""
    if _boot._set_pid_max(pid_max):
        with open("/proc/sys/kernel/ns_last_pid", "w", encoding="ascii") as f:
            f.write(str(RESERVED_PIDS))


def _drop_all_capabilities() -> None:
    """Empty bounding set and no_new_privs (as the one-shot path), then clear the effective,
    permitted and inheritable sets too: the program is never exec'd, so they would survive."""
    _boot._drop_privileges()
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT)")
    hdr, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def _exit_code(e: SystemExit) -> int:
    """What `python main.py` exits with for this SystemExit."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001 - a broken __str__ still exits 1
        pass
    return 1


def _finish(code: int) -> None:
    """Interpreter shutdown as `python` does it (join threads, atexit, flush), then exit."""
    import atexit
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:  # noqa: BLE001 - a failing atexit hook is printed, as python does
        sys.excepthook(*sys.exc_info())
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not hide the code
            pass
    os._exit(code)


def _print_exception() -> None:
    """The traceback `python main.py` prints: without this file's frame (the exec call)."""
    etype, value, tb = sys.exc_info()
    sys.excepthook(etype, value, tb.tb_next if tb is not None else None)


def _program(req: dict, workdir: str, stdin_path: str, out_w: int, err_w: int, rlimits: dict) -> None:
    """In P: the execution's program, in this forked interpreter. Never returns."""
    fd = os.open(stdin_path, os.O_RDONLY)
    for src, dst in ((fd, 0), (out_w, 1), (err_w, 2)):
        os.dup2(src, dst)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # control socket, status pipe, pidns fd: gone
    os.chdir(workdir)
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "SEEKLINE_SANDBOX_ID": req["exec_id"]})
    _drop_all_capabilities()
    _boot._set_rlimits(rlimits)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import builtins
    import types
    main = types.ModuleType("__main__")
    main.__file__ = os.path.join(workdir, "main.py")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    sys.path[0] = workdir  # files beside main.py are importable, as with `python main.py`
    try:
        exec(compile(req["code"], "main.py", "exec"), main.__dict__)  # noqa: S102 - the point
        code = 0
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        _print_exception()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # python re-raises it as a signal death
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - an uncaught exception: traceback, exit 1
        _print_exception()
        code = 1
    _finish(code)


def _reap(child: int) -> int:
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return os.waitstatus_to_exitcode(status)


def _init(req: dict, fds: list[int], scratch: str, rlimits: dict) -> None:
    """In C, PID 1 of the execution's namespace. Never returns; its exit ends the namespace."""
    out_w, err_w, status_w = fds
    try:
        os.setsid()
        workdir = os.path.join(scratch, req["exec_id"])
        os.mkdir(workdir, 0o700)
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(req["code"])
        stdin_path = os.path.join(workdir, ".stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(req["stdin"] or "")
        pid = os.fork()
        if pid == 0:
            try:
                _program(req, workdir, stdin_path, out_w, err_w, rlimits)
            except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
                os.write(2, f"sandbox setup: {e}\n".encode())
            os._exit(125)
        os.close(out_w)
        os.close(err_w)
        report = {"returncode": _reap(pid)}
    except BaseException as e:  # noqa: BLE001
        report = {"setup_error": f"{type(e).__name__}: {e}"}
    try:
        os.write(status_w, (json.dumps(report) + "\n").encode())
    finally:
        os._exit(0)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _clear(scratch: str) -> None:
    for name in os.listdir(scratch):
        path = os.path.join(scratch, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # root with CAP_DAC_OVERRIDE here: chmod 000 does not stop it
        else:
            os.unlink(path)


def _serve(sock: socket.socket, scratch: str, rlimits: dict, pidns_fd: int) -> None:
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, 3)
        except OSError:
            return
        if not head:
            return  # the parent closed the socket: shut down
        head += _recv_exactly(sock, _HEADER.size - len(head))
        req = json.loads(_recv_exactly(sock, _HEADER.unpack(head)[0]))
        try:
            _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
            child = os.fork()
        except OSError as e:
            os.write(fds[2], (json.dumps({"setup_error": str(e)}) + "\n").encode())
            child = None
        if child == 0:
            sock.close()
            os.close(pidns_fd)
            _init(req, fds, scratch, rlimits)
        if child is not None:
            _check(_libc.setns(pidns_fd, CLONE_NEWPID), "setns(own pid namespace)")
        for fd in fds:
            os.close(fd)
        if child is None:
            socket.send_fds(sock, [b"S"], [])
        else:
            pidfd = os.pidfd_open(child)
            socket.send_fds(sock, [b"S"], [pidfd])
            os.close(pidfd)
            _reap(child)
        _clear(scratch)  # raises (and the zygote exits) if anything is left: fail closed
        sock.sendall(b"D")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sock = socket.socket(fileno=cfg["sock_fd"])
    scratch = cfg["scratch"]
    try:
        _cap_pids(cfg["pid_max"])
        _boot._readonly_except(scratch)
        pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
    except OSError as e:
        sock.sendall(b"E" + json.dumps({"setup_error": str(e)}).encode())
        sys.exit(125)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the zygote is stopped by closing its socket
    for name in PRELOAD:
        __import__(name)
    sock.sendall(b"R")
    _serve(sock, scratch, cfg["rlimits"], pidns_fd)


if __name__ == "__main__":
    main()
