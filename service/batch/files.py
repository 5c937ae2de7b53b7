"""Inbound batch files (SPEC §9): file names, lines and the receipt. Pure: no Redis."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from ..numbers import parse_uint
from ..sync import valid_uid

MAX_LINE_BYTES: Final = 100 * 1024
MAX_ERRORS_LISTED: Final = 100
# [0-9], not \d: \d also matches other scripts' digits, which int() would read.
_NAME: Final = re.compile(
    r"ftp_dpm_(?P<dpid>[0-9]{1,18})(?:_(?P<target>[0-9]{1,18}))?_(?P<ts>[0-9]{1,12})"
    r"\.(?P<kind>sync|overwrite)(?:\.(?P<split>[0-9]{1,6}))?(?P<gz>\.gz)?"
)
# Linear: neither group can cross a quote, so a failing line backtracks only once.
_SIGNAL: Final = re.compile(r'"([^"]*+)"="([^"]*+)"')


class LineError(ValueError):
    """A line that cannot be used; the message is the receipt's reason."""


@dataclass(frozen=True)
class InboundName:
    dpid: int  # the data source: whose onboarded traits the file realizes
    target: int  # whose uids the lines carry (the data source's own, unless named)
    timestamp: int
    overwrite: bool
    split: int | None
    gzip: bool


def parse_name(name: str) -> InboundName | None:
    """The parts of an inbound file name, or None when it is not one."""
    found = _NAME.fullmatch(name)
    if found is None:
        return None
    dpid = int(found["dpid"])
    return InboundName(
        dpid=dpid,
        target=int(found["target"]) if found["target"] else dpid,
        timestamp=int(found["ts"]),
        overwrite=found["kind"] == "overwrite",
        split=int(found["split"]) if found["split"] else None,
        gzip=bool(found["gz"]),
    )


@dataclass(slots=True)
class Line:
    uid: str
    realize: list[int] = field(default_factory=list)
    remove: list[int] = field(default_factory=list)
    signals: dict[str, list[str]] = field(default_factory=dict)


def _tokens(text: str) -> list[str]:
    """Split on commas, except inside double quotes ("k"="a,b" is one token)."""
    if '"' not in text:  # most lines: trait ids only
        return [t for t in (part.strip() for part in text.split(",")) if t]
    out, start, quoted = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(text[start:i])
            start = i + 1
    if quoted:
        raise LineError("unbalanced double quote")
    out.append(text[start:])
    return [t.strip() for t in out if t.strip()]


def _realized(token: str) -> int | None:
    """`<sid>` or `d_sid=<sid>`."""
    return parse_uint(token[6:] if token.startswith("d_sid=") else token)


def _removed(token: str) -> int | None:
    """`d_unsid=<sid>`, `<sid>:0` or `<sid>:-1`."""
    if token.startswith("d_unsid="):
        return parse_uint(token[8:])
    if token.endswith((":0", ":-1")):
        return parse_uint(token.rsplit(":", 1)[0])
    return None


def parse_line(raw: bytes) -> Line | None:
    """One line without its line ending: None when it is empty, else the line, or
    LineError saying why it cannot be used."""
    if not raw.strip():
        return None
    if len(raw) > MAX_LINE_BYTES:
        raise LineError(f"line longer than {MAX_LINE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError("not UTF-8") from None
    uid, tab, rest = text.partition("\t")
    if not tab:
        raise LineError("no tab between the partner uid and the traits")
    if not valid_uid(uid):
        raise LineError("invalid partner uid")
    line = Line(uid)
    for token in _tokens(rest):
        if (sid := _realized(token)) is not None:
            line.realize.append(sid)
        elif (sid := _removed(token)) is not None:
            line.remove.append(sid)
        elif signal := _SIGNAL.fullmatch(token):
            line.signals.setdefault(signal[1], []).append(signal[2])
        else:
            raise LineError(f"bad token {token[:40]!r}")
    return line


@dataclass
class Receipt:
    """SPEC §9: exact counts, and the first 100 format errors."""

    file: str
    records_received: int = 0
    format_errors: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    no_matching_id: int = 0
    no_trait_realized: int = 0
    records_processed: int = 0
    stored_records: int = 0
    realized_traits: int = 0
    removed_traits: int = 0
    started_at: str = ""
    finished_at: str = ""
    skipped: str = ""  # why nothing was imported (already imported), or ""
    resumed_after_line: int = 0  # an earlier run applied the lines up to this one

    def error(self, line_number: int, reason: str) -> None:
        self.format_errors += 1
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append({"line": line_number, "reason": reason})

    def doc(self) -> dict[str, Any]:
        doc = {
            "file": self.file,
            "records_received": self.records_received,
            "format_errors": {"count": self.format_errors, "first": self.errors},
            "no_matching_id": self.no_matching_id,
            "no_trait_realized": self.no_trait_realized,
            "records_processed": self.records_processed,
            "stored_records": self.stored_records,
            "realized_traits": self.realized_traits,
            "removed_traits": self.removed_traits,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if self.skipped:
            doc["skipped"] = self.skipped
        if self.resumed_after_line:
            doc["resumed_after_line"] = self.resumed_after_line
        return doc
