"""Teachers: OpenAITeacher against the loopback fake endpoint (success, 429 + Retry-After, 5xx until
retries run out, timeouts, malformed JSON, invalid replies, a refused connection), the rate limiter
on a fake clock, and ModelTeacher on a tiny model folder (a string back, stop strings honoured)."""
from __future__ import annotations

import email.utils
import random

import pytest

from common.errors import UserError
from components.agent.fake_endpoint import FakeChatEndpoint, Reply
from components.agent.teacher import (
    ModelTeacher,
    OpenAITeacher,
    RateLimiter,
    TeacherError,
    estimate_tokens,
    parse_retry_after,
)

MSGS = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "what is two plus two"}]


class FakeClock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _teacher(ep, sleeps, **kw):
    kw = {"api_key_env": None, "timeout_s": 5, "max_retries": 3, **kw}
    return OpenAITeacher(ep.base_url, "fake-r1", sleep=sleeps.append, **kw)


def _full_jitter(seed, n, base=1.0, cap=60.0):
    rng = random.Random(seed)
    return [rng.uniform(0.0, min(cap, base * 2.0 ** k)) for k in range(n)]


def test_success_sends_the_request_and_counts_usage(monkeypatch):
    monkeypatch.setenv("TEACHER_TEST_KEY", "sk-test-123")
    with FakeChatEndpoint([Reply(content="Thought: add.\nAction: {}\nObservation: never")]) as ep:
        sleeps = []
        t = _teacher(ep, sleeps, api_key_env="TEACHER_TEST_KEY")
        out = t.complete(MSGS, max_tokens=64, temperature=0.0, stop=["\nObservation:"], seed=5)
    assert out == "Thought: add.\nAction: {}"              # the endpoint cuts before the stop string
    (req,) = ep.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test-123"
    body = req["body"]
    assert (body["model"], body["messages"], body["max_tokens"], body["stop"], body["seed"]) == \
        ("fake-r1", MSGS, 64, ["\nObservation:"], 5)
    s = t.stats
    # the fake counts words: 4 + 5 prompt words, "Thought: add.\nAction: {}" = 4 completion words
    assert (s["requests"], s["completions"], s["retries"], s["prompt_tokens"], s["completion_tokens"]) == \
        (1, 1, 0, 9, 4)
    assert sleeps == [] and sum(s["errors"].values()) == 0
    assert t.name == "fake-r1"


def test_429_then_success_honours_retry_after():
    with FakeChatEndpoint([Reply("status", status=429, retry_after="7"), Reply(content="ok")]) as ep:
        sleeps = []
        t = _teacher(ep, sleeps)
        assert t.complete(MSGS, max_tokens=8) == "ok"
    assert sleeps == [7.0]
    s = t.stats
    assert (s["requests"], s["retries"], s["errors"]["rate_limited"], s["backoff_wait_s"]) == (2, 1, 1, 7.0)


def test_500_until_retries_run_out_uses_full_jitter_backoff():
    with FakeChatEndpoint(default=Reply("status", status=500)) as ep:
        sleeps = []
        t = _teacher(ep, sleeps, max_retries=3, backoff_base_s=0.5, backoff_max_s=1.5, jitter_seed=11)
        with pytest.raises(TeacherError, match=r"HTTP 500.*server_error; 4 attempts"):
            t.complete(MSGS, max_tokens=8)
    assert len(ep.requests) == 4
    assert sleeps == pytest.approx(_full_jitter(11, 3, base=0.5, cap=1.5))
    s = t.stats
    assert (s["errors"]["server_error"], s["retries"], s["failures"], s["completions"]) == (4, 3, 1, 0)


def test_slow_reply_times_out_and_is_retried():
    with FakeChatEndpoint([Reply(content="late", delay_s=3.0), Reply(content="in time")]) as ep:
        sleeps = []
        t = _teacher(ep, sleeps, timeout_s=1.0, jitter_seed=3)
        assert t.complete(MSGS, max_tokens=8) == "in time"
    assert t.stats["errors"]["timeout"] == 1 and len(sleeps) == 1
    assert sleeps == pytest.approx(_full_jitter(3, 1))


def test_malformed_json_is_retried_then_a_teacher_error():
    with FakeChatEndpoint([Reply("malformed"), Reply(content="fine")]) as ep:
        t = _teacher(ep, [])
        assert t.complete(MSGS, max_tokens=8) == "fine"
    assert t.stats["errors"]["malformed"] == 1
    with FakeChatEndpoint(default=Reply("malformed")) as ep:
        t = _teacher(ep, [], max_retries=2)
        with pytest.raises(TeacherError, match=r"not valid JSON.*malformed; 3 attempts"):
            t.complete(MSGS, max_tokens=8)
    assert len(ep.requests) == 3 and t.stats["errors"]["malformed"] == 3


@pytest.mark.parametrize("kind,what", [("no_choices", "has no choices"),
                                       ("no_content", r"choices\[0\].message.content is NoneType")])
def test_a_reply_without_choices_or_content_is_an_error_naming_it(kind, what):
    with FakeChatEndpoint(default=Reply(kind)) as ep:
        t = _teacher(ep, [])
        with pytest.raises(TeacherError, match=what):
            t.complete(MSGS, max_tokens=8)
    assert len(ep.requests) == 1 and t.stats["errors"]["invalid_response"] == 1    # not retried


def test_a_client_error_is_not_retried():
    with FakeChatEndpoint(default=Reply("status", status=400)) as ep:
        t = _teacher(ep, [])
        with pytest.raises(TeacherError, match=r"HTTP 400.*client_error; 1 attempt\)"):
            t.complete(MSGS, max_tokens=8)
    assert len(ep.requests) == 1


