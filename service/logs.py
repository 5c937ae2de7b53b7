"""Structured logging: one JSON object per line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Final, TextIO

_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "color_message"}
)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in record.__dict__.keys() - _STANDARD:
            doc[key] = record.__dict__[key]
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


# The same JSON lines, as a logging.config dictionary (for granian's workers).
DICT_CONFIG: Final = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "_granian": {"level": "WARNING"},
        "granian.access": {"level": "WARNING"},
    },
}


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO, URL included: a partner call's URL carries the
    # visitor's partner uid and consent string, and there are thousands a second.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


class AccessLog:
    """JSON lines for answered requests (their tid, for support), formatted and written
    in batches by a background task: the request path only appends to a list."""

    def __init__(self, stream: TextIO | None = None, *, max_pending: int = 100_000) -> None:
        self._stream = stream
        self._pending: list[tuple[float, str, dict[str, object]]] = []
        self._max = max_pending
        self._formatter = JsonFormatter()
        self.dropped = 0

    def add(self, msg: str, **fields: object) -> None:
        if len(self._pending) < self._max:
            self._pending.append((time.time(), msg, fields))
        else:
            self.dropped += 1

    def flush(self, most: int | None = None) -> int:
        """Write out what is pending (at most `most` lines); answers how many."""
        if not self._pending:
            return 0
        if most is None or most >= len(self._pending):
            pending, self._pending = self._pending, []
        else:
            pending, self._pending = self._pending[:most], self._pending[most:]
        stream = self._stream or sys.stderr
        stamp = self._formatter._time
        stream.write(
            "".join(
                json.dumps(
                    {"ts": stamp(t), "level": "info", "logger": "pixelsync.access", "msg": msg}
                    | fields
                )
                + "\n"
                for t, msg, fields in pending
            )
        )
        stream.flush()
        return len(pending)

    async def run(self, interval_s: float = 0.1, chunk: int = 128) -> None:
        """Flush in small chunks, yielding between them: a burst of lines never holds
        up the requests being served."""
        while True:
            await asyncio.sleep(interval_s)
            while self.flush(chunk) == chunk:
                await asyncio.sleep(0)
