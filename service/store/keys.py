"""The Redis key schema: the one place that names keys and lays out their bytes.

Visitors and the match table live in *bucketed hashes* so that Redis keeps them
as listpacks (a few bytes of overhead per field) instead of one key per entry
(~70 bytes of overhead per key, more with a TTL). ``B`` is ``[store] match_buckets``
(a power of two, fixed for the life of a data set; recorded in ``ps:meta``).

=====================  ======  =============================================  ===========
key                    type    fields -> values                               bytes
=====================  ======  =============================================  ===========
``u:{<vb>}``           hash    ``<uuid16>`` -> visitor record:                ~22/visitor
                               ``<day2>`` (visitor last seen), then per       +~22/mapping
                               partner ``varint(dpid) varint(len) <day2>``    (UUID uid),
                               ``<uid codec>`` (mapping last seen, uid)       +~41 (36 chars)
``r:{<rb>}``           hash    ``<hash8>`` -> ``<uuid16>`` reverse mapping    ~28/mapping
``p:{<vb>}``           hash    ``<uuid16>`` -> profile (codec.pack_profile):  ~20/visitor
                               trait realizations by day, segments,           +~4/trait
                               pending URL fires                              +~2/segment
``ps:once:<nonce>``    string  ``1``, EX 1 day: a /fire or /ack token counted ~60/token
``ps:meta``            hash    ``buckets`` -> B                               once
``ps:imports``         hash    inbound file name -> its sha256 (hex)          ~100/file
``ps:imports:progress``  hash  inbound file name -> ``<sha256>:<line>``: an    ~100/file
                               import under way (or stopped by a failure) has  while under
                               applied every line up to <line>                way
``x:<dest>:{<vb>}``    hash    ``<uuid16>`` -> varint sids (codec.pack_sids): ~22/visitor
                               the segments the last successful export of     (exported)
                               file destination <dest> sent for the visitor
                               (iter mode)
``xs:<dest>:{<vb>}``   hash    the same, staged by an export in progress;     during an
                               '' = delete; moved into ``x:`` once its files  export
                               are complete (scripts.COMMIT). scripts.STAGE
                               stages one only while the visitor has a
                               record (its line is written only then); an
                               erasure counts it in the tombstone and
                               deletes it
``xr:<dest>:{<vb>}``   hash    ``<uuid16>`` -> tombstone of an erased         ~30/erased
                               visitor whose segments file destination <dest> visitor,
                               had been sent (codec.pack_tombstone):          until the
                               ``varint(len(uid)) <uid codec> varint(sid)*``, next iter
                               the partner uid it knew and those segments;    export
                               written by an erasure (writes.py ``_erase``)
                               from the visitor's ``x:`` and ``xs:`` marks
``xrs:<dest>:{<vb>}``  hash    the tombstones an export in progress sent, as  during an
                               it read them: scripts.COMMIT deletes each from export
                               ``xr:`` only if unchanged (a newer one stays)
``ps:tombstoned``      set     ids of destinations that got tombstones (the   once
                               sweeper drops those no longer configured)
``ps:erasures``        stream  one entry per erasure applied to a visitor     ~20/erasure
                               with something stored; id = its time, field
                               ``source`` -> ``api`` | ``optout``; never who;
                               XADD MAXLEN ~ ERASURES_MAX (100,000)
``ps:export:<dest>``   hash    ``state`` (staging|committing), ``last_day``,  once
                               ``last_ms`` of the last successful export
``ps:cnt:<minute>``    hash    ``<kind>:<id>:<counter>`` -> count; expires     ~30/field
                               after 8 days (minute = unix seconds // 60)
``ps:lock:<job>``      string  owner token, PX expiry (sweeper, batch jobs)   once
``ps:hll:{hll}:<hour>``  HLL   the uuid16 of visitors seen on /event in that  <=12 KiB
                               hour (hour = unix seconds // 3600), expires    /hour
                               after 8 days; one hash tag, so that PFCOUNT
                               merges a day's or a week's keys on a Cluster
=====================  ======  =============================================  ===========

One field per visitor holds all of its mappings: one HGET answers "what are this
visitor's partner uids", and the 16-byte uuid is stored once, not once per partner.
The record is edited in place by a Lua script (scripts.py ``UPSERT``) so concurrent
writers never lose each other's entries. Values longer than the server's
``hash-max-listpack-value`` (default 64; the embedded Valkey uses 1024) turn a bucket
into a hashtable, which costs several times more memory: see deploy/README.md.

- ``uuid16``: the 38-digit visitor uuid as a 16-byte big-endian integer.
- ``<vb>``: ``uuid mod B`` in hex. It is the visitor's hash tag: every key that
  holds data of one visitor carries it, so on a Cluster a visitor lives in one slot.
- ``<rb>`` and ``hash8``: from ``blake2b(dpid varint + partner uid, 12 bytes)``:
  bytes 0-3 pick the bucket, bytes 4-11 are the field. A reverse hit is verified
  against the forward entry, so a hash collision can never return a wrong visitor.
- ``day2``: days since 1970-01-01, 2 bytes big-endian. Retention works on Redis 7.0
  (no per-field TTL): reads ignore entries older than their TTL and the sweeper
  deletes them (``Store.sweep``).
- uid codec (``codec.encode_uid``): canonical UUIDs, long decimal and hex uids are
  packed to binary; anything else is stored as its printable ASCII bytes.
- No key has a Redis TTL; hashes vanish when their last field is deleted.
"""

