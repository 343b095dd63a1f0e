"""Log lines with fields: the message says what happened; who, where and why travel as
fields (user, client, instance, reason...), which the JSON log keeps as keys of their own
(a log shipper filters on them) and the text log appends as key=value.

    log.info("login", **fields(user="alice", client="10.0.0.7", how="password"))
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")


def fields(**values: object) -> dict[str, Any]:
    """The keyword arguments of a logging call that carry these fields (None left out)."""
    return {"extra": {"fields": {k: v for k, v in values.items() if v is not None}}}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, "fields", None)
    return found if isinstance(found, dict) else {}


class JsonLogs(logging.Formatter):
    """One JSON object per line: time, pid, level, logger, message, and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "pid": record.process,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            body.setdefault(key, value)  # a field never hides the line's own keys
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class TextLogs(logging.Formatter):
    """A line for people: time, level, logger, message, then the fields as key=value."""

    def __init__(self, with_pid: bool) -> None:
        pid = " [%(process)d]" if with_pid else ""  # which worker said it
        super().__init__(f"%(asctime)s{pid} %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extra = " ".join(f"{k}={_text(v)}" for k, v in fields_of(record).items())
        return f"{line} {extra}" if extra else line


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n\t') else text


def configure(fmt: str, level: str, with_pid: bool = False) -> None:
    """The process's logging: to stderr, as text or JSON, from the given level up."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogs() if fmt == "json" else TextLogs(with_pid))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
