"""The Redis broker's Lua scripts: each runs atomically, so each is one consistent step.

Keys of one stream share the hash tag ``{stream}``, so Redis Cluster keeps them in one slot:

- ``<prefix>:{<stream>}:m``  hash: ``e`` the epoch, ``s`` the newest offset (the meta key)
- ``<prefix>:{<stream>}:h``  stream: the history, entry id ``<offset>-0``, fields ``t`` (Unix
  ms at publish), ``f`` (the message frame), ``i`` (the message id)
- ``<prefix>:{<stream>}:d:<n>:<publisher>:<id>``  hash: ``o`` offset, ``c`` content id,
  ``e`` epoch of a publish, kept for ``dedup.window`` (``n`` is the publisher's length, so
  ``publisher:id`` splits one way only)
- channel ``<prefix>:{<stream>}``: ``"<offset> <epoch> <ts> <len(id)>\\n" + id + frame``

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

# Shared by the scripts: drop history entries whose ``t`` is at or before ``cutoff`` (ms).
_TRIM = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

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

local function ensure_epoch(meta, history, new_epoch)
  local epoch = redis.call('HGET', meta, 'e')
  if epoch then return epoch end
  redis.call('DEL', history)
  redis.call('HSET', meta, 'e', new_epoch, 's', 0)
  return new_epoch
end
"""

# KEYS: meta, history, dedup.  ARGV: frame head, frame middle, channel, history size,
# history ttl ms, meta ttl ms, dedup window ms (0: no de-duplication), content id,
# new epoch, message id.
# Returns {'ok', offset, epoch} | {'duplicate', offset, epoch} | {'conflict', offset, epoch}.
PUBLISH = (
    _TRIM
    + """
local meta, history, dedup = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[7])
local epoch = redis.call('HGET', meta, 'e')
if window > 0 and epoch then
  local seen = redis.call('HMGET', dedup, 'o', 'c', 'e')
  if seen[1] and seen[3] == epoch then
    if seen[2] ~= ARGV[8] then return {'conflict', tonumber(seen[1]), epoch} end
    return {'duplicate', tonumber(seen[1]), epoch}
  end
end
epoch = ensure_epoch(meta, history, ARGV[9])
local offset = redis.call('HINCRBY', meta, 's', 1)
local ts = now_ms()
local ts_text = string.format('%d', ts)
local offset_text = string.format('%d', offset)
local frame = ARGV[1] .. offset_text .. ARGV[2] .. ts_text .. '}'
local added = redis.pcall('XADD', history, 'MAXLEN', ARGV[4], offset_text .. '-0',
                          't', ts_text, 'f', frame, 'i', ARGV[10])
if type(added) == 'table' and added.err then
  -- The history is ahead of the meta key (partly lost state): start a new epoch.
  epoch = ARGV[9]
  redis.call('DEL', history)
  redis.call('HSET', meta, 'e', epoch, 's', 1)
  offset, offset_text = 1, '1'
  frame = ARGV[1] .. offset_text .. ARGV[2] .. ts_text .. '}'
  redis.call('XADD', history, 'MAXLEN', ARGV[4], '1-0', 't', ts_text, 'f', frame, 'i', ARGV[10])
end
trim_expired(history, ts - tonumber(ARGV[5]))
redis.call('PEXPIRE', history, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[6])
redis.call('PUBLISH', ARGV[3], offset_text .. ' ' .. epoch .. ' ' .. ts_text .. ' '
           .. string.len(ARGV[10]) .. '\\n' .. ARGV[10] .. frame)
if window > 0 then
  redis.call('HSET', dedup, 'o', offset, 'c', ARGV[8], 'e', epoch)
  redis.call('PEXPIRE', dedup, window)
end
return {'ok', offset, epoch}
"""
)

# KEYS: meta, history.  ARGV: the client's epoch ('' for none: the current one), the client's
# offset (-1: from now on, nothing to replay), new epoch, history ttl ms, meta ttl ms, most
# entries to return.
# Returns {epoch, newest offset, oldest offset held or -1, entries}: the entries from the
# client's offset + 1 when that resumes it (same epoch, still held), else from the oldest held
# (the twin of ``wshub.core.history.resume_plan``, which the broker applies to the answer).
READ = (
    _TRIM
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
