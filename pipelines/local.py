"""The embedded default: run the DAG with TFX LocalDagRunner and an SQLite ML Metadata store.

Layout of one output folder (``pipeline.output_dir``):
  metadata.sqlite              ML Metadata: every run, execution and artifact
  pipeline/<component>/...     artifacts, one numbered folder per execution
  config.yaml                  resolved config of the latest run
  runs/<run id>/config.yaml    resolved config of each run
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.ingest.ingest import corpus_fingerprint, list_corpus_files
from components.validate.validate import schema_fingerprint
from configs.schema import SeeklineConfig, save_config

METADATA_FILE = "metadata.sqlite"
PIPELINE_DIR = "pipeline"


@dataclass(frozen=True)
class LocalPaths:
    output_dir: Path

    @property
    def metadata(self) -> Path:
        return self.output_dir / METADATA_FILE

    @property
    def pipeline_root(self) -> Path:
        return self.output_dir / PIPELINE_DIR

    def run_dir(self, run_id: str) -> Path:
        return self.output_dir / "runs" / run_id.replace(":", "-")


def local_paths(config: SeeklineConfig) -> LocalPaths:
    return LocalPaths(Path(config.pipeline.output_dir).resolve())


class _ComponentEvents(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished' log lines into callbacks."""

    def __init__(self, on_event: Callable[[str, str], None]):
        super().__init__(level=logging.INFO)
        self.on_event = on_event

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Component %s is ") and record.args:
            self.on_event(str(record.args[0]), msg.rsplit(" ", 1)[-1].rstrip("."))


def run_local(
    config: SeeklineConfig, on_event: Callable[[str, str], None] | None = None
) -> str:
    """Run the whole DAG locally; returns the pipeline run id.

    ``on_event(component_id, 'running' | 'finished')`` is called as components start and end.
    Failures propagate (a UserError raised inside a component is reachable via __cause__).
    """
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline
    from pipelines.runs import latest_run_id

    paths = local_paths(config)
    # Preflight outside TFX: a missing corpus fails here, in one line, before any run starts.
    files = list_corpus_files(config.ingest)
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, paths.output_dir / "config.yaml")

    pipeline = create_pipeline(
        config,
        pipeline_root=str(paths.pipeline_root),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(paths.metadata)
        ),
        corpus_fingerprint=corpus_fingerprint(files),
        schema_fingerprint=schema_fingerprint(config.validate_.schema_path),
    )
    before = _run_ids(paths, config)
    try:
        with _captured_logs(paths.output_dir / "logs" / "run.log", on_event):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        # Failed runs keep their config too: it is what reproduces the failure.
        for run_id in _run_ids(paths, config) - before:
            save_config(config, paths.run_dir(run_id) / "config.yaml")
    return latest_run_id(paths.metadata, config.pipeline.name)


def _run_ids(paths: LocalPaths, config: SeeklineConfig) -> set[str]:
    from pipelines.runs import list_runs

    if not paths.metadata.exists():
        return set()
    return {r.run_id for r in list_runs(paths.metadata, config.pipeline.name)}


@contextlib.contextmanager
def _captured_logs(log_file: Path, on_event: Callable[[str, str], None] | None):
    """Send TFX/Beam logs to ``log_file`` (appended); only errors reach the console.

    TFX logs through absl; Beam through the root logger. Both are far too chatty for a
    terminal, but the full log is what one reads when a component fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.ERROR)  # Beam workers warn a lot; the warnings stay in the file
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [file_handler, console]
    if on_event:
        handlers.append(_ComponentEvents(on_event))
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    root.handlers = handlers
    root.setLevel(logging.INFO)
    absl_logger = logging.getLogger("absl")
    absl_saved = (absl_logger.level, absl_logger.propagate, list(absl_logger.handlers))
    absl_logger.handlers = []
    absl_logger.propagate = True
    absl_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        absl_logger.setLevel(absl_saved[0])
        absl_logger.propagate = absl_saved[1]
        absl_logger.handlers = absl_saved[2]
        file_handler.close()
