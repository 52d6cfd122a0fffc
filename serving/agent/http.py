"""HTTP handlers of the agent endpoint (POST /v1/agent/completions), OpenAI tool calling on
/v1/chat/completions, and the self-verification mode (`"seekline": {"mode": "verify"}`), over
serving/app.py's Service. app.py routes to them; docs/serving.md, "Agent mode", "Tools",
"Self-verification", documents the shapes.
"""
from __future__ import annotations

import asyncio
import json
import random
import time

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from serving.agent.api import (
    AgentRequest,
    ChatExtensions,
    load_object,
    prompt_tools,
    reply_to_message,
    tool_messages,
    validate,
)
from serving.agent.loop import (
    ContextFullError,
    StepTimeoutError,
    run_loop,
    system_message,
)
from serving.agent.protocol import STOP
from serving.agent.verify import parse_confidence as parse_confidence  # noqa: F401 - re-exported for tests
from serving.agent.verify import self_verify, with_cot
from serving.errors import APIError, bad_request, error_body
from serving.prompts import Message
from serving.protocol import stop_list

SEED_MOD = 2**31 - 1


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _messages(msgs) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in msgs]


def _plain(m, i: int, controls) -> dict:
    """A client message of an agent request as the loop's {"role", "content"}: tool calling
    history belongs to /v1/chat/completions with tools, not here."""
    if m.role == "tool" or m.tool_calls:
        raise bad_request(f"messages[{i}]: the agent endpoint takes system / user / assistant text turns "
                          "(its own steps come back as such in `messages`)", param=f"messages[{i}].role")
    content = m.content
    if isinstance(content, list):
        content = "".join(p.text for p in content)
    if content is None:
        raise bad_request(f"messages[{i}].content is missing", param=f"messages[{i}].content")
    forged = [c for c in controls if c in content]
    if forged:      # checked here so the error names the client's index, not the system-prefixed one
        raise bad_request(f"messages[{i}].content contains the chat control token {forged[0]!r}; it would forge "
                          "a turn boundary", param=f"messages[{i}].content")
    return {"role": "system" if m.role == "developer" else m.role, "content": content}


def _timeout(svc) -> APIError:
    return APIError(504, f"the request did not finish within {svc.cfg.request_timeout_s:g} s",
                    code="timeout", type_="timeout_error")


