"""Continuous batching over a fixed set of cache slots (model/generation/slots.py).

One engine thread owns the model. Its loop, at every decode-step boundary:
  1. admits waiting requests into free slots: they are prefilled together (left-padded, prompt
     lengths bucketed like generate()) into a fresh cache and copied into their slots, and their
     first token is sampled from the prefill logits;
  2. retires rows that finished (stop token, max_tokens) or were cancelled (client gone, stop
     string seen by the HTTP side, timeout) — their slot is free for the next admission;
  3. runs one decode step for all slots (B = max_batch_size rows, fixed shape: one trace) and
     hands each active row's token to its request.
Sampling parameters are per row (temperature / top-k / top-p / seed: slots.select_next_rows), so
requests with different settings share a batch, and a seeded request gives the same tokens
whatever else is in the batch (the same as generate() with that seed alone).

Requests talk to the loop through thread-safe `emit` callbacks (the HTTP layer forwards them to
its asyncio loop); TF releases the GIL in its kernels, so the server stays responsive while a
step runs.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from model.generation.generate import bucket_len, left_pad, prefill
from model.generation.slots import insert_rows, select_first, slot_step


@dataclass
class Params:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop_ids: frozenset = frozenset()


@dataclass
class Token:
    """One generated token of a request (what `emit` receives, or the end)."""
    token: int | None                  # None on the final event
    logprob: float = 0.0
    top: list = field(default_factory=list)         # [(token id, logprob)], best first
    finish: str | None = None          # stop | length | cancelled | error (final event only)
    error: str | None = None


class Request:
    """A prompt to continue. `emit(Token)` is called from the engine thread, once per token and
    once more with `finish` set (the stop token itself is reported only through finish='stop')."""

    def __init__(self, prompt: list[int], params: Params, emit: Callable[[Token], None]):
        self.prompt, self.params, self.emit = list(prompt), params, emit
        self.generated = 0
        self.cancelled = False
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        """Free the slot at the next step boundary (thread-safe: a flag the engine reads)."""
        self.cancelled = True


class QueueFullError(Exception):
    pass


class Engine:
    def __init__(self, model, *, max_batch_size: int, max_seq_len: int, pad_id: int = 0,
                 max_queue: int = 256, jit_compile: bool = False):
        self.model = model
        self.b, self.s = max_batch_size, max_seq_len
        self.pad_id, self.max_queue, self.jit = pad_id, max_queue, jit_compile
        self._pending: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.slots: list[Request | None] = [None] * self.b
        self.stats = {"steps": 0, "rows_stepped": 0, "prefills": 0, "tokens": 0, "admitted": 0, "busy_s": 0.0}
        # Decode batch sizes: powers of two below B, and B (one compiled step each).
        self.buckets = sorted({min(2 ** k, self.b) for k in range(self.b.bit_length() + 1)})
        self._reset_state()

    # ------------------------------------------------------------------ public
    def start(self, warmup: bool = True) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="seekline-engine", daemon=True)
        self._thread.start()
        if warmup:
            # Trace prefill / insert / select / step before the first client waits on them: one
            # short prompt alone, then two of another length bucket together, so the traces relax
            # to any batch size and prompt length (reduce_retracing) instead of retracing later.
            for prompts in ([[self.pad_id]], [[self.pad_id] * 33] * 2):
                if len(prompts[0]) + 2 > self.s:
                    break
                left = threading.Semaphore(0)
                for p in prompts:
                    self.submit(Request(p, Params(max_tokens=2), lambda t, left=left: t.finish and left.release()))
                for _ in prompts:
                    left.acquire()
            with self._cv:      # the engine is idle now: trace the decode step of every row bucket
                for rows in self.buckets:
                    self._decode(rows)
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, req: Request) -> None:
        if len(req.prompt) + req.params.max_tokens > self.s:
            raise ValueError(f"prompt {len(req.prompt)} + max_tokens {req.params.max_tokens} > {self.s} cache rows")
        with self._cv:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests already wait for a slot")
            self._pending.append(req)
            self._cv.notify_all()

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.slots)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ state
    def _reset_state(self):
        m = self.model
        self.cache = m.init_cache(self.b, self.s, m.compute_dtype)
        self.key_valid = tf.zeros([self.b, self.s], tf.int32)
        self.tok = np.full(self.b, self.pad_id, np.int32)      # last token of each row
        self.write = np.zeros(self.b, np.int32)                # cache row the next token goes to
        self.pos = np.zeros(self.b, np.int32)                  # its rope position
        self.steps = np.zeros(self.b, np.int32)                # tokens sampled so far (the seed's step)
        self.temp = np.zeros(self.b, np.float32)
        self.top_k = np.zeros(self.b, np.int32)
        self.top_p = np.ones(self.b, np.float32)
        self.seeds = np.zeros(self.b, np.int32)

    # ------------------------------------------------------------------ loop
    def _loop(self):
        while True:
            with self._cv:
                while not self._stop and not self._pending and self.active == 0:
                    self._cv.wait()
                if self._stop:
                    break
                admit = []
                free = [i for i, r in enumerate(self.slots) if r is None]
                while self._pending and len(admit) < len(free):
                    r = self._pending.popleft()
                    if r.cancelled:
                        r.emit(Token(None, finish="cancelled"))
                    else:
                        admit.append(r)
            t0 = time.perf_counter()
            try:
                if admit:
                    self._admit(admit, free)
                self._retire()
                if self.active:
                    self._step()
                    self._retire()
            except Exception as e:  # noqa: BLE001 — a failed step fails its requests, not the server
                logging.getLogger("seekline.serving").exception("engine step failed")
                for r in [*admit, *(x for x in self.slots if x is not None)]:
                    r.emit(Token(None, finish="error", error=f"{type(e).__name__}: {e}"))
                self.slots = [None] * self.b
                self._reset_state()
            self.stats["busy_s"] += time.perf_counter() - t0
        for r in [*self._pending, *(x for x in self.slots if x is not None)]:
            r.emit(Token(None, finish="cancelled"))

    def _groups(self, reqs: list[Request]) -> list[list[Request]]:
        """Prefill groups: a group pads every prompt to its longest (bucketed when that fits),
        so a member must still fit its completion into the cache after the padding."""
        groups: list[list[Request]] = []
        for r in sorted(reqs, key=lambda r: len(r.prompt)):
            g = groups[-1] if groups else None
            if g is not None and all(len(r.prompt) + x.params.max_tokens <= self.s for x in [*g, r]):
                g.append(r)
            else:
                groups.append([r])
        return groups

    def _admit(self, reqs: list[Request], free: list[int]):
        free = list(free)
        for group in self._groups(reqs):
            rows = [free.pop(0) for _ in group]
            ids, mask = left_pad([r.prompt for r in group], self.pad_id)
            p = ids.shape[1]
            pb = bucket_len(p)
            if pb > p and all(pb + r.params.max_tokens <= self.s for r in group):
                ids = np.pad(ids, [(0, 0), (pb - p, 0)], constant_values=self.pad_id)
                mask = np.pad(mask, [(0, 0), (pb - p, 0)])
                p = pb
            logits, cache, kv, next_pos = prefill(self.model, ids, mask, self.s)
            self.cache, self.key_valid = insert_rows(self.model, self.cache, self.key_valid, cache, kv, rows)
            for r, i in zip(group, rows, strict=True):
                self.slots[i] = r
                pr = r.params
                self.temp[i], self.top_k[i], self.top_p[i] = pr.temperature, pr.top_k, pr.top_p
                self.seeds[i], self.steps[i] = pr.seed, 0
                self.write[i], self.pos[i] = p, next_pos[group.index(r)]
            k = len(group)
            tok, lp, top_v, top_i = select_first(self.model, logits, self.temp[rows], self.top_k[rows],
                                                 self.top_p[rows], self.seeds[rows], np.zeros(k, np.int32))
            self.stats["prefills"] += 1
            self.stats["admitted"] += k
            for j, i in enumerate(rows):
                self._deliver(i, int(tok[j]), float(lp[j]), top_v[j], top_i[j])

    def _deliver(self, i: int, tok: int, lp: float, top_v, top_i):
        r = self.slots[i]
        self.tok[i] = tok
        self.steps[i] += 1
        r.generated += 1
        self.stats["tokens"] += 1
        if tok in r.params.stop_ids:
            self._finish(i, "stop")
            return
        r.emit(Token(tok, lp, list(zip(top_i.tolist(), top_v.tolist(), strict=True))))
        if r.generated >= r.params.max_tokens:
            self._finish(i, "length")

    def _finish(self, i: int, reason: str):
        r = self.slots[i]
        self.slots[i] = None
        self.tok[i], self.write[i], self.pos[i], self.temp[i] = self.pad_id, 0, 0, 0.0
        r.emit(Token(None, finish=reason))

    def _retire(self):
        for i, r in enumerate(self.slots):
            if r is not None and r.cancelled:
                self._finish(i, "cancelled")

    def _decode(self, rows: int):
        """One decode step of the first `rows` slots -> (tok, logprob, top values, top ids) of those
        rows, and the new cache / key_valid (all B rows)."""
        n = rows
        return slot_step(self.model, self.tok[:n], self.cache, self.write[:n], self.pos[:n], self.key_valid,
                         self.temp[:n], self.top_k[:n], self.top_p[:n], self.seeds[:n], self.steps[:n],
                         jit_compile=self.jit, rows=None if rows == self.b else rows)

    def _step(self):
        # Step only the smallest bucket of leading slots that holds every active row (admission
        # fills the lowest free slots): a lone request does not pay for B rows of compute.
        top = max(i for i, r in enumerate(self.slots) if r is not None) + 1
        rows = next(b for b in self.buckets if b >= top)
        tok, lp, top_v, top_i, self.cache, self.key_valid = self._decode(rows)
        self.stats["steps"] += 1
        self.stats["rows_stepped"] += rows
        for i, r in enumerate(self.slots[:rows]):
            if r is not None:
                self.write[i] += 1
                self.pos[i] += 1
                self._deliver(i, int(tok[i]), float(lp[i]), top_v[i], top_i[i])

