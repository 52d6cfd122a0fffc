"""The embedded default: run the DAG with TFX LocalDagRunner and an SQLite ML Metadata store.

Layout of one output folder (``pipeline.output_dir``):
  metadata.sqlite              ML Metadata: every run, execution and artifact
  pipeline/<component>/...     artifacts, one numbered folder per execution
  config.yaml                  resolved config of the latest run
  runs/<run id>/config.yaml    resolved config of each run
  runs/<run id>/process.json   the process that ran it (pipelines/runs.py: ABANDONED runs)
  logs/run.log                 TFX / Beam logs, and whatever worker processes print
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.common.errors import InputDataError
from components.common.shards import is_staging
from components.ingest.ingest import corpus_fingerprint, list_corpus_files
from components.ingest.sources import SourceFile, sniff_binary
from components.validate.validate import schema_fingerprint
from configs.schema import IngestConfig, SeeklineConfig, save_config
from pipelines.runs import list_runs, mark_process_ended, run_dir_name, write_process_marker

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

    @property
    def runs_dir(self) -> Path:
        return self.output_dir / "runs"

    @property
    def log_file(self) -> Path:
        return self.output_dir / "logs" / "run.log"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_dir_name(run_id)


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

    paths = local_paths(config)
    # Preflight outside TFX: a missing corpus fails here, in one line, before any run starts.
    files = list_corpus_files(config.ingest)
    _check_not_all_binary(files, config.ingest)
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
    # The run id is chosen here, not inside LocalDagRunner, so that the run's folder (its
    # config and the process that runs it) exists before the first component starts: a run
    # killed at any point is then recognisable as abandoned (pipelines/runs.py).
    run_id = datetime.datetime.now().isoformat()
    run_dir = paths.run_dir(run_id)
    # Failed runs keep their config too: it is what reproduces the failure.
    save_config(config, run_dir / "config.yaml")
    write_process_marker(run_dir)
    try:
        with _captured_logs(paths.log_file, on_event):
            for path in clean_abandoned(paths):
                logging.getLogger(__name__).info("removed %s (left by an abandoned run)", path)
            _run_pipeline(pipeline, run_id)
    finally:
        mark_process_ended(run_dir)
    return run_id


def _run_pipeline(pipeline, run_id: str) -> None:
    """LocalDagRunner, with the run id given by the caller: LocalDagRunner takes the time when
    it starts as the id; binding the parameter first makes its own substitution a no-op."""
    from tfx.dsl.compiler import constants
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.portable import runtime_parameter_utils

    class Runner(LocalDagRunner):
        def run_with_ir(self, ir, run_options=None):
            runtime_parameter_utils.substitute_runtime_parameter(
                ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id}
            )
            return super().run_with_ir(ir, run_options)

    Runner().run(pipeline)


def _check_not_all_binary(files: list[SourceFile], cfg: IngestConfig) -> None:
    """A corpus of binary files would be skipped file by file and end in an empty split that
    does not say why; say it before the run, naming them."""
    binary, sniffed = sniff_binary(files, cfg)
    if not sniffed or len(binary) < sniffed:
        return
    if any(f.relpath.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".parquet")) for f in files):
        return  # JSONL / Parquet files are not sniffed; they will be read
    names = ", ".join(f.uri for f in binary[:5]) + (f" and {len(binary) - 5} more" if len(binary) > 5 else "")
    raise InputDataError(
        f"corpus {', '.join(cfg.corpus)}: all {sniffed} files checked are binary (a NUL byte in the "
        f"first 8 KiB): {names}; seekline reads UTF-8 text, JSONL and Parquet "
        f"(include={cfg.include}; UTF-16 text counts as binary: convert it to UTF-8)"
    )


# Leftovers of abandoned runs are removed only under executions that ML Metadata records as
# over: never in a live run's folder, nor in folders it cannot tie to an execution.
_OVER = ("FAILED", "CANCELED", "ABANDONED")


def clean_abandoned(paths: LocalPaths) -> list[Path]:
    """Remove ``.staging-*`` folders under executions that are not running any more, and
    execution folders without files of failed / abandoned executions; returns what was removed.

    A run killed mid-write (SIGKILL, a lost machine) leaves its staged shards, and TFX leaves
    the execution's empty output folders (it removes them only when the executor fails in
    Python). "Not running any more": the execution is COMPLETE/CACHED/FAILED/CANCELED, or
    RUNNING in a run whose process provably ended (pipelines/runs.py).
    """
    if not paths.metadata.is_file() or not paths.pipeline_root.is_dir():
        return []
    state = {e.execution_id: e.state for r in list_runs(paths.metadata, runs_dir=paths.runs_dir) for e in r.executions}
    removed: list[Path] = []
    for exec_dir in _execution_dirs(paths.pipeline_root):
        s = state.get(int(exec_dir.name))
        if s is None or s in ("RUNNING", "NEW"):
            continue  # unknown, or possibly alive
        for child in list(exec_dir.iterdir()):
            if child.is_dir() and is_staging(child.name):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        if s in _OVER and _holds_no_files(exec_dir):
            shutil.rmtree(exec_dir, ignore_errors=True)
            removed.append(exec_dir)
    return removed


def _holds_no_files(folder: Path) -> bool:
    """Empty, or only empty folders (TFX's executor scratch leaves '.temp/')."""
    return not any(files for _dirpath, _dirs, files in os.walk(folder))


def _execution_dirs(pipeline_root: Path):
    """pipeline/<component>/<output>/<execution id>/ and pipeline/<component>/.system/<kind>/<id>/."""
    for comp in pipeline_root.iterdir():
        if not comp.is_dir() or comp.name == "frozen":
            continue
        outs = [d for d in comp.iterdir() if d.is_dir() and d.name != ".system"]
        system = comp / ".system"
        if system.is_dir():
            outs += [d for d in system.iterdir() if d.is_dir()]
        for out in outs:
            yield from (d for d in out.iterdir() if d.is_dir() and d.name.isdigit())


# Their errors come with the exception that reaches the CLI (one line for a data error, the
# traceback for a bug); on the console they would only repeat it as ~85 lines of worker logs.
_FILE_ONLY_LOGGERS = ("apache_beam", "absl", "tfx", "tensorflow")


def _console_worthy(record: logging.LogRecord) -> bool:
    return not record.name.startswith(_FILE_ONLY_LOGGERS)


@contextlib.contextmanager
def _stderr_to(log_file: Path):
    """Point file descriptor 2 at ``log_file`` for the block; yields a stream to the console.

    Beam's worker processes (DirectRunner multi_processing) inherit fd 2 and print their
    tracebacks and library warnings there, and TF's C++ logging writes to it: all of that
    belongs in the log. Python-level writes through a replaced ``sys.stderr`` (pytest, rich)
    are not affected.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 2)
    os.close(fd)
    console = sys.stderr
    if sys.stderr is sys.__stderr__:  # the real fd 2, which now is the log
        console = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield console
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if console is not sys.stderr:
            console.close()


@contextlib.contextmanager
def _captured_logs(log_file: Path, on_event: Callable[[str, str], None] | None):
    """Send TFX/Beam logs and worker output to ``log_file`` (appended); only our own errors
    reach the console.

    TFX logs through absl; Beam through the root logger. Both are far too chatty for a
    terminal, but the full log is what one reads when a component fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with _stderr_to(log_file) as console_stream, _logging_to(log_file, console_stream, on_event):
        yield


@contextlib.contextmanager
def _logging_to(log_file: Path, console_stream, on_event: Callable[[str, str], None] | None):
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(console_stream)
    console.setLevel(logging.ERROR)  # Beam workers warn a lot; the warnings stay in the file
    console.addFilter(_console_worthy)
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
