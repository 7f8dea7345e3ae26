"""The server-side scripts that change a queue: move (requeue), remove (drain) and restore.
Each runs over keys of one ``{ENV:TYPE}`` slot, so each call is atomic; each checks the queue
lock's token first (a fencing token), so a run that lost its lock changes nothing. Also the
batch sizes they are called with and the notification that follows a change. Why they are
written this way: ``docs/design/queues.md``."""

from __future__ import annotations

from esctl import redisio
from esctl.config import redact
from esctl.queues.refs import problem

MOVE_BATCH = 1000
"""Messages per server-side script call: large enough that round trips do not dominate,
small enough that one call never blocks Redis for long (about a millisecond). Read at call
time, so a test may patch it here."""
MOVE_BATCH_BYTES = 4 << 20
"""A batch is also cut when its values reach this many bytes."""

# Values travel as ARGV; pushes are sent in chunks so Lua's unpack() never meets its stack limit.

_LUA_PUSH = """
local function push(cmd, key, seq)
  -- pushes seq[#seq] first and seq[1] last: RPUSH leaves seq[1] at the tail, LPUSH at the head
  local i = #seq
  while i >= 1 do
    local j = math.max(1, i - 999)
    local chunk = {}
    for x = i, j, -1 do chunk[#chunk + 1] = seq[x] end
    redis.call(cmd, key, unpack(chunk))
    i = j - 1
  end
end
"""

_LUA_GUARD = """
-- Scripts are not rolled back when a command fails half-way, so everything that could fail is
-- checked before the first change: the lock is still this run's (a fencing token), the lists
-- are lists, and Redis accepts writes (SET is refused when it is out of memory; a removal is
-- not, and a push after it would be).
-- `checks`: the writes the script is about to make, {command, key, args...} each. An ACL user
-- refused one of them (Redis 7's redis.acl_check_cmd; older servers have no ACL selectors to
-- check) would stop the script half-way, a message removed and not pushed: refuse first.
local function guard(lock, token, ttl, lists, checks)
  if redis.acl_check_cmd then
    for _, c in ipairs(checks) do
      if not redis.acl_check_cmd(unpack(c)) then
        return redis.error_reply('NOPERM this user has no permissions to run the ' .. c[1] ..
          ' command on ' .. c[2] .. '; nothing was changed')
      end
    end
  end
  if redis.call('GET', lock) ~= token then
    return redis.error_reply('ESCTL_LOCK the lock ' .. lock .. ' is no longer held by this run')
  end
  for _, key in ipairs(lists) do
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'list' and kind ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a list')
    end
  end
  redis.call('SET', lock, token, 'PX', ttl)
  return false
end
"""

_LUA_TAKE = """
-- Removes ARGV[first .. first+n-1] (head-to-tail order) from `key`, one occurrence each, looking
-- from the head (dir 1) or the tail (dir -1); returns 1/0 per value (removed/not there). With
-- `edge`, the caller saw these values as the list's first (or last) n: when they still are,
-- one LTRIM takes them all, the same as n LREMs would.
local function take(key, dir, edge, first, n)
  local removed = {}
  if edge then
    local got
    if dir > 0 then got = redis.call('LRANGE', key, 0, n - 1)
    else got = redis.call('LRANGE', key, -n, -1) end
    local same = #got == n
    for i = 1, n do
      if not same then break end
      same = got[i] == ARGV[first + i - 1]
    end
    if same then
      if dir > 0 then redis.call('LTRIM', key, n, -1) else redis.call('LTRIM', key, 0, -n - 1) end
      for i = 1, n do removed[i] = 1 end
      return removed
    end
  end
  if dir > 0 then
    for i = 1, n do removed[i] = redis.call('LREM', key, 1, ARGV[first + i - 1]) end
  else
    for i = n, 1, -1 do removed[i] = redis.call('LREM', key, -1, ARGV[first + i - 1]) end
  end
  return removed
end
"""

