-- cancel_running: a worker stopped running tasks because they were cancelled; they end CANCELLED.
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running      ZSET     leased tasks
-- KEYS[3] cancelled    ZSET     cancelled tasks, score record expiry ms
-- KEYS[4] events       channel  the queue's pub/sub channel
-- KEYS[5] ready        HASH     ready tasks' packed records, by ulid
-- KEYS[6] ready_lists  prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[7] held         ZSET     tasks held back by their concurrency key, queued score
-- KEYS[8] conc_prefix  prefix   `{ns:q}:conc:`; a concurrency key appended names its SET of running ulids
-- KEYS[9] held_prefix  prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[10] uniq_prefix prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[11] wf_outbox   ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1..] 2 per lease:
--   ulid   string  the task's ulid
--   token  int     the lease token presented
--
-- Returns: array, one integer per lease: 1 if it was current (now CANCELLED, kept `ttl` ms),
--   0 if stale.
-- Limits: the task releases its unique key and its concurrency slot; the oldest task held back by
--   its concurrency key becomes ready again, at the head of its list.
-- Publishes: `cancelled <ulids>`, `queued <ulids>` (held tasks let go). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local running = KEYS[2]
local cancelled = KEYS[3]
local events = KEYS[4]
local ready = KEYS[5]
local ready_lists = KEYS[6]
local held = KEYS[7]
local conc_prefix = KEYS[8]
local held_prefix = KEYS[9]
local uniq_prefix = KEYS[10]
local wf_outbox = KEYS[11]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

--#include in_chunks

-- ready: a ready task's record packed in `ready`, its ulid in its priority's list ------------
--#include to_ready
-- end ready ------------------------------------------------------------------------------------

-- limits: unique keys and concurrency slots of tasks that leave running -------------------------
local unheld = {}

--#include let_one_go

--#include limits_left
-- end limits ------------------------------------------------------------------------------------

local answers, done_ids, to_cancel = {}, {}, {}
local wf_done = {}
for i = 1, #ARGV, 2 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token', 'ttl', 'reason', 'cancel', 'wf', 'uniq', 'ckey')
  if f[1] ~= 'running' or f[2] ~= token then
    answers[#answers + 1] = 0
  else
    local ttl = tonumber(f[3]) or DEFAULT.ttl
    if f[5] and f[4] then
      redis.call('HSET', key, 'state', 'cancelled', 'finished', now)
    else
      redis.call('HSET', key, 'state', 'cancelled', 'finished', now, 'reason', 'cancelled')
    end
    if f[5] then redis.call('HDEL', key, 'cancel') end
    redis.call('PEXPIREAT', key, now + ttl)
    limits_left(ulid, f[7], f[8], true)
    to_cancel[#to_cancel + 1] = now + ttl; to_cancel[#to_cancel + 1] = ulid
    done_ids[#done_ids + 1] = ulid
    if f[6] then wf_done[#wf_done + 1] = ulid end
    answers[#answers + 1] = 1
  end
end

in_chunks('ZREM', running, done_ids)
in_chunks('ZADD', cancelled, to_cancel)
if #done_ids > 0 then redis.call('PUBLISH', events, 'cancelled ' .. table.concat(done_ids, ' ')) end
if #unheld > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(unheld, ' ')) end
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return answers
