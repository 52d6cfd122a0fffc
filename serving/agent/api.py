"""Request bodies of the agent endpoint and of the chat extensions (OpenAI `tools`, the
`seekline` mode object), and the conversion between OpenAI tool calling and the agent's
Thought / Action / Observation protocol.

OpenAI tools on /v1/chat/completions: the client's function definitions are described to the
model in the agent system prompt (the one trajectory generation and agent distillation use),
its history is written in the same protocol (an assistant `tool_calls` turn is a Thought +
Action step, a `role: "tool"` result is an "Observation: ..." turn), and the model's reply is
parsed as one step: an Action naming a client function comes back as `tool_calls`
(finish_reason "tool_calls"); `finish` (always offered) or a reply without an Action is the
answer text. serving/protocol.py refuses `tools` on plain chat; app.py takes these fields out
of the body first (split_chat_body) and hands the rest to it.
"""
from __future__ import annotations

import json
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.agent.protocol import neutralise_labels, parse_reply, step_text
from serving.errors import bad_request
from serving.prompts import Message
from serving.protocol import ChatMessage, _got, _param, load_object

RESERVED = ("finish",)       # the agent protocol's own end-of-task tool
MAX_TOOLS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict = Field(default_factory=dict)


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class VerifyMode(_Strict):
    mode: Literal["verify"]
    threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_attempts: int = Field(3, ge=1, le=8)
    check_max_tokens: int = Field(64, ge=1)          # tokens of each self-check reply
    regen_temperature: float = Field(0.8, gt=0.0, le=2.0)   # regenerations of a greedy request sample at this


class ChatExtensions(_Strict):
    tools: list[ToolSpec] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict | None = None
    seekline: VerifyMode | None = None


class AgentRequest(_Strict):
    """POST /v1/agent/completions."""
    model: str
    messages: list[ChatMessage]
    max_steps: int | None = Field(None, ge=1)            # default / cap: the server's agent settings
    time_limit_s: float | None = Field(None, gt=0)
    tools: list[str] | None = None                       # a subset of the server's tools (names)
    max_tokens: int | None = None                        # per step
    temperature: float = Field(0.0, ge=0.0, le=2.0)      # greedy by default: tool calls should be stable
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    seed: int | None = None
    stream: bool = False




def validate(data: dict, cls: type[BaseModel]):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _param(err["loc"])
        raise bad_request(f"{where}: {err['msg']}" + _got(err), param=where) from None


def split_chat_body(body: bytes) -> tuple[bytes, ChatExtensions]:
    """A chat body -> (the body without tools / tool_choice / seekline, those fields validated).
    With no extension field present the original bytes come back untouched."""
    data = load_object(body)
    keys = ("tools", "tool_choice", "parallel_tool_calls", "seekline")
    if not any(k in data for k in keys):
        return body, ChatExtensions()
    ext = validate({k: data.pop(k) for k in keys if k in data}, ChatExtensions)
    if ext.tool_choice not in (None, "auto", "none"):
        raise bad_request(f"tool_choice: only 'auto' and 'none' are supported (got {json.dumps(ext.tool_choice)[:60]}; "
                          "'required' and forced functions are not)", param="tool_choice", code="unsupported_parameter")
    names = [t.function.name for t in ext.tools or []]
    for i, n in enumerate(names):
        if n in RESERVED:
            raise bad_request(f"tools[{i}].function.name {n!r} is reserved (the agent protocol's final-answer "
                              "tool)", param=f"tools[{i}].function.name")
        if n in names[:i]:
            raise bad_request(f"tools[{i}].function.name {n!r} is defined twice", param=f"tools[{i}].function.name")
    if ext.seekline is not None and ext.tools:
        raise bad_request("seekline.mode 'verify' cannot be combined with tools", param="seekline")
    return json.dumps(data, ensure_ascii=False).encode("utf-8"), ext


class ClientTool:
    """A client's function as the agent prompt describes it (the server never runs it)."""

    def __init__(self, spec: FunctionSpec):
        self.name = spec.name
        desc = spec.description.strip() or "(no description)"
        params = json.dumps(spec.parameters, ensure_ascii=False, separators=(",", ":"))
        self.description = f"{desc} Arguments: a JSON object with this JSON schema: {params}"


