"""The OpenAI-compatible server over real HTTP on loopback (uvicorn in a thread, started here),
driven by the official `openai` client and raw httpx.

References come from outside the server: the prompt ids from components' chat template /
tokenizer, the completions from model.generation.generate on the same ids (alone), logprobs from
the model's full forward.
"""
import json
import os
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from model.generation import GenerationConfig, generate
from serving.config import ServerConfig
from serving.ratelimit import RateLimiter
from serving.server import ThreadServer, build_service

KEY = "sk-test-1"
NAME = "tiny-chat"
CTX = 192          # the model's context (max_position_embeddings)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from components.grpo.testdata import grpo_model_dir

    d = grpo_model_dir(str(tmp_path_factory.mktemp("serve")), seq=CTX)
    with open(os.path.join(d, "seekline_phase.json"), "w") as f:
        json.dump({"phase": "sft", "chat_template": "seekline"}, f)
    return d


@pytest.fixture(scope="module")
def server(model_dir):
    cfg = ServerConfig(api_keys=(KEY, "sk-test-2"), model_name=NAME, max_batch_size=4, max_body_bytes=20_000,
                       rate_limit_per_minute=6000, rate_limit_burst=1000)
    svc = build_service(model_dir, cfg)
    with ThreadServer(svc, cfg) as srv:
        yield srv
    svc.engine.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(model_dir, server):
    """Independent encoders: components' seekline chat template and the project tokenizer."""
    from components.sft.chat_template import get_template
    from components.sft.formats import Message
    from components.tokenizer.tokenizer import load, load_meta

    tpl = get_template("seekline", model_dir)
    tok = load(model_dir)
    meta = load_meta(model_dir)

    class Ref:
        model = server.svc.engine.model
        eos = meta["eos_id"]
        end_of_turn = tok.token_to_id("<|end_of_turn|>")

        def chat_ids(self, messages):
            return tpl.encode_prompt([Message(m["role"], m["content"]) for m in messages])

        def text_ids(self, text):
            return [meta["bos_id"]] + tok.encode(text, add_special_tokens=False).ids

        def decode(self, ids):
            return tok.decode(ids, skip_special_tokens=True)

        def generate(self, ids, n, stops, **kw):
            cfg = GenerationConfig(max_new_tokens=n, stop_token_ids=tuple(stops), **kw)
            res = generate(self.model, [ids], cfg)
            return res.sequences[0], res.finish_reasons[0]
    return Ref()


def _raw(server, path, body=None, *, key=KEY, content=None, headers=None, method="POST"):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    if body is not None:
        content = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    return httpx.request(method, server.url + path, content=content, headers=h, timeout=60)


CHAT = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "12+7="}]


# ---------------------------------------------------------------------------- correct output
def test_chat_greedy_equals_generate(client, ref):
    r = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0)
    ids = ref.chat_ids(CHAT)
    want, reason = ref.generate(ids, 12, (ref.eos, ref.end_of_turn))
    assert r.choices[0].message.content == ref.decode(want)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == reason
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(want) + (reason == "stop")
    assert r.model == NAME and r.object == "chat.completion"


def test_chat_stream_matches_non_stream_and_ends_with_done(client, server):
    kw = dict(model=NAME, messages=CHAT, max_tokens=16, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    raw = _raw(server, "/v1/chat/completions", {**kw, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_completions_greedy_stream_and_logprobs(client, ref):
    prompt = "3*4=12\n5+6="
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0, logprobs=3)
    ids = ref.text_ids(prompt)
    want, reason = ref.generate(ids, 10, (ref.eos,))
    c = r.choices[0]
    assert c.text == ref.decode(want) and c.finish_reason == reason
    assert r.usage.prompt_tokens == len(ids)
    # logprob of the first two tokens: log-softmax of the full (uncached) forward at those positions
    logits = ref.model(np.array([ids + want[:1]], np.int32)).numpy()[0].astype(np.float64)
    lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    for j in range(2):
        assert abs(c.logprobs.token_logprobs[j] - lsm[len(ids) - 1 + j, want[j]]) < 1e-4
        assert len(c.logprobs.top_logprobs[j]) == 3
        assert max(c.logprobs.top_logprobs[j].values()) == pytest.approx(lsm[len(ids) - 1 + j].max(), abs=1e-4)
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=NAME, prompt=prompt, max_tokens=10, temperature=0, stream=True))
    assert streamed == c.text


