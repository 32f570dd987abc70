-- pause_schedule: stops a schedule from firing; it keeps its next fire time for the resume.
--
-- KEYS[1] schedule  HASH  the schedule's spec and state
-- KEYS[2] due       ZSET  active schedules, score next fire ms
--
-- ARGV[1] id  string  schedule id
--
-- Returns: array {field, value, ...}: the stored hash. Pausing a paused schedule changes nothing.
-- Publishes: nothing.
-- Errors: NOT_FOUND when there is no such schedule.

local schedule = KEYS[1]
local due = KEYS[2]
local id = ARGV[1]

if redis.call('EXISTS', schedule) == 0 then
  return redis.error_reply('NOT_FOUND schedule ' .. id)
end
if redis.call('HGET', schedule, 'paused') ~= '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', schedule, 'paused', 1, 'updated', now)
  redis.call('ZREM', due, id)
end
return redis.call('HGETALL', schedule)
