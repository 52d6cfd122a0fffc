"""Run liveness: which unfinished runs are provably abandoned (no TFX, no store needed)."""

import json
import socket
import subprocess
import sys

from pipelines import runs


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: no process (not even a zombie) has this pid now
    return p.pid


def test_marker_round_trip_and_end(tmp_path):
    runs.write_process_marker(tmp_path / "r")
    m = runs.read_process_marker(tmp_path / "r")
    assert m["host"] == socket.gethostname() and m["ended"] is None
    assert not runs.process_gone(m)  # this very process
    runs.mark_process_ended(tmp_path / "r")
    assert runs.process_gone(runs.read_process_marker(tmp_path / "r"))


def test_a_killed_process_is_gone_but_unknown_or_remote_ones_are_not(tmp_path):
    host = socket.gethostname()
    assert runs.process_gone({"pid": _dead_pid(), "host": host, "proc_start": None, "ended": None})
    # the same pid now running something else (a different start time) is not the run's process
    me = {"pid": runs.os.getpid(), "host": host, "proc_start": "1", "ended": None}
    assert runs.process_gone(me) == (runs._proc_start(runs.os.getpid()) is not None)
    # what cannot be checked stays alive: no marker, another machine
    assert not runs.process_gone(None)
    assert not runs.process_gone({"pid": _dead_pid(), "host": host + "-elsewhere", "ended": None})


def test_unreadable_marker_is_no_marker(tmp_path):
    (tmp_path / runs.PROCESS_FILE).write_text("{not json")
    assert runs.read_process_marker(tmp_path) is None
    assert runs.read_process_marker(tmp_path / "missing") is None
    (tmp_path / runs.PROCESS_FILE).write_text(json.dumps({"pid": 1, "host": "h", "ended": None}))
    assert runs.read_process_marker(tmp_path)["pid"] == 1


def test_run_dir_name_has_no_colons():
    assert runs.run_dir_name("2026-01-02T03:04:05.6") == "2026-01-02T03-04-05.6"


def test_an_abandoned_run_wins_over_running_in_the_run_state():
    row = runs.RunRow("r", "p", 0, [runs.ExecutionRow("ingest", "COMPLETE", 0, 1.0),
                                    runs.ExecutionRow("pack", "ABANDONED", 0, 1.0)])
    assert row.state == "ABANDONED"
