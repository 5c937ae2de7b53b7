"""The garbage collector's settings for a running pixelsync process.

CPython runs its cycle collector every 700 net container allocations, and each run
walks the objects of the generations it collects. A request or an import line
allocates dozens of short-lived containers, nearly all freed by reference counting
alone, so the collector mostly walks the same long-lived objects (modules, the
compiled rules, the write buffer) again and again: measured, 35 % of an import's CPU.
Once a process is set up, what it holds is frozen out of the collector's sight, and the
youngest generation is collected every GEN0 allocations instead."""

from __future__ import annotations

import gc
from typing import Final

GEN0: Final = 50_000
GEN1: Final = 20
GEN2: Final = 10  # the default: full collections as often as before, in collections


def tune() -> None:
    """Call once the process is set up (configuration loaded, app built)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
