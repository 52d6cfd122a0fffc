"""Find a local pipeline's artifacts in ML Metadata (for commands run outside the DAG).

`seekline train pretrain` without --data trains on the newest packed rows of the config's local
pipeline, with the tokenizer those rows were packed with: both come from one pack execution's
recorded inputs and outputs, so they always belong together (not "the highest folder number").
"""
from __future__ import annotations

from pathlib import Path

from ml_metadata.proto import metadata_store_pb2

from common.errors import UserError
from pipelines.runs import open_store

_DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


def latest_execution_artifacts(metadata_path: str | Path, pipeline_name: str, component_id: str) -> dict:
    """{'inputs': {key: uri}, 'outputs': {key: uri}} of the component's newest finished execution."""
    if not Path(metadata_path).exists():
        raise UserError(f"{metadata_path}: no local pipeline runs here yet (run `seekline run` first, "
                        "or pass --data)")
    store = open_store(metadata_path)
    ctx = store.get_context_by_type_and_name("node", f"{pipeline_name}.{component_id}")
    if ctx is None:
        raise UserError(f"{metadata_path}: pipeline {pipeline_name!r} has no {component_id!r} step yet "
                        "(run `seekline run` first, or pass --data)")
    execs = [e for e in store.get_executions_by_context(ctx.id) if e.last_known_state in _DONE]
    if not execs:
        raise UserError(f"{metadata_path}: no finished {component_id!r} execution of pipeline "
                        f"{pipeline_name!r} (run `seekline run` first, or pass --data)")
    ex = max(execs, key=lambda e: (e.create_time_since_epoch, e.id))
    events = store.get_events_by_execution_ids([ex.id])
    arts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    out: dict = {"inputs": {}, "outputs": {}}
    for ev in events:
        key = ev.path.steps[0].key if ev.path.steps else ""
        if ev.type in (metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.DECLARED_INPUT):
            out["inputs"][key] = arts[ev.artifact_id].uri
        elif ev.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
            out["outputs"][key] = arts[ev.artifact_id].uri
    return out


def producer_inputs(metadata_path: str | Path, uri: str) -> dict:
    """Inputs {key: uri} of the execution that produced the artifact at `uri` ({} if unknown)."""
    if not Path(metadata_path).exists():
        return {}
    store = open_store(metadata_path)
    want = str(Path(uri).resolve())
    arts = [a for a in store.get_artifacts() if str(Path(a.uri).resolve()) == want]
    if not arts:
        return {}
    events = store.get_events_by_artifact_ids([arts[0].id])
    producers = [e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
    if not producers:
        return {}
    in_events = store.get_events_by_execution_ids([producers[-1]])
    ids = [e.artifact_id for e in in_events if e.type == metadata_store_pb2.Event.INPUT]
    by_id = {a.id: a for a in store.get_artifacts_by_id(ids)}
    return {e.path.steps[0].key: by_id[e.artifact_id].uri for e in in_events
            if e.type == metadata_store_pb2.Event.INPUT and e.path.steps}
