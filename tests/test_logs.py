from __future__ import annotations

import io
import json
import logging

from service.logs import AccessLog, JsonFormatter


def test_access_lines_are_json_and_flushed_in_chunks() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    for i in range(300):
        access.add("event answered", tid=f"t{i}", uuid="1" * 38)
    assert access.flush(128) == 128
    assert access.flush(128) == 128
    assert access.flush(128) == 44
    assert access.flush() == 0
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["tid"] for d in lines] == [f"t{i}" for i in range(300)]
    assert lines[0]["logger"] == "pixelsync.access" and lines[0]["ts"].endswith("Z")


def test_pending_lines_are_bounded() -> None:
    access = AccessLog(io.StringIO(), max_pending=2)
    for _ in range(5):
        access.add("x")
    assert access.dropped == 3


def test_log_records_carry_their_extra_fields() -> None:
    record = logging.LogRecord("pixelsync.web", logging.INFO, "", 0, "refused", (), None)
    record.code = 311
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "refused" and doc["code"] == 311 and doc["level"] == "info"
