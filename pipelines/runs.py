"""Pipeline runs and component executions read from ML Metadata (``seekline runs``).

TFX records one ``pipeline_run`` context per run, one ``node`` context per component
(``<pipeline>.<component id>``) and one execution per component per run, with its state
(COMPLETE, CACHED, FAILED, RUNNING) and create / last-update times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.common.errors import UserError

_STATE = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


@dataclass(frozen=True)
class ExecutionRow:
    component: str
    state: str  # COMPLETE | CACHED | FAILED | RUNNING | NEW | CANCELED | UNKNOWN
    started_ms: int
    duration_s: float


@dataclass
class RunRow:
    run_id: str
    pipeline: str
    started_ms: int
    executions: list[ExecutionRow] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {e.state for e in self.executions}
        for s in ("FAILED", "RUNNING", "NEW", "CANCELED"):
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


def list_runs(metadata_path: str | Path, pipeline_name: str | None = None) -> list[RunRow]:
    """All runs, oldest first, each with its component executions in execution order."""
    store = open_store(metadata_path)
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
                )
            )
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
