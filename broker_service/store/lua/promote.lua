-- promote: moves due tasks from `scheduled` to `queued` (delays and retry backoffs that ended).
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] scheduled    ZSET     delayed tasks, score due ms
-- KEYS[3] queued       ZSET     ready tasks, score (9 - prio) * 1e13 + due
-- KEYS[4] events       channel  the queue's pub/sub channel
--
-- ARGV[1] limit  int  most tasks moved by this call
--
-- Returns: how many tasks were moved. Their place in `queued` is their due time, not the
--   time of the move, so a late promotion does not cost them their turn.
-- Publishes: `queued <ulids>`.
-- Errors: none.

local task_prefix = KEYS[1]
local scheduled = KEYS[2]
local queued = KEYS[3]
local events = KEYS[4]
local limit = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function in_chunks(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

local due = redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local gone, to_queue, ids = {}, {}, {}
for j = 1, #due, 2 do
  local ulid = due[j]
  local key = task_prefix .. ulid
  gone[#gone + 1] = ulid
  local f = redis.call('HMGET', key, 'state', 'prio')
  if f[1] == 'scheduled' then
    redis.call('HSET', key, 'state', 'queued')
    to_queue[#to_queue + 1] = (9 - tonumber(f[2] or '0')) * 1e13 + tonumber(due[j + 1])
    to_queue[#to_queue + 1] = ulid
    ids[#ids + 1] = ulid
  end
end

in_chunks('ZREM', scheduled, gone)
in_chunks('ZADD', queued, to_queue)
if #ids > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(ids, ' ')) end
return #ids
