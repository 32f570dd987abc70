-- expire: ends waiting tasks past their schedule-to-start deadline as EXPIRED.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[3] ready            HASH     ready tasks' packed records, by ulid
-- KEYS[4] ready_lists      prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[5] scheduled        ZSET     delayed tasks
-- KEYS[6] expired          ZSET     expired tasks, score record expiry ms
-- KEYS[7] events           channel  the queue's pub/sub channel
-- KEYS[8] held             ZSET     tasks held back by their concurrency key, queued score
-- KEYS[9] held_prefix      prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[10] uniq_prefix     prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[11] wf_outbox       ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] limit  int  most deadlines handled by this call
--
-- Returns: array of the ulids that ended EXPIRED (reason schedule_to_start, kept `ttl` ms).
--   A deadline whose task already started or finished is only dropped from the index.
-- Limits: an expired task releases its unique key; one held back by its concurrency key leaves
--   the held sets; a ready one lets the oldest held task of its key become ready.
-- Publishes: `expired <ulids>`, `queued <ulids>` (held tasks let go). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local start_deadlines = KEYS[2]
local ready = KEYS[3]
local ready_lists = KEYS[4]
local scheduled = KEYS[5]
local expired = KEYS[6]
local events = KEYS[7]
local held = KEYS[8]
local held_prefix = KEYS[9]
local uniq_prefix = KEYS[10]
local wf_outbox = KEYS[11]
local limit = tonumber(ARGV[1])

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

--#include in_chunks

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

local due = redis.call('ZRANGEBYSCORE', start_deadlines, '-inf', now, 'LIMIT', 0, limit)
local ids, from_scheduled, to_expired, wf_done = {}, {}, {}, {}
local any_ready = false
for _, ulid in ipairs(due) do
  local key = task_prefix .. ulid
  local was_ready = from_ready(ulid)
  any_ready = any_ready or was_ready
  local f = redis.call('HMGET', key, 'state', 'attempt', 'ttl', 'wf')
  local state = f[1]
  if (state == 'queued' or state == 'scheduled' or state == 'pending') and tonumber(f[2] or '0') == 0 then
    local ttl = tonumber(f[3]) or DEFAULT.ttl
    if state == 'scheduled' then from_scheduled[#from_scheduled + 1] = ulid end
    limits_ended(key, ulid, state == 'queued')
    redis.call('HSET', key, 'state', 'expired', 'reason', 'schedule_to_start', 'finished', now)
    redis.call('PEXPIREAT', key, now + ttl)
    to_expired[#to_expired + 1] = now + ttl; to_expired[#to_expired + 1] = ulid
    ids[#ids + 1] = ulid
    if f[4] then wf_done[#wf_done + 1] = ulid end
  elseif was_ready then
    to_ready(ulid, true) -- ready again after an attempt: the deadline no longer applies
  end
end

in_chunks('ZREM', start_deadlines, due)
-- the list entries of ready tasks that expired stay, stale; a queue left with none ready drops its lists
if any_ready and redis.call('HLEN', ready) == 0 then drop_lists() end
in_chunks('ZREM', scheduled, from_scheduled)
in_chunks('ZADD', expired, to_expired)
if #ids > 0 then redis.call('PUBLISH', events, 'expired ' .. table.concat(ids, ' ')) end
if #unheld > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(unheld, ' ')) end
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return ids