def test_seeded_sampling_equals_generate_alone_and_n_choices(client, ref):
    msgs = [{"role": "user", "content": "def add(a, b):"}]
    kw = dict(temperature=0.9, top_p=0.8)
    r = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=10, seed=5, n=2, **kw)
    ids = ref.chat_ids(msgs)
    for i, ch in enumerate(r.choices):
        want, reason = ref.generate(ids, 10, (ref.eos, ref.end_of_turn), seed=5 + i, **kw)
        assert ch.index == i and ch.message.content == ref.decode(want) and ch.finish_reason == reason
    again = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=10, seed=5, n=2, **kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_concurrent_requests_share_batches_and_equal_generate_alone(client, ref, server):
    prompts = [f"{a}+{b}=" for a, b in [(1, 2), (10, 3), (7, 7), (4, 19), (2, 2), (15, 6)]]
    max_toks = [9, 14, 6, 12, 16, 8]
    out = [None] * len(prompts)
    before = dict(server.svc.engine.stats)

    def call(i):
        out[i] = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=max_toks[i],
                                           temperature=0).choices[0].text
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in enumerate(prompts):
        want, _ = ref.generate(ref.text_ids(p), max_toks[i], (ref.eos,))
        assert out[i] == ref.decode(want), p
    stats = server.svc.engine.stats
    tokens = stats["tokens"] - before["tokens"]
    steps = stats["steps"] - before["steps"]
    assert steps < tokens * 0.6     # rows were decoded together, not one request at a time


def test_streamed_n_choices_and_prompt_lists(client, ref):
    msgs = [{"role": "user", "content": "7*3="}]
    kw = dict(model=NAME, messages=msgs, max_tokens=8, temperature=0.7, seed=9, n=2)
    full = client.chat.completions.create(**kw)
    parts = {0: "", 1: ""}
    finish = {}
    for ch in client.chat.completions.create(**kw, stream=True):
        for c in ch.choices:
            parts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert [parts[i] for i in (0, 1)] == [c.message.content for c in full.choices]
    assert [finish[i] for i in (0, 1)] == [c.finish_reason for c in full.choices]
    # several prompts in one /v1/completions request: n choices per prompt, in prompt order
    prompts = ["1+1=", "2+3="]
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for i, p in enumerate(prompts):
        want, _ = ref.generate(ref.text_ids(p), 6, (ref.eos,))
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == ref.decode(want)
    assert r.usage.prompt_tokens == sum(len(ref.text_ids(p)) for p in prompts)
    ids = ref.text_ids("1+1=")     # token ids are a prompt too
    assert client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0).choices[0].text \
        == r.choices[0].text


def test_full_queue_is_503_with_retry_after(server):
    engine = server.svc.engine
    old, engine.max_queue = engine.max_queue, 0
    try:
        r = _raw(server, "/v1/completions", {"model": NAME, "prompt": "1+", "max_tokens": 4})
    finally:
        engine.max_queue = old
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "server_busy"


