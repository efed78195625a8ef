"""The Redis broker's Lua scripts: each runs atomically, so each is one consistent step.

Keys of one stream share the hash tag ``{stream}``, so Redis Cluster keeps them in one slot:

- ``<prefix>:{<stream>}:m``  hash: ``e`` the epoch, ``s`` the newest offset (the meta key)
- ``<prefix>:{<stream>}:h``  stream: the history, entry id ``<offset>-0``, fields ``t`` (Unix
  ms at publish), ``f`` (the message frame), ``i`` (the message id)
- ``<prefix>:{<stream>}:d:<n>:<publisher>:<id>``  hash: ``o`` offset, ``c`` content id,
  ``e`` epoch of a publish, kept for ``dedup.window`` (``n`` is the publisher's length, so
  ``publisher:id`` splits one way only)
- channel ``<prefix>:{<stream>}``: ``"<offset> <epoch> <ts> <len(id)>\\n" + id + frame``

PUBLISH takes a list of publishes to one stream and applies them in order, each exactly as if
it ran alone: ``batch.py`` sends the publishes that wait at the same time as one call per
stream (a lone publish is a list of one), so Redis runs one script, not one per publish. All
keys of one call share the stream's hash tag, so a call never spans Redis Cluster slots. Each
stored publish is its own PUBLISH on the channel, in offset order, so nodes see exactly what
one script per publish would send them.

The epoch is created by whichever script first finds the meta key missing (a new stream, or
Redis lost it): the history is deleted with it, so offsets restart at 1 in the new epoch. A
history already holding the next offset (state lost in part) starts a new epoch the same way.
Time comes from Redis (``TIME``), one clock for every node. A message older than
``history.ttl`` is trimmed from the front of the history when a script passes by, and the whole
history key expires ``history.ttl`` after the last publish; the meta key lives a cleanup
interval longer and nodes refresh it for the streams they serve, so an idle stream keeps its
epoch while anyone subscribes (as the memory broker does).
"""

from __future__ import annotations

__all__ = ["DUPLICATE", "PUBLISH", "READ"]

# The helpers, each defined once; a script is its helpers plus its body, so it carries only what
# it calls (Redis compiles and caches every script whole).

# Redis's clock in Unix milliseconds: one clock for every node.
_NOW_MS = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
"""

# Drop history entries whose ``t`` is at or before ``cutoff`` (ms).
_TRIM_EXPIRED = """
local function trim_expired(history, cutoff)
  -- The common case, nothing expired, costs one entry read.
  local head = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) > cutoff then return end
  while true do
    local oldest = redis.call('XRANGE', history, '-', '+', 'COUNT', 64)
    local last = nil
    for _, entry in ipairs(oldest) do
      if tonumber(entry[2][2]) <= cutoff then last = entry[1] else break end
    end
    if last == nil then return end
    local offset = tonumber(string.match(last, '^(%d+)'))
    redis.call('XTRIM', history, 'MINID', string.format('%d-0', offset + 1))
    if #oldest < 64 or last ~= oldest[#oldest][1] then return end
  end
end
"""

# The stream's epoch; a missing meta key (a new stream, or Redis lost it) starts a new epoch,
# and its stale history goes with it, so offsets restart at 1.
_ENSURE_EPOCH = """
local function ensure_epoch(meta, history, new_epoch)
  local epoch = redis.call('HGET', meta, 'e')
  if epoch then return epoch end
  redis.call('DEL', history)
  redis.call('HSET', meta, 'e', new_epoch, 's', 0)
  return new_epoch
end
"""

# KEYS: meta, history, then one de-duplication key per publish.
# ARGV: channel, history size, history ttl ms, meta ttl ms, new epoch, then five per publish:
# frame head, frame middle, dedup window ms (0: no de-duplication), content id, message id.
# Returns, per publish in order: {'ok' | 'duplicate' | 'conflict', offset, epoch}, or
# {'error', 0, message} for a publish whose de-duplication key is not a hash (only that one
# fails). Each publish is applied as if it ran alone, in order (an id repeated within one call
# is a duplicate of, or a conflict with, the earlier one); the meta key's offset, the
# history's trim and expiry are written once per call, which nothing can tell apart from once
# per publish because the call is atomic. After the first write nothing can fail (the meta
# and history keys have proved their type; the de-duplication keys go through pcall), so a
# call never stops half-way with messages published but the offset not stored.
PUBLISH = (
    _NOW_MS
    + _TRIM_EXPIRED
    + """
