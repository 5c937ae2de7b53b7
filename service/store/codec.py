"""Compact binary encodings for stored values (see keys.py for where they go)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from ..profiles import Pending, Profile

_UUID_LOWER: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_UPPER: Final = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
_HEX_LOWER: Final = re.compile(r"(?:[0-9a-f]{2}){8,}")
_DECIMAL: Final = re.compile(r"[1-9][0-9]{9,}")

# Tags are below 0x20: a raw uid is printable ASCII, so its first byte never collides.
_TAG_UUID_LOWER: Final = 1
_TAG_UUID_UPPER: Final = 2
_TAG_HEX: Final = 3
_TAG_DECIMAL: Final = 4


def uuid16(uuid: str) -> bytes:
    return int(uuid).to_bytes(16, "big")


def uuid_from16(raw: bytes) -> str:
    return f"{int.from_bytes(raw, 'big'):038d}"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(raw: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, next position)."""
    byte = raw[pos]
    if byte < 0x80:  # most values fit one byte
        return byte, pos + 1
    shift = result = 0
    while True:
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_uid(uid: str) -> bytes:
    """A partner uid (printable ASCII) in as few bytes as it can be restored from."""
    if _UUID_LOWER.fullmatch(uid):
        return bytes((_TAG_UUID_LOWER,)) + bytes.fromhex(uid.replace("-", ""))
    if _UUID_UPPER.fullmatch(uid):
        return bytes((_TAG_UUID_UPPER,)) + bytes.fromhex(uid.replace("-", ""))
    if _HEX_LOWER.fullmatch(uid):
        return bytes((_TAG_HEX,)) + bytes.fromhex(uid)
    if _DECIMAL.fullmatch(uid):
        n = int(uid)
        return bytes((_TAG_DECIMAL,)) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return uid.encode("ascii")


def decode_uid(raw: bytes) -> str:
    tag = raw[0]
    body = raw[1:]
    if tag in (_TAG_UUID_LOWER, _TAG_UUID_UPPER):
        h = body.hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        return text if tag == _TAG_UUID_LOWER else text.upper()
    if tag == _TAG_HEX:
        return body.hex()
    if tag == _TAG_DECIMAL:
        return str(int.from_bytes(body, "big"))
    return raw.decode("ascii")


def pack_day(day: int) -> bytes:
    return day.to_bytes(2, "big")


def unpack_day(raw: bytes) -> int:
    return int.from_bytes(raw[:2], "big")


# A file destination's export mark, one hash field per visitor (see keys.py): the
# segments the last export sent, varint(sid)*.
def pack_sids(sids: Sequence[int]) -> bytes:
    return b"".join(varint(s) for s in sids)


def unpack_sids(raw: bytes | None) -> list[int]:
    out, pos = [], 0
    while raw and pos < len(raw):
        sid, pos = read_varint(raw, pos)
        out.append(sid)
    return out


# A file destination's removal entry of an erased visitor (see keys.py):
#   tombstone := varint(len(uid codec)) uid codec varint(sid)*
def pack_tombstone(uid: bytes, sids: Sequence[int]) -> bytes:
    """`uid`: the uid codec (encode_uid) the partner knew."""
    return varint(len(uid)) + uid + pack_sids(sids)


def unpack_tombstone(raw: bytes) -> tuple[str, list[int]]:
    """(partner uid, segment ids)."""
    size, pos = read_varint(raw, 0)
    return decode_uid(raw[pos : pos + size]), unpack_sids(raw[pos + size :])


# A visitor's record, one hash field per visitor (see keys.py):
#   record := day2 (visitor last seen) entry*
#   entry  := varint(dpid) varint(len(rest)) rest,   rest := day2 (mapping last seen) uid codec
def pack_entry(dpid: int, rest: bytes) -> bytes:
    return varint(dpid) + varint(len(rest)) + rest


def parse_record(value: bytes) -> tuple[int, dict[int, bytes]]:
    """(visitor last-seen day, {dpid: day2 + uid codec})."""
    entries: dict[int, bytes] = {}
    pos = 2
    while pos < len(value):
        dpid, pos = read_varint(value, pos)
        size, pos = read_varint(value, pos)
        entries[dpid] = value[pos : pos + size]
        pos += size
    return unpack_day(value), entries


def build_record(day: int, entries: dict[int, bytes]) -> bytes:
    return pack_day(day) + b"".join(pack_entry(d, rest) for d, rest in entries.items())


# A visitor's profile, one hash field per visitor in ``p:{<vb>}`` (see keys.py and
# profiles.py), days as offsets back from the first field to keep them one byte:
#   profile := day2 (base: newest day in it) varint(evaluated) varint(rules)
#              varint(n traits) trait* varint(n segments) varint(sid)*
#              varint(n pending) pending*
#   evaluated: 0 never, else 1 + base - the day segments were last worked out in full
#   rules:     the fingerprint of the rules they were worked out with (16 bits)
#   trait   := varint(sid) varint(n) (varint(base - day) varint(count))*
#   pending := varint(destination id) varint(segment sid) varint(base - day)
def _put(out: bytearray, n: int) -> None:
    """Append varint(n) to out (the codec's hot loop: no intermediate bytes)."""
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def pack_profile(profile: Profile) -> bytes:
    """b"" for an empty profile: nothing is stored for it."""
    if profile.empty:
        return b""
    base = profile.evaluated
    for entries in profile.traits.values():
        for day, _ in entries:
            if day > base:
                base = day
    for p in profile.pending:
        if p.day > base:
            base = p.day
    out = bytearray(pack_day(base))
    _put(out, 1 + base - profile.evaluated if profile.evaluated else 0)
    _put(out, profile.rules)
    _put(out, len(profile.traits))
    for sid, entries in profile.traits.items():
        _put(out, sid)
        _put(out, len(entries))
        for day, n in entries:
            _put(out, base - day)
            _put(out, n)
    _put(out, len(profile.segments))
    for sid in sorted(profile.segments):
        _put(out, sid)
    _put(out, len(profile.pending))
    for p in profile.pending:
        _put(out, p.destination)
        _put(out, p.segment)
        _put(out, base - p.day)
    return bytes(out)


def parse_profile(raw: bytes | None) -> Profile:
    """The profile of a stored value (None or b"": empty). A value that does not
    parse counts as empty rather than failing the request that reads it."""
    profile = Profile()
    if not raw:
        return profile
    try:
        base = unpack_day(raw)
        back, pos = read_varint(raw, 2)
        profile.evaluated = 1 + base - back if back else 0
        profile.rules, pos = read_varint(raw, pos)
        count, pos = read_varint(raw, pos)
        for _ in range(count):
            sid, pos = read_varint(raw, pos)
            n, pos = read_varint(raw, pos)
            entries = []
            for _ in range(n):
                back, pos = read_varint(raw, pos)
                times, pos = read_varint(raw, pos)
                entries.append((base - back, times))
            profile.traits[sid] = entries
        count, pos = read_varint(raw, pos)
        for _ in range(count):
            sid, pos = read_varint(raw, pos)
            profile.segments.add(sid)
        count, pos = read_varint(raw, pos)
        for _ in range(count):
            dest, pos = read_varint(raw, pos)
            segment, pos = read_varint(raw, pos)
            back, pos = read_varint(raw, pos)
            profile.pending.append(Pending(dest, segment, base - back))
    except IndexError:
        return Profile()
    return profile
