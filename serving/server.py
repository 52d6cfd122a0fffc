"""Load a model folder and serve it: `seekline serve` (pipelines/serve_cli.py) calls `run`; tests and
the load benchmark start the same server in a thread with `start_in_thread`."""
from __future__ import annotations

import os
import socket
import threading
import time

from common.errors import UserError
from serving import logs
from serving.config import API_KEYS_ENV, ServerConfig
from serving.engine import Engine
from serving.prompts import PromptFormat

DEFAULT_MAX_SEQ_LEN = 2048


def build_service(model_dir: str, cfg: ServerConfig, *, model=None):
    """-> (Service, engine started). `model`: an already-loaded DecoderLM of this folder (tests)."""
    from model.checkpoint.hf import load_hf_checkpoint
    from model.config import ModelConfig
    from serving.app import Service

    for f in ("config.json", "tokenizer.json"):
        if not os.path.exists(os.path.join(model_dir, f)):
            raise UserError(f"{model_dir}: not a seekline model folder (HF layout with its tokenizer: no {f})")
    mcfg = ModelConfig.from_json_file(os.path.join(model_dir, "config.json"))
    fmt = PromptFormat(model_dir, eos_ids=mcfg.eos_token_ids, bos_id=mcfg.bos_token_id)
    if model is None:
        model = load_hf_checkpoint(model_dir, with_mtp=False)
    context = mcfg.max_position_embeddings
    seq = cfg.max_seq_len or min(context, DEFAULT_MAX_SEQ_LEN)
    if seq > context:
        raise UserError(f"server setting max_seq_len={seq} exceeds the model's context of {context} tokens")
    engine = Engine(model, max_batch_size=cfg.max_batch_size, max_seq_len=seq, pad_id=fmt.pad_id,
                    max_queue=cfg.max_queue, jit_compile=cfg.jit_compile).start()
    name = cfg.model_name or os.path.basename(os.path.normpath(model_dir))
    if name == "final":   # pipeline outputs end in .../model/N/final: name it by its phase folder
        parts = os.path.normpath(model_dir).split(os.sep)
        name = "-".join(p for p in parts[-4:-1] if p != "model") if len(parts) >= 4 else name
    return Service(engine, fmt, cfg, name, context)


def _uvicorn_server(app, cfg: ServerConfig, sock=None):
    import uvicorn

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run(model_dir: str, cfg: ServerConfig) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    from serving.app import create_app

    logs.setup()
    if not cfg.api_keys:
        logs.event("no API keys set: the server is open to anyone who can reach it "
                   f"(set {API_KEYS_ENV}=key1,key2 to require a key)", 30)
    svc = build_service(model_dir, cfg)
    logs.event("serving", model=svc.name, folder=model_dir, url=f"http://{cfg.host}:{cfg.port}/v1",
               slots=svc.engine.b, cache_rows=svc.engine.s, context=svc.context, keys=len(cfg.api_keys))
    try:
        _uvicorn_server(create_app(svc), cfg).run()
    finally:
        svc.engine.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn in a background thread on loopback (tests, benchmarks). Use as a context manager."""

    def __init__(self, svc, cfg: ServerConfig):
        from serving.app import create_app

        self.svc = svc
        self.port = cfg.port or free_port()
        self.server = _uvicorn_server(create_app(svc), cfg.model_copy(update={"host": "127.0.0.1", "port": self.port}))
        self.server.install_signal_handlers = lambda: None
        self.thread = threading.Thread(target=self.server.run, name="seekline-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 30:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
