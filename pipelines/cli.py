"""``seekline``: the command line. Thin: parse, resolve the config, call a library function.

User errors (bad config, missing corpus, unreachable KFP host) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence

from components.common.errors import UserError, find_user_error

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    # TF/absl/Google client libraries are chatty at import; keep the terminal for our output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"google\..*")


def _console():
    from rich.console import Console

    # Piped output (CI logs, make) gets a wide fixed width instead of rich's 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _load(args: argparse.Namespace):
    from configs.schema import load_config

    return load_config(args.config, args.overrides)


# ---------------------------------------------------------------------------------------
# Commands


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from configs.schema import COMPONENT_IDS
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
        task = progress.add_task("importing TFX", total=len(COMPONENT_IDS))
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
    from pipelines.runs import list_runs

    config = _load(args)
    paths = local_paths(config)
    runs = list_runs(paths.metadata, config.pipeline.name)[-args.limit :]
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

    for w in portability_warnings(config):
        _console().print(f"[yellow]warning:[/] {w}")


def _package(args: argparse.Namespace, config):
    from pathlib import Path

    from pipelines.kubeflow import compile_pipeline

    if args.package:
        p = Path(args.package)
        if not p.is_file():
            raise UserError(f"pipeline package not found: {p}")
        return p
    with _console().status("compiling the pipeline for Kubeflow"):
        return compile_pipeline(config)


def cmd_deploy(args: argparse.Namespace) -> int:
    from pipelines.kubeflow import check_reachable, deploy, summary

    config = _load(args)
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

    counts = model.count_params(args.model_config)
    table = Table(title=f"parameters of {args.model_config}")
    table.add_column("")
    table.add_column("parameters", justify="right")
    table.add_column("", justify="right")
    for key, label in (("total", "total (without MTP)"), ("activated", "activated per token"), ("mtp", "MTP modules")):
        table.add_row(label, f"{counts[key]:,}", f"{counts[key] / 1e9:.2f} B")
    _console().print(table)
    return 0


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

    add("run", cmd_run, "run the pipeline locally (TFX LocalDagRunner + SQLite ML Metadata)")

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
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
