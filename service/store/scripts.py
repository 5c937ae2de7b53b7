"""Lua scripts, each touching one key or keys of one hash tag (so each runs on one
Cluster node), and the helper that queues them on a pipeline by SHA with the text as
fallback."""

from __future__ import annotations

from typing import Any, Final

# Set a hash field, answer its previous value (reverse entries: uid hash -> uuid16).
SWAP: Final = b"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""

# Replace a hash field's value only if it is still ARGV[2] ('' as ARGV[3] deletes it).
CAS: Final = b"""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then return redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# Replace a hash field's value only if it is still ARGV[2], where '' means absent
# ('' as ARGV[3] deletes it). Answers 1 when done, 0 when the value was not ARGV[2].
REPLACE: Final = b"""
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# A visitor's profile (KEYS[1]) and record (KEYS[2]), both at field ARGV[1]: the two
# keys share the visitor's hash tag, so this runs on one Cluster node too.
REREAD: Final = b"""
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1])}
"""

# Move a staged bucket of export marks (KEYS[1]) into the marks (KEYS[2]): a staged
# value '' deletes the mark. Then the tombstones the export wrote (KEYS[3], as it read
# them) leave the tombstones (KEYS[4]), each only if still the same: one an erasure
# wrote meanwhile waits for the next export. Same hash tag: one Cluster node.
COMMIT: Final = b"""
local staged = redis.call('HGETALL', KEYS[1])
for i = 1, #staged, 2 do
  if staged[i + 1] == '' then redis.call('HDEL', KEYS[2], staged[i])
  else redis.call('HSET', KEYS[2], staged[i], staged[i + 1]) end
end
redis.call('DEL', KEYS[1])
local written = redis.call('HGETALL', KEYS[3])
for i = 1, #written, 2 do
  if redis.call('HGET', KEYS[4], written[i]) == written[i + 1] then
    redis.call('HDEL', KEYS[4], written[i])
  end
end
redis.call('DEL', KEYS[3])
return #staged / 2
"""

# Stage export marks in one bucket, each only if its visitor still has a record, so
# that an erasure that got there first is never undone by the export's COMMIT.
# KEYS[1] the records, KEYS[2] the staged marks, KEYS[3] the staged tombstones (same
# hash tag: one Cluster node). ARGV: triples of field (uuid16), staged mark, and ''
# or a tombstone the export folded into the visitor's line (staged with the mark).
# Answers one 1 (staged) or 0 (no record: nothing staged) per triple.
STAGE: Final = b"""
local staged = {}
for i = 1, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2]) end
    staged[#staged + 1] = 1
  else
    staged[#staged + 1] = 0
  end
end
return staged
"""

# An erasure, atomic over one visitor's keys (one hash tag, so one Cluster node):
# KEYS[1] its record's bucket, KEYS[2] its profile's, then per file destination the
# buckets of its marks, its tombstones and its staged marks. ARGV[1] the field
# (uuid16), ARGV[2] the record as read ('' none), then per destination the mark,
# tombstone and staged mark as read ('' none, '=' .. value) and the new tombstone.
# Unless all are still as read, nothing changes (answers 0): the tombstone was made
# from them. Otherwise record, profile, marks and staged marks go (an export's COMMIT
# cannot bring a mark back), and each new tombstone, unless '', is written. Answers 1.
ERASE: Final = b"""
local field = ARGV[1]
if (redis.call('HGET', KEYS[1], field) or '') ~= ARGV[2] then return 0 end
for i = 3, #KEYS do
  local v = redis.call('HGET', KEYS[i], field)
  if (v and '=' .. v or '') ~= ARGV[i + math.floor((i - 3) / 3)] then return 0 end
end
redis.call('HDEL', KEYS[1], field)
redis.call('HDEL', KEYS[2], field)
for i = 3, #KEYS, 3 do
  redis.call('HDEL', KEYS[i], field)
  redis.call('HDEL', KEYS[i + 2], field)
  local t = ARGV[i + (i - 3) / 3 + 3]
  if t ~= '' then redis.call('HSET', KEYS[i + 1], field, t) end
end
return 1
"""