# ---------------------------------------------------------------------------- agent endpoint
async def agent_completions(svc, request: Request, body: bytes, t0: float, rid: str, info: dict):
    from serving.app import DisconnectedError, RequestTimeoutError, Sampling

    req = validate(load_object(body), AgentRequest)
    svc.check_model(req.model)
    if not req.messages:
        raise bad_request("messages must contain at least one message", param="messages")
    cfg = svc.agent
    max_steps = req.max_steps or cfg.max_steps
    if max_steps > cfg.max_steps:
        raise bad_request(f"max_steps of {max_steps} exceeds this server's limit of {cfg.max_steps}", param="max_steps")
    time_limit = req.time_limit_s or cfg.time_limit_s
    if time_limit > cfg.time_limit_s:
        raise bad_request(f"time_limit_s of {time_limit:g} exceeds this server's limit of {cfg.time_limit_s:g}",
                          param="time_limit_s")
    tools = svc.agent_tools
    if req.tools is not None:
        unknown = [t for t in req.tools if t not in tools]
        if unknown:
            raise bad_request(f"tools: unknown tool {unknown[0]!r}; this server offers {', '.join(tools)}",
                              param="tools")
        if "finish" not in req.tools:
            raise bad_request("tools must include 'finish' (the agent ends by calling it)", param="tools")
        tools = {n: t for n, t in tools.items() if n in req.tools}
    plain = [_plain(m, i, svc.fmt.controls) for i, m in enumerate(req.messages)]
    client_system = "\n\n".join(m["content"] for m in plain if m["role"] == "system")
    convo = [system_message(tools, client_system or None)] + [m for m in plain if m["role"] != "system"]
    # The conversation as it is must fit with room for a step: a 400 now, not a stop_reason later.
    first = await asyncio.to_thread(svc.fmt.chat_ids, _messages(convo))
    step_tokens = svc.budget([first], req.max_tokens if req.max_tokens is not None else min(
        cfg.step_max_tokens, max(1, svc.context - len(first))), "messages", "max_tokens")
    sampling = Sampling(req.temperature, req.top_p, req.top_k, None)
    seed = req.seed if req.seed is not None else random.randrange(SEED_MOD)
    deadline = t0 + min(time_limit, svc.cfg.request_timeout_s)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    info.update(prompt_tokens=len(first), max_steps=max_steps, tools=list(tools))

    async def complete(messages: list[dict], step_seed: int) -> str:
        s = Sampling(sampling.temperature, sampling.top_p, sampling.top_k, step_seed % SEED_MOD)
        try:
            text, _ = await svc.complete_messages(_messages(messages), max_tokens=step_tokens, sampling=s, stops=STOP,
                                                  request=request, t0=t0, deadline=deadline, usage=usage)
        except RequestTimeoutError:
            raise StepTimeoutError() from None
        return text

    base = {"id": "agent-" + rid, "created": int(time.time()), "model": svc.name}

    def result_body(res) -> dict:
        info.update(steps=len(res.steps), stop_reason=res.stop_reason, completion_tokens=usage["completion_tokens"])
        return {**base, "object": "agent.completion", "answer": res.answer, "finished": res.finished,
                "stop_reason": res.stop_reason, "steps": res.steps, "counts": res.counts(),
                "messages": res.messages, "elapsed_s": round(res.elapsed_s, 3),
                "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}

    def run(on_step=None):
        return run_loop(complete, convo, tools, max_steps=max_steps, time_limit_s=time_limit, seed=seed,
                        on_step=on_step, clean=svc.clean)

    if not req.stream:
        try:
            res = await run()
        except DisconnectedError:
            info["disconnected"] = True
            raise APIError(499, "client closed the request", code="client_closed") from None
        return JSONResponse(result_body(res))

    info["stream"] = True
    queue: asyncio.Queue = asyncio.Queue()

    async def on_step(step):
        await queue.put(_sse({**base, "object": "agent.step", "step": step}))

    async def body_task():
        try:
            res = await run(on_step)
            await queue.put(_sse(result_body(res)))
        except DisconnectedError:
            info["disconnected"] = True
        except Exception as e:  # noqa: BLE001 — an engine failure ends the stream with an error event
            await queue.put(_sse(error_body(str(e), "server_error", None, "internal_error")))
        await queue.put(None)

    async def gen():
        task = asyncio.ensure_future(body_task())
        try:
            while (item := await queue.get()) is not None:
                yield item
            yield b"data: [DONE]\n\n"
        finally:
            task.cancel()           # client gone: the running step's engine row is cancelled too
            info.get("_log", lambda: None)()
    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------- chat + tools
async def chat_with_tools(svc, req, ext: ChatExtensions, request: Request, t0: float, rid: str, info: dict):
    """/v1/chat/completions with `tools`: one agent step per choice, mapped to OpenAI's shape."""
    from serving.app import collect

    tools = prompt_tools(ext)
    system = system_message(tools)["content"]
    msgs = tool_messages(req.messages, tools, system)
    prompt = await asyncio.to_thread(svc.fmt.chat_ids, msgs)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    mt_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    budget = svc.budget([prompt], max_tokens, "messages", mt_param)
    svc.check_n(req.n)
    if req.logprobs:
        raise bad_request("logprobs are not supported together with tools", param="logprobs",
                          code="unsupported_parameter")
    choices, queue = svc.start([prompt], req.n, req, budget, stop_list(req.stop) + STOP, svc.fmt.chat_stop_ids)
    info.update(prompt_tokens=len(prompt), n=req.n, max_tokens=budget, tools=len(tools) - 1)
    await collect(svc, choices, queue, request, t0, info)
    out = []
    for c in choices:
        message, finish = reply_to_message(c.text.text, tools)
        out.append({"index": c.index, "message": message, "logprobs": None,
                    "finish_reason": finish if c.finish == "stop" or finish == "tool_calls" else c.finish})
    info["finish"] = [o["finish_reason"] for o in out]
    base = {"id": "chatcmpl-" + rid, "created": int(time.time()), "model": svc.name}
    usage = svc.usage(choices, req.n)
    if not req.stream:
        return JSONResponse({**base, "object": "chat.completion", "choices": out, "usage": usage})
    # Streamed: a tool call is known only once the step is parsed, so the choice comes as whole
    # deltas (role, then content or tool_calls, then finish_reason), in OpenAI's chunk shapes.
    info["stream"] = True

    def chunk(i, delta, finish=None):
        return _sse({**base, "object": "chat.completion.chunk",
                     "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    async def gen():
        try:
            for o in out:
                yield chunk(o["index"], {"role": "assistant", "content": ""})
                m = o["message"]
                if m.get("tool_calls"):
                    if m["content"]:
                        yield chunk(o["index"], {"content": m["content"]})
                    yield chunk(o["index"], {"tool_calls": [{"index": k, **tc} for k, tc in enumerate(m["tool_calls"])]})
                elif m["content"]:
                    yield chunk(o["index"], {"content": m["content"]})
                yield chunk(o["index"], {}, o["finish_reason"])
            if (req.stream_options or {}).get("include_usage"):
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        finally:
            info.get("_log", lambda: None)()
    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------------- self-verification
async def chat_verify(svc, req, ext: ChatExtensions, request: Request, t0: float, rid: str, info: dict):
    """/v1/chat/completions with "seekline": {"mode": "verify", ...}."""
    from serving.app import DisconnectedError, RequestTimeoutError, Sampling, chat_message

    mode = ext.seekline
    if req.stream:
        raise bad_request("seekline.mode 'verify' does not stream (the answer is known after its checks)",
                          param="stream", code="unsupported_parameter")
    if req.n != 1:
        raise bad_request("seekline.mode 'verify' returns one choice (n must be 1)", param="n")
    if req.logprobs:
        raise bad_request("logprobs are not supported in seekline.mode 'verify'", param="logprobs",
                          code="unsupported_parameter")
    msgs = [chat_message(m, i) for i, m in enumerate(req.messages)]
    if any(m.tool_calls or m.role == "tool" for m in msgs):
        raise bad_request("seekline.mode 'verify' takes system / user / assistant text turns", param="messages")
    convo = [{"role": m.role, "content": m.content} for m in msgs]
    # the first answer's prompt (self_verify adds the instruction itself) must fit: a 400 now
    prompt = await asyncio.to_thread(svc.fmt.chat_ids, _messages(with_cot(convo)))
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    mt_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    budget = svc.budget([prompt], max_tokens, "messages", mt_param)
    stops = stop_list(req.stop)
    seed = req.seed if req.seed is not None else random.randrange(SEED_MOD)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    finishes: dict[int, str] = {}
    deadline = t0 + svc.cfg.request_timeout_s
    regen_t = req.temperature if req.temperature > 0 else mode.regen_temperature

    async def complete(messages: list[dict], k_seed: int, sample: bool, is_check: bool) -> str:
        s = Sampling(regen_t if sample else 0.0, req.top_p if sample else 1.0, req.top_k if sample else 0,
                     k_seed % SEED_MOD)
        try:
            text, finish = await svc.complete_messages(
                _messages(messages), max_tokens=mode.check_max_tokens if is_check else budget, sampling=s,
                stops=[] if is_check else stops, request=request, t0=t0, deadline=deadline, usage=usage)
        except ContextFullError:
            return ""      # no room for the check: unreadable, confidence 0
        if not is_check:
            finishes[k_seed] = finish
        return text

    try:
        res = await self_verify(complete, convo, threshold=mode.threshold, max_attempts=mode.max_attempts, seed=seed,
                                sample_first=req.temperature > 0)
    except RequestTimeoutError:
        raise _timeout(svc) from None
    except DisconnectedError:
        info["disconnected"] = True
        raise APIError(499, "client closed the request", code="client_closed") from None
    chosen = res.attempts[res.chosen]
    info.update(prompt_tokens=len(prompt), attempts=len(res.attempts), corrected=res.corrected,
                completion_tokens=usage["completion_tokens"])
    return JSONResponse({
        "id": "chatcmpl-" + rid, "object": "chat.completion", "created": int(time.time()), "model": svc.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": res.answer}, "logprobs": None,
                     "finish_reason": "stop" if finishes.get(chosen["seed"]) == "stop" else "length"}],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        "seekline": {"mode": "verify", "threshold": mode.threshold, "max_attempts": mode.max_attempts,
                     "attempts": res.attempts, "confidences": res.confidences, "chosen": res.chosen,
                     "corrected": res.corrected}})
