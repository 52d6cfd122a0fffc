"""``seekline``: the command line. Thin: parse, resolve the config, call a library function.

User errors (bad config, missing corpus, unreachable KFP host) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence

from components.common.errors import UserError, find_user_error

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    # TF/absl/Google client libraries are chatty at import (google-api-core warns about the
    # Python version with a FutureWarning); keep the terminal for our output. Before any library
    # import, and through the environment too: Beam's worker processes import the same
    # libraries and inherit the environment, not this process's filters.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"google\..*")
    current = os.environ.get("PYTHONWARNINGS", "")
    wanted = [w for w in ("ignore::FutureWarning", "ignore::DeprecationWarning") if w not in current]
    if wanted:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, *wanted]))


def _console():
    from rich.console import Console

    # Piped output (CI logs, make) gets a wide fixed width instead of rich's 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _load(args: argparse.Namespace):
    from configs.schema import load_config

    settings = []
    if getattr(args, "corpus", None):
        settings.append(("ingest.corpus", list(args.corpus), "--corpus"))
        settings.append(("ingest.include", list(args.include or CORPUS_INCLUDE), "--include"))
    elif getattr(args, "include", None):
        settings.append(("ingest.include", list(args.include), "--include"))
    return load_config(args.config, args.overrides, settings)


# `run --corpus DIR` without --include: every format ingest reads as documents (JSONL, gzipped
# JSONL, NDJSON, Parquet) and plain text. Not source code: a checkout has build files, vendored
# code and data next to it; `--include '*.py'` picks code on purpose.
CORPUS_INCLUDE = ("*.jsonl", "*.jsonl.gz", "*.ndjson", "*.ndjson.gz", "*.parquet", "*.txt")


# ---------------------------------------------------------------------------------------
# Commands


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from pipelines.local import local_paths, run_local
    from pipelines.runs import list_runs

    config = _load(args)
    console = _console()
    paths = local_paths(config)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} components"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        # optional stages that are switched off are not part of the DAG
        # (+ the baseline resolver node when the blessing compares with the last blessed model)
        total = len(config.enabled_components()) + int(
            "evaluate" in config.enabled_components() and config.evaluate.blessing.require_no_worse_than_baseline)
        task = progress.add_task("importing TFX", total=total)
        started: dict[str, float] = {}

        def on_event(component: str, event: str) -> None:
            if event == "running":
                started[component] = time.monotonic()
                progress.update(task, description=f"running {component}")
            elif event == "finished":
                took = time.monotonic() - started.get(component, time.monotonic())
                progress.console.print(f"  [green]✓[/] {component} ({took:.1f} s)")
                progress.advance(task)

        run_id = run_local(config, on_event=on_event)
        progress.update(task, description="done")
    run = next(r for r in list_runs(paths.metadata, config.pipeline.name) if r.run_id == run_id)
    console.print(
        f"run {run_id}: {run.state} in {run.duration_s:.1f} s "
        f"({sum(e.state == 'CACHED' for e in run.executions)} of {len(run.executions)} from cache)"
    )
    console.print(f"outputs: {paths.output_dir}")
    console.print(f"config:  {paths.run_dir(run_id) / 'config.yaml'}")
    console.print(f"log:     {paths.output_dir / 'logs' / 'run.log'}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from pipelines.local import local_paths
    from pipelines.runs import list_runs, pipeline_names

    if args.limit < 1:
        raise UserError(f"runs -n/--limit must be at least 1 (got {args.limit}); it is how many recent runs to show")
    config = _load(args)
    paths = local_paths(config)
    runs = list_runs(paths.metadata, config.pipeline.name, runs_dir=paths.runs_dir)[-args.limit :]
    if not runs:
        names = pipeline_names(paths.metadata)
        if names:
            raise UserError(
                f"no runs of pipeline {config.pipeline.name!r} in {paths.metadata} (`runs` shows the "
                f"pipeline.name of -c {args.config}); pipelines with runs there: {', '.join(names)}"
            )
        _console().print(f"no runs yet in {paths.metadata}")
        return 0
    table = Table(title=f"{config.pipeline.name} runs ({paths.metadata})")
    for col in ("run", "state", "duration", "component", "execution", "took"):
        table.add_column(col, no_wrap=True)
    for r in runs:
        for i, e in enumerate(r.executions):
            first = i == 0
            table.add_row(
                r.run_id if first else "",
                r.state if first else "",
                f"{r.duration_s:.1f} s" if first else "",
                e.component,
                e.state,
                f"{e.duration_s:.2f} s",
            )
        table.add_section()
    _console().print(table)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.kubeflow import compile_pipeline

    config = _load(args)
    with _console().status("compiling the pipeline for Kubeflow"):
        path = compile_pipeline(config, args.output)
    _warn_portability(config)
    _console().print(f"wrote {path} (image {config.kubeflow.default_image})")
    return 0


def _warn_portability(config) -> None:
    from pipelines.kubeflow import portability_warnings

    for w in [*placeholder_warnings(config), *portability_warnings(config)]:
        _console().print(f"[yellow]warning:[/] {w}")


# What the shipped presets put where a user's value belongs (cluster.yaml: gs://YOUR-BUCKET).
_PLACEHOLDER = re.compile(r"YOUR[-_]|(^|[./])example\.(com|org|net)($|[/:])|<[^>]*>")


def placeholder_warnings(config) -> list[str]:
    """Cluster locations still holding a preset's placeholder: the compiled pipeline would fail
    on the cluster, at its first write."""
    places = {
        "kubeflow.pipeline_root": config.kubeflow.pipeline_root,
        "validate.frozen_dir": config.validate_.frozen_dir,
        "kubeflow.default_image": config.kubeflow.default_image,
        **{f"ingest.corpus[{i}]": c for i, c in enumerate(config.ingest.corpus)},
    }
    return [
        f"{key} is a placeholder ({value}); set it, e.g. --set {key.split('[')[0]}=..."
        for key, value in places.items()
        if value and _PLACEHOLDER.search(value)
    ]


# Top-level keys of a KFP PipelineSpec (what `seekline compile` writes, what the KFP UI takes).
_SPEC_KEYS = ("pipelineInfo", "root", "components", "schemaVersion")


def check_package(path: str):
    """The path of a compiled pipeline package, or a one-line error naming what is wrong with it."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"pipeline package not found: {p}")
    try:
        first = next(iter(yaml.safe_load_all(p.read_text(encoding="utf-8"))), None)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{p}: not a pipeline package (not YAML text: {type(e).__name__}); "
                        "pass the file `seekline compile` writes") from None
    missing = [k for k in _SPEC_KEYS if not isinstance(first, dict) or k not in first]
    if missing:
        raise UserError(f"{p}: not a KFP PipelineSpec (missing {', '.join(missing)}); "
                        "pass the file `seekline compile` writes")
    return p


