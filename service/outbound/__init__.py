"""Outbound delivery to partners. s2s.py: real-time server-to-server segment updates."""

from __future__ import annotations

from .s2s import COUNTERS, CountFn, S2SDestination, S2SSender, SegmentChange, UserUpdate

__all__ = [
    "COUNTERS",
    "CountFn",
    "S2SDestination",
    "S2SSender",
    "SegmentChange",
    "UserUpdate",
]