_LUA_MERGE = """
-- Interleaves `values` (ascending `at`) with `popped` (messages taken off one end, nearest it
-- first) so that each value stands `at[i]` places from that end (after all of `popped` when the
-- list is shorter); returns the sequence nearest-the-end first.
local function merge(popped, at, values)
  local seq = {}
  local p, i, pos = 1, 1, 0
  while i <= #values do
    if at[i] <= pos or p > #popped then
      seq[#seq + 1] = values[i]; i = i + 1
    else
      seq[#seq + 1] = popped[p]; p = p + 1
    end
    pos = pos + 1
  end
  while p <= #popped do seq[#seq + 1] = popped[p]; p = p + 1 end
  return seq
end
"""

MOVE_SCRIPT = (
    _LUA_PUSH
    + _LUA_GUARD
    + _LUA_TAKE
    + """
-- KEYS[1] lock, KEYS[2] source list, KEYS[3] destination list, KEYS[4..] RetryData hashes
-- ARGV[1] lock token, ARGV[2] lock TTL (ms)
-- ARGV[3] 1: look values up from the head, -1: from the tail; ARGV[4] 1: try the edge; ARGV[5] n
-- ARGV[6 .. 5+n] values in head-to-tail order of the source snapshot
-- ARGV[6+n .. 5+2n] index into KEYS of the value's RetryData hash to delete once moved (0: none)
local checks = {{'SET', KEYS[1], 'x'}, {'LTRIM', KEYS[2], '0', '-1'}, {'LREM', KEYS[2], '1', 'x'},
  {'RPUSH', KEYS[3], 'x'}}
for i = 4, #KEYS do checks[#checks + 1] = {'DEL', KEYS[i]} end
local err = guard(KEYS[1], ARGV[1], ARGV[2], {KEYS[2], KEYS[3]}, checks)
if err then return err end
local n = tonumber(ARGV[5])
local removed = take(KEYS[2], tonumber(ARGV[3]), ARGV[4] == '1', 6, n)
local moved = {}
local cleared = 0
for i = 1, n do
  if removed[i] == 1 then
    moved[#moved + 1] = ARGV[5 + i]
    local k = tonumber(ARGV[5 + n + i])
    if k > 0 then cleared = cleared + redis.call('DEL', KEYS[k]) end
  end
end
-- the last value (the oldest) is pushed last: it is at the tail, taken next
local reversed = {}
for i = #moved, 1, -1 do reversed[#reversed + 1] = moved[i] end
push('RPUSH', KEYS[3], reversed)
return {removed, cleared}
"""
)

REMOVE_SCRIPT = (
    _LUA_GUARD
    + _LUA_TAKE
    + """
-- KEYS[1] lock, KEYS[2] list, KEYS[3] (optional) the drain's outcome record
-- ARGV[1] lock token, ARGV[2] lock TTL (ms)
-- ARGV[3] 1: look values up from the head, -1: from the tail; ARGV[4] 1: try the edge
-- ARGV[5] n, ARGV[6 .. 5+n] values in head-to-tail order of the snapshot
-- ARGV[6+n .. 5+2n] their record numbers in the backup file, ARGV[6+2n] the record's TTL (ms)
-- Returns 1/0 per value (removed/gone). With KEYS[3], the batch's outcome (record numbers) is
-- written there in the same call, so it is known even when the caller dies before its backup
-- file records it.
local err = guard(KEYS[1], ARGV[1], ARGV[2], {KEYS[2]},
  {{'SET', KEYS[1], 'x'}, {'LTRIM', KEYS[2], '0', '-1'}, {'LREM', KEYS[2], '1', 'x'},
   {'SET', KEYS[3] or KEYS[1], 'x'}})
if err then return err end
local n = tonumber(ARGV[5])
local removed = take(KEYS[2], tonumber(ARGV[3]), ARGV[4] == '1', 6, n)
if KEYS[3] then
  local r, g = {}, {}
  for i = 1, n do
    if removed[i] == 1 then r[#r + 1] = ARGV[5 + n + i] else g[#g + 1] = ARGV[5 + n + i] end
  end
  redis.call('SET', KEYS[3], '{"removed":[' .. table.concat(r, ',') .. '],"gone":['
    .. table.concat(g, ',') .. ']}', 'PX', ARGV[6 + 2 * n])
end
return removed
"""
)