from __future__ import annotations

import hashlib
from typing import Final

from .codec import uuid16, varint

META_KEY: Final = b"ps:meta"
IMPORTS_KEY: Final = b"ps:imports"
IMPORT_PROGRESS_KEY: Final = b"ps:imports:progress"


COUNTS_TTL_S: Final = 8 * 86400
ONCE_TTL_S: Final = 86400


def counts_key(minute: int) -> bytes:
    return b"ps:cnt:%d" % minute


SEEN_TTL_S: Final = 8 * 86400


def seen_key(hour: int) -> bytes:
    return b"ps:hll:{hll}:%d" % hour


def once_key(nonce: bytes) -> bytes:
    return b"ps:once:" + nonce


def export_key(destination: int) -> bytes:
    return b"ps:export:%d" % destination


def lock_key(job: str) -> bytes:
    return b"ps:lock:" + job.encode()


ERASURES_KEY: Final = b"ps:erasures"
ERASURES_MAX: Final = 100_000  # entries kept (about 2 MiB): MAXLEN ~, so a few more
TOMBSTONED_KEY: Final = b"ps:tombstoned"


class KeySchema:
    """Builds keys and fields for a given bucket count."""

    def __init__(self, buckets: int) -> None:
        if buckets < 1 or buckets & (buckets - 1):
            raise ValueError("buckets must be a power of two")
        self.buckets = buckets
        self._mask = buckets - 1

    def visitor_tag(self, uuid: str) -> bytes:
        return b"{%x}" % (int(uuid) & self._mask)

    def visitor_key(self, uuid: str) -> bytes:
        return b"u:" + self.visitor_tag(uuid)

    def profile_key(self, uuid: str) -> bytes:
        return b"p:" + self.visitor_tag(uuid)

    def visitor_slots(self, uuid: str) -> tuple[bytes, bytes, bytes]:
        """(profile key, visitor key, field) of a visitor: the hot path's read, with
        one parse of the uuid instead of three."""
        n = int(uuid)
        tag = b"{%x}" % (n & self._mask)
        return b"p:" + tag, b"u:" + tag, n.to_bytes(16, "big")

    def profile_key_of_bucket(self, bucket: int) -> bytes:
        return b"p:{%x}" % bucket

    def export_key_of_bucket(self, destination: int, bucket: int, *, staged: bool) -> bytes:
        return b"%s:%d:{%x}" % (b"xs" if staged else b"x", destination, bucket)

    def tombstone_key_of_bucket(self, destination: int, bucket: int, *, staged: bool) -> bytes:
        return b"%s:%d:{%x}" % (b"xrs" if staged else b"xr", destination, bucket)

    def bucket_of(self, field: bytes) -> int:
        """The bucket of a visitor field (uuid16)."""
        return int.from_bytes(field, "big") & self._mask

    def visitor_key_of_bucket(self, bucket: int) -> bytes:
        return b"u:{%x}" % bucket

    def reverse_key_of_bucket(self, bucket: int) -> bytes:
        return b"r:{%x}" % bucket

    @staticmethod
    def visitor_field(uuid: str) -> bytes:
        return uuid16(uuid)

    def reverse_slot(self, dpid: int, uid: str) -> tuple[bytes, bytes]:
        """(key, field) of the reverse entry for a partner uid."""
        digest = hashlib.blake2b(varint(dpid) + uid.encode(), digest_size=12).digest()
        bucket = int.from_bytes(digest[:4], "big") & self._mask
        return b"r:{%x}" % bucket, digest[4:]
