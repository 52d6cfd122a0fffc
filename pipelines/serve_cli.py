"""`seekline serve [MODEL_DIR]`: the OpenAI-compatible server (serving/, docs/serving.md).

Without MODEL_DIR it serves the newest blessed model of the config's local pipeline: the newest
finished `evaluate` execution whose ModelBlessing says blessed, and that blessing's candidate
model (its `current_model` property, as TFX's Evaluator records it). The lookup lives here
because serving/ sits below pipelines/ and never reads ML Metadata.
"""
from __future__ import annotations

import argparse
import os

from common.errors import UserError


def add_serve_parser(sub, config_args) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (chat/completions, completions)",
        description="serve a seekline model folder (HF layout with its tokenizer) over an OpenAI-compatible "
        "HTTP API with continuous batching; API keys from SEEKLINE_API_KEYS (comma-separated; unset = open)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SERVE_EXAMPLES)
    p.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                   help="model folder (config.json + model.safetensors + tokenizer.json); default: the newest "
                   "blessed model of the config's local pipeline")
    config_args(p)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, metavar="N", help="port (default 8000)")
    p.add_argument("--model-name", metavar="NAME", help="the model id clients send (default: from the folder)")
    p.add_argument("--max-batch-size", type=int, metavar="N", help="rows decoded together (default 8)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="cache rows per request, prompt + completion "
                   "(default: min(context, 2048))")
    p.add_argument("--timeout", type=float, dest="request_timeout_s", metavar="SECONDS", help="seconds per request (default 300)")
    p.add_argument("--rate-limit", type=float, dest="rate_limit_per_minute", metavar="PER_MINUTE",
                   help="requests per minute per API key (default 600; 0 = off)")
    p.add_argument("--xla", action="store_true", help="XLA-compile the decode step")
    p.add_argument("--corpus", metavar="DIR", help="agent mode: folder the retrieve tool searches (ingest output "
                   "or .txt/.md/.py files); without it the agent has python and finish only")
    p.add_argument("--agent-max-steps", type=int, dest="agent_max_steps", metavar="N",
                   help="agent mode: steps per request, default and limit (default 8)")
    p.add_argument("--agent-time-limit", type=float, dest="agent_time_limit_s", metavar="SECONDS",
                   help="agent mode: wall time per request, default and limit (default 120)")
    p.set_defaults(fn=cmd_serve)


SERVE_EXAMPLES = """\
examples:
  seekline serve                                         # newest blessed model of the tiny pipeline
  seekline serve outputs/tiny/pipeline/grpo/model/51/final --port 8080
  SEEKLINE_API_KEYS=key1,key2 seekline serve MODEL_DIR --host 0.0.0.0
  seekline serve MODEL_DIR --corpus docs/ --agent-max-steps 12  # POST /v1/agent/completions with retrieve

then any OpenAI client:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="key1")
"""


def _newest_outputs(store, pipeline_name: str, node: str, key: str):
    """Output artifacts `key` of the finished executions of `node`, newest execution first."""
    from ml_metadata.proto import metadata_store_pb2

    ctx = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node}")
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    execs = [e for e in (store.get_executions_by_context(ctx.id) if ctx else []) if e.last_known_state in done]
    for ex in sorted(execs, key=lambda e: (e.create_time_since_epoch, e.id), reverse=True):
        events = store.get_events_by_execution_ids([ex.id])
        outs = [ev.artifact_id for ev in events if ev.type == metadata_store_pb2.Event.OUTPUT
                and ev.path.steps and ev.path.steps[0].key == key]
        yield from store.get_artifacts_by_id(outs)


def newest_blessed_model(metadata_path: str, pipeline_name: str) -> str:
    """The newest blessed export's HF folder (export/pushed_model/N/hf: an export only runs for a
    blessed model); without any export (the phase switched off), the HF-layout folder of the
    candidate of the newest blessed `evaluate` execution."""
    from pipelines.runs import open_store

    how = "(run `seekline run` first, or pass MODEL_DIR)"
    if not os.path.exists(metadata_path):
        raise UserError(f"{metadata_path}: no local pipeline runs here yet {how}")
    store = open_store(metadata_path)
    for art in _newest_outputs(store, pipeline_name, "export", "pushed_model"):
        hf = os.path.join(art.uri, "hf")
        if os.path.exists(os.path.join(hf, "config.json")):
            return hf
    for art in _newest_outputs(store, pipeline_name, "evaluate", "blessing"):
        props = art.custom_properties
        if props.get("blessed") is not None and props["blessed"].int_value == 1 and "current_model" in props:
            final = os.path.join(props["current_model"].string_value, "final")
            if os.path.exists(os.path.join(final, "config.json")):
                return final
    raise UserError(f"{metadata_path}: pipeline {pipeline_name!r} has no blessed model yet {how}")


def resolve_model_dir(path: str) -> str:
    """A model folder as given, or — for an export push dir (TF Serving's model base path:
    numeric version folders) — the newest version's hf/ folder."""
    if os.path.exists(os.path.join(path, "config.json")) or not os.path.isdir(path):
        return path
    versions = [d for d in os.listdir(path) if d.isdigit() and os.path.exists(os.path.join(path, d, "hf", "config.json"))]
    return os.path.join(path, max(versions, key=int), "hf") if versions else path


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.agent.config import AgentConfig
    from serving.agent.serve import run
    from serving.config import ServerConfig

    model_dir = args.model_dir
    if model_dir is None:
        from configs.schema import load_config
        from pipelines.local import local_paths

        config = load_config(args.config, args.overrides)
        model_dir = newest_blessed_model(str(local_paths(config).metadata), config.pipeline.name)
    model_dir = resolve_model_dir(model_dir)
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such model folder")
    cfg = ServerConfig.build(host=args.host, port=args.port, model_name=args.model_name,
                             max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                             request_timeout_s=args.request_timeout_s,
                             rate_limit_per_minute=args.rate_limit_per_minute, jit_compile=args.xla or None)
    if args.corpus is not None and not os.path.isdir(args.corpus):
        raise UserError(f"{args.corpus}: --corpus must be a folder (ingest output or .txt/.md/.py files)")
    agent = AgentConfig.build(corpus=args.corpus, max_steps=args.agent_max_steps,
                              time_limit_s=args.agent_time_limit_s)
    run(model_dir, cfg, agent)
    return 0
