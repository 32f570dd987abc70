-- cancel: cancels one task: at once if it waits, by a request to its worker if it runs.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] queued           ZSET     ready tasks
-- KEYS[3] scheduled        ZSET     delayed tasks and retries in backoff
-- KEYS[4] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[5] cancelled        ZSET     cancelled tasks, score record expiry ms
-- KEYS[6] events           channel  the queue's pub/sub channel
-- KEYS[7] pending          ZSET     workflow nodes waiting for their parents
-- KEYS[8] wf_outbox        ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] ulid    string  the task's ulid
-- ARGV[2] reason  string  why ('' = "cancelled"), stored as `reason`
--
-- Returns: "cancelled" when a scheduled, queued or pending task ended CANCELLED (kept `ttl`
--   ms); "running" when the task runs: `cancel` is set and its worker must be told.
-- Publishes: `cancelled <ulid>` or `cancel <ulid>`; `workflow <ulid>` when a workflow node ended
--   (added to `wf_outbox`).
-- Errors: NOT_FOUND (no such task or its record expired), TERMINAL (already finished).

local task_prefix = KEYS[1]
local queued = KEYS[2]
local scheduled = KEYS[3]
local start_deadlines = KEYS[4]
local cancelled = KEYS[5]
local events = KEYS[6]
local pending = KEYS[7]
local wf_outbox = KEYS[8]
local ulid = ARGV[1]
local reason = ARGV[2]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if reason == '' then reason = 'cancelled' end
local key = task_prefix .. ulid
local f = redis.call('HMGET', key, 'state', 'ttl', 'wf')
local state = f[1]
if not state then
  return redis.error_reply('NOT_FOUND task ' .. ulid)
end

if state == 'running' then
  redis.call('HSET', key, 'cancel', '1', 'reason', reason)
  redis.call('PUBLISH', events, 'cancel ' .. ulid)
  return 'running'
end

if state == 'queued' or state == 'scheduled' or state == 'pending' then
  local ttl = tonumber(f[2])
  if state == 'queued' then redis.call('ZREM', queued, ulid) end
  if state == 'scheduled' then redis.call('ZREM', scheduled, ulid) end
  if state == 'pending' then redis.call('ZREM', pending, ulid) end
  redis.call('ZREM', start_deadlines, ulid)
  redis.call('HSET', key, 'state', 'cancelled', 'finished', now, 'reason', reason)
  redis.call('PEXPIREAT', key, now + ttl)
  redis.call('ZADD', cancelled, now + ttl, ulid)
  redis.call('PUBLISH', events, 'cancelled ' .. ulid)
  -- workflow outbox: a node that ended, for its workflow to advance (broker_service/workflows.py)
  if f[3] then
    redis.call('ZADD', wf_outbox, now, ulid)
    redis.call('PUBLISH', events, 'workflow ' .. ulid)
  end
  return 'cancelled'
end

return redis.error_reply('TERMINAL task ' .. ulid .. ' is ' .. state)
