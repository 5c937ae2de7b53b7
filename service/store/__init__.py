"""Storage: the only package that talks to Redis/Valkey. The key schema is in keys.py."""

from __future__ import annotations

from .connect import Client, EmbeddedValkey, connect
from .keys import KeySchema
from .store import PartnerUid, Retention, Store, StoreError
from .writes import UNREAD

__all__ = [
    "UNREAD",
    "Client",
    "EmbeddedValkey",
    "KeySchema",
    "PartnerUid",
    "Retention",
    "Store",
    "StoreError",
    "connect",
]
