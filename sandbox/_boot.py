"""The sandbox's in-child half: run as a script (``python -s -S _boot.py CONFIG_JSON``), never
imported by the parent. Stdlib only, and nothing here trusts the code it is about to run.

Modes (``mode`` in the config):

- ``"userns"``: started by ``unshare --user --map-root-user --net --pid --fork --mount
  --mount-proc --kill-child``, so this process is PID 1 of a fresh PID namespace and holds every
  capability *inside* its user namespace (none outside). While it still has them it caps the
  namespace's pid_max, makes every mount read-only except the work directory, then forks the
  program with an empty capability bounding set, and stays behind as the namespace's init:
  it reaps orphans and, when the program exits, exits itself, which makes the kernel SIGKILL
  everything left in the namespace (daemons included).
- ``"reaper"``: under bubblewrap, which did the namespaces and mounts; only the fork/reap part.
- ``"exec"``: the rlimits-only fallback: set the limits and exec the program in place.

The program's wait status goes to the parent over ``status_fd`` (a pipe the program itself
never holds: it is closed before the exec), as one JSON line ``{"returncode": int}``, negative
for a signal, like ``subprocess``. A setup failure is reported as ``{"setup_error": "..."}``.
"""
import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs f_flag bits that a remount inside a user namespace must keep ("locked" flags);
# ST_RELATIME is 4096 in statvfs but MS_RELATIME is 1<<21 in mount(2).
_LOCKED = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
           (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
           (os.ST_RELATIME, MS_RELATIME))
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source, target: str, fstype, flags: int) -> None:
    def enc(s):
        return None if s is None else s.encode()

    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    """Mount points from /proc/self/mountinfo (field 5, octal escapes undone), in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            raw = line.split()[4]
            out.append(raw.encode().decode("unicode_escape"))
    return out


def _readonly_except(workdir: str) -> None:
    """Bind the work dir onto itself (its own mount, left writable), then remount every other
    mount read-only. Any failure is fatal: a half read-only filesystem is no sandbox."""
    _mount(workdir, workdir, None, MS_BIND | MS_REC)
    os.chdir(workdir)  # the old cwd is the directory on the (soon read-only) mount below
    for mp in _mount_points():
        if mp == workdir or mp.startswith(workdir + "/"):
            continue
        try:
            st = os.statvfs(mp)
        except OSError:  # overmounted or vanished: its covering mount is handled on its own
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(ms for st_bit, ms in _LOCKED if st.f_flag & st_bit)
        _mount(None, mp, None, flags)


def _set_pid_max(n: int) -> bool:
    """Cap the PID namespace's pid numbers (per-namespace pid_max, Linux >= 6.14): the kernel
    refuses forks past it. Earlier kernels share one global pid_max: then this is skipped."""
    try:
        with open("/proc/sys/kernel/pid_max", "w", encoding="ascii") as f:
            f.write(str(n))
        return True
    except OSError:
        return False


def _drop_privileges() -> None:
    """Empty the capability bounding set so the exec'd program (uid 0 inside the namespace)
    gets no capabilities, and forbid regaining any (no_new_privs)."""
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def _set_rlimits(limits: dict) -> None:
    for name, value in limits.items():
        soft, hard = value
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _exec_program(cfg: dict) -> None:
    _set_rlimits(cfg["rlimits"])
    os.execve(cfg["argv"][0], cfg["argv"], os.environ)


def _report(fd: int, obj: dict) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def _reap(child: int) -> int:
    """Wait as init: reap every orphan until the program itself exits; its returncode."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the program is always our child
            return -9
        if pid == child:
            return os.waitstatus_to_exitcode(status)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    fd = cfg["status_fd"]
    mode = cfg["mode"]
    if mode == "exec":
        os.close(fd)
        _exec_program(cfg)
    try:
        if mode == "userns":
            _set_pid_max(cfg["pid_max"])
            _readonly_except(cfg["workdir"])
    except OSError as e:
        _report(fd, {"setup_error": str(e)})
        sys.exit(125)
    child = os.fork()
    if child == 0:
        try:
            os.close(fd)
            if mode == "userns":
                _drop_privileges()
            _exec_program(cfg)
        except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
            os.write(2, f"sandbox setup: {e}\n".encode())
        os._exit(125)
    _report(fd, {"returncode": _reap(child)})


if __name__ == "__main__":
    main()
