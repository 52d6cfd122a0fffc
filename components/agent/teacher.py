"""Teachers for agent distillation: an OpenAI-compatible endpoint or an in-process seekline model.

Both implement ``Teacher.complete(messages, *, max_tokens, temperature, stop, seed) -> str``:
OpenAI chat messages in, the assistant's text out, cut before the first stop string (the
OpenAI convention: the stop string itself is not returned). The agent loop stops generation at
"\\nObservation:" because the loop, not the teacher, writes observations.

``OpenAITeacher`` talks to any chat-completions endpoint (Groq, vLLM, seekline's own server)
through the official ``openai`` client with its own retries switched off (``max_retries=0``):
this module retries 429 / 408 / 5xx / timeouts / connection errors / unparseable bodies with
exponential backoff and full jitter (delay ~ U(0, min(backoff_max_s, backoff_base_s·2^attempt)),
from a seeded RNG), except that a Retry-After (or retry-after-ms) header is obeyed as given.
Other 4xx are not retried (the request itself is wrong). A well-formed reply without
``choices[0].message.content`` as a string is a ``TeacherError`` at once: the server answered
deliberately, so the same request is not expected to do better. A client-side ``RateLimiter``
(token buckets for requests/min and estimated tokens/min) spaces requests out before the server
has to refuse them.

``ModelTeacher`` runs a seekline model folder in-process (no network; ``make run`` uses it):
messages through the model's chat template, ``model.generation.generate``, stop strings cut with
``components.grpo.rollout.cut_at_stop_string``.
"""
from __future__ import annotations

import email.utils
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from common.errors import ConfigError, UserError

ROLES = ("system", "user", "assistant")
# A rough token estimate for the tokens/min budget: ~4 characters per token for English/code
# (the provider's rule of thumb), plus a few tokens of per-message framing.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
ERROR_KINDS = ("rate_limited", "server_error", "timeout", "connection", "malformed", "invalid_response",
               "client_error")
RETRYABLE_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection", "malformed"})


class TeacherError(UserError):
    """The teacher gave no usable answer: retries exhausted, a refused request, an invalid reply."""


class Teacher(Protocol):
    name: str

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int | None = None) -> str: ...


