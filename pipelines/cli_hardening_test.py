"""Bad input through the CLI (in process, no pipeline run): one line on stderr, exit code 2, and
nothing already on disk changed. The Beam-step data errors and killed runs are in
tests/test_cli_hardening_e2e.py (they need real runs)."""

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from configs.schema import load_config
from pipelines import cli
from pipelines.cli import CORPUS_INCLUDE, main, placeholder_warnings
from tests.kfp_fake import FakeKFP

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def out(tmp_path):
    """An output folder holding a previous run's files."""
    o = tmp_path / "out"
    (o / "runs" / "r1").mkdir(parents=True)
    (o / "config.yaml").write_text("pipeline: {name: previous}\n")
    (o / "runs" / "r1" / "config.yaml").write_text("pipeline: {name: previous}\n")
    return o


def one_line_error(capsys, rc: int) -> str:
    cap = capsys.readouterr()
    assert rc == 2, cap
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seekline: error: "), cap.err
    return lines[0]


@pytest.mark.parametrize("content,message", [
    (b"pipeline:\n  name: caf\xe9\n", "bad.yaml:2: not UTF-8 text (byte 0xe9"),
    (b"", "bad.yaml: the config file is empty"),
    (b"pipeline: {name: a}\npipeline: {name: b}\n", "bad.yaml: not valid YAML: line 2, column 1: duplicate key 'pipeline'"),
])
def test_broken_config_files(tmp_path, out, capsys, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    before = snapshot(out)
    line = one_line_error(capsys, main(["run", "-c", str(bad), "--set", f"pipeline.output_dir={out}"]))
    assert message in line
    assert snapshot(out) == before


def test_a_boolean_is_not_a_file_count(out, capsys):
    before = snapshot(out)
    line = one_line_error(capsys, main(["run", "--set", "ingest.max_files=true", "--set", f"pipeline.output_dir={out}"]))
    assert line == ("seekline: error: --set ingest.max_files=true: ingest.max_files: "
                    "expected a number, got a boolean")
    assert snapshot(out) == before


def _args(**kw):
    return argparse.Namespace(config="tiny", overrides=[], **kw)


def test_corpus_option_sets_corpus_and_a_default_include():
    c = cli._load(_args(corpus=["/data/mine"], include=None))
    assert c.ingest.corpus == ["/data/mine"] and c.ingest.include == list(CORPUS_INCLUDE)
    c = cli._load(_args(corpus=["/a", "/b"], include=["*.jsonl", "*.md"]))
    assert c.ingest.corpus == ["/a", "/b"] and c.ingest.include == ["*.jsonl", "*.md"]
    c = cli._load(_args(corpus=None, include=["*.rst"]))
    assert c.ingest.corpus == ["python-stdlib"] and c.ingest.include == ["*.rst"]
    # --set still has the last word
    c = cli._load(argparse.Namespace(config="tiny", overrides=["ingest.include=*.txt"], corpus=["/d"], include=None))
    assert c.ingest.include == ["*.txt"]


def test_default_corpus_include_covers_what_ingest_reads():
    from components.ingest.sources import SourceFile, file_format
    from configs.schema import IngestConfig

    formats = {p: file_format(SourceFile(f"/c/x{p[1:]}", "", "", 0, 0), IngestConfig()) for p in CORPUS_INCLUDE}
    assert set(formats.values()) == {"jsonl", "parquet", "text"}
    assert [p for p, f in formats.items() if f == "text"] == ["*.txt"]


def test_run_help_shows_corpus_usage(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--corpus DIR" in text and "--include GLOB" in text and "seekline run --corpus" in text
    assert all(p in text for p in CORPUS_INCLUDE)


def test_corpus_without_matching_files_names_patterns_and_extensions(tmp_path, out, capsys):
    corpus = tmp_path / "data"
    corpus.mkdir()
    for name in ("a.csv", "b.csv", "notes.md"):
        (corpus / name).write_text("x,y\n")
    before = snapshot(out)
    line = one_line_error(capsys, main(["run", "--corpus", str(corpus), "--set", f"pipeline.output_dir={out}"]))
    assert f"corpus {corpus}: none of its 3 files match include=['*.jsonl', '*.jsonl.gz'" in line
    assert "it has 2 .csv, 1 .md" in line
    assert snapshot(out) == before


def test_a_corpus_of_binary_files_names_them(tmp_path, out, capsys):
    corpus = tmp_path / "data"
    corpus.mkdir()
    (corpus / "model.bin").write_bytes(b"\x00\x01" * 100)
    (corpus / "utf16.txt").write_bytes("some text".encode("utf-16"))
    before = snapshot(out)
    line = one_line_error(capsys, main(["run", "--corpus", str(corpus), "--include", "*", "--set", f"pipeline.output_dir={out}"]))
    assert "all 2 files checked are binary" in line
    assert f"{corpus}/model.bin" in line and f"{corpus}/utf16.txt" in line
    assert snapshot(out) == before


def test_runs_limit_must_be_positive(capsys):
    line = one_line_error(capsys, main(["runs", "-n", "0"]))
    assert line == "seekline: error: runs -n/--limit must be at least 1 (got 0); it is how many recent runs to show"


def test_placeholder_pipeline_roots_are_named():
    cluster = load_config("cluster")
    warned = "\n".join(placeholder_warnings(cluster))
    assert "kubeflow.pipeline_root is a placeholder (gs://YOUR-BUCKET/seekline/pipeline-root)" in warned
    assert "validate.frozen_dir is a placeholder" in warned and "ingest.corpus[0] is a placeholder" in warned
    real = load_config("cluster", [
        "kubeflow.pipeline_root=gs://acme-ml/root", "validate.frozen_dir=gs://acme-ml/frozen",
        "ingest.corpus=gs://acme-ml/corpus",
    ])
    assert placeholder_warnings(real) == []
    assert placeholder_warnings(load_config("tiny")) == []
    assert placeholder_warnings(load_config("tiny", ["kubeflow.default_image=registry.example.com/seekline:0.1"]))


@pytest.fixture
def fake():
    f = FakeKFP()
    f.host = f.start()
    yield f
    f.stop()


@pytest.mark.parametrize("content,message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a pipeline package (not YAML text"),
    (b"apiVersion: v1\nkind: ConfigMap\n", "not a KFP PipelineSpec (missing pipelineInfo, root, components, schemaVersion)"),
    (b"- a list\n", "not a KFP PipelineSpec (missing pipelineInfo"),
])
def test_deploy_package_must_be_a_pipeline_spec(tmp_path, capsys, fake, content, message):
    pkg = tmp_path / "pkg.yaml"
    pkg.write_bytes(content)
    for command in (["deploy"], ["schedule", "--cron", "0 0 3 * * *"]):
        line = one_line_error(capsys, main([*command, "--host", fake.host, "--package", str(pkg)]))
        assert line.startswith(f"seekline: error: {pkg}: {message}")
        assert line.endswith("; pass the file `seekline compile` writes")
    assert fake.requests == []  # checked before any call, nothing uploaded


def test_model_params_errors_name_the_config_file(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "qwen2", "vocab_size": 0, "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "max_position_embeddings": 128}))
    line = one_line_error(capsys, main(["model", "params", str(bad)]))
    assert line.startswith(f"seekline: error: {bad}: ") and "vocab_size" in line
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_bytes(b'{"model_type": "qwen2\xff"}')
    line = one_line_error(capsys, main(["model", "params", str(ckpt)]))
    assert line.startswith(f"seekline: error: {ckpt / 'config.json'}: ")


def test_make_help_has_no_colour_codes_in_a_pipe():
    proc = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "  run " in proc.stdout
    assert "\033" not in proc.stdout