def test_a_refused_connection_is_retried():
    ep = FakeChatEndpoint().start()
    url = ep.base_url
    ep.close()                                  # nothing listens on the port any more
    sleeps = []
    t = OpenAITeacher(url, "m", api_key_env=None, max_retries=2, timeout_s=2, sleep=sleeps.append)
    with pytest.raises(TeacherError, match=r"connection; 3 attempts"):
        t.complete(MSGS, max_tokens=8)
    assert t.stats["errors"]["connection"] == 3 and len(sleeps) == 2


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_TEACHER_KEY", raising=False)
    with pytest.raises(UserError, match="NO_SUCH_TEACHER_KEY"):
        OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_env="NO_SUCH_TEACHER_KEY")


def test_bad_messages_are_a_teacher_error():
    t = OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_env=None)
    with pytest.raises(TeacherError, match=r"messages\[1\]"):
        t.complete([MSGS[0], {"role": "tool", "content": "x"}], max_tokens=8)


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(1_000_030.0, usegmt=True)         # 30 s after "now"
    assert parse_retry_after({"retry-after": date}, now=lambda: 1_000_000.0) == 30.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_request_limiter_on_a_fake_clock():
    clock = FakeClock()
    lim = RateLimiter(requests_per_minute=3, clock=clock, sleep=clock.sleep)
    assert [lim.acquire(0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.acquire(0) == pytest.approx(20.0)            # the 4th waits one refill: 60 s / 3
    assert lim.acquire(0) == pytest.approx(20.0)            # and the 5th one more (the bucket is empty at t=20)
    clock.now += 60.0                                       # a quiet minute refills the bucket (to capacity 3)
    assert [lim.acquire(0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.slept == pytest.approx([20.0, 20.0])


def test_token_limiter_and_give_back():
    clock = FakeClock()
    lim = RateLimiter(tokens_per_minute=1000, clock=clock, sleep=clock.sleep)
    assert lim.acquire(600) == 0.0
    assert lim.acquire(600) == pytest.approx(200 / (1000 / 60))        # 200 tokens short at 1000/min = 12 s
    lim.give_back(500)                                                   # both used 350 fewer than reserved
    assert lim.acquire(500) == 0.0                                       # level 500 -> 0
    assert lim.acquire(5000) == pytest.approx(60.0)                      # capped at a full bucket: one minute


def test_teacher_uses_its_limiter():
    clock = FakeClock()
    with FakeChatEndpoint(default=Reply(content="x")) as ep:
        t = _teacher(ep, [], limiter=RateLimiter(requests_per_minute=2, clock=clock, sleep=clock.sleep))
        for _ in range(3):
            t.complete(MSGS, max_tokens=8)
    assert clock.slept == pytest.approx([30.0]) and t.stats["rate_limit_wait_s"] == pytest.approx(30.0)


def test_estimate_tokens_hand_case():
    msgs = [{"role": "user", "content": "a" * 10}, {"role": "assistant", "content": "b" * 3}]
    assert estimate_tokens(msgs, 100) == 4 + 2 * 4 + 100           # ceil(13 / 4) + 4 per message + budget


@pytest.fixture(scope="module")
def model_teacher(tmp_path_factory):
    from components.grpo.testdata import grpo_model_dir
    return ModelTeacher(grpo_model_dir(str(tmp_path_factory.mktemp("teacher")), layers=1), prompt_mode="chat")


def test_model_teacher_returns_text_and_honours_stop_strings(model_teacher):
    t = model_teacher
    msgs = [{"role": "user", "content": "2+3="}]
    full = t.complete(msgs, max_tokens=12)
    assert isinstance(full, str) and len(full) >= 4
    # a 2-character ASCII stop string from the middle (random-init output also has U+FFFD pieces)
    at = next(i for i in range(2, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isprintable())
    stop = full[at:at + 2]
    cut = t.complete(msgs, max_tokens=12, stop=["never-there", stop])
    assert cut == full[:full.find(stop)]                             # cut before the first stop, stop excluded
    sampled = t.complete(msgs, max_tokens=6, temperature=1.0, seed=4)
    assert t.complete(msgs, max_tokens=6, temperature=1.0, seed=4) == sampled      # seeded sampling repeats
    s = t.stats
    assert (s["requests"], s["completions"], s["stopped_by_string"]) == (4, 4, 1)
    assert t.name.startswith("local:")


def test_model_teacher_context_limits(model_teacher):
    t = model_teacher

    def msgs(n):
        return [{"role": "user", "content": "1+2=3\n" * n}]
    n = next(n for n in range(60, 0, -1) if len(t.encode(msgs(n))) <= t.context - 3)    # a few tokens of room
    assert t.context - len(t.encode(msgs(n))) < 50                       # so max_tokens=50 must be lowered
    before = t.stats["clamped_max_tokens"]
    t.complete(msgs(n), max_tokens=50)                                   # more than the room left
    assert t.stats["clamped_max_tokens"] == before + 1
    with pytest.raises(TeacherError, match="fills the model's context"):
        t.complete(msgs(100), max_tokens=4)


def test_model_teacher_completion_mode_prompt(model_teacher):
    import json
    import os

    from tokenizers import Tokenizer
    d = model_teacher.name[len("local:"):]
    t = ModelTeacher(d, prompt_mode="completion")
    with open(os.path.join(d, "tokenizer_meta.json"), encoding="utf-8") as f:
        bos = json.load(f)["bos_id"]
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    msgs = [{"role": "system", "content": "1+1=2"}, {"role": "user", "content": "2+2="}]
    assert t.encode(msgs) == [bos] + tok.encode("1+1=2\n\n2+2=", add_special_tokens=False).ids
    assert model_teacher.encode(msgs) != t.encode(msgs)                  # chat mode renders a template
