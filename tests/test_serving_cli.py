"""`seekline serve`: finding the newest blessed model in a real ML Metadata store (SQLite, the
records TFX's Evaluator-style blessing leaves), and the one-line errors."""
import os

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from common.errors import UserError
from pipelines.cli import main
from pipelines.serve_cli import newest_blessed_model, resolve_model_dir


def _model(root, name):
    final = os.path.join(root, name, "final")
    os.makedirs(final)
    open(os.path.join(final, "config.json"), "w").close()
    return os.path.join(root, name)


def _evaluate(store, ctx, t, candidate_uri, blessed, state=pb.Execution.COMPLETE):
    ex = pb.Execution(type_id=store.get_execution_type("Evaluate").id, last_known_state=state,
                      create_time_since_epoch=t)
    art = pb.Artifact(type_id=store.get_artifact_type("ModelBlessing").id, uri=f"/b/{t}")
    art.custom_properties["blessed"].int_value = 1 if blessed else 0
    art.custom_properties["current_model"].string_value = candidate_uri
    ev = pb.Event(type=pb.Event.OUTPUT)
    ev.path.steps.add().key = "blessing"
    store.put_execution(ex, [(art, ev)], [ctx])


@pytest.fixture
def store_path(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    cfg = pb.ConnectionConfig()
    cfg.sqlite.filename_uri = path
    cfg.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(cfg)
    store.put_execution_type(pb.ExecutionType(name="Evaluate"))
    store.put_artifact_type(pb.ArtifactType(name="ModelBlessing"))
    ctx_type = store.put_context_type(pb.ContextType(name="node"))
    [ctx] = store.put_contexts([pb.Context(type_id=ctx_type, name="p.evaluate")])
    return path, store, store.get_contexts_by_id([ctx])[0]


def test_newest_blessed_candidate_wins(store_path, tmp_path):
    path, store, ctx = store_path
    old = _model(tmp_path, "old")
    new = _model(tmp_path, "new")
    _evaluate(store, ctx, 1, old, blessed=True)
    _evaluate(store, ctx, 2, new, blessed=False)            # newer but not blessed
    assert newest_blessed_model(path, "p") == os.path.join(old, "final")
    _evaluate(store, ctx, 3, new, blessed=True, state=pb.Execution.FAILED)   # not finished
    assert newest_blessed_model(path, "p") == os.path.join(old, "final")
    _evaluate(store, ctx, 4, new, blessed=True)
    assert newest_blessed_model(path, "p") == os.path.join(new, "final")


def test_the_newest_export_wins_over_evaluate_candidates(store_path, tmp_path):
    path, store, _ = store_path
    store.put_execution_type(pb.ExecutionType(name="Export"))
    store.put_artifact_type(pb.ArtifactType(name="PushedModel"))
    [ctx] = store.put_contexts([pb.Context(type_id=store.get_context_type("node").id, name="p.export")])
    ctx = store.get_contexts_by_id([ctx])[0]
    _evaluate(store, store.get_context_by_type_and_name("node", "p.evaluate"), 1, _model(tmp_path, "cand"), True)
    for t, name, state in ((1, "e1", pb.Execution.COMPLETE), (2, "e2", pb.Execution.COMPLETE),
                           (3, "e3", pb.Execution.FAILED)):
        hf = tmp_path / name / "hf"
        hf.mkdir(parents=True)
        (hf / "config.json").write_text("{}")
        ex = pb.Execution(type_id=store.get_execution_type("Export").id, last_known_state=state,
                          create_time_since_epoch=t)
        ev = pb.Event(type=pb.Event.OUTPUT)
        ev.path.steps.add().key = "pushed_model"
        store.put_execution(ex, [(pb.Artifact(type_id=store.get_artifact_type("PushedModel").id,
                                              uri=str(tmp_path / name)), ev)], [ctx])
    assert newest_blessed_model(path, "p") == str(tmp_path / "e2" / "hf")     # e3 failed


def test_no_blessed_model_is_one_line_error(store_path, tmp_path):
    path, store, ctx = store_path
    _evaluate(store, ctx, 1, _model(tmp_path, "m"), blessed=False)
    with pytest.raises(UserError, match="pipeline 'p' has no blessed model yet"):
        newest_blessed_model(path, "p")
    with pytest.raises(UserError, match="no blessed model yet"):
        newest_blessed_model(path, "other-pipeline")
    with pytest.raises(UserError, match="no local pipeline runs here yet"):
        newest_blessed_model(str(tmp_path / "none.sqlite"), "p")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--set", f"pipeline.output_dir={tmp_path}"]) == 2
    assert main(["serve", str(tmp_path)]) == 2             # a folder without config.json
    err = [e for e in capsys.readouterr().err.strip().splitlines() if e.startswith("seekline")]
    assert len(err) == 3 and all(e.startswith("seekline: error: ") for e in err)
    assert "no such model folder" in err[0] and "no local pipeline runs" in err[1]
    assert "not a seekline model folder" in err[2]


def test_a_push_dir_resolves_to_the_newest_versions_hf_folder(tmp_path):
    push = tmp_path / "serving"
    for v in ("9", "10", "11"):
        (push / v / "hf").mkdir(parents=True)
        if v != "11":                                    # 11 was published without hf/: skipped
            (push / v / "hf" / "config.json").write_text("{}")
    (push / ".12.staging" / "hf").mkdir(parents=True)     # a half-published version: not numeric
    assert resolve_model_dir(str(push)) == str(push / "10" / "hf")        # numerically newest, not "9"
    model = _model(tmp_path, "m")
    assert resolve_model_dir(os.path.join(model, "final")) == os.path.join(model, "final")
    assert resolve_model_dir(str(tmp_path / "missing")) == str(tmp_path / "missing")
