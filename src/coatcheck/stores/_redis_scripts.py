"""The Lua scripts of :class:`~coatcheck.stores.redis.RedisStore`.

A session is a hash under ``{prefix}:s:{<key>}``: ``b`` holds the whole record packed
(see ``_redis_codec.pack``), and the scripts read ``e`` (expires, float seconds), ``u`` (user
ID; absent when anonymous) and ``v`` (version), which repeat what ``b`` says; ``k``,
the token of the last save that ran without a version check (see ``_REVOKED``); and
``w``, the tokens of the last few saves (see ``wrote``). A user's
index is a sorted set ``{prefix}:u:{<user>}`` of session keys scored by ``expires_at``.
Scripts read fields with ``HMGET`` only, which lets tests tell a client's ``HGET`` (a
load) from a script's reads in the server's command counts.

Scripts prefixed ``STANDALONE_`` build index key names from the prefix they are given,
which only a single server allows; the others touch nothing but their ``KEYS``, all in
one hash slot, and are what Redis Cluster runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._redis_codec import text

if TYPE_CHECKING:
    from ._redis_url import RedisClient

# Files a session in its user's index and extends the index's own TTL, to ``ttl`` ms
# (the session's plus a grace), so that it outlives every session it lists. Entries a
# day past their deadline go: Redis dropped their sessions long ago, and a user who
# logs in often without ever listing their devices would grow the index without end.
# Deadlines are on the clocks of the app servers that wrote them, while Redis ends a
# session by a TTL on its own: the day lets a server whose clock runs hours ahead
# prune without dropping live sessions of the others, which "log out everywhere" would
# then miss.
_INDEX_ADD = """
local function index_add(index, member, score, ttl, now)
  redis.call('ZADD', index, score, member)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (tonumber(now) - 86400))
  if redis.call('PTTL', index) < tonumber(ttl) then
    redis.call('PEXPIRE', index, ttl)
  end
end
"""

# Compare-and-set on the session a save continues. ``base`` reads its fields ``e``, ``v``,
# ``u`` and ``w`` in one HMGET, the only read of a save, and returns them with the
# refusal: {0} when the session is gone or dead at ``now``, the winner's packed record
# behind a 2 when another save changed its version, or nil (go on) when ``expected`` is
# '' (no check) or matches. ``expected`` 'new' is a creation: refused, with the winner,
# while a live session holds the key.
_BASE = """
local function base(key, expected, now)
  local fields = redis.call('HMGET', key, 'e', 'v', 'u', 'w')
  if expected == '' then
    return fields, nil
  end
  if expected == 'new' then
    -- Only where no live session holds the key: else the one there is the winner.
    if fields[1] and tonumber(fields[1]) > tonumber(now) then
      return fields, {2, redis.call('HMGET', key, 'b')[1]}
    end
    return fields, nil
  end
  if not fields[1] or tonumber(fields[1]) <= tonumber(now) then
    return fields, {0}
  end
  if fields[2] ~= expected then
    return fields, {2, redis.call('HMGET', key, 'b')[1]}
  end
  return fields, nil
end

-- Every save carries a random token, and a session keeps those of its last few saves,
-- newest first, as ``w``. A save that redis-py sent again after the reply to the first
-- copy was lost finds its token there and is done, whatever saves came in between:
-- without this, it would take its own write, or a later one built on it, for a
-- parallel winner and merge its changes in a second time.
local function wrote(key, token)
  local recent = redis.call('HMGET', key, 'w')[1]
  return recent and string.find(' ' .. recent .. ' ', ' ' .. token .. ' ', 1, true) ~= nil
