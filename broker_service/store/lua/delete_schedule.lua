-- delete_schedule: removes a schedule; the tasks it submitted are left alone.
--
-- KEYS[1] schedule  HASH  the schedule's spec and state
-- KEYS[2] due       ZSET  active schedules, score next fire ms
-- KEYS[3] ids       ZSET  every schedule id, score 0
--
-- ARGV[1] id  string  schedule id
--
-- Returns: 1.
-- Publishes: nothing.
-- Errors: NOT_FOUND when there is no such schedule.

local schedule = KEYS[1]
local due = KEYS[2]
local ids = KEYS[3]
local id = ARGV[1]

if redis.call('DEL', schedule) == 0 then
  return redis.error_reply('NOT_FOUND schedule ' .. id)
end
redis.call('ZREM', due, id)
redis.call('ZREM', ids, id)
return 1
