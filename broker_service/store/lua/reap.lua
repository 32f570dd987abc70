-- reap: handles running tasks whose deadline passed: lease expired or execution timeout exceeded.
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running      ZSET     leased tasks, score min(lease deadline, execution deadline)
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
-- ARGV[1] limit   int    most tasks handled by this call
-- ARGV[2] r       float  random fraction in [0, 1); item i uses frac(r + i * 0.618...) as jitter
-- ARGV[3] dl_ttl  int    how long a dead-lettered record is kept, ms
-- ARGV[4] dl_max  int    most tasks kept in the dead-letter set (the oldest are deleted)
--
-- Returns: {requeued, timed_out, dead, cancelled}, four arrays of ulids; each task is in one.
--   A cancel request wins: CANCELLED. Past its execution deadline: the attempt fails with
--   error TimeoutError (reason execution_timeout) and is retried per the backoff policy
--   (timed_out), or dead-lettered on the last attempt (dead). Otherwise the lease expired:
--   ready again at the head of its list (reason lease_expired; requeued), or dead-lettered with
--   error LeaseExpired on the last attempt (dead).
-- Limits: every such task frees its concurrency slot (the oldest task held back by its key goes
--   back to `ready`); a task that ends releases its unique key, a requeued or retried one keeps it.
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
local limit = tonumber(ARGV[1])
local r = tonumber(ARGV[2])
local dl_ttl = tonumber(ARGV[3])
local dl_max = tonumber(ARGV[4])

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local GOLDEN = 0.6180339887

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

local due_ids = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, limit)
local requeued, timed_out, dead, cancelled_ids = {}, {}, {}, {}
local to_queue, to_front, to_schedule, to_dead, to_cancel = {}, {}, {}, {}, {}
local queued_ids, scheduled_ids, wf_done = {}, {}, {}

local function set_error(key, attempt, fields, e_type, e_msg)
  fields[#fields + 1] = 'e_type'; fields[#fields + 1] = e_type
  fields[#fields + 1] = 'e_msg'; fields[#fields + 1] = e_msg
  fields[#fields + 1] = 'e_retry'; fields[#fields + 1] = '1'
  redis.call('HSET', key, unpack(fields))
  if attempt > 1 then redis.call('HDEL', key, 'e_tb') end
end

for i, ulid in ipairs(due_ids) do
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'attempt', 'max', 'b_init', 'b_max', 'b_mult', 'b_jit',
                       'prio', 'cancel', 'ttl', 'exec_dl', 'due', 'timeout', 'lease', 'wf', 'created',
                       'uniq', 'ckey')
  if f[1] == 'running' then
    local attempt = tonumber(f[2])
    local exhausted = attempt >= (tonumber(f[3]) or DEFAULT.max)
    local exec_dl = tonumber(f[11] or '0')
    if f[9] == '1' then
      local ttl = tonumber(f[10]) or DEFAULT.ttl
      redis.call('HSET', key, 'state', 'cancelled', 'finished', now)
      redis.call('HDEL', key, 'cancel')
      redis.call('PEXPIREAT', key, now + ttl)
      to_cancel[#to_cancel + 1] = now + ttl; to_cancel[#to_cancel + 1] = ulid
      cancelled_ids[#cancelled_ids + 1] = ulid
      limits_left(ulid, f[17], f[18], true)
      if f[15] then wf_done[#wf_done + 1] = ulid end
    elseif exec_dl > 0 and exec_dl <= now then
      local msg = 'attempt ' .. attempt .. ' exceeded its execution timeout of ' .. f[13] .. ' ms'
      if exhausted then
        set_error(key, attempt, {'state', 'failed', 'finished', now, 'reason', 'execution_timeout'},
                  'TimeoutError', msg)
        redis.call('PEXPIREAT', key, now + dl_ttl)
        to_dead[#to_dead + 1] = now + dl_ttl; to_dead[#to_dead + 1] = ulid
        dead[#dead + 1] = ulid
        limits_left(ulid, f[17], f[18], true)
        if f[15] then wf_done[#wf_done + 1] = ulid end
      else
        local ri = (r + (i - 1) * GOLDEN) % 1
        local b_init = tonumber(f[4]) or DEFAULT.b_init
        local b_max, b_mult = tonumber(f[5]) or DEFAULT.b_max, tonumber(f[6]) or DEFAULT.b_mult
        local raw = 0 -- a zero initial backoff stays zero, even when b_mult^n overflows to inf
        if b_init > 0 then raw = math.min(b_max, b_init * b_mult ^ (attempt - 1)) end
        local delay = math.floor(raw * (1 - tonumber(f[7] or '0') * ri))
        if delay <= 0 then
          set_error(key, attempt, {'state', 'queued', 'due', now, 'reason', 'execution_timeout'},
                    'TimeoutError', msg)
          to_queue[#to_queue + 1] = ulid
          queued_ids[#queued_ids + 1] = ulid
        else
          set_error(key, attempt, {'state', 'scheduled', 'due', now + delay, 'reason', 'execution_timeout'},
                    'TimeoutError', msg)
          to_schedule[#to_schedule + 1] = now + delay; to_schedule[#to_schedule + 1] = ulid
          scheduled_ids[#scheduled_ids + 1] = ulid
        end
        timed_out[#timed_out + 1] = ulid
        limits_left(ulid, f[17], f[18], false)
      end
    elseif exhausted then
      local msg = 'lease of ' .. (f[14] or DEFAULT.lease) .. ' ms expired without a heartbeat on attempt ' .. attempt
      set_error(key, attempt, {'state', 'failed', 'finished', now, 'reason', 'lease_expired'},
                'LeaseExpired', msg)
      redis.call('PEXPIREAT', key, now + dl_ttl)
      to_dead[#to_dead + 1] = now + dl_ttl; to_dead[#to_dead + 1] = ulid
      dead[#dead + 1] = ulid
      limits_left(ulid, f[17], f[18], true)
      if f[15] then wf_done[#wf_done + 1] = ulid end
    else
      redis.call('HSET', key, 'state', 'queued', 'reason', 'lease_expired')
      to_front[#to_front + 1] = ulid
      queued_ids[#queued_ids + 1] = ulid
      requeued[#requeued + 1] = ulid
      limits_left(ulid, f[17], f[18], false)
    end
  end
  -- an entry whose record is gone or not running is only dropped from the index
end

in_chunks('ZREM', running, due_ids)
for _, ulid in ipairs(to_queue) do to_ready(ulid, false) end -- a retry waits its turn at the tail
for j = #to_front, 1, -1 do to_ready(to_front[j], true) end -- a lost lease goes back to the head, in order
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
publish('failed', dead)
publish('cancelled', cancelled_ids)
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return {requeued, timed_out, dead, cancelled_ids}
