-- release: hands leased tasks back at once, ready at the head of their lists (worker shutdown, nack).
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running          ZSET     leased tasks
-- KEYS[3] ready            HASH     ready tasks' packed records, by ulid
-- KEYS[4] ready_lists      prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[5] cancelled        ZSET     cancelled tasks, score record expiry ms
-- KEYS[6] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[7] events           channel  the queue's pub/sub channel
-- KEYS[8] held             ZSET     tasks held back by their concurrency key, queued score
-- KEYS[9] conc_prefix      prefix   `{ns:q}:conc:`; a concurrency key appended names its SET of running ulids
-- KEYS[10] held_prefix     prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[11] uniq_prefix     prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[12] wf_outbox       ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] reason   string  why the tasks come back (stored as `reason`)
-- ARGV[2] started  int     1 if the attempts started; 0 and the attempt is not counted
-- ARGV[3..] 2 per lease:
--   ulid   string  the task's ulid
--   token  int     the lease token presented
--
-- Returns: array, one integer per lease: 1 if it was current, 0 if stale. A task with a
--   cancel request ends CANCELLED instead. A task back at attempt 0 regains its start_by entry.
-- Limits: every such task frees its concurrency slot (the oldest task held back by its key goes
--   back to `ready`); a cancelled one releases its unique key, a requeued one keeps it.
-- Publishes: `queued`, `cancelled` with their ulids (one message per kind). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local running = KEYS[2]
local ready = KEYS[3]
local ready_lists = KEYS[4]
local cancelled = KEYS[5]
local start_deadlines = KEYS[6]
local events = KEYS[7]
local held = KEYS[8]
local conc_prefix = KEYS[9]
local held_prefix = KEYS[10]
local uniq_prefix = KEYS[11]
local wf_outbox = KEYS[12]
local reason = ARGV[1]
local started = ARGV[2]

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

--#include publish

local answers, left_running, to_queue, to_cancel, to_start_by = {}, {}, {}, {}, {}
local queued_ids, cancelled_ids, wf_done = {}, {}, {}

for i = 3, #ARGV, 2 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token', 'attempt', 'prio', 'due', 'cancel', 'ttl', 'start_by', 'wf',
                       'created', 'uniq', 'ckey')
  if f[1] ~= 'running' or f[2] ~= token then
    answers[#answers + 1] = 0
  else
    left_running[#left_running + 1] = ulid
    if f[6] == '1' then
      local ttl = tonumber(f[7]) or DEFAULT.ttl
      redis.call('HSET', key, 'state', 'cancelled', 'finished', now)
      redis.call('HDEL', key, 'cancel')
      redis.call('PEXPIREAT', key, now + ttl)
      to_cancel[#to_cancel + 1] = now + ttl; to_cancel[#to_cancel + 1] = ulid
      cancelled_ids[#cancelled_ids + 1] = ulid
      limits_left(ulid, f[11], f[12], true)
      if f[9] then wf_done[#wf_done + 1] = ulid end
    else
      local attempt = tonumber(f[3])
      if started ~= '1' and attempt > 0 then attempt = attempt - 1 end
      redis.call('HSET', key, 'state', 'queued', 'reason', reason, 'attempt', attempt)
      if attempt == 0 then
        redis.call('HDEL', key, 'started')
        if f[8] then to_start_by[#to_start_by + 1] = f[8]; to_start_by[#to_start_by + 1] = ulid end
      end
      to_queue[#to_queue + 1] = ulid
      queued_ids[#queued_ids + 1] = ulid
      limits_left(ulid, f[11], f[12], false)
    end
    answers[#answers + 1] = 1
  end
end

in_chunks('ZREM', running, left_running)
for j = #to_queue, 1, -1 do to_ready(to_queue[j], true) end -- back at the head, in order
in_chunks('ZADD', cancelled, to_cancel)
in_chunks('ZADD', start_deadlines, to_start_by)
for _, u in ipairs(unheld) do queued_ids[#queued_ids + 1] = u end -- limits
publish('queued', queued_ids)
publish('cancelled', cancelled_ids)
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return answers
