-- put_schedule: creates a schedule, or replaces the one with the same id keeping its state.
--
-- KEYS[1] schedule  HASH  the schedule's spec and state
-- KEYS[2] due       ZSET  active schedules, score next fire ms
-- KEYS[3] ids       ZSET  every schedule id, score 0
--
-- ARGV[1] id      string  schedule id
-- ARGV[2] task    string  the task template, JSON (opaque here)
-- ARGV[3] cron    string  cron expression ('' for an interval)
-- ARGV[4] tz      string  time zone of the cron expression ('' = UTC)
-- ARGV[5] every   int     interval, ms (0 for a cron expression)
-- ARGV[6] missed  int     missed-tick policy (MissedTicks value)
-- ARGV[7] desc    string  description ('' = none, stored absent)
-- ARGV[8] anchor  int     ms the interval counts from (Redis time read by the broker)
-- ARGV[9] next    int     first tick after `anchor`, ms
--
-- A replaced schedule keeps `paused`, `created`, its counters and, when cron, tz and every are
-- unchanged, `next` and `anchor`; a changed trigger takes ARGV's `anchor` and `next`.
-- Returns: array {created (1 new, 0 replaced), field, value, field, value...} (the stored hash).
-- Publishes: nothing.
-- Errors: none.

local schedule = KEYS[1]
local due = KEYS[2]
local ids = KEYS[3]
local id = ARGV[1]
local task = ARGV[2]
local cron = ARGV[3]
local tz = ARGV[4]
local every = ARGV[5]
local missed = ARGV[6]
local desc = ARGV[7]
local anchor = ARGV[8]
local next = ARGV[9]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local created = 1
local paused = false
local old = redis.call('HMGET', schedule, 'cron', 'tz', 'every', 'next', 'anchor', 'paused', 'created')
if redis.call('EXISTS', schedule) == 1 then
  created = 0
  paused = old[6] == '1'
  if (old[1] or '') == cron and (old[2] or '') == tz and (old[3] or '0') == every then
    next = old[4]
    anchor = old[5]
  end
end

redis.call('HDEL', schedule, 'cron', 'tz', 'every', 'desc')
local fields = {'task', task, 'missed', missed, 'next', next, 'anchor', anchor, 'updated', now}
if cron ~= '' then fields[#fields + 1] = 'cron'; fields[#fields + 1] = cron end
if tz ~= '' then fields[#fields + 1] = 'tz'; fields[#fields + 1] = tz end
if every ~= '0' then fields[#fields + 1] = 'every'; fields[#fields + 1] = every end
if desc ~= '' then fields[#fields + 1] = 'desc'; fields[#fields + 1] = desc end
if created == 1 then
  fields[#fields + 1] = 'created'; fields[#fields + 1] = now
  fields[#fields + 1] = 'fires'; fields[#fields + 1] = 0
  redis.call('ZADD', ids, 0, id)
end
redis.call('HSET', schedule, unpack(fields))
if not paused then redis.call('ZADD', due, next, id) end

local reply = redis.call('HGETALL', schedule)
table.insert(reply, 1, created)
return reply
