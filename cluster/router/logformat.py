"""The router's log as JSON lines (`--log-format json`), for a log shipper: one object per line with the time,
level, logger and message, and a request line's fields (`requestlog.fields`) as keys of their own."""

from __future__ import annotations

import json
import logging
from typing import Any


class JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}  # fmt: skip
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)
