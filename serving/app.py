"""The FastAPI app: OpenAI-compatible endpoints over the continuous-batching engine.

POST /v1/chat/completions, POST /v1/completions (both non-streaming and SSE streaming ending
with `data: [DONE]`), GET /v1/models[/{id}], GET /health, GET /metrics (Prometheus); the agent
features (POST /v1/agent/completions, chat `tools` / `tool_calls`, the `seekline` verify mode)
are handled in serving/agent/http.py over this module's Service.
Every refusal is a 4xx (or 503 busy / 504 timeout) JSON body in OpenAI's error shape; the body is
read and parsed here (not by FastAPI's validation) so bad JSON, invalid UTF-8 and wrong types
get a 400 naming the field rather than a 422. Checks, in order: API key (401), rate limit (429 +
Retry-After), body size (413), body (400), model name (404), token limits (400).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import logs
from serving.agent.api import split_chat_body
from serving.agent.config import AgentConfig, build_agent_tools
from serving.agent.loop import ContextFullError
from serving.config import ServerConfig
from serving.engine import Engine, Params, QueueFullError, Token
from serving.engine import Request as EngineRequest
from serving.errors import APIError, bad_request, error_body
from serving.prompts import Message, PromptFormat
from serving.protocol import ChatRequest, CompletionRequest, not_found, parse, stop_list
from serving.ratelimit import RateLimiter, retry_after_header
from serving.text import TextStream

SEED_MOD = 2**31 - 1


class DisconnectedError(Exception):
    """The client went away while its request was generating."""


class RequestTimeoutError(Exception):
    """A generation ran past its deadline (the request timeout, or an agent request's time limit)."""


@dataclass(frozen=True)
class Sampling:
    """Per-row sampling of an internal generation (agent steps, self-checks)."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


@dataclass
class _Choice:
    index: int
    prompt_len: int
    text: TextStream
    req: EngineRequest | None = None
    tokens: list = field(default_factory=list)          # (id, logprob, top) per emitted token
    finish: str | None = None
    first_at: float | None = None


class Service:
    """Everything a request needs: engine, prompt format, settings, limits, metrics."""

    def __init__(self, engine: Engine, fmt: PromptFormat, cfg: ServerConfig, model_name: str, context: int,
                 agent: AgentConfig | None = None, agent_tools: dict | None = None):
        self.engine, self.fmt, self.cfg, self.name = engine, fmt, cfg, model_name
        # Agent mode: settings and the tools (python + finish, + retrieve over a --corpus), built
        # once; without a corpus the default tools cost nothing until a request runs one.
        self.agent = agent or AgentConfig()
        self.agent_tools = agent_tools if agent_tools is not None else build_agent_tools(self.agent)
        self.context = min(context, engine.s)
        self.created = int(time.time())
        self.limiter = RateLimiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst)
        self.keys = set(cfg.api_keys)
        r = self.registry = CollectorRegistry()
        self.m_requests = Counter("seekline_requests", "HTTP requests by endpoint and status",
                                  ["endpoint", "status"], registry=r)
        self.m_latency = Histogram("seekline_request_seconds", "request latency", ["endpoint"], registry=r,
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.m_ttft = Histogram("seekline_time_to_first_token_seconds", "time to the first token", registry=r,
                                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.m_prompt = Counter("seekline_prompt_tokens", "prompt tokens", registry=r)
        self.m_completion = Counter("seekline_completion_tokens", "generated tokens", registry=r)
        g = Gauge("seekline_active_slots", "batch rows generating now", registry=r)
        g.set_function(lambda: engine.active)
        g = Gauge("seekline_waiting_requests", "requests waiting for a slot", registry=r)
        g.set_function(lambda: engine.waiting)
        g = Gauge("seekline_batch_slots", "batch rows (max_batch_size)", registry=r)
        g.set(engine.b)

    # ------------------------------------------------------------------ guards
    def authenticate(self, request: Request) -> str:
        """-> the caller's identity for rate limiting (its key, or its address on an open server)."""
        if not self.keys:
            return "ip:" + (request.client.host if request.client else "?")
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                           type_="authentication_error")
        if key not in self.keys:
            raise APIError(401, "invalid API key", code="invalid_api_key", type_="authentication_error")
        return "key:" + key

    def rate_limit(self, who: str) -> None:
        wait = self.limiter.acquire(who)
        if wait > 0:
            raise APIError(429, f"rate limit of {self.cfg.rate_limit_per_minute:g} requests/minute "
                           f"(burst {self.cfg.rate_limit_burst}) reached; retry in {wait:.1f} s",
                           code="rate_limit_exceeded", type_="rate_limit_error",
                           headers={"Retry-After": retry_after_header(wait)})

    async def read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_n(self, n: int) -> None:
        if n > self.cfg.max_n:
            raise bad_request(f"n of {n} choices exceeds this server's limit of {self.cfg.max_n}", param="n")

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise not_found(f"model {name!r} does not exist; this server serves {self.name!r}", param="model")

    def budget(self, prompts: list[list[int]], max_tokens: int | None, param: str, mt_param: str) -> int:
        """max_tokens for these prompts, or a 400: prompt longer than the context, absurd max_tokens."""
        longest = max(len(p) for p in prompts)
        if longest >= self.context:
            raise bad_request(f"{param}: the prompt has {longest} tokens; the model's context is {self.context} "
                              "tokens (prompt + completion)", param=param, code="context_length_exceeded")
        if max_tokens is None:
            return min(self.cfg.default_max_tokens, self.context - longest)
        if max_tokens < 1:
            raise bad_request(f"{mt_param} must be at least 1 (got {max_tokens})", param=mt_param)
        if max_tokens > self.context:
            raise bad_request(f"{mt_param} of {max_tokens} exceeds the model's context of {self.context} tokens",
                              param=mt_param)
        if longest + max_tokens > self.context:
            raise bad_request(f"{param}: the prompt has {longest} tokens and {mt_param} is {max_tokens}: "
                              f"together more than the model's context of {self.context} tokens",
                              param=mt_param, code="context_length_exceeded")
        return max_tokens

    # ------------------------------------------------------------------ generation
    def start(self, prompts: list[list[int]], n: int, req, max_tokens: int, stops: list[str], stop_ids):
        """Submit n choices per prompt to the engine -> (choices, event queue). `req`: anything
        with temperature / top_p / top_k / seed (a request body, or Sampling)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        choices, submitted = [], []
        seed0 = req.seed if req.seed is not None else random.randrange(SEED_MOD)
        for p in prompts:
            for _ in range(n):
                c = _Choice(len(choices), len(p), TextStream(self.fmt.decode, stops))
                params = Params(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                top_k=req.top_k, seed=(seed0 + c.index) % SEED_MOD, stop_ids=frozenset(stop_ids))

                def emit(t: Token, i=c.index):
                    loop.call_soon_threadsafe(queue.put_nowait, (i, t))
                c.req = EngineRequest(p, params, emit)
                choices.append(c)
        try:
            for c in choices:
                self.engine.submit(c.req)
                submitted.append(c.req)
        except QueueFullError as e:
            for r in submitted:
                r.cancel()
            raise APIError(503, f"server busy: {e}; retry later", code="server_busy", type_="server_error",
                           headers={"Retry-After": "1"}) from None
        self.m_prompt.inc(sum(len(p) for p in prompts) * n)
        return choices, queue

    async def events(self, choices, queue, request: Request, t0: float, deadline: float | None = None):
        """Yield (choice, text delta, token entry | None) until every choice has finished; cancels
        the engine rows on disconnect, timeout (t0 + request_timeout_s, or an earlier `deadline`)
        or a stop string."""
        deadline = min(t0 + self.cfg.request_timeout_s, deadline if deadline is not None else float("inf"))
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            while any(c.finish is None for c in choices):
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, watcher}, timeout=max(0.0, deadline - time.perf_counter()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    raise DisconnectedError() if watcher in done else RequestTimeoutError()
                i, t = get.result()
                c = choices[i]
                if c.finish is not None:        # already ended by a stop string
                    continue
                if t.token is not None:
                    if c.first_at is None:
                        c.first_at = time.perf_counter()
                        self.m_ttft.observe(c.first_at - t0)
                    entry = (t.token, t.logprob, t.top)
                    c.tokens.append(entry)
                    delta = c.text.push(t.token)
                    if c.text.stopped:
                        c.req.cancel()
                        c.finish = "stop"
                    yield c, delta, entry
                    continue
                if t.finish == "error":
                    raise RuntimeError(f"generation failed: {t.error}")
                c.finish = "stop" if t.finish == "stop" else "length"
                yield c, c.text.flush(), None
        finally:
            watcher.cancel()
            for c in choices:
                if c.finish is None or c.text.stopped:
                    c.req.cancel()
            self.m_completion.inc(sum(c.req.generated for c in choices))

    def usage(self, choices, n: int) -> dict:
        """Prompt tokens count once per prompt (not per choice); completion tokens include the stop
        token a row ended with (it was generated)."""
        prompt = sum(c.prompt_len for c in choices[::n])
        completion = sum(c.req.generated for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # ------------------------------------------------------------------ internal generations
    async def complete_messages(self, messages: list[Message], *, max_tokens: int, sampling: Sampling,
                                stops: list[str], request: Request, t0: float, deadline: float,
                                usage: dict) -> tuple[str, str]:
        """One chat generation for the agent loop / self-verification -> (text, finish).
        Raises ContextFullError when the conversation leaves no room to generate (max_tokens is
        cut to the room left), RequestTimeoutError past `deadline`, DisconnectedError."""
        prompt = await asyncio.to_thread(self.fmt.chat_ids, messages)
        room = self.context - len(prompt)
        if room < 1:
            raise ContextFullError(f"the conversation has {len(prompt)} tokens; the context is {self.context}")
        choices, queue = self.start([prompt], 1, sampling, min(max_tokens, room), stops, self.fmt.chat_stop_ids)
        usage["prompt_tokens"] += len(prompt)
        try:
            async for _ in self.events(choices, queue, request, t0, deadline):
                pass
        finally:
            usage["completion_tokens"] += choices[0].req.generated
        return choices[0].text.text, choices[0].finish

    def clean(self, text: str) -> str:
        """Text the server writes into a conversation (tool output, a model's step) with every
        chat-template control string broken by a zero-width space: a program that prints
        "<|user|>" must not forge a turn, nor make the next request a 400."""
        for c in self.fmt.controls:
            if c in text:
                text = text.replace(c, c[:1] + "\u200b" + c[1:])
        return text

    # ------------------------------------------------------------------ logprobs shapes
    def chat_logprobs(self, entries, top_n: int) -> dict:
        out = []
        f = self.fmt
        for tok, lp, top in entries:
            out.append({"token": f.token_text(tok), "logprob": lp, "bytes": list(f.token_bytes(tok)),
                        "top_logprobs": [{"token": f.token_text(i), "logprob": v, "bytes": list(f.token_bytes(i))}
                                         for i, v in top[:top_n]]})
        return {"content": out}

    def completion_logprobs(self, entries, top_n: int, offset0: int = 0) -> dict:
        tokens, lps, tops, offs = [], [], [], []
        at = offset0
        for tok, lp, top in entries:
            s = self.fmt.token_text(tok)
            tokens.append(s)
            lps.append(lp)
            tops.append({self.fmt.token_text(i): v for i, v in top[:top_n]})
            offs.append(at)
            at += len(s)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs}


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read: the next ASGI message is the
    disconnect)."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def create_app(svc: Service) -> FastAPI:
    from serving.agent import http as agent_http  # imported here: it uses this module's helpers

    app = FastAPI(title="seekline", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {e.detail}",
                                       "invalid_request_error", None, code), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        logs.event("internal error", 40, path=request.url.path, error=f"{type(e).__name__}: {e}")
        return JSONResponse(error_body("internal server error", "server_error", None, "internal_error"),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": svc.name, "active": svc.engine.active, "waiting": svc.engine.waiting,
                "slots": svc.engine.b}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(svc.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card():
        return {"id": svc.name, "object": "model", "created": svc.created, "owned_by": "seekline",
                "context_length": svc.context}

    @app.get("/v1/models")
    async def models(request: Request):
        svc.rate_limit(svc.authenticate(request))
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        svc.rate_limit(svc.authenticate(request))
        svc.check_model(model_id)
        return model_card()

    async def guarded(request: Request, endpoint: str, handler):
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:24]
        who, status, info, streaming = "?", 200, {}, False

        def log_line():
            fields = {k: v for k, v in info.items() if not k.startswith("_")}
            logs.event("request", id=rid, endpoint=endpoint, status=status, who=_mask(who),
                       ms=logs.now_ms(t0), **fields)
        try:
            who = svc.authenticate(request)
            svc.rate_limit(who)
            body = await svc.read_body(request)
            resp = await handler(request, body, t0, rid, info)
            status = resp.status_code
            streaming = isinstance(resp, StreamingResponse)
            info["_log"] = log_line      # a stream logs when it ends (tokens, finish, disconnect)
            return resp
        except APIError as e:
            status = e.status
            info["error"] = e.message
            raise
        except Exception:
            status = 500
            raise
        finally:
            svc.m_requests.labels(endpoint, str(status)).inc()
            if not streaming:
                svc.m_latency.labels(endpoint).observe(time.perf_counter() - t0)
                log_line()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await guarded(request, "chat", _chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await guarded(request, "completions", _completions)

    @app.post("/v1/agent/completions")
    async def agent(request: Request):
        return await guarded(request, "agent", lambda *a: agent_http.agent_completions(svc, *a))

    async def _chat(request, body, t0, rid, info):
        # tools / tool_choice / seekline are this server's agent features (serving/agent/http.py):
        # taken out of the body before the plain chat checks, which refuse `tools`.
        body, ext = split_chat_body(body)
        req = parse(body, ChatRequest)
        svc.check_model(req.model)
        if not req.messages:
            raise bad_request("messages must contain at least one message", param="messages")
        if ext.tools and ext.tool_choice != "none":
            return await agent_http.chat_with_tools(svc, req, ext, request, t0, rid, info)
        if ext.seekline is not None:
            return await agent_http.chat_verify(svc, req, ext, request, t0, rid, info)
        msgs = [chat_message(m, i) for i, m in enumerate(req.messages)]
        prompt = await asyncio.to_thread(svc.fmt.chat_ids, msgs)      # a 1 MB body: keep the loop free
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        mt_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        budget = svc.budget([prompt], max_tokens, "messages", mt_param)
        svc.check_n(req.n)
        top_n = req.top_logprobs or 0
        if top_n and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        choices, queue = svc.start([prompt], req.n, req, budget, stop_list(req.stop), svc.fmt.chat_stop_ids)
        info.update(prompt_tokens=len(prompt), n=req.n, max_tokens=budget)
        base = {"id": "chatcmpl-" + rid, "created": int(time.time()), "model": svc.name}
        if req.stream:
            info["stream"] = True

            def chunk(c, delta, entry, finish=None):
                ch = {"index": c.index, "delta": delta, "logprobs": None, "finish_reason": finish}
                if req.logprobs and entry is not None:
                    ch["logprobs"] = svc.chat_logprobs([entry], top_n)
                return {**base, "object": "chat.completion.chunk", "choices": [ch]}

            async def gen():
                for c in choices:
                    yield _sse(chunk(c, {"role": "assistant", "content": ""}, None))
                async for data in _stream(svc, choices, queue, request, t0, info, req,
                                          lambda c, d, e: chunk(c, {"content": d} if d else {}, e),
                                          lambda c: chunk(c, {}, None, c.finish), base, "chat.completion.chunk"):
                    yield data
            return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        await collect(svc, choices, queue, request, t0, info)
        out = []
        for c in choices:
            ch = {"index": c.index, "message": {"role": "assistant", "content": c.text.text},
                  "logprobs": svc.chat_logprobs(c.tokens, top_n) if req.logprobs else None,
                  "finish_reason": c.finish}
            out.append(ch)
        return JSONResponse({**base, "object": "chat.completion", "choices": out, "usage": svc.usage(choices, req.n)})

    async def _completions(request, body, t0, rid, info):
        req = parse(body, CompletionRequest)
        svc.check_model(req.model)
        prompts = await asyncio.to_thread(_prompts, req.prompt, svc)
        budget = svc.budget(prompts, req.max_tokens, "prompt", "max_tokens")
        svc.check_n(req.n * len(prompts))
        top_n = req.logprobs or 0
        choices, queue = svc.start(prompts, req.n, req, budget, stop_list(req.stop), svc.fmt.eos_ids)
        info.update(prompt_tokens=sum(len(p) for p in prompts) * req.n, n=len(choices), max_tokens=budget)
        base = {"id": "cmpl-" + rid, "created": int(time.time()), "model": svc.name}
        want_lp = req.logprobs is not None
        if req.stream:
            info["stream"] = True

            def chunk(c, text, entry, finish=None):
                lp = svc.completion_logprobs([entry], top_n) if want_lp and entry is not None else None
                return {**base, "object": "text_completion",
                        "choices": [{"index": c.index, "text": text, "logprobs": lp, "finish_reason": finish}]}

            async def gen():
                async for data in _stream(svc, choices, queue, request, t0, info, req,
                                          lambda c, d, e: chunk(c, d, e), lambda c: chunk(c, "", None, c.finish),
                                          base, "text_completion"):
                    yield data
            return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        await collect(svc, choices, queue, request, t0, info)
        out = [{"index": c.index, "text": c.text.text,
                "logprobs": svc.completion_logprobs(c.tokens, top_n) if want_lp else None,
                "finish_reason": c.finish} for c in choices]
        return JSONResponse({**base, "object": "text_completion", "choices": out, "usage": svc.usage(choices, req.n)})

    return app




async def collect(svc: Service, choices, queue, request, t0, info) -> None:
    try:
        async for _ in svc.events(choices, queue, request, t0):
            pass
    except RequestTimeoutError:
        raise APIError(504, f"the request did not finish within {svc.cfg.request_timeout_s:g} s",
                       code="timeout", type_="timeout_error") from None
    except DisconnectedError:
        info["disconnected"] = True
        raise APIError(499, "client closed the request", code="client_closed") from None
    info.update(completion_tokens=sum(c.req.generated for c in choices),
                finish=[c.finish for c in choices])


async def _stream(svc, choices, queue, request, t0, info, req, delta_chunk, finish_chunk, base, obj):
    """SSE body: content deltas (and their logprobs), one finish chunk per choice, the usage chunk
    when stream_options.include_usage, then [DONE]."""
    try:
        async for data in _stream_events(svc, choices, queue, request, t0, info, req, delta_chunk, finish_chunk,
                                         base, obj):
            yield data
    finally:
        info.get("_log", lambda: None)()


async def _stream_events(svc, choices, queue, request, t0, info, req, delta_chunk, finish_chunk, base, obj):
    want_lp = req.logprobs not in (None, False)
    try:
        async for c, delta, entry in svc.events(choices, queue, request, t0):
            if delta or (want_lp and entry is not None):
                yield _sse(delta_chunk(c, delta, entry))
            if c.finish is not None:
                yield _sse(finish_chunk(c))
        if (req.stream_options or {}).get("include_usage"):
            yield _sse({**base, "object": obj, "choices": [], "usage": svc.usage(choices, req.n)})
        info.update(completion_tokens=sum(c.req.generated for c in choices), finish=[c.finish for c in choices])
    except RequestTimeoutError:
        info["timeout"] = True
        yield _sse(error_body(f"the request did not finish within {svc.cfg.request_timeout_s:g} s",
                              "timeout_error", None, "timeout"))
    except DisconnectedError:
        info["disconnected"] = True
        return
    except RuntimeError as e:
        yield _sse(error_body(str(e), "server_error", None, "internal_error"))
    yield b"data: [DONE]\n\n"
    svc.m_latency.labels("stream").observe(time.perf_counter() - t0)


def chat_message(m, i: int) -> Message:
    content = m.content
    if isinstance(content, list):
        content = "".join(p.text for p in content)
    if content is None and not m.tool_calls:
        raise bad_request(f"messages[{i}].content is missing", param=f"messages[{i}].content")
    calls = []
    for j, tc in enumerate(m.tool_calls or []):
        try:
            args = json.loads(tc.function.arguments or "{}")
        except json.JSONDecodeError:
            raise bad_request(f"messages[{i}].tool_calls[{j}].function.arguments is not JSON",
                              param=f"messages[{i}].tool_calls[{j}].function.arguments") from None
        calls.append((tc.function.name, args))
    if calls and m.role != "assistant":
        raise bad_request(f"messages[{i}]: only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls")
    role = "system" if m.role == "developer" else m.role
    return Message(role, content or "", tuple(calls))


def _prompts(prompt, svc: Service) -> list[list[int]]:
    """OpenAI's prompt forms: a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    out = []
    vocab = svc.engine.model.cfg.vocab_size
    for i, p in enumerate(prompt):
        ids = svc.fmt.completion_ids(p) if isinstance(p, str) else list(p)
        if not ids:
            raise bad_request(f"prompt[{i}] is empty", param="prompt")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"prompt[{i}]: token id {bad[0]} is outside the vocabulary [0, {vocab})",
                              param="prompt")
        out.append(ids)
    return out


def _mask(who: str) -> str:
    if who.startswith("key:"):
        key = who[4:]
        return "key:" + (key[:4] + "…" if len(key) > 12 else "…")
    return who