def check_messages(messages, who: str) -> None:
    """OpenAI chat messages: a non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TeacherError(f"{who}: messages must be a non-empty list of chat messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TeacherError(f"{who}: messages[{i}] must be {{'role': one of {', '.join(ROLES)}, "
                               f"'content': str}} (got {str(m)[:80]!r})")


def estimate_tokens(messages: Sequence[dict], max_tokens: int) -> int:
    """Tokens a request may use (prompt estimate + the completion budget), for the tokens/min bucket."""
    chars = sum(len(m["content"]) for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages) + max_tokens


class TokenBucket:
    """``per_minute`` units refill continuously up to ``capacity`` (default: one minute's worth);
    the bucket starts full. ``reserve`` takes units at once and may drive the level negative: the
    debt divided by the refill rate is how long the caller must wait, so concurrent callers queue
    up in order without a lock held while sleeping."""

    def __init__(self, per_minute: float, now: float, capacity: float | None = None):
        if per_minute <= 0:
            raise ConfigError(f"rate limit must be > 0 per minute (got {per_minute})")
        self.rate = per_minute / 60.0                       # units per second
        self.capacity = float(capacity if capacity is not None else per_minute)
        self.level = self.capacity
        self.t = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = max(self.t, now)

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` (at most the capacity, else it could never be served) -> seconds to wait."""
        self._refill(now)
        self.level -= min(amount, self.capacity)
        return max(0.0, -self.level / self.rate)

    def give_back(self, amount: float, now: float) -> None:
        """Return units reserved but not used (an over-estimate of a request's tokens)."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Client-side requests/min and tokens/min limits. ``clock`` and ``sleep`` are injectable so
    tests run on a fake clock; ``acquire`` returns the seconds it waited."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.clock, self.sleep = clock, sleep
        now = clock()
        self.requests = TokenBucket(requests_per_minute, now) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, now) if tokens_per_minute else None
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> float:
        with self._lock:
            now = self.clock()
            wait = max(self.requests.reserve(1, now) if self.requests else 0.0,
                       self.tokens.reserve(tokens, now) if self.tokens else 0.0)
        if wait > 0:
            self.sleep(wait)
        return wait

    def give_back(self, tokens: int) -> None:
        if self.tokens is not None and tokens > 0:
            with self._lock:
                self.tokens.give_back(tokens, self.clock())


def parse_retry_after(headers, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, else Retry-After as seconds or an HTTP
    date; None when absent or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


def _new_stats() -> dict:
    return {"requests": 0, "completions": 0, "retries": 0, "failures": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "usage_missing": 0, "rate_limit_wait_s": 0.0, "backoff_wait_s": 0.0,
            "errors": {k: 0 for k in ERROR_KINDS}}


class _AttemptError(Exception):
    """One failed request: its kind (ERROR_KINDS), a message, and the server's Retry-After."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 60, max_retries: int = 6, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60, requests_per_minute: int | None = None,
                 tokens_per_minute: int | None = None, name: str | None = None, jitter_seed: int = 0,
                 sleep: Callable[[float], None] = time.sleep, limiter: RateLimiter | None = None):
        import openai

        if max_retries < 0 or timeout_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ConfigError("teacher: max_retries, backoff_base_s and backoff_max_s must be >= 0 and "
                              f"timeout_s > 0 (got {max_retries}, {backoff_base_s}, {backoff_max_s}, {timeout_s})")
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise UserError(f"teacher {model} at {base_url}: the environment variable {api_key_env} "
                                "(the API key) is not set")
        else:
            key = "unused"      # a local endpoint that checks no key; the client insists on one
        self.name = name or model
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.max_retries, self.backoff_base_s, self.backoff_max_s = max_retries, backoff_base_s, backoff_max_s
        self._sleep = sleep
        self._rng = random.Random(jitter_seed)
        self.limiter = limiter or RateLimiter(requests_per_minute, tokens_per_minute, sleep=sleep)
        self._client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout_s)
        self._stats = _new_stats()
        self._lock = threading.Lock()

    @property
    def stats(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._stats))      # a deep copy

    def _count(self, **add) -> None:
        with self._lock:
            for k, v in add.items():
                if k in ERROR_KINDS:
                    self._stats["errors"][k] += v
                else:
                    self._stats[k] += v

    def backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number ``attempt`` (0-based): the server's Retry-After when it sent
        one, else full jitter over the capped exponential."""
        if retry_after is not None:
            return retry_after
        return self._rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2.0 ** attempt))

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int | None = None) -> str:
        who = f"teacher {self.name}"
        check_messages(messages, who)
        if max_tokens < 1:
            raise TeacherError(f"{who}: max_tokens must be >= 1 (got {max_tokens})")
        estimate = estimate_tokens(messages, max_tokens)
        last: _AttemptError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_delay(attempt - 1, last.retry_after)
                self._count(retries=1, backoff_wait_s=delay)
                self._sleep(delay)
            self._count(rate_limit_wait_s=self.limiter.acquire(estimate), requests=1)
            try:
                text, usage = self._once(messages, max_tokens, temperature, stop, seed)
            except _AttemptError as e:
                self._count(**{e.kind: 1})
                last = e
                if e.kind not in RETRYABLE_KINDS:
                    break
                continue
            used = usage[0] + usage[1] if usage else None
            if used is not None:
                self.limiter.give_back(estimate - used)
            self._count(completions=1, prompt_tokens=usage[0] if usage else 0,
                        completion_tokens=usage[1] if usage else 0, usage_missing=0 if usage else 1)
            return text
        self._count(failures=1)
        tries = attempt + 1
        raise TeacherError(f"{who} at {self.base_url}: {last} ({last.kind}; {tries} attempt{'s' * (tries > 1)})")

    def _once(self, messages, max_tokens, temperature, stop, seed) -> tuple[str, tuple[int, int] | None]:
        import openai

        kwargs = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if stop:
            kwargs["stop"] = list(stop)
        if seed is not None:
            kwargs["seed"] = seed
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except openai.APITimeoutError:
            raise _AttemptError("timeout", "the request timed out") from None
        except openai.APIConnectionError as e:
            raise _AttemptError("connection", f"cannot connect ({e.__cause__ or e})") from None
        except openai.APIStatusError as e:
            status = e.status_code
            kind = ("rate_limited" if status == 429 else "timeout" if status == 408
                    else "server_error" if status >= 500 else "client_error")
            hint = f" (check the API key in {self.api_key_env})" if status in (401, 403) and self.api_key_env else ""
            raise _AttemptError(kind, f"HTTP {status}: {str(e)[:200]}{hint}", parse_retry_after(e.response.headers)) \
                from None
        except (ValueError, openai.APIResponseValidationError) as e:   # json.JSONDecodeError is a ValueError
            raise _AttemptError("malformed", f"the reply is not valid JSON ({str(e)[:120]})") from None
        return self._validate(resp)

    @staticmethod
    def _validate(resp) -> tuple[str, tuple[int, int] | None]:
        if isinstance(resp, (str, bytes)):  # a non-JSON content type: the client hands back the raw text
            raise _AttemptError("malformed", f"the reply is not JSON (body starts {str(resp)[:60]!r})")
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _AttemptError("invalid_response", "the reply has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            finish = getattr(choices[0], "finish_reason", None)
            raise _AttemptError("invalid_response", f"choices[0].message.content is {type(content).__name__}, not a "
                           f"string (finish_reason={finish!r})")
        usage = getattr(resp, "usage", None)
        p, c = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        return content, ((int(p), int(c)) if isinstance(p, int) and isinstance(c, int) else None)


class ModelTeacher:
    """A seekline model folder (HF layout with its tokenizer) as an in-process teacher.

    prompt_mode: chat = the model's chat template (the folder's, else auto-detected from the
    tokenizer's special tokens), completion = the messages' contents joined by blank lines after
    BOS, auto = chat when the folder's seekline_phase.json names a template. The completion budget
    is cut to the room the context leaves; a prompt that fills the context is a TeacherError.
    """

    def __init__(self, model_dir: str, *, prompt_mode: str = "chat", name: str | None = None):
        from components.grpo.rollout import PromptEncoder
        from components.tokenizer.tokenizer import META_FILE
        from model.checkpoint.hf import load_hf_checkpoint
        from model.config import ModelConfig

        for f in ("config.json", "tokenizer.json"):
            if not os.path.exists(os.path.join(model_dir, f)):
                raise UserError(f"{model_dir}: not an HF-layout model folder with its tokenizer (no {f})")
        cfg = ModelConfig.from_json_file(os.path.join(model_dir, "config.json"))
        eos = list(cfg.eos_token_ids)
        if os.path.exists(os.path.join(model_dir, META_FILE)):
            from components.tokenizer.tokenizer import load_meta
            eos.append(load_meta(model_dir)["eos_id"])
        self.encoder = PromptEncoder.for_model(model_dir, prompt_mode, eos)
        self.model = load_hf_checkpoint(model_dir, with_mtp=False)
        self.context = cfg.max_position_embeddings
        self.name = name or "local:" + os.path.normpath(model_dir)
        self._stats = _new_stats()
        self._stats.update(clamped_max_tokens=0, stopped_by_string=0)

    @property
    def stats(self) -> dict:
        return json.loads(json.dumps(self._stats))

    def encode(self, messages: list[dict]) -> list[int]:
        """Prompt token ids for the conversation so far (then the assistant's turn)."""
        if self.encoder.mode == "chat":
            from components.sft.formats import Message
            return self.encoder.template.encode_prompt([Message(m["role"], m["content"]) for m in messages])
        return self.encoder.encode("\n\n".join(m["content"] for m in messages))

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int | None = None) -> str:
        from components.grpo.rollout import cut_at_stop_string
        from model.generation.config import GenerationConfig
        from model.generation.generate import generate

        who = f"teacher {self.name}"
        check_messages(messages, who)
        if max_tokens < 1:
            raise TeacherError(f"{who}: max_tokens must be >= 1 (got {max_tokens})")
        try:
            prompt = self.encode(messages)
        except UserError as e:      # e.g. a message containing a chat control token
            raise TeacherError(f"{who}: {e}") from None
        room = self.context - len(prompt)
        self._stats["requests"] += 1
        if room < 1:
            self._stats["failures"] += 1
            raise TeacherError(f"{who}: the prompt has {len(prompt)} tokens and fills the model's context "
                               f"({self.context} tokens)")
        budget = min(max_tokens, room)
        self._stats["clamped_max_tokens"] += budget < max_tokens
        cfg = GenerationConfig(max_new_tokens=budget, temperature=temperature, stop_token_ids=self.encoder.stop_ids,
                               pad_token_id=self.encoder.pad_id, seed=seed)
        ids = [int(t) for t in generate(self.model, [prompt], cfg).sequences[0]]
        stops = [s for s in (stop or []) if s]
        ids, text, found = cut_at_stop_string(ids, self.encoder.decode, stops) if stops else \
            (ids, self.encoder.decode(ids), False)
        if found:   # cut_at_stop_string keeps the stop string; an OpenAI endpoint does not return it
            text = text[:-len(max((s for s in stops if text.endswith(s)), key=len))]
        self._stats["stopped_by_string"] += found
        self._stats["completions"] += 1
        self._stats["prompt_tokens"] += len(prompt)
        self._stats["completion_tokens"] += len(ids)
        return text