end
local function note_written(key, token, recent)
  local kept = {token}
  if recent then
    for earlier in string.gmatch(recent, '%S+') do
      if #kept == 4 then break end
      kept[#kept + 1] = earlier
    end
  end
  redis.call('HSET', key, 'w', table.concat(kept, ' '))
end
"""

# A save without a version check (a new session, a login) carries a random token,
# kept in the session as ``k``; redis-py sends the same token again when it resends
# the save after a broken connection. Ending a session notes that token, for a
# minute, as ``r`` in the session's receipt (a key of its slot outside the sessions'
# key space), and a save carrying it is refused: the resent copy of a save whose first
# copy landed just before the session was revoked must not bring it back. Any other
# save of that key, with a token of its own, is unaffected. Notes are written after
# the session is deleted: a full Redis (``noeviction``) refuses a script whose first
# write adds data, and a logout or revocation must still end sessions there.
_REVOKED = """
-- A full Redis (noeviction) checks memory only at a script's first write, and lets all
-- that follows through: a script that adds data after a DEL or a ZREM makes this its
-- first write, which a full server refuses (the session's ``b`` is written again later).
local function refuse_if_full(key)
  redis.call('HSET', key, 'b', '')
end
local function note_revoked(receipt, token)
  if token then
    redis.call('HSET', receipt, 'r', token)
    redis.call('PEXPIRE', receipt, 60000)
  end
end
local function revoked(receipt, token)
  return token ~= '' and redis.call('HMGET', receipt, 'r')[1] == token
end
-- A session moved to a new key (a login) notes when, as ``m`` in its old key's
-- receipt, and the new key, as ``t``, for as long as coatcheck.stores.base.MOVED_FOR
-- says (ten minutes).
local function note_moved(receipt, at, to)
  redis.call('HSET', receipt, 'm', at, 't', to)
  redis.call('PEXPIRE', receipt, 600000)
end
"""

# KEYS: session to write, session it continues (the same key unless rotating).
# ARGV: prefix, member, continued member, expected version ('' for none), last_seen_at,
#       ttl ms, score, has user (1/0), user, index ttl ms, token, then the hash's
#       field/value pairs, ``b`` first. Returns {1} when written, else the refusal of
#       base().
STANDALONE_SAVE = (
    _INDEX_ADD
    + _BASE
    + _REVOKED
    + """
local new, old = KEYS[1], KEYS[2]
local unchecked = ARGV[4] == '' or ARGV[4] == 'new'
if unchecked and revoked(ARGV[1] .. ':t:{' .. ARGV[2] .. '}', ARGV[11]) then
  return {0}
end
local previous, refused = base(old, ARGV[4], ARGV[5])
if refused then
  if wrote(new, ARGV[11]) then return {1} end
  return refused
end
local user = false
if ARGV[8] == '1' then user = ARGV[9] end
local function unindex(owner, member)
  redis.call('ZREM', ARGV[1] .. ':u:{' .. owner .. '}', member)
end
if old ~= new or (previous[3] and previous[3] ~= user) then
  refuse_if_full(new)
end
if old ~= new then
  if previous[3] then unindex(previous[3], ARGV[3]) end
  -- A resent copy of the save that made the old session must not bring it back.
  local receipt, token = ARGV[1] .. ':t:{' .. ARGV[3] .. '}', redis.call('HMGET', old, 'k')[1]
  redis.call('DEL', old)
  note_revoked(receipt, token)
  note_moved(receipt, ARGV[5], ARGV[2])
  local owner = redis.call('HMGET', new, 'u')[1]
  if owner and owner ~= user then unindex(owner, ARGV[2]) end
  redis.call('DEL', new)
elseif previous[3] and previous[3] ~= user then
  -- The same session, now someone else's or nobody's: only ``u`` can be left stale.
  unindex(previous[3], ARGV[2])
  if not user then redis.call('HDEL', new, 'u') end
end
redis.call('HSET', new, unpack(ARGV, 12))
note_written(new, ARGV[11], old == new and previous[4])
redis.call('PEXPIRE', new, ARGV[6])
if user then
  index_add(ARGV[1] .. ':u:{' .. user .. '}', ARGV[2], ARGV[7], ARGV[10], ARGV[5])
end
return {1}
"""
)

# KEYS: session, its receipt. ARGV: prefix, member. Returns how many keys were deleted.
STANDALONE_DELETE = (
    _REVOKED
    + """
local fields = redis.call('HMGET', KEYS[1], 'u', 'k')
if fields[1] then
  redis.call('ZREM', ARGV[1] .. ':u:{' .. fields[1] .. '}', ARGV[2])
end
local deleted = redis.call('DEL', KEYS[1])
note_revoked(KEYS[2], fields[2])
return deleted
"""
)

# KEYS: the user's index. ARGV: prefix, user, member to keep ('' for none), now, batch.
# Deletes only sessions the user still owns, so a stale entry cannot take another's;
# returns how many of them were live at ``now``, and how many entries are left. At most
# ``batch`` a call: a script blocks the whole server while it runs, and a user with a
# hundred thousand sessions (a bot) would hold every other client for seconds.
STANDALONE_DELETE_USER = (
    _REVOKED
    + """
local removed, batch = 0, tonumber(ARGV[5])
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, batch)) do
  if member ~= ARGV[3] and batch > 0 then
    batch = batch - 1
    local key = ARGV[1] .. ':s:{' .. member .. '}'
    local fields = redis.call('HMGET', key, 'u', 'e', 'k')
    if fields[1] == ARGV[2] then
      redis.call('DEL', key)
      note_revoked(ARGV[1] .. ':t:{' .. member .. '}', fields[3])
      if tonumber(fields[2]) > tonumber(ARGV[4]) then removed = removed + 1 end
    end
    redis.call('ZREM', KEYS[1], member)
  end