# A lock (KEYS[1]) held by token ARGV[1]: ARGV[2] > 0 renews it for that many ms,
# 0 releases it. Answers 1 when the token still held it.
LOCK: Final = b"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# Edit one visitor record (codec.parse_record's layout) in place:
# ARGV[1] field (uuid16), ARGV[2] visitor day2 or '' (keep), ARGV[3] dpid varint or ''
# (touch: refresh the last-seen day of an existing record, never create one),
# ARGV[4] new entry body (day2 + uid codec) or '' (remove the entry),
# ARGV[5] '' or the uid codec the current entry must have for anything to change.
# Answers the entry body it replaced or removed (false if none).
UPSERT: Final = b"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  if v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. string.sub(v, 3)) end
  return false
end
local out = {}
local old = false
if v then
  local pos, n = 3, #v
  while pos <= n do
    local s = pos
    while string.byte(v, pos) >= 128 do pos = pos + 1 end
    local dp = string.sub(v, s, pos)
    pos = pos + 1
    local len, mul = 0, 1
    while true do
      local b = string.byte(v, pos)
      pos = pos + 1
      len = len + (b % 128) * mul
      mul = mul * 128
      if b < 128 then break end
    end
    if dp == ARGV[3] then old = string.sub(v, pos, pos + len - 1)
    else out[#out + 1] = string.sub(v, s, pos + len - 1) end
    pos = pos + len
  end
end
if ARGV[5] ~= '' and (not old or string.sub(old, 3) ~= ARGV[5]) then return false end
if ARGV[4] ~= '' then
  local n, len = #ARGV[4], ''
  while n >= 128 do len = len .. string.char(n % 128 + 128); n = math.floor(n / 128) end
  out[#out + 1] = ARGV[3] .. len .. string.char(n) .. ARGV[4]
elseif not v then
  return false
end
local day = ARGV[2]
if day == '' then
  if v then day = string.sub(v, 1, 2) else day = string.sub(ARGV[4], 1, 2) end
end
redis.call('HSET', KEYS[1], ARGV[1], day .. table.concat(out))
return old
"""

# Add to a counter and make sure its bucket expires (one command, so that a retried
# op never leaves a bucket without its expiry).
COUNT: Final = b"""
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return n
"""

# Visitors seen this hour into a HyperLogLog that expires on its own (like COUNT: one
# command, so that a retried op never leaves the key without its expiry).
SEEN: Final = b"""
redis.call('PFADD', KEYS[1], unpack(ARGV, 2))
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 1
"""

# A whole mapping in one call, where one script may touch two keys (not on a Cluster,
# whose keys of one visitor and one uid live in different slots): UPSERT on KEYS[1]
# with ARGV[1..5], then SWAP on KEYS[2] with field ARGV[6] and owner ARGV[7].
# Answers {what UPSERT answers, what SWAP answers}.
MAP: Final = (
    b"local function upsert()\n"
    + UPSERT
    + b"""end
local old = upsert()
local owner = redis.call('HGET', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[2], ARGV[6], ARGV[7])
return {old, owner}
"""
)

ALL: Final = (SWAP, CAS, UPSERT, COUNT, SEEN, MAP, REPLACE, REREAD, COMMIT, LOCK, ERASE, STAGE)


class Scripts:
    """Queues scripts as EVALSHA once loaded, as EVAL until then (or after the server
    lost its script cache). execute_command, not pipe.evalsha(): redis-py refuses the
    latter on a Cluster pipeline, though the command routes by its key like any other."""

    def __init__(self) -> None:
        self._sha: dict[bytes, str] = {}

    async def load(self, client: Any) -> None:
        for script in ALL:
            self._sha[script] = await client.script_load(script)

    @property
    def loaded(self) -> bool:
        return bool(self._sha)

    def forget(self) -> None:
        self._sha.clear()

    def queue(self, pipe: Any, script: bytes, key: bytes, *args: bytes | int) -> None:
        self.queue_keys(pipe, script, 1, key, *args)

    def queue_keys(self, pipe: Any, script: bytes, nkeys: int, *keys_args: bytes | int) -> None:
        sha = self._sha.get(script)
        if sha is None:
            pipe.execute_command("EVAL", script, nkeys, *keys_args)
        else:
            pipe.execute_command("EVALSHA", sha, nkeys, *keys_args)