def _package(args: argparse.Namespace, config):
    from pipelines.kubeflow import compile_pipeline

    if args.package:
        return check_package(args.package)
    with _console().status("compiling the pipeline for Kubeflow"):
        return compile_pipeline(config)


def cmd_deploy(args: argparse.Namespace) -> int:
    from pipelines.kubeflow import check_reachable, deploy, summary

    config = _load(args)
    if args.package:
        check_package(args.package)  # a wrong file fails before any network call
    check_reachable(args.host, args.token)  # before the (slow) compile: fail fast on a bad host
    package = _package(args, config)
    _warn_portability(config)
    with _console().status(f"uploading {package} to {args.host}"):
        d = deploy(config, package, args.host, args.token, run_name=args.run_name, start_run=not args.no_run)
    _console().print(summary(d))
    if d.run_id:
        _console().print(f"run: {d.run_url()}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from configs.schema import validate_cron
    from pipelines.kubeflow import check_reachable, schedule, summary

    config = _load(args)
    cron = args.cron or config.kubeflow.cron
    try:
        validate_cron(cron)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.package:
        check_package(args.package)
    check_reachable(args.host, args.token)
    package = _package(args, config)
    with _console().status(f"creating a recurring run on {args.host}"):
        d = schedule(config, package, args.host, cron, args.token, name=args.name)
    _console().print(summary(d))
    _console().print(f"recurring run {d.recurring_run_id}: cron '{cron}'")
    return 0


def cmd_model_params(args: argparse.Namespace) -> int:
    from rich.table import Table

    import model
    from model.errors import ConfigError as ModelConfigError

    try:
        counts = model.count_params(args.model_config)
    except (ModelConfigError, OSError, UnicodeDecodeError) as e:
        # Errors of the values themselves do not always say which file held them.
        source = _model_config_source(args.model_config)
        msg = str(e) if not isinstance(e, UnicodeDecodeError) else f"not UTF-8 text (byte {e.start})"
        raise UserError(msg if source in msg else f"{source}: {msg}") from None
    table = Table(title=f"parameters of {args.model_config}")
    table.add_column("")
    table.add_column("parameters", justify="right")
    table.add_column("", justify="right")
    for key, label in (("total", "total (without MTP)"), ("activated", "activated per token"), ("mtp", "MTP modules")):
        table.add_row(label, f"{counts[key]:,}", f"{counts[key] / 1e9:.2f} B")
    _console().print(table)
    return 0


def _model_config_source(spec: str) -> str:
    """The file a `model params` argument reads (a checkpoint dir's config.json), or the preset."""
    if os.path.isdir(spec):
        return os.path.join(spec, "config.json")
    return spec if os.path.exists(spec) else f"model preset {spec!r}"


def cmd_model_import(args: argparse.Namespace) -> int:
    import json

    import model

    with _console().status(f"importing {args.hf_dir} → {args.out}"):
        meta = model.import_hf_checkpoint(args.hf_dir, args.out, dtype=args.dtype)
    _console().print(json.dumps(meta, indent=2, default=str))
    _console().print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------------------
# Parser


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default="tiny",
        metavar="PRESET|FILE",
        help="preset name from configs/ (tiny, small, cluster) or a YAML file (default: tiny)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set ingest.max_files=50 (repeatable)",
    )


