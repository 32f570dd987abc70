-- advance_schedule: moves a schedule past the ticks a pass submitted, if no one did it first.
--
-- KEYS[1] schedule  HASH  the schedule's spec and state
-- KEYS[2] due       ZSET  active schedules, score next fire ms
--
-- ARGV[1] id        string  schedule id
-- ARGV[2] expected  int     the next fire ms the pass read; anything else means it lost the race
-- ARGV[3] next      int     the new next fire ms
-- ARGV[4] fired     int     ticks the pass submitted (0: it skipped them all)
-- ARGV[5] last      int     the latest tick submitted, ms (ignored when fired is 0)
-- ARGV[6] last_task string  id of that tick's task (ignored when fired is 0)
--
-- A compare-and-set: replicas that submitted the same ticks (the same task ids) race here and
-- exactly one wins, so each tick is counted once. A paused or deleted schedule is left alone.
-- Returns: 1 when this call advanced the schedule, 0 when `next` was no longer `expected`.
-- Publishes: nothing.
-- Errors: none.

local schedule = KEYS[1]
local due = KEYS[2]
local id = ARGV[1]
local expected = ARGV[2]
local next = ARGV[3]
local fired = tonumber(ARGV[4])
local last = ARGV[5]
local last_task = ARGV[6]

local state = redis.call('HMGET', schedule, 'next', 'paused')
if state[1] ~= expected or state[2] == '1' then
  return 0
end
redis.call('HSET', schedule, 'next', next)
if fired > 0 then
  redis.call('HSET', schedule, 'last', last, 'last_task', last_task)
  redis.call('HINCRBY', schedule, 'fires', fired)
end
redis.call('ZADD', due, next, id)
return 1
