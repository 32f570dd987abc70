-- promote: moves due tasks from `scheduled` to `ready` (delays and retry backoffs that ended).
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] scheduled    ZSET     delayed tasks, score due ms
-- KEYS[3] ready        HASH     ready tasks' packed records, by ulid
-- KEYS[4] ready_lists  prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[5] queued       ZSET     ready tasks as brokers before 0.8 kept them (each with its task hash)
-- KEYS[6] events       channel  the queue's pub/sub channel
--
-- ARGV[1] limit  int  most tasks moved by this call (from each of `scheduled` and `queued`)
--
-- Due tasks go to the tail of their priority's list, in due order. Ready tasks an older broker
-- left in `queued` move into `ready` too, to the head of their lists, newest first, so they
-- keep their order ahead of the tasks submitted since.
--
-- Returns: how many tasks were moved.
-- Publishes: `queued <ulids>`.
-- Errors: none.

local task_prefix = KEYS[1]
local scheduled = KEYS[2]
local ready = KEYS[3]
local ready_lists = KEYS[4]
local queued = KEYS[5]
local events = KEYS[6]
local limit = tonumber(ARGV[1])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- ready: a ready task's record packed in `ready`, its ulid in its priority's list ------------
--#include to_ready
-- end ready ------------------------------------------------------------------------------------

--#include in_chunks

local due = redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, limit)
local ids = {}
for _, ulid in ipairs(due) do
  local key = task_prefix .. ulid
  if redis.call('HGET', key, 'state') == 'scheduled' then
    to_ready(ulid, false)
    ids[#ids + 1] = ulid
  end
end
in_chunks('ZREM', scheduled, due)

-- ready tasks of a broker before 0.8 (only a `queued` task's hash moves: a stale entry is dropped)
local legacy = redis.call('ZPOPMAX', queued, limit)
for j = 1, #legacy, 2 do
  local ulid = legacy[j]
  if redis.call('HGET', task_prefix .. ulid, 'state') == 'queued' then
    to_ready(ulid, true)
    ids[#ids + 1] = ulid
  end
end
if #ids > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(ids, ' ')) end
return #ids
