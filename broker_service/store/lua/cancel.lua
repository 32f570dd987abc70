-- cancel: cancels one task: at once if it waits, by a request to its worker if it runs.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] ready            HASH     ready tasks' packed records, by ulid
-- KEYS[3] ready_lists      prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[4] scheduled        ZSET     delayed tasks and retries in backoff
-- KEYS[5] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[6] cancelled        ZSET     cancelled tasks, score record expiry ms
-- KEYS[7] events           channel  the queue's pub/sub channel
-- KEYS[8] held             ZSET     tasks held back by their concurrency key, queued score
-- KEYS[9] held_prefix      prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[10] uniq_prefix     prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[11] pending         ZSET     workflow nodes waiting for their parents
-- KEYS[12] wf_outbox       ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] ulid    string  the task's ulid
-- ARGV[2] reason  string  why ('' = "cancelled"), stored as `reason`
--
-- Returns: "cancelled" when a scheduled, queued or pending task ended CANCELLED (kept `ttl`
--   ms); "running" when the task runs: `cancel` is set and its worker must be told.
-- Limits: a waiting task that ends releases its unique key; one held back by its concurrency
--   key leaves the held sets; a ready one lets the oldest held task of its key become ready.
-- Publishes: `cancelled <ulid>` or `cancel <ulid>`; `queued <ulid>` (a held task let go); `workflow <ulid>`
--   when a workflow node ended (added to `wf_outbox`).
-- Errors: NOT_FOUND (no such task or its record expired), TERMINAL (already finished).

local task_prefix = KEYS[1]
local ready = KEYS[2]
local ready_lists = KEYS[3]
local scheduled = KEYS[4]
local start_deadlines = KEYS[5]
local cancelled = KEYS[6]
local events = KEYS[7]
local held = KEYS[8]
local held_prefix = KEYS[9]
local uniq_prefix = KEYS[10]
local pending = KEYS[11]
local wf_outbox = KEYS[12]
local ulid = ARGV[1]
local reason = ARGV[2]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

--#include put_pieces

-- ready: a ready task's record packed in `ready`, its ulid in its priority's list ------------
--#include to_ready

--#include from_ready

--#include drop_lists
-- end ready ------------------------------------------------------------------------------------

-- limits: unique keys and held tasks of waiting tasks that end ---------------------------------
local unheld = {}

--#include let_one_go

--#include limits_ended
-- end limits ------------------------------------------------------------------------------------

if reason == '' then reason = 'cancelled' end
local key = task_prefix .. ulid
local was_ready = from_ready(ulid)
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
  local ttl = tonumber(f[2]) or DEFAULT.ttl
  -- a ready task's list entry stays, stale; a queue left with none ready drops its lists
  if was_ready and redis.call('HLEN', ready) == 0 then drop_lists() end
  if state == 'scheduled' then redis.call('ZREM', scheduled, ulid) end
  if state == 'pending' then redis.call('ZREM', pending, ulid) end
  redis.call('ZREM', start_deadlines, ulid)
  limits_ended(key, ulid, state == 'queued') -- limits
  redis.call('HSET', key, 'state', 'cancelled', 'finished', now, 'reason', reason)
  redis.call('PEXPIREAT', key, now + ttl)
  redis.call('ZADD', cancelled, now + ttl, ulid)
  redis.call('PUBLISH', events, 'cancelled ' .. ulid)
  if #unheld > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(unheld, ' ')) end
  -- workflow outbox: a node that ended, for its workflow to advance (broker_service/workflows.py)
  if f[3] then
    redis.call('ZADD', wf_outbox, now, ulid)
    redis.call('PUBLISH', events, 'workflow ' .. ulid)
  end
  return 'cancelled'
end

return redis.error_reply('TERMINAL task ' .. ulid .. ' is ' .. state)
