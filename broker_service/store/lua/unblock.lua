-- unblock: releases pending workflow nodes whose parents succeeded, to `ready` or `scheduled`.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] pending          ZSET     workflow nodes waiting for their parents
-- KEYS[3] ready            HASH     ready tasks' packed records, by ulid
-- KEYS[4] ready_lists      prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[5] scheduled        ZSET     delayed tasks, score due ms
-- KEYS[6] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[7] events           channel  the queue's pub/sub channel
--
-- ARGV[1..] 2 per task:
--   ulid      string  the task's ulid
--   presults  bytes   its parents' results, encoded by the broker ('' = none, stored absent)
--
-- Only a `pending` task moves, so a task is released once however often this runs. Its due
-- time is now + its `delay` (or the `due` it was submitted with, if later); its schedule-to-
-- start timeout (`start_tmo`) starts counting from there. A task ready at once goes to the tail
-- of its priority's list.
--
-- Returns: array, one state label per task: "queued" or "scheduled" when released by this call,
--   else the task's current state ("gone" when its record does not exist).
-- Publishes: `queued <ulids>`, `scheduled <ulids>`.
-- Errors: none.

local task_prefix = KEYS[1]
local pending = KEYS[2]
local ready = KEYS[3]
local ready_lists = KEYS[4]
local scheduled = KEYS[5]
local start_deadlines = KEYS[6]
local events = KEYS[7]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- ready: a ready task's record packed in `ready`, its ulid in its priority's list ------------
--#include to_ready
-- end ready ------------------------------------------------------------------------------------

local answers, released, queued_ids, scheduled_ids = {}, {}, {}, {}
for i = 1, #ARGV, 2 do
  local ulid = ARGV[i]
  local presults = ARGV[i + 1]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'prio', 'delay', 'due', 'start_tmo')
  if f[1] ~= 'pending' then
    answers[#answers + 1] = f[1] or (redis.call('HEXISTS', ready, ulid) == 1 and 'queued') or 'gone'
  else
    local due = math.max(now + tonumber(f[3] or '0'), tonumber(f[4] or '0'))
    local state = 'queued'
    if due > now then state = 'scheduled' end
    local fields = {'state', state, 'due', due}
    if presults ~= '' then fields[#fields + 1] = 'presults'; fields[#fields + 1] = presults end
    if f[5] then
      fields[#fields + 1] = 'start_by'; fields[#fields + 1] = due + tonumber(f[5])
      redis.call('ZADD', start_deadlines, due + tonumber(f[5]), ulid)
    end
    redis.call('HSET', key, unpack(fields))
    redis.call('HDEL', key, 'delay', 'start_tmo')
    if state == 'queued' then
      to_ready(ulid, false)
      queued_ids[#queued_ids + 1] = ulid
    else
      redis.call('ZADD', scheduled, due, ulid)
      scheduled_ids[#scheduled_ids + 1] = ulid
    end
    released[#released + 1] = ulid
    answers[#answers + 1] = state
  end
end

for i = 1, #released, 4000 do
  redis.call('ZREM', pending, unpack(released, i, math.min(i + 3999, #released)))
end
if #queued_ids > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(queued_ids, ' ')) end
if #scheduled_ids > 0 then redis.call('PUBLISH', events, 'scheduled ' .. table.concat(scheduled_ids, ' ')) end
return answers