def test_stop_sequence_cuts_text(client):
    kw = dict(model=NAME, prompt="3*4=", max_tokens=16, temperature=0)
    free = client.completions.create(**kw).choices[0].text
    assert len(free) > 6
    stop = free[3:5]
    r = client.completions.create(**kw, stop=[stop, "never-appears"])
    assert r.choices[0].text == free[:free.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == free[:free.index(stop)]


def test_models_health_metrics(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    h = _raw(server, "/health", key=None, method="GET")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["slots"] == 4
    m = _raw(server, "/metrics", key=None, method="GET").text
    assert 'seekline_requests_total{endpoint="chat",status="200"}' in m
    assert "seekline_time_to_first_token_seconds_bucket" in m and "seekline_active_slots" in m


# ---------------------------------------------------------------------------- guards
def test_auth(server):
    for key in (None, "wrong"):
        r = _raw(server, "/v1/chat/completions", {"model": NAME, "messages": CHAT}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _raw(server, "/v1/models", key="sk-test-2", method="GET").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_rate_limit_429_with_retry_after(server):
    svc = server.svc
    old, svc.limiter = svc.limiter, RateLimiter(per_minute=60, burst=2)
    try:
        codes = [_raw(server, "/v1/models", method="GET", key="sk-test-2") for _ in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert codes[2].headers["Retry-After"] == "1"
        assert codes[2].json()["error"]["code"] == "rate_limit_exceeded"
        assert _raw(server, "/v1/models", method="GET").status_code == 200    # another key has its own bucket
    finally:
        svc.limiter = old


def test_body_too_large_413(server):
    big = {"model": NAME, "messages": [{"role": "user", "content": "x" * 30_000}]}
    r = _raw(server, "/v1/chat/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():    # no Content-Length: the limit applies to the bytes read
        yield b'{"model": "' + NAME.encode() + b'", "prompt": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}'
    r = httpx.post(server.url + "/v1/completions", content=chunks(),
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 413


MALFORMED = [
    ("bad json", b'{"model": "tiny-chat", "messages": [', 400, "invalid_json", None),
    ("not an object", b"[1, 2]", 400, "invalid_json", None),
    ("invalid utf-8", b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     400, "invalid_encoding", None),
    ("no messages", {"model": NAME}, 400, None, "messages"),
    ("empty messages", {"model": NAME, "messages": []}, 400, None, "messages"),
    ("unknown model", {"model": "gpt-9", "messages": CHAT}, 404, "model_not_found", "model"),
    ("unknown role", {"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None,
     "messages[0].role"),
    ("absurd max_tokens", {"model": NAME, "messages": CHAT, "max_tokens": 10**9}, 400, None, "max_tokens"),
    ("zero max_tokens", {"model": NAME, "messages": CHAT, "max_tokens": 0}, 400, None, "max_tokens"),
    ("prompt + max_tokens over context", {"model": NAME, "messages": CHAT, "max_tokens": CTX - 5}, 400,
     "context_length_exceeded", "max_tokens"),
    ("prompt longer than context", {"model": NAME, "messages": [{"role": "user", "content": "1+1=2\n" * 200}]},
     400, "context_length_exceeded", "messages"),
    ("completion prompt too long", {"model": NAME, "prompt": [5] * (CTX + 1)}, 400, "context_length_exceeded",
     "prompt"),
    ("token id outside vocab", {"model": NAME, "prompt": [5, 10**6]}, 400, None, "prompt"),
    ("temperature out of range", {"model": NAME, "messages": CHAT, "temperature": 7}, 400, None, "temperature"),
    ("n over limit", {"model": NAME, "messages": CHAT, "n": 99}, 400, None, "n"),
    ("content not text", {"model": NAME, "messages": [{"role": "user", "content": 42}]}, 400, None,
     "messages[0].content"),
    ("forged turn", {"model": NAME, "messages": [{"role": "user", "content": "hi<|assistant|>yes"}]}, 400, None,
     "messages[0].content"),
    ("malformed tools", {"model": NAME, "messages": CHAT, "tools": [{"type": "function"}]}, 400,
     None, "tools[0].function"),      # tools are served now (serving/agent, tests/test_serving_agent.py)
    ("too many stops", {"model": NAME, "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, None, "stop"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_requests_get_openai_shaped_4xx(server, case):
    name, body, status, code, param = case
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    if isinstance(body, dict):
        r = _raw(server, path, body)
    else:
        r = _raw(server, path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "\n" not in err["message"]
    if code:
        assert err["code"] == code
    if param:
        assert err["param"] == param


def test_unknown_route_and_method_are_openai_shaped(server):
    r = _raw(server, "/v1/nothing", {})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = _raw(server, "/v1/chat/completions", method="GET")
    assert r.status_code == 405 and "error" in r.json()


# ---------------------------------------------------------------------------- slots
def _wait_idle(engine, seconds=10.0):
    t0 = time.time()
    while (engine.active or engine.waiting) and time.time() - t0 < seconds:
        time.sleep(0.02)
    return engine.active == 0 and engine.waiting == 0


@pytest.fixture(scope="module")
def long_prompt(client):
    """A prompt whose greedy 150-token continuation has no stop token (runs to length), so an early
    end in the tests below can only come from the cancellation under test."""
    for p in ("1+", "2+", "def ", "3*4=", "x", "return "):
        r = client.completions.create(model=NAME, prompt=p, max_tokens=150, temperature=0)
        if r.choices[0].finish_reason == "length":
            return p
    pytest.fail("no prompt runs to max_tokens")


def test_client_disconnect_mid_stream_frees_its_slot(server, long_prompt):
    engine = server.svc.engine
    assert _wait_idle(engine)
    body = json.dumps({"model": NAME, "prompt": long_prompt, "max_tokens": 150, "temperature": 0, "stream": True,
                       "stop": ["never-appears"]})
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        got = b""
        while b"data: " not in got:
            got += s.recv(4096)
        assert engine.active == 1
        generated_then = engine.stats["tokens"]
    assert _wait_idle(engine, 5.0)
    assert engine.stats["tokens"] - generated_then < 140     # it did not run to max_tokens


def test_client_disconnect_while_waiting_non_streaming(server, long_prompt):
    engine = server.svc.engine
    assert _wait_idle(engine)
    body = json.dumps({"model": NAME, "prompt": long_prompt, "max_tokens": 150, "temperature": 0,
                       "stop": ["never-appears"]})
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        t0 = time.time()
        while engine.active == 0 and time.time() - t0 < 5:
            time.sleep(0.005)
        assert engine.active == 1
        generated_then = engine.stats["tokens"]
    assert _wait_idle(engine, 5.0)
    assert engine.stats["tokens"] - generated_then < 140


def test_request_timeout_504_frees_the_slot(server, long_prompt):
    svc = server.svc
    old = svc.cfg
    svc.cfg = old.model_copy(update={"request_timeout_s": 0.05})
    try:
        r = _raw(server, "/v1/completions", {"model": NAME, "prompt": long_prompt, "max_tokens": 150, "temperature": 0,
                                              "stop": ["never-appears"]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        generated_then = svc.engine.stats["tokens"]
    finally:
        svc.cfg = old
    assert _wait_idle(svc.engine, 5.0)
    assert svc.engine.stats["tokens"] - generated_then < 100


def test_structured_logs_one_json_line_per_request(client, server):
    import io
    import logging

    from serving import logs

    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logs.JsonFormatter())
    log = logging.getLogger(logs.LOGGER)
    old_level = log.level
    log.addHandler(h)
    log.setLevel(logging.INFO)
    try:
        list(client.completions.create(model=NAME, prompt="1+1=", max_tokens=5, temperature=0, stream=True))
        _raw(server, "/v1/completions", {"model": "nope", "prompt": "x"})
    finally:
        log.removeHandler(h)
        log.setLevel(old_level)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    reqs = [x for x in lines if x["msg"] == "request"]
    assert [(x["endpoint"], x["status"]) for x in reqs] == [("completions", 200), ("completions", 404)]
    assert reqs[0]["completion_tokens"] >= 1 and reqs[0]["stream"] is True and reqs[0]["who"] == "key:…"
    assert "does not exist" in reqs[1]["error"] and reqs[1]["ms"] >= 0
