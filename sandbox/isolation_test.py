"""Level selection and the wrapper command lines (the containment itself: sandbox_test.py)."""
import json
import logging

import pytest

from sandbox import isolation


@pytest.fixture
def fresh_probe():
    isolation.isolation_level.cache_clear()
    yield
    isolation.isolation_level.cache_clear()


def test_falls_back_to_rlimits_with_one_warning(monkeypatch, caplog, fresh_probe):
    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)  # neither tool installed
    with caplog.at_level(logging.WARNING, logger="sandbox.isolation"):
        assert isolation.isolation_level() == "rlimits"
        assert isolation.isolation_level() == "rlimits"
    warnings = [r for r in caplog.records if "NO network or filesystem isolation" in r.message]
    assert len(warnings) == 1


def test_a_failing_probe_is_not_trusted(monkeypatch, fresh_probe):
    """unshare installed but user namespaces disabled: its probe fails, so rlimits."""
    monkeypatch.setattr(isolation.shutil, "which",
                        lambda name: "/bin/false" if name == "unshare" else None)
    assert isolation.isolation_level() == "rlimits"


def test_cannot_force_a_stronger_level_than_available(monkeypatch, fresh_probe):
    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="not available"):
        isolation.check_level("userns+netns")
    assert isolation.check_level("rlimits") == "rlimits"


def test_bwrap_command_binds_the_work_dir_over_its_private_tmp(monkeypatch):
    monkeypatch.setattr(isolation.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = isolation.wrap("bwrap", "/tmp/w", ["python", "main.py"], {}, 5, 301)
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--ro-bind") + 1: argv.index("--ro-bind") + 3] == ["/", "/"]
    # mounts apply in order: the work dir must come after (on top of) the tmpfs on /tmp
    assert argv.index("--tmpfs") < argv.index("--bind") and argv[argv.index("--bind") + 1] == "/tmp/w"
    cfg = json.loads(argv[-1])
    assert (cfg["mode"], cfg["argv"], cfg["status_fd"]) == ("reaper", ["python", "main.py"], 5)


def test_unshare_command_unshares_every_namespace(monkeypatch):
    monkeypatch.setattr(isolation.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = isolation.wrap("userns+netns", "/tmp/w", ["python", "main.py"], {}, 5, 301)
    for flag in ("--user", "--net", "--pid", "--fork", "--mount", "--kill-child"):
        assert flag in argv
    assert json.loads(argv[-1])["mode"] == "userns"
    assert json.loads(isolation.wrap("rlimits", "/tmp/w", ["p"], {}, 5, 301)[-1])["mode"] == "exec"


def test_zygote_command_runs_the_zygote_with_site_packages_under_every_namespace(monkeypatch):
    monkeypatch.setattr(isolation.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = isolation.wrap_zygote("/tmp/z", 7, {"RLIMIT_AS": [1, 1]}, 599)
    assert argv[0] == "/usr/bin/unshare" and argv[1:1 + len(isolation.UNSHARE_FLAGS)] == isolation.UNSHARE_FLAGS
    # programs run in this interpreter: -s (no user site) but not -S (site-packages, as one-shot)
    interp = argv[1 + len(isolation.UNSHARE_FLAGS):-1]
    assert "-s" in interp and "-S" not in interp and interp[-1].endswith("_zygote.py")
    cfg = json.loads(argv[-1])
    assert (cfg["scratch"], cfg["sock_fd"], cfg["pid_max"]) == ("/tmp/z", 7, 599)