end
local left = redis.call('ZCARD', KEYS[1])
if ARGV[3] ~= '' and redis.call('ZSCORE', KEYS[1], ARGV[3]) then left = left - 1 end
return {removed, left}
"""
)

# KEYS: session. ARGV: prefix, member, now. Deletes it if dead at ``now``; 1 or 0.
STANDALONE_PURGE = """
local deadline = redis.call('HMGET', KEYS[1], 'e')[1]
if not deadline or tonumber(deadline) > tonumber(ARGV[3]) then
  return 0
end
local owner = redis.call('HMGET', KEYS[1], 'u')[1]
if owner then
  redis.call('ZREM', ARGV[1] .. ':u:{' .. owner .. '}', ARGV[2])
end
return redis.call('DEL', KEYS[1])
"""

# KEYS: session, its receipt. ARGV: expected version ('' for none), last_seen_at, the
# key that continues it ('' for none). Deletes the session, returning {1, owner or
# false}; else the refusal of base(). A rotation leaves a receipt for a minute (the
# successor, ``t``, and the owner, ``o``) in a key of the same slot outside the session
# namespace: a take that redis-py resends after a broken connection finds it and
# answers as the first did, instead of refusing a session that it ended itself.
TAKE = (
    _BASE
    + _REVOKED
    + """
local previous, refused = base(KEYS[1], ARGV[1], ARGV[2])
if refused then
  if ARGV[3] ~= '' then
    local receipt = redis.call('HMGET', KEYS[2], 't', 'o')
    if receipt[1] == ARGV[3] then return {1, receipt[2]} end
  end
  return refused
end
-- Ended, or moved to a new key: either way a resent copy of the save that made it
-- must not bring it back.
local token = redis.call('HMGET', KEYS[1], 'k')[1]
-- A rotation is refused, not begun, on a full node: its write, which comes next on
-- the new key's slot, would be refused there, and the session lost between the two.
if ARGV[3] ~= '' then refuse_if_full(KEYS[1]) end
redis.call('DEL', KEYS[1])
note_revoked(KEYS[2], token)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 't', ARGV[3])
  if previous[3] then redis.call('HSET', KEYS[2], 'o', previous[3]) end
  redis.call('PEXPIRE', KEYS[2], 60000)
  note_moved(KEYS[2], ARGV[2], ARGV[3])
end
return {1, previous[3]}
"""
)

# KEYS: session, its receipt. ARGV: expected version ('' for none), last_seen_at, ttl
# ms, token, then field/value pairs, ``b`` first. Returns {1, previous owner or false};
# else the refusal of base(), or {0} where REVOKE_MEMBER barred the key or a revocation
# noted this save's token.
WRITE = (
    _BASE
    + _REVOKED
    + """
