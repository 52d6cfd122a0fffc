"""Pipeline runs and component executions read from ML Metadata (``seekline runs``).

TFX records one ``pipeline_run`` context per run, one ``node`` context per component
(``<pipeline>.<component id>``) and one execution per component per run, with its state
(COMPLETE, CACHED, FAILED, RUNNING) and create / last-update times.

A run killed with SIGKILL (or a lost machine) never updates its RUNNING execution, so ML
Metadata alone cannot tell it from a run in progress. The local runner records which process
runs each run (``runs/<run id>/process.json``: pid, host, the process's start time, and the end
time once it returns); a RUNNING run whose process is gone or ended is listed as ABANDONED.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.common.errors import UserError

_STATE = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


PROCESS_FILE = "process.json"
_UNFINISHED = ("RUNNING", "NEW")


@dataclass(frozen=True)
class ExecutionRow:
    component: str
    state: str  # COMPLETE | CACHED | FAILED | RUNNING | NEW | CANCELED | ABANDONED | UNKNOWN
    started_ms: int
    duration_s: float
    execution_id: int = 0


@dataclass
class RunRow:
    run_id: str
    pipeline: str
    started_ms: int
    executions: list[ExecutionRow] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {e.state for e in self.executions}
        for s in ("FAILED", "ABANDONED", "RUNNING", "NEW", "CANCELED"):
            if s in states:
                return s
        if states == {"CACHED"}:
            return "CACHED"
        return "COMPLETE" if states else "NEW"

    @property
    def duration_s(self) -> float:
        if not self.executions:
            return 0.0
        end = max(e.started_ms + e.duration_s * 1000 for e in self.executions)
        return (end - self.started_ms) / 1000


def open_store(metadata_path: str | Path) -> metadata_store.MetadataStore:
    path = Path(metadata_path)
    if not path.is_file():
        raise UserError(f"no ML Metadata store at {path} (run `seekline run` first)")
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(path)
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(cfg)


def run_dir_name(run_id: str) -> str:
    """The folder of a run under ``runs/`` (TFX run ids are ISO times: no ':' in file names)."""
    return run_id.replace(":", "-")


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_process_marker(run_dir: str | Path) -> None:
    """Record that this process runs the run in ``run_dir`` (called before it starts)."""
    from components.common.fileio import atomic_write_json

    pid = os.getpid()
    atomic_write_json(Path(run_dir) / PROCESS_FILE, {
        "pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid),
        "started": datetime.now(timezone.utc).isoformat(), "ended": None,
    })


def mark_process_ended(run_dir: str | Path) -> None:
    """The run's process is returning (success, failure or Ctrl-C): it runs nothing any more."""
    from components.common.fileio import atomic_write_json

    marker = read_process_marker(run_dir)
    if marker is not None:
        atomic_write_json(Path(run_dir) / PROCESS_FILE, {**marker, "ended": datetime.now(timezone.utc).isoformat()})


def read_process_marker(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / PROCESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def process_gone(marker: dict | None) -> bool:
    """True when the recorded process provably runs the run no more: it ended, or (same host)
    no process with that pid and start time exists. False when it may be alive or cannot be
    checked (no marker, another host)."""
    if not marker:
        return False
    if marker.get("ended"):
        return True
    if marker.get("host") != socket.gethostname():
        return False
    pid = int(marker.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by someone else
    start = _proc_start(pid)
    return start is not None and marker.get("proc_start") not in (None, start)


def pipeline_names(metadata_path: str | Path) -> list[str]:
    """Names of the pipelines with runs in the store."""
    store = open_store(metadata_path)
    return sorted({node.name.partition(".")[0] for node in store.get_contexts_by_type("node")})


def list_runs(
    metadata_path: str | Path, pipeline_name: str | None = None, runs_dir: str | Path | None = None
) -> list[RunRow]:
    """All runs, oldest first, each with its component executions in execution order.

    ``runs_dir``: where the local runner keeps ``<run id>/process.json`` (default: ``runs/``
    next to the store); an unfinished run whose process is gone is ABANDONED.
    """
    store = open_store(metadata_path)
    runs_dir = Path(runs_dir) if runs_dir is not None else Path(metadata_path).parent / "runs"
    component_of: dict[int, str] = {}
    for node in store.get_contexts_by_type("node"):
        pipeline, _, component = node.name.partition(".")
        if pipeline_name and pipeline != pipeline_name:
            continue
        for ex in store.get_executions_by_context(node.id):
            component_of[ex.id] = component
    runs = []
    for ctx in store.get_contexts_by_type("pipeline_run"):
        row = RunRow(run_id=ctx.name, pipeline="", started_ms=ctx.create_time_since_epoch)
        for ex in sorted(store.get_executions_by_context(ctx.id), key=lambda e: e.id):
            if ex.id not in component_of:
                continue  # another pipeline's run
            row.executions.append(
                ExecutionRow(
                    component=component_of[ex.id],
                    state=_STATE.get(ex.last_known_state, "UNKNOWN"),
                    started_ms=ex.create_time_since_epoch,
                    duration_s=(ex.last_update_time_since_epoch - ex.create_time_since_epoch)
                    / 1000,
                    execution_id=ex.id,
                )
            )
        if any(e.state in _UNFINISHED for e in row.executions) and process_gone(
            read_process_marker(runs_dir / run_dir_name(row.run_id))
        ):
            row.executions = [
                ExecutionRow(e.component, "ABANDONED", e.started_ms, e.duration_s, e.execution_id)
                if e.state in _UNFINISHED else e
                for e in row.executions
            ]
        if row.executions:
            parents = store.get_parent_contexts_by_context(ctx.id)
            row.pipeline = parents[0].name if parents else (pipeline_name or "")
            runs.append(row)
    runs.sort(key=lambda r: r.started_ms)
    return runs


def latest_run_id(metadata_path: str | Path, pipeline_name: str) -> str:
    runs = list_runs(metadata_path, pipeline_name)
    if not runs:
        raise UserError(f"no runs of pipeline {pipeline_name!r} in {metadata_path}")
    return runs[-1].run_id
