-- trim: drops entries of finished tasks whose record has expired from the per-state sets.
--
-- KEYS[1] task_prefix  prefix  `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] succeeded    ZSET    succeeded tasks, score record expiry ms
-- KEYS[3] failed       ZSET    the dead-letter set, score record expiry ms
-- KEYS[4] cancelled    ZSET    cancelled tasks, score record expiry ms
-- KEYS[5] expired      ZSET    expired tasks, score record expiry ms
--
-- ARGV[1] limit  int  most entries dropped by this call, over all four sets
--
-- Returns: how many entries were dropped. Each dropped entry's record is deleted too, in case
--   it outlived its expiry (it never should).
-- Publishes: nothing.
-- Errors: none.

local task_prefix = KEYS[1]
local succeeded = KEYS[2]
local failed = KEYS[3]
local cancelled = KEYS[4]
local expired = KEYS[5]
local limit = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local dropped = 0
for _, index in ipairs({succeeded, failed, cancelled, expired}) do
  if dropped >= limit then break end
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, limit - dropped)
  for i = 1, #due, 4000 do
    local chunk = {unpack(due, i, math.min(i + 3999, #due))}
    redis.call('ZREM', index, unpack(chunk))
    local keys = {}
    for j, ulid in ipairs(chunk) do keys[j] = task_prefix .. ulid end
    redis.call('DEL', unpack(keys))
  end
  dropped = dropped + #due
end
return dropped
