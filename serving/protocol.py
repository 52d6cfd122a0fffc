"""Request bodies of the OpenAI API subset served here (pydantic), and their validation errors
as one-line 400s naming the field (`messages[0].role`), never a 422 or a 500."""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import APIError, bad_request

MAX_STOP = 4           # stop sequences per request (OpenAI's limit)
MAX_TOP_LOGPROBS = 20


class _Body(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do (clients send e.g. `user`,
    # `metadata`); the ones that would change the output and are not supported are refused below.
    model_config = ConfigDict(extra="allow")


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str = "{}"


class ToolCall(_Body):
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None


class _Sampling(_Body):
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)       # not OpenAI's; vLLM-style extension (0 = off)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list | None = None
    response_format: dict | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


def load_object(body: bytes) -> dict:
    """Raw body -> JSON object, or a 400 naming what is wrong (encoding, JSON, not an object)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return data


def parse(body: bytes, cls: type[_Body]) -> _Body:
    """Raw body -> request model, or an APIError naming the problem."""
    data = load_object(body)
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _param(err["loc"])
        raise bad_request(f"{where}: {err['msg']}" + _got(err), param=where) from None
    _refuse_unsupported(req)
    return req


def _param(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ContentPart]", "list[str]", "list[int]", "list[list[int]]", "none",
                      "function-after", "function-plain"):
            continue   # pydantic's union-branch labels
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _got(err) -> str:
    if err["type"] in ("missing",):
        return ""
    val = err.get("input")
    text = json.dumps(val)[:60] if isinstance(val, str | int | float | bool) or val is None else type(val).__name__
    return f" (got {text})"


def _refuse_unsupported(req: _Body) -> None:
    """Parameters that would change the output but are not implemented: a clear 400, not silence."""
    if req.presence_penalty or req.frequency_penalty:
        name = "presence_penalty" if req.presence_penalty else "frequency_penalty"
        raise bad_request(f"{name} is not supported by this server (use 0)", param=name, code="unsupported_parameter")
    if req.logit_bias:
        raise bad_request("logit_bias is not supported by this server", param="logit_bias", code="unsupported_parameter")
    if isinstance(req, ChatRequest):
        if req.tools:
            raise bad_request("tools are not supported by this endpoint yet", param="tools",
                              code="unsupported_parameter")
        fmt = (req.response_format or {}).get("type", "text")
        if fmt != "text":
            raise bad_request(f"response_format {fmt!r} is not supported (only text)", param="response_format",
                              code="unsupported_parameter")
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise bad_request("echo is not supported by this server", param="echo", code="unsupported_parameter")
        if req.suffix:
            raise bad_request("suffix is not supported by this server", param="suffix", code="unsupported_parameter")
        if req.best_of not in (None, req.n):
            raise bad_request("best_of other than n is not supported by this server", param="best_of",
                              code="unsupported_parameter")


def stop_list(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise bad_request(f"stop: at most {MAX_STOP} sequences (got {len(stops)})", param="stop")
    return [s for s in stops if s]


def not_found(message: str, param: str | None = None, code: str = "model_not_found") -> APIError:
    return APIError(404, message, param=param, code=code)
