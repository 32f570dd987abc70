-- fail: records failed attempts; each task is retried (scheduled or queued), dead-lettered or cancelled.
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running      ZSET     leased tasks
-- KEYS[3] ready        HASH     ready tasks' packed records, by ulid
-- KEYS[4] ready_lists  prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[5] scheduled    ZSET     delayed tasks and retries in backoff
-- KEYS[6] failed       ZSET     the dead-letter set, score record expiry ms
-- KEYS[7] cancelled    ZSET     cancelled tasks, score record expiry ms
-- KEYS[8] events       channel  the queue's pub/sub channel
-- KEYS[9] held         ZSET     tasks held back by their concurrency key, queued score
-- KEYS[10] conc_prefix prefix   `{ns:q}:conc:`; a concurrency key appended names its SET of running ulids
-- KEYS[11] held_prefix prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[12] uniq_prefix prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[13] wf_outbox   ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] dl_ttl  int  how long a dead-lettered record is kept, ms
-- ARGV[2] dl_max  int  most tasks kept in the dead-letter set (the oldest are deleted)
-- ARGV[3..] 8 per item:
--   ulid         string  the task's ulid
--   token        int     the lease token presented
--   e_type       string  error type
--   e_msg        string  error message ('' = stored absent)
--   e_tb         string  traceback ('' = stored absent)
--   e_retry      int     1 retryable, 0 not
--   retry_after  int     retry delay in ms; < 0 means the task's backoff policy
--   r            float   random fraction in [0, 1) for the backoff jitter
--
-- Returns: array, one outcome per item: "retrying", "dead", "cancelled" or "stale".
--   A task with a cancel request ends CANCELLED; a non-retryable error or the last attempt
--   ends FAILED (reason non_retryable / attempts_exhausted); otherwise the retry waits
--   min(b_max, b_init * b_mult^(attempt-1)) * (1 - b_jit * r) ms (or retry_after), a zero
--   delay going straight to the tail of its ready list (reason retry).
-- Limits: every such task frees its concurrency slot (the oldest task held back by its key goes
--   back to `ready`); a task that ends releases its unique key, a retried one keeps it.
-- Publishes: `queued`, `scheduled`, `failed`, `cancelled` with their ulids (one message per kind). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local running = KEYS[2]
local ready = KEYS[3]
local ready_lists = KEYS[4]
local scheduled = KEYS[5]
local failed = KEYS[6]
local cancelled = KEYS[7]
local events = KEYS[8]
local held = KEYS[9]
local conc_prefix = KEYS[10]
local held_prefix = KEYS[11]
local uniq_prefix = KEYS[12]
local wf_outbox = KEYS[13]
local dl_ttl = tonumber(ARGV[1])
local dl_max = tonumber(ARGV[2])

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

local answers, left_running, wf_done = {}, {}, {}
local to_queue, to_schedule, to_dead, to_cancel = {}, {}, {}, {}
local queued_ids, scheduled_ids, dead_ids, cancelled_ids = {}, {}, {}, {}

for i = 3, #ARGV, 8 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local e_type = ARGV[i + 2]
  local e_msg = ARGV[i + 3]
  local e_tb = ARGV[i + 4]
  local e_retry = ARGV[i + 5]
  local retry_after = tonumber(ARGV[i + 6])
  local r = tonumber(ARGV[i + 7])

  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token', 'attempt', 'max', 'b_init', 'b_max', 'b_mult',
                       'b_jit', 'prio', 'cancel', 'ttl', 'wf', 'uniq', 'ckey')
  if f[1] ~= 'running' or f[2] ~= token then
    answers[#answers + 1] = 'stale'
  else
    local attempt = tonumber(f[3])
    left_running[#left_running + 1] = ulid
    local err = {'e_type', e_type, 'e_retry', e_retry}
    local blank = {}
    if e_msg ~= '' then err[#err + 1] = 'e_msg'; err[#err + 1] = e_msg else blank[#blank + 1] = 'e_msg' end
    if e_tb ~= '' then err[#err + 1] = 'e_tb'; err[#err + 1] = e_tb else blank[#blank + 1] = 'e_tb' end
    if #blank > 0 and attempt > 1 then redis.call('HDEL', key, unpack(blank)) end

    if f[10] == '1' then
      local ttl = tonumber(f[11]) or DEFAULT.ttl
      redis.call('HSET', key, 'state', 'cancelled', 'finished', now, unpack(err))
      redis.call('HDEL', key, 'cancel')
      redis.call('PEXPIREAT', key, now + ttl)
      to_cancel[#to_cancel + 1] = now + ttl; to_cancel[#to_cancel + 1] = ulid
      cancelled_ids[#cancelled_ids + 1] = ulid
      limits_left(ulid, f[13], f[14], true)
      if f[12] then wf_done[#wf_done + 1] = ulid end
      answers[#answers + 1] = 'cancelled'
    elseif e_retry == '0' or attempt >= (tonumber(f[4]) or DEFAULT.max) then
      local reason = 'attempts_exhausted'
      if e_retry == '0' then reason = 'non_retryable' end
      redis.call('HSET', key, 'state', 'failed', 'finished', now, 'reason', reason, unpack(err))
      redis.call('PEXPIREAT', key, now + dl_ttl)
      to_dead[#to_dead + 1] = now + dl_ttl; to_dead[#to_dead + 1] = ulid
      dead_ids[#dead_ids + 1] = ulid
      limits_left(ulid, f[13], f[14], true)
      if f[12] then wf_done[#wf_done + 1] = ulid end
      answers[#answers + 1] = 'dead'
    else
      local delay = retry_after
      if delay < 0 then
        local b_init = tonumber(f[5]) or DEFAULT.b_init
        local b_max, b_mult = tonumber(f[6]) or DEFAULT.b_max, tonumber(f[7]) or DEFAULT.b_mult
        local raw = 0 -- a zero initial backoff stays zero, even when b_mult^n overflows to inf
        if b_init > 0 then raw = math.min(b_max, b_init * b_mult ^ (attempt - 1)) end
        delay = math.floor(raw * (1 - tonumber(f[8] or '0') * r))
      end
      if delay <= 0 then
        redis.call('HSET', key, 'state', 'queued', 'due', now, 'reason', 'retry', unpack(err))
        to_queue[#to_queue + 1] = ulid
        queued_ids[#queued_ids + 1] = ulid
      else
        redis.call('HSET', key, 'state', 'scheduled', 'due', now + delay, 'reason', 'retry', unpack(err))
        to_schedule[#to_schedule + 1] = now + delay; to_schedule[#to_schedule + 1] = ulid
        scheduled_ids[#scheduled_ids + 1] = ulid
      end
      limits_left(ulid, f[13], f[14], false)
      answers[#answers + 1] = 'retrying'
    end
  end
end

in_chunks('ZREM', running, left_running)
for _, ulid in ipairs(to_queue) do to_ready(ulid, false) end -- at the tail: a retry waits its turn
in_chunks('ZADD', scheduled, to_schedule)
in_chunks('ZADD', cancelled, to_cancel)
if #to_dead > 0 then
  in_chunks('ZADD', failed, to_dead)
  local excess = redis.call('ZCARD', failed) - dl_max
  if excess > 0 then
    local gone = redis.call('ZPOPMIN', failed, excess)
    for j = 1, #gone, 2 do redis.call('DEL', task_prefix .. gone[j]) end
  end
end
for _, u in ipairs(unheld) do queued_ids[#queued_ids + 1] = u end -- limits
publish('queued', queued_ids)
publish('scheduled', scheduled_ids)
publish('failed', dead_ids)
publish('cancelled', cancelled_ids)
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return answers