RESTORE_SCRIPT = (
    _LUA_PUSH
    + _LUA_GUARD
    + _LUA_MERGE
    + """
-- KEYS[1] lock, KEYS[2] target list, KEYS[3] progress counter of this backup and target
-- ARGV[1] lock token, ARGV[2] lock TTL (ms), ARGV[3] records the caller believes restored,
-- ARGV[4] counter TTL (ms), ARGV[5] k, ARGV[6 .. 5+k] positions counted from the tail
-- (ascending), ARGV[6+k .. 5+2k] values.
-- Inserts each value so that it ends at its position from the tail (clamped to the list),
-- keeping the other messages in their order, and advances the counter, all at once.
local err = guard(KEYS[1], ARGV[1], ARGV[2], {KEYS[2]},
  {{'SET', KEYS[1], 'x'}, {'RPOP', KEYS[2]}, {'LPOP', KEYS[2]}, {'RPUSH', KEYS[2], 'x'},
   {'LPUSH', KEYS[2], 'x'}, {'SET', KEYS[3], 'x'}})
if err then return err end
local done = tonumber(redis.call('GET', KEYS[3]) or '0')
if done ~= tonumber(ARGV[3]) then
  return redis.error_reply('ESCTL_PROGRESS restore progress is ' .. done .. ', not ' .. ARGV[3])
end
local k = tonumber(ARGV[5])
local len = redis.call('LLEN', KEYS[2])
local tail_cost = math.min(len, tonumber(ARGV[5 + k]) + 1 - k)
local head_cost = math.max(0, len - tonumber(ARGV[6]))
-- Work from the cheaper end: pop what lies between it and the farthest insertion, then push it
-- back with the values merged in. `at[i]`: where the i-th value, nearest that end first, ends
-- counted from that end (from the head: the final length - 1 minus its place from the tail).
local from_tail = tail_cost <= head_cost
local at, values = {}, {}
for i = 1, k do
  local j = from_tail and i or k + 1 - i
  local place = tonumber(ARGV[5 + j])
  at[i] = from_tail and place or len + k - 1 - place
  values[i] = ARGV[5 + k + j]
end
local cost = from_tail and tail_cost or head_cost
local popped = {}
if cost > 0 then popped = redis.call(from_tail and 'RPOP' or 'LPOP', KEYS[2], cost) or {} end
push(from_tail and 'RPUSH' or 'LPUSH', KEYS[2], merge(popped, at, values))
redis.call('SET', KEYS[3], done + k, 'PX', ARGV[4])
return done + k
"""
)


def failure_text(exc: object) -> str:
    """A batch's error (reply or exception) as a problem shows it: the password hidden, and a
    refusal with its NOPERM word (redis-py drops it from a NoPermissionError's text)."""
    text = redact(str(exc))
    if redisio.is_denied(exc) and not text.startswith("NOPERM"):
        text = f"NOPERM {text}"
    return text


def refusal_hint(client: redisio.RedisClient, exc: object) -> str:
    """What a problem adds for a batch the ACL user was refused (NOPERM) after others ran."""
    return "the ACL user may not run it: " + (
        redisio.permission_denied(redisio.describe(client), exc).hint or ""
    )


def notify(client: redisio.RedisClient, channel: str, problems: list[dict[str, str]]) -> bool:
    """PUBLISH ``1`` on ``channel`` as the library does after a publish; a failure is a
    problem, not an error (the messages are in place either way)."""
    try:
        client.publish(channel, "1")
    except redisio.REDIS_ERRORS as exc:
        problems.append(
            problem(
                "notify_failed",
                channel,
                f"PUBLISH failed ({redact(str(exc))}); subscribers pick the messages up "
                "on their next notification or restart",
            )
        )
        return False
    return True
