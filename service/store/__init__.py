"""Storage: the only package that talks to Redis/Valkey. The key schema is in keys.py.

The public surface is this module: the Store and the values it takes and answers.
Its modules (codec, writes, scripts, keys, ...) are private to the package."""

from __future__ import annotations

from .jobs import ExportRow, Removal
from .keys import KeySchema
from .mappings import PartnerUid, Retention
from .profiles import Redo, VisitorState
from .servers import Client, EmbeddedValkey, connect, server_answers
from .store import Store, StoreError
from .sweep import Prune
from .writes import ErasedHook

__all__ = [
    "Client",
    "EmbeddedValkey",
    "ErasedHook",
    "ExportRow",
    "KeySchema",
    "PartnerUid",
    "Prune",
    "Redo",
    "Removal",
    "Retention",
    "Store",
    "StoreError",
    "VisitorState",
    "connect",
    "server_answers",
]
