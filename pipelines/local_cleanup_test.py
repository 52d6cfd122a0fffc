"""Killed runs: ABANDONED in `runs`, and their leftovers removed by the next run.

The ML Metadata store is written here with the records TFX makes for a run (a pipeline_run
context, a node context per component, one execution in both), so the tests run in a second;
tests/test_cli_hardening_e2e.py kills a real run.
"""

import os
import socket

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from pipelines.local import LocalPaths, clean_abandoned
from pipelines.runs import PROCESS_FILE, list_runs, run_dir_name


def _store(path):
    cfg = pb.ConnectionConfig()
    cfg.sqlite.filename_uri = str(path)
    cfg.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(cfg)


def _record_run(store, pipeline: str, run_id: str, states: dict[str, int]) -> dict[str, int]:
    """A run with one execution per component in the given states; returns execution ids."""
    run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    node_type = store.put_context_type(pb.ContextType(name="node"))
    ex_type = store.put_execution_type(pb.ExecutionType(name="component"))
    [run_ctx] = store.put_contexts([pb.Context(type_id=run_type, name=run_id)])
    ids = {}
    for component, state in states.items():
        name = f"{pipeline}.{component}"
        existing = store.get_context_by_type_and_name("node", name)
        node = existing.id if existing else store.put_contexts([pb.Context(type_id=node_type, name=name)])[0]
        [ex] = store.put_executions([pb.Execution(type_id=ex_type, last_known_state=state)])
        store.put_attributions_and_associations(
            [], [pb.Association(context_id=run_ctx, execution_id=ex), pb.Association(context_id=node, execution_id=ex)]
        )
        ids[component] = ex
    return ids


def _marker(paths: LocalPaths, run_id: str, pid: int, ended=None):
    import json

    d = paths.runs_dir / run_dir_name(run_id)
    d.mkdir(parents=True)
    (d / PROCESS_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "proc_start": None, "ended": ended}))


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_killed_run_is_abandoned_and_its_leftovers_go_but_nothing_else(tmp_path):
    paths = LocalPaths(tmp_path)
    store = _store(paths.metadata)
    done = _record_run(store, "p", "run-1", {"ingest": pb.Execution.COMPLETE})
    killed = _record_run(store, "p", "run-2", {"ingest": pb.Execution.RUNNING})
    live = _record_run(store, "p", "run-3", {"ingest": pb.Execution.RUNNING})
    del store
    _marker(paths, "run-2", _dead_pid())
    _marker(paths, "run-3", os.getpid())  # this process: alive
    root = paths.pipeline_root / "ingest"
    keep = [
        root / "examples" / str(done["ingest"]) / "Split-train" / "a.gz",   # a published artifact
        root / "examples" / str(live["ingest"]) / ".staging-live" / "x",    # a run in progress
        root / "examples" / "999" / ".staging-unknown" / "x",               # not in the store
    ]
    gone = [
        root / "examples" / str(killed["ingest"]) / ".staging-abc" / "Split-train" / "s.gz",
        root / "examples" / str(done["ingest"]) / ".staging-stale" / "y",   # publish crashed
    ]
    for f in keep + gone:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (root / ".system" / "executor_execution" / str(killed["ingest"]) / ".temp").mkdir(parents=True)
    (root / ".system" / "executor_execution" / str(done["ingest"]) / ".temp").mkdir(parents=True)

    states = {r.run_id: r.state for r in list_runs(paths.metadata, "p")}
    assert states == {"run-1": "COMPLETE", "run-2": "ABANDONED", "run-3": "RUNNING"}

    removed = clean_abandoned(paths)
    assert all(f.is_file() for f in keep)
    assert not any(f.exists() for f in gone)
    assert not (root / "examples" / str(killed["ingest"])).exists()  # emptied, then removed
    assert not (root / ".system" / "executor_execution" / str(killed["ingest"])).exists()
    # a complete execution keeps its (empty) scratch folder: only failed / abandoned ones go
    assert (root / ".system" / "executor_execution" / str(done["ingest"])).is_dir()
    assert len(removed) == 4
    before = _tree(tmp_path)
    assert clean_abandoned(paths) == [] and _tree(tmp_path) == before  # idempotent


def test_a_run_whose_process_returned_is_abandoned_too(tmp_path):
    # Ctrl-C: the process ended (and said so) while TFX still had the execution RUNNING.
    paths = LocalPaths(tmp_path)
    _record_run(_store(paths.metadata), "p", "run-1", {"ingest": pb.Execution.COMPLETE, "pack": pb.Execution.RUNNING})
    _marker(paths, "run-1", os.getpid(), ended="2026-01-01T00:00:00+00:00")
    [run] = list_runs(paths.metadata, "p")
    assert run.state == "ABANDONED" and [e.state for e in run.executions] == ["COMPLETE", "ABANDONED"]


def test_without_a_marker_a_running_run_stays_running(tmp_path):
    # Runs recorded before markers existed (or on another host) cannot be proven dead.
    paths = LocalPaths(tmp_path)
    _record_run(_store(paths.metadata), "p", "run-1", {"ingest": pb.Execution.RUNNING})
    assert [r.state for r in list_runs(paths.metadata, "p")] == ["RUNNING"]
    assert clean_abandoned(paths) == []
