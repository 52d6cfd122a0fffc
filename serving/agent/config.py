"""The agent mode's settings (one typed, read-only object, like serving/config.py's ServerConfig)
and the tools a server offers, built once at startup."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ConfigError
from sandbox import SandboxLimits
from serving.agent.tools import PythonTool, build_tools, load_corpus


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: str | None = None                         # folder for the retrieve tool (ingest output or text files)
    max_steps: int = Field(8, ge=1, le=256)           # per request: default and cap
    time_limit_s: float = Field(120.0, gt=0)          # wall time per agent request: default and cap
    step_max_tokens: int = Field(256, ge=1)           # tokens per step when a request names none
    python_timeout_s: float = Field(5.0, gt=0)        # one python tool call in the sandbox
    python_memory_mb: int = Field(1024, ge=64)

    @classmethod
    def build(cls, **values) -> AgentConfig:
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            raise ConfigError(f"agent setting {field}: {err['msg']}") from None


def build_agent_tools(cfg: AgentConfig) -> dict:
    """{name: tool}: python (sandbox) and finish always, retrieve over cfg.corpus when given (a
    bad corpus is a one-line InputDataError naming the folder, at startup)."""
    corpus = load_corpus(cfg.corpus) if cfg.corpus else None
    python = PythonTool(limits=SandboxLimits(timeout_s=cfg.python_timeout_s, memory_mb=cfg.python_memory_mb,
                                             output_bytes=65536))
    return build_tools(corpus, python=python)