class FinishDescription:
    name = "finish"
    description = 'Give the final answer to the user and stop. Arguments: {"answer": str}.'


def prompt_tools(ext: ChatExtensions) -> dict:
    """{name: describable tool}: the client's functions, then finish (as build_tools orders it)."""
    tools = {t.function.name: ClientTool(t.function) for t in ext.tools or []}
    tools["finish"] = FinishDescription()
    return tools


def tool_messages(messages: list[ChatMessage], tools: dict, system_text: str) -> list[Message]:
    """Client messages (with assistant tool_calls and tool results) -> the agent conversation:
    the agent system prompt (+ the client's system text), assistant tool_calls turns as
    Thought / Action steps, tool results as "Observation: ..." user turns. A tool message that
    answers no earlier call, or names an unknown tool_call_id, is a 400."""
    out: list[Message] = []
    client_system = []
    open_ids: set[str] = set()
    last_calls = False
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        content = content or ""
        if m.role in ("system", "developer"):
            client_system.append(content)
            continue
        if m.role == "tool":
            if not last_calls:
                raise bad_request(f"messages[{i}]: a tool message must follow an assistant message with tool_calls",
                                  param=f"messages[{i}].role")
            tcid = (m.model_extra or {}).get("tool_call_id")
            if tcid is not None and tcid not in open_ids:
                raise bad_request(f"messages[{i}].tool_call_id {tcid!r} answers no earlier tool call",
                                  param=f"messages[{i}].tool_call_id")
            out.append(Message("user", "Observation: " + neutralise_labels(content)))
            continue
        last_calls = False
        if m.role == "assistant" and m.tool_calls:
            steps = []
            open_ids = set()
            for j, tc in enumerate(m.tool_calls):
                where = f"messages[{i}].tool_calls[{j}]"
                try:
                    args = json.loads(tc.function.arguments or "{}")
                except json.JSONDecodeError:
                    raise bad_request(f"{where}.function.arguments is not JSON", param=f"{where}.function.arguments") \
                        from None
                if not isinstance(args, dict):
                    raise bad_request(f"{where}.function.arguments must be a JSON object",
                                      param=f"{where}.function.arguments")
                if tc.function.name not in tools:
                    raise bad_request(f"{where}.function.name {tc.function.name!r} is not one of the request's tools",
                                      param=f"{where}.function.name")
                call = {"name": tc.function.name, "arguments": args}
                steps.append(step_text(content, call) if j == 0 else f"Action: {json.dumps(call, ensure_ascii=False)}\n")
                if (tcid := (tc.model_extra or {}).get("id")) is not None:
                    open_ids.add(str(tcid))
            out.append(Message("assistant", "".join(steps).rstrip("\n")))
            last_calls = True
            continue
        if m.content is None:
            raise bad_request(f"messages[{i}].content is missing", param=f"messages[{i}].content")
        out.append(Message(m.role, content))
    system = system_text + ("\n\n" + "\n\n".join(client_system) if any(client_system) else "")
    return [Message("system", system), *out]


def reply_to_message(reply: str, tools: dict) -> tuple[dict, str]:
    """One model reply -> (the OpenAI assistant message, finish_reason). An Action naming one of
    the client's functions is a tool call ("tool_calls"); `finish` is the answer ("stop"); no
    parseable Action, or an Action naming an unknown tool, is the reply's text ("stop": the
    client has nothing to run, and its tools are not to be called under a name it never defined)."""
    thought, action, _ = parse_reply(reply)
    if action is not None and action["name"] in tools and action["name"] not in RESERVED:
        call = {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                "function": {"name": action["name"],
                             "arguments": json.dumps(action["arguments"], ensure_ascii=False)}}
        return {"role": "assistant", "content": thought or None, "tool_calls": [call]}, "tool_calls"
    if action is not None and action["name"] == "finish" and isinstance(action["arguments"].get("answer"), str):
        return {"role": "assistant", "content": action["arguments"]["answer"]}, "stop"
    return {"role": "assistant", "content": reply.strip()}, "stop"
