"""Server settings: one typed, read-only object (pydantic), validated at startup."""
from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ConfigError

API_KEYS_ENV = "SEEKLINE_API_KEYS"


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)                 # 0 = any free port (tests)
    model_name: str | None = None                           # the id clients send; default: folder name
    # Continuous batching: rows decoded together, and cache rows per row (prompt + completion).
    max_batch_size: int = Field(8, ge=1, le=256)
    max_seq_len: int | None = Field(None, ge=2)             # None: min(model context, 2048)
    # Requests waiting for a slot; beyond this the server answers 503 (it never queues without bound).
    max_queue: int = Field(256, ge=1)
    default_max_tokens: int = Field(256, ge=1)              # when a request names none (cut to the room left)
    max_n: int = Field(8, ge=1)                             # choices per request
    max_body_bytes: int = Field(1_000_000, ge=1024)         # 413 above this
    request_timeout_s: float = Field(300.0, gt=0)           # per request, queueing included
    # Per API key (per client address on an open server) token bucket: sustained rate + burst.
    rate_limit_per_minute: float = Field(600.0, ge=0)       # 0 = no limit
    rate_limit_burst: int = Field(60, ge=1)
    jit_compile: bool = False                               # XLA-compile the decode step
    api_keys: tuple[str, ...] = ()                          # from SEEKLINE_API_KEYS; () = open

    @classmethod
    def build(cls, **values) -> ServerConfig:
        """Settings + the API keys from the environment; a bad value is one ConfigError line."""
        if "api_keys" not in values:
            values["api_keys"] = keys_from_env()
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            raise ConfigError(f"server setting {field}: {err['msg']}") from None


def keys_from_env(environ=None) -> tuple[str, ...]:
    raw = (environ if environ is not None else os.environ).get(API_KEYS_ENV, "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())
