"""Structured logs: one JSON object per line on stderr (request id, key, status, timings)."""
from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = "seekline.serving"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "INFO", stream=None) -> logging.Logger:
    log = logging.getLogger(LOGGER)
    if not any(getattr(h, "_seekline", False) for h in log.handlers):
        h = logging.StreamHandler(stream or sys.stderr)
        h.setFormatter(JsonFormatter())
        h._seekline = True
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False
    return log


def event(msg: str, level: int = logging.INFO, **fields) -> None:
    logging.getLogger(LOGGER).log(level, msg, extra={"fields": fields})


def now_ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
