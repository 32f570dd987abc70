-- lease: pops up to `count` ready tasks by priority (FIFO within one) and leases them to a worker.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] queued           ZSET     ready tasks
-- KEYS[3] running          ZSET     leased tasks, score min(lease deadline, execution deadline)
-- KEYS[4] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[5] expired          ZSET     expired tasks, score record expiry ms
-- KEYS[6] sequence         STRING   fencing token counter
-- KEYS[7] events           channel  the queue's pub/sub channel
-- KEYS[8] wf_outbox        ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] count      int     most tasks to lease (expired ones do not count)
-- ARGV[2] worker_id  string  the worker that receives them
--
-- Returns: {now, leased, expired}: `now` the lease time (ms, = started of every leased task);
--   `leased` flat, 13 entries per task: ulid, name, payload, ctype, headers, attempt, max,
--   token, lease, timeout, due, presults, rpass (payload/ctype/headers/timeout and a workflow
--   node's parents' results and result passing nil when absent); `expired` the
--   ulids that were past their schedule-to-start deadline and ended EXPIRED instead.
--   A task is checked against start_by only before its first start (attempt 0).
-- Publishes: `running <ulids>`, `expired <ulids>`. `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local queued = KEYS[2]
local running = KEYS[3]
local start_deadlines = KEYS[4]
local expired = KEYS[5]
local sequence = KEYS[6]
local events = KEYS[7]
local wf_outbox = KEYS[8]
local count = tonumber(ARGV[1])
local worker_id = ARGV[2]

local MAX_EXPIRED = 1000 -- bounds one call's work when many tasks expired unseen

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function in_chunks(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

local picked, expired_ids, expired_scores, unstart, wf_done = {}, {}, {}, {}, {}
while #picked < count and #expired_ids < MAX_EXPIRED do
  local popped = redis.call('ZPOPMIN', queued, count - #picked)
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local ulid = popped[j]
    local key = task_prefix .. ulid
    local f = redis.call('HMGET', key, 'state', 'attempt', 'start_by', 'name', 'payload', 'ctype',
                         'headers', 'max', 'lease', 'timeout', 'due', 'ttl', 'wf', 'presults', 'rpass')
    if f[1] == 'queued' then
      local attempt = tonumber(f[2] or '0')
      local start_by = tonumber(f[3] or '0')
      if start_by > 0 then unstart[#unstart + 1] = ulid end
      if attempt == 0 and start_by > 0 and start_by <= now then
        local ttl = tonumber(f[12])
        redis.call('HSET', key, 'state', 'expired', 'reason', 'schedule_to_start', 'finished', now)
        redis.call('PEXPIREAT', key, now + ttl)
        expired_ids[#expired_ids + 1] = ulid
        if f[13] then wf_done[#wf_done + 1] = ulid end
        expired_scores[#expired_scores + 1] = now + ttl
        expired_scores[#expired_scores + 1] = ulid
      else
        picked[#picked + 1] = {ulid, key, attempt + 1, f}
      end
    end
    -- anything else is an index entry whose record is gone or moved on: dropped by the pop
  end
end

local leased, to_run, run_ids = {}, {}, {}
if #picked > 0 then
  local last = redis.call('INCRBY', sequence, #picked)
  local first = last - #picked + 1
  for n, p in ipairs(picked) do
    local ulid, key, attempt, f = p[1], p[2], p[3], p[4]
    local token = first + n - 1
    local lease = tonumber(f[9])
    local timeout = tonumber(f[10] or '0')
    local deadline = now + lease
    if timeout > 0 then
      local exec_dl = now + timeout
      if exec_dl < deadline then deadline = exec_dl end
      redis.call('HSET', key, 'state', 'running', 'attempt', attempt, 'token', token,
                 'worker', worker_id, 'started', now, 'exec_dl', exec_dl)
    else
      redis.call('HSET', key, 'state', 'running', 'attempt', attempt, 'token', token,
                 'worker', worker_id, 'started', now)
    end
    if attempt > 1 then redis.call('HDEL', key, 'prog', 'prog_msg') end
    to_run[#to_run + 1] = deadline; to_run[#to_run + 1] = ulid
    run_ids[#run_ids + 1] = ulid
    local base = #leased -- 13 entries per task
    leased[base + 1] = ulid
    leased[base + 2] = f[4]
    leased[base + 3] = f[5]
    leased[base + 4] = f[6]
    leased[base + 5] = f[7]
    leased[base + 6] = attempt
    leased[base + 7] = f[8]
    leased[base + 8] = token
    leased[base + 9] = f[9]
    leased[base + 10] = f[10]
    leased[base + 11] = f[11]
    leased[base + 12] = f[14]
    leased[base + 13] = f[15]
  end
end

in_chunks('ZADD', running, to_run)
in_chunks('ZADD', expired, expired_scores)
in_chunks('ZREM', start_deadlines, unstart)
if #run_ids > 0 then redis.call('PUBLISH', events, 'running ' .. table.concat(run_ids, ' ')) end
if #expired_ids > 0 then redis.call('PUBLISH', events, 'expired ' .. table.concat(expired_ids, ' ')) end
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return {now, leased, expired_ids}