if redis.call('HEXISTS', KEYS[1], 'x') == 1 then
  return {0}
end
if (ARGV[1] == '' or ARGV[1] == 'new') and revoked(KEYS[2], ARGV[4]) then
  return {0}
end
local previous, refused = base(KEYS[1], ARGV[1], ARGV[2])
if refused then
  if wrote(KEYS[1], ARGV[4]) then return {1, false} end
  return refused
end
-- The token of the save that made the session stays with it (a later save carries
-- none): ending the session notes it, so that a resent copy of that save is refused.
local made = redis.call('HGET', KEYS[1], 'k')
refuse_if_full(KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if made and redis.call('HEXISTS', KEYS[1], 'k') == 0 then
  redis.call('HSET', KEYS[1], 'k', made)
end
note_written(KEYS[1], ARGV[4], previous[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, previous[3]}
"""
)

# KEYS: a user's index. ARGV: member, score, index ttl ms, now.
INDEX_ADD = (
    _INDEX_ADD
    + """
index_add(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: a user's index. Returns member, score, member, score... as strings, whatever
# protocol (RESP2 or RESP3) the client speaks.
MEMBERS = """
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
"""

# KEYS: a user's index. ARGV: member, score, member, score... Removes each member whose
# score is unchanged: a save that re-filed it meanwhile keeps its entry.
UNINDEX_IF_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""

# KEYS: session, its receipt. ARGV: user, now, bar ttl ms, the index entry's score.
# Deletes the session only if that user still owns it: 2 when it was live at ``now``, 1
# when already dead. Where nothing is there yet and the entry's deadline is ahead, a
# save of this user's is in flight (it files the index entry first): the key is barred
# with a hash holding only ``x``, which WRITE refuses, so that session cannot come to
# life once its user was logged out everywhere. An entry past its deadline points at a
# session Redis dropped itself, and is only let go. Both: 3. Else 0.
REVOKE_MEMBER = (
    _REVOKED
    + """
local fields = redis.call('HMGET', KEYS[1], 'u', 'e', 'k')
if fields[1] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  note_revoked(KEYS[2], fields[3])
  if tonumber(fields[2]) > tonumber(ARGV[2]) then return 2 end
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- A full Redis refuses the bar; the save it bars adds data, and is refused too.
  if tonumber(ARGV[4]) > tonumber(ARGV[2]) and redis.pcall('HSET', KEYS[1], 'x', '1') == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return 3
end
return 0
"""
)

# KEYS: session. ARGV: now. Deletes it if dead at ``now``: {1, owner or false}, or {0}.
PURGE = """
local fields = redis.call('HMGET', KEYS[1], 'e', 'u')
if not fields[1] or tonumber(fields[1]) > tonumber(ARGV[1]) then
  return {0}
end
redis.call('DEL', KEYS[1])
return {1, fields[2]}
"""


class Scripts:
    """Every script, registered once on a client; redis-py loads each on its first use."""

    def __init__(self, client: RedisClient) -> None:
        register = client.register_script
        self.standalone_save = register(STANDALONE_SAVE)
        self.standalone_delete = register(STANDALONE_DELETE)
        self.standalone_delete_user = register(STANDALONE_DELETE_USER)
        self.standalone_purge = register(STANDALONE_PURGE)
        self.take = register(TAKE)
        self.write = register(WRITE)
        self.index_add = register(INDEX_ADD)
        self.members = register(MEMBERS)
        self.unindex = register(UNINDEX_IF_UNCHANGED)
        self.revoke_member = register(REVOKE_MEMBER)
        self.purge = register(PURGE)

    async def entries(self, index: str) -> list[tuple[str, str]]:
        """A user's index as (member, score) pairs."""
        flat = [text(item) for item in await self.members(keys=[index])]
        return list(zip(flat[::2], flat[1::2], strict=True))
