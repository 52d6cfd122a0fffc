"""A loopback OpenAI-compatible chat-completions server for tests and local runs.

``FakeChatEndpoint`` serves ``POST {base_url}/chat/completions`` from a ``ThreadingHTTPServer`` in
a daemon thread on 127.0.0.1 (port 0 = an ephemeral port). Each request takes the next
``Reply`` from a script; when the script is used up, every further request gets the default
reply. A reply is one behaviour a real endpoint shows:

- ``ok``         200 with a chat.completion body; ``content`` is the answer (``None`` = the
                 responder callable decides), cut before the request's first stop string the way
                 OpenAI-compatible servers do (the stop string itself is not returned);
- ``status``     an error status (429, 500, 503, 400, ...) with an OpenAI-style error body and,
                 when given, a ``Retry-After`` header;
- ``malformed``  200, ``Content-Type: application/json``, a body that is not JSON;
- ``no_choices`` 200 with a well-formed body whose ``choices`` list is missing;
- ``no_content`` 200 with a choice whose ``message.content`` is null.

Any reply may first sleep ``delay_s`` (a slow reply: past the client's timeout it is a timeout).
Every request body is recorded (``.requests``) with its headers (names lower-cased), so tests can check what the
client sent. Usage numbers are rough (whitespace-separated words), enough for accounting tests.

Run it by hand for a local teacher:  ``python -m components.agent.fake_endpoint --port 8000``
(answers every request with ``--reply``).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("ok", "status", "malformed", "no_choices", "no_content")


@dataclass(frozen=True)
class Reply:
    kind: str = "ok"
    content: str | None = None          # ok: the answer; None = ask the endpoint's responder
    status: int = 500                   # status: the HTTP status
    retry_after: str | None = None      # status: the Retry-After header value (seconds or an HTTP date)
    delay_s: float = 0.0                # sleep before answering (slow replies)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Reply.kind must be one of {', '.join(KINDS)} (got {self.kind!r})")


def echo_responder(body: dict) -> str:
    """The default answer: the last message's content, prefixed so it is recognisable."""
    msgs = body.get("messages") or [{}]
    return "echo: " + str(msgs[-1].get("content", ""))


def _cut_at_stop(text: str, stop) -> str:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def _words(messages) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages or [])


class FakeChatEndpoint:
    """Context manager: ``with FakeChatEndpoint([Reply("status", status=429, retry_after="2"), Reply()]) as ep:``
    then point a client at ``ep.base_url``."""

    def __init__(self, script: Iterable[Reply] = (), *, default: Reply = Reply(),
                 responder: Callable[[dict], str] = echo_responder, host: str = "127.0.0.1", port: int = 0):
        self._script = list(script)
        self.default = default
        self.responder = responder
        self.requests: list[dict] = []          # {"path", "headers", "body"} per request, in arrival order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}/v1"

    def start(self) -> FakeChatEndpoint:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-chat-endpoint", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeChatEndpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def push(self, *replies: Reply) -> None:
        """Append replies to the script (served before the default)."""
        with self._lock:
            self._script.extend(replies)

    def _next(self, request: dict) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self._script.pop(0) if self._script else self.default

    def _handler_class(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read .requests instead
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass    # the client gave up (its timeout) while we slept: nothing to answer

            def do_POST(self):  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                reply = endpoint._next({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body})
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, json.dumps({"error": {"message": f"no route {self.path}",
                                                                 "type": "not_found"}}).encode())
                if reply.kind == "status":
                    headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
                    err = {"error": {"message": f"fake endpoint: status {reply.status}", "type": "fake",
                                     "code": reply.status}}
                    return self._send(reply.status, json.dumps(err).encode(), headers)
                if reply.kind == "malformed":
                    return self._send(200, b'{"id": "chatcmpl-fake", "choices": [{"message": ')
                content = reply.content if reply.content is not None else endpoint.responder(body)
                content = _cut_at_stop(content, body.get("stop"))
                doc = {"id": f"chatcmpl-fake-{len(endpoint.requests)}", "object": "chat.completion",
                       "created": int(time.time()), "model": body.get("model", "fake"),
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant",
                                                "content": None if reply.kind == "no_content" else content}}],
                       "usage": {"prompt_tokens": _words(body.get("messages")),
                                 "completion_tokens": len(content.split()),
                                 "total_tokens": _words(body.get("messages")) + len(content.split())}}
                if reply.kind == "no_choices":
                    del doc["choices"]
                self._send(200, json.dumps(doc).encode())

        return Handler


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="A loopback OpenAI-compatible chat-completions endpoint.")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--reply", default=None, help="answer every request with this text (default: echo)")
    a = p.parse_args(argv)
    ep = FakeChatEndpoint(default=Reply(content=a.reply), port=a.port).start()
    print(f"serving {ep.base_url}/chat/completions (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ep.close()


if __name__ == "__main__":
    main()
