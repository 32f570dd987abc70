-- resume_schedule: lets a paused schedule fire again from its old next fire time.
--
-- KEYS[1] schedule  HASH  the schedule's spec and state
-- KEYS[2] due       ZSET  active schedules, score next fire ms
--
-- ARGV[1] id  string  schedule id
--
-- Sets `resumed` to now: the scheduler treats every tick up to then as missed while paused, so
-- those ticks follow the schedule's missed-tick policy.
-- Returns: array {field, value, ...}: the stored hash. Resuming an active schedule changes nothing.
-- Publishes: nothing.
-- Errors: NOT_FOUND when there is no such schedule.

local schedule = KEYS[1]
local due = KEYS[2]
local id = ARGV[1]

if redis.call('EXISTS', schedule) == 0 then
  return redis.error_reply('NOT_FOUND schedule ' .. id)
end
if redis.call('HGET', schedule, 'paused') == '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HDEL', schedule, 'paused')
  redis.call('HSET', schedule, 'updated', now, 'resumed', now)
  redis.call('ZADD', due, redis.call('HGET', schedule, 'next'), id)
end
return redis.call('HGETALL', schedule)