def _kfp_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API endpoint (default: $KFP_HOST)")
    p.add_argument("--token", default=os.environ.get("KFP_TOKEN"), help="bearer token (default: $KFP_TOKEN)")
    p.add_argument("--package", help="an already compiled pipeline YAML (default: compile now)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seekline",
        description="Train DeepSeek-V3-style models with TFX: run locally or on Kubeflow Pipelines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        _config_args(p)
        return p

    p = add("run", cmd_run, "run the pipeline locally (TFX LocalDagRunner + SQLite ML Metadata)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = RUN_EXAMPLES
    p.add_argument(
        "--corpus", action="append", metavar="DIR",
        help="read this directory (or file, glob, gs:// URI) instead of the preset's ingest.corpus "
        "(repeatable); sets ingest.corpus",
    )
    p.add_argument(
        "--include", action="append", metavar="GLOB",
        help="file name pattern to read from --corpus directories (repeatable; quote it); sets "
        f"ingest.include. Default with --corpus: {' '.join(CORPUS_INCLUDE)}",
    )

    p = add("compile", cmd_compile, "compile the pipeline to a Kubeflow PipelineSpec YAML")
    p.add_argument("-o", "--output", help="output file (default: kubeflow.output_file)")

    p = add("deploy", cmd_deploy, "upload the pipeline to Kubeflow Pipelines and start a run")
    _kfp_args(p)
    p.add_argument("--run-name", help="name of the run (default: <pipeline>-<timestamp>)")
    p.add_argument("--no-run", action="store_true", help="upload only, do not start a run")

    p = add("schedule", cmd_schedule, "create a recurring run on Kubeflow Pipelines (scheduled retraining)")
    _kfp_args(p)
    p.add_argument("--cron", help="6-field cron, seconds first (default: kubeflow.cron), e.g. '0 0 3 * * *'")
    p.add_argument("--name", help="recurring run name (default: <pipeline>-scheduled)")

    p = add("runs", cmd_runs, "list local pipeline runs and component executions from ML Metadata")
    p.add_argument("-n", "--limit", type=int, default=10, help="show the last N runs (default 10)")

    from pipelines.train_cli import add_train_parser
    add_train_parser(sub, _config_args)
    from pipelines.eval_cli import add_eval_parser
    add_eval_parser(sub)
    from pipelines.data_cli import add_data_parser
    add_data_parser(sub)
    from pipelines.serve_cli import add_serve_parser
    add_serve_parser(sub, _config_args)
    from pipelines.doctor_cli import add_doctor_parsers
    add_doctor_parsers(sub, _config_args)
    from pipelines.plan_cli import add_plan_parser
    add_plan_parser(sub, _config_args)

    m = sub.add_parser("model", help="model checkpoints: import HF safetensors, count parameters")
    msub = m.add_subparsers(dest="model_command", metavar="MODEL_COMMAND", required=True)
    p = msub.add_parser(
        "import",
        help="convert a HF checkpoint dir (config.json + safetensors, FP8/BF16/FP32) to seekline's format",
        description="convert a HF checkpoint dir (config.json + safetensors, FP8/BF16/FP32) to seekline's format",
    )
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto keeps F32 as float32 and stores BF16/F16/FP8 weights as bfloat16")
    p.set_defaults(fn=cmd_model_import)
    p = msub.add_parser(
        "params",
        help="print parameter counts (total, activated per token, MTP) without allocating weights",
        description="print parameter counts (total, activated per token, MTP) from a config.json, "
        "a checkpoint dir or a model preset name, without allocating weights",
    )
    p.add_argument("model_config", metavar="CONFIG_JSON")
    p.set_defaults(fn=cmd_model_params)
    return parser


RUN_EXAMPLES = """\
examples:
  seekline run                                      # the tiny preset: a slice of the stdlib
  seekline run --corpus ~/data/docs                 # your JSONL / Parquet / .txt files
  seekline run --corpus ~/data/web --include '*.jsonl.gz' --set ingest.text_field=content
  seekline run --corpus ~/src/project --include '*.py' --include '*.md'
  seekline run --config small --set ingest.max_files=null --set pipeline.output_dir=/data/out

The preset's other settings still apply (tiny: at most 200 files, ingest.max_files). --set takes
plain values where the config expects text or a list: --set ingest.include=*.jsonl,
--set ingest.corpus=/data/x (one-element list), --set resources.default.cpu=2.
"""


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()  # first: library imports warn at import time
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — user errors get one line, bugs their traceback
        user = find_user_error(e) or _model_input_error(e)
        if user is None:
            raise
        print(f"seekline: error: {user}", file=sys.stderr)
        return EXIT_USER_ERROR


def _model_input_error(exc: BaseException) -> BaseException | None:
    """The model core's bad-input errors (it has its own ValueError subclasses, no TFX deps)."""
    try:
        from model.errors import CheckpointError, ConfigError, GenerationError
    except ImportError:
        return None
    return exc if isinstance(exc, (CheckpointError, ConfigError, GenerationError)) else None


if __name__ == "__main__":
    sys.exit(main())
