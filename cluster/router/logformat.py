"""The router's log as JSON lines (`--log-format json`), for a log shipper: one object per line with the time,
level, logger and message, and a request line's fields (`requestlog.fields`) as keys of their own."""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class Sparse:
    """A log line that may repeat per request (a refusal, a failing worker) written at most once per `every_s`
    for each key, saying how many it stands for: an outage must not flood the log. Keys are few (a status code)."""

    def __init__(self, log: logging.Logger, every_s: float = 10.0) -> None:
        self.log, self.every_s = log, every_s
        self._seen: dict[str, tuple[float, int]] = {}  # key → (last written, occurrences since)

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        written, count = self._seen.get(key, (float("-inf"), 0))
        if now - written < self.every_s:
            self._seen[key] = (written, count + 1)
            return
        self._seen[key] = (now, 0)
        self.log.warning(message + (f" (and {count} more like it)" if count else ""), *args)