local meta, history = KEYS[1], KEYS[2]
local channel, size, new_epoch = ARGV[1], ARGV[2], ARGV[5]
local state = redis.call('HMGET', meta, 'e', 's')
local epoch, top = state[1], tonumber(state[2]) or 0
local ts, ts_text = nil, nil  -- read once, at the first publish stored
local replies = {}
for i = 1, #KEYS - 2 do
  local dedup, at = KEYS[i + 2], 5 * i
  local head, middle, window = ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
  local content, id = ARGV[at + 4], ARGV[at + 5]
  local seen = {}
  if window > 0 and epoch then
    seen = redis.pcall('HMGET', dedup, 'o', 'c', 'e')
  end
  if seen.err then
    replies[i] = {'error', 0, seen.err}
  elseif seen[1] and seen[3] == epoch then
    replies[i] = {seen[2] == content and 'duplicate' or 'conflict', tonumber(seen[1]), epoch}
  else
    if not epoch then  -- a new stream, or Redis lost it: its stale history goes too
      redis.call('DEL', history)
      epoch, top = new_epoch, 0
    end
    if not ts then
      ts = now_ms()
      ts_text = string.format('%d', ts)
    end
    top = top + 1
    local offset_text = string.format('%d', top)
    local frame = head .. offset_text .. middle .. ts_text .. '}'
    local added = redis.pcall('XADD', history, 'MAXLEN', size, offset_text .. '-0',
                              't', ts_text, 'f', frame, 'i', id)
    if type(added) == 'table' and added.err then
      -- The history is ahead of the meta key (partly lost state): start a new epoch.
      epoch, top, offset_text = new_epoch, 1, '1'
      redis.call('DEL', history)
      frame = head .. offset_text .. middle .. ts_text .. '}'
      redis.call('XADD', history, 'MAXLEN', size, '1-0', 't', ts_text, 'f', frame, 'i', id)
    end
    redis.call('PUBLISH', channel, offset_text .. ' ' .. epoch .. ' ' .. ts_text .. ' '
               .. string.len(id) .. '\\n' .. id .. frame)
    if window > 0 and type(redis.pcall('HSET', dedup, 'o', top, 'c', content, 'e', epoch))
                      == 'number' then
      redis.call('PEXPIRE', dedup, window)
    end
    replies[i] = {'ok', top, epoch}
  end
end
if ts then  -- something was stored
  redis.call('HSET', meta, 'e', epoch, 's', top)
  trim_expired(history, ts - tonumber(ARGV[3]))
  redis.call('PEXPIRE', history, ARGV[3])
  redis.call('PEXPIRE', meta, ARGV[4])
end
return replies
"""
)

# KEYS: meta, history.  ARGV: the client's epoch ('' for none: the current one), the client's
# offset (-1: from now on, nothing to replay), new epoch, history ttl ms, meta ttl ms, most
# entries to return.
# Returns {epoch, newest offset, oldest offset held or -1, entries}: the entries from the
# client's offset + 1 when that resumes it (same epoch, still held), else from the oldest held
# (the twin of ``wshub.core.history.resume_plan``, which the broker applies to the answer).
READ = (
    _NOW_MS
    + _TRIM_EXPIRED
    + _ENSURE_EPOCH
    + """
local meta, history = KEYS[1], KEYS[2]
local epoch = ensure_epoch(meta, history, ARGV[3])
local top = tonumber(redis.call('HGET', meta, 's'))
redis.call('PEXPIRE', meta, ARGV[5])
trim_expired(history, now_ms() - tonumber(ARGV[4]))
local oldest = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
local first = -1
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local seen = tonumber(ARGV[2])
local entries = {}
if seen >= 0 and first >= 0 then
  local start = first
  local same = ARGV[1] == epoch or ARGV[1] == ''  -- no epoch: read against the current one
  if same and seen <= top and seen + 1 >= first then start = seen + 1 end
  if start <= top then
    entries = redis.call('XRANGE', history, string.format('%d-0', start), '+', 'COUNT', ARGV[6])
  end
end
return {epoch, top, first, entries}
"""
)

# KEYS: meta, dedup.  ARGV: content id.
# Returns {'none'} | {'duplicate', offset} | {'conflict', offset}: what PUBLISH would answer
# before storing anything (the hub asks before running its on_publish hook).
DUPLICATE = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then return {'none'} end
local seen = redis.call('HMGET', KEYS[2], 'o', 'c', 'e')
if not seen[1] or seen[3] ~= epoch then return {'none'} end
if seen[2] ~= ARGV[1] then return {'conflict', tonumber(seen[1])} end
return {'duplicate', tonumber(seen[1])}
"""
