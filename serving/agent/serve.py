"""`seekline serve` with the agent settings (--corpus, --agent-max-steps, --agent-time-limit).

serving/server.py's `run` builds the Service with the default agent settings (python + finish,
no corpus); this is the same run with an AgentConfig. The corpus is loaded and indexed before
the model, so a bad --corpus fails in a second with one line naming the folder."""
from __future__ import annotations

from serving import logs
from serving.agent.config import AgentConfig, build_agent_tools
from serving.config import API_KEYS_ENV, ServerConfig


def run(model_dir: str, cfg: ServerConfig, agent: AgentConfig) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    from serving.app import create_app
    from serving.server import _uvicorn_server, build_service

    logs.setup()
    tools = build_agent_tools(agent)
    if not cfg.api_keys:
        logs.event("no API keys set: the server is open to anyone who can reach it "
                   f"(set {API_KEYS_ENV}=key1,key2 to require a key)", 30)
    svc = build_service(model_dir, cfg)
    svc.agent, svc.agent_tools = agent, tools
    logs.event("serving", model=svc.name, folder=model_dir, url=f"http://{cfg.host}:{cfg.port}/v1",
               slots=svc.engine.b, cache_rows=svc.engine.s, context=svc.context, keys=len(cfg.api_keys),
               agent_tools=list(tools), corpus=agent.corpus)
    try:
        _uvicorn_server(create_app(svc), cfg).run()
    finally:
        svc.engine.stop()
