-- lease: pops up to `count` ready tasks by priority (FIFO within one) and leases them to a worker.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] queued           ZSET     ready tasks
-- KEYS[3] running          ZSET     leased tasks, score min(lease deadline, execution deadline)
-- KEYS[4] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[5] expired          ZSET     expired tasks, score record expiry ms
-- KEYS[6] sequence         STRING   fencing token counter
-- KEYS[7] events           channel  the queue's pub/sub channel
-- KEYS[8] limits           HASH     the queue's limits: max_running, rate, burst (absent = none)
-- KEYS[9] bucket           HASH     the rate limit's token bucket: tokens, ts (microseconds)
-- KEYS[10] held            ZSET     tasks held back by their concurrency key, queued score
-- KEYS[11] conc_prefix     prefix   `{ns:q}:conc:`; a concurrency key appended names its SET of running ulids
-- KEYS[12] held_prefix     prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[13] uniq_prefix     prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[14] wf_outbox       ZSET     workflow nodes that ended, for their workflow to advance
-- KEYS[15] running_events channel  the queue's channel of `running` events (read by watchers only)
--
-- ARGV[1] count      int     most tasks to lease (expired ones do not count)
-- ARGV[2] worker_id  string  the worker that receives them
--
-- Limits: at most max_running - |running| tasks are leased, and no more than the whole tokens of
--   the bucket (refilled at `rate` per second up to `burst`, Redis TIME; a missing bucket is
--   full). A popped task whose concurrency key already has `climit` running tasks is held back:
--   moved from `queued` to `held` and its key's held set (same score, state stays queued), so it
--   is not popped again until a task of its key leaves (see complete.lua). An expired task
--   releases its unique key and lets one held task of its concurrency key go back to `queued`.
--
-- Returns: {now, leased, expired, retry_ms, slots_full}: `now` the lease time (ms, = started of every leased task);
--   `leased` flat, 13 entries per task: ulid, name, payload, ctype, headers, attempt, max,
--   token, lease, timeout, due, presults, rpass (payload/ctype/headers/timeout and a workflow
--   node's parents' results and result passing nil when absent); `expired` the
--   ulids that were past their schedule-to-start deadline and ended EXPIRED instead.
--   A task is checked against start_by only before its first start (attempt 0).
--   `retry_ms` -1 when there is nothing to call again for; >0 when the rate limit stopped the
--   lease with tasks left: the ms until the next token; 0 when tasks are left that this call's
--   bounds left unseen (call again now). `slots_full` 1 when max_running stopped the lease with
--   tasks left (call again when a task of the queue leaves running), else 0.
-- Publishes: `running <ulids>` on running_events; on events `expired <ulids>`, `queued <ulids>` (held tasks let go). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local queued = KEYS[2]
local running = KEYS[3]
local start_deadlines = KEYS[4]
local expired = KEYS[5]
local sequence = KEYS[6]
local events = KEYS[7]
local limits = KEYS[8]
local bucket = KEYS[9]
local held = KEYS[10]
local conc_prefix = KEYS[11]
local held_prefix = KEYS[12]
local uniq_prefix = KEYS[13]
local wf_outbox = KEYS[14]
local running_events = KEYS[15]
local count = tonumber(ARGV[1])
local worker_id = ARGV[2]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local MAX_EXPIRED = 1000 -- bounds one call's work when many tasks expired unseen

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function in_chunks(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

-- limits: queue caps, concurrency keys, unique keys ------------------------------------------
local MAX_HELD = 1000 -- bounds one call's work when many tasks of a busy key are queued
local lim = redis.call('HMGET', limits, 'max_running', 'rate', 'burst')
local max_running = tonumber(lim[1] or '0')
local rate = tonumber(lim[2] or '0')
local burst = tonumber(lim[3] or '0')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slots_full, tokens = 0, 0
if max_running > 0 then
  local room = max_running - redis.call('ZCARD', running)
  if room < count then
    count = math.max(room, 0)
    slots_full = 1
  end
end
if rate > 0 then
  if burst <= 0 then burst = math.max(1, rate) end
  local b = redis.call('HMGET', bucket, 'tokens', 'ts')
  tokens = burst
  if b[1] then tokens = math.min(burst, tonumber(b[1]) + (now_us - tonumber(b[2])) * rate / 1e6) end
  if math.floor(tokens) < count then count = math.floor(tokens) end
end

local held_ids, unheld = {}, {}

-- Holds the popped task back when its concurrency key is at its limit; else counts it running.
local function held_back(ulid, ckey, climit, score)
  if not ckey then return false end
  local members = conc_prefix .. ckey
  if redis.call('SCARD', members) >= tonumber(climit or '1') then
    redis.call('ZADD', held_prefix .. ckey, score, ulid)
    redis.call('ZADD', held, score, ulid)
    held_ids[#held_ids + 1] = ulid
    return true
  end
  redis.call('SADD', members, ulid)
  return false
end

-- Moves the oldest held task of `ckey` back to `queued`, in its old place.
local function let_one_go(ckey)
  if not ckey then return end
  while true do
    local first = redis.call('ZPOPMIN', held_prefix .. ckey)
    if #first == 0 then return end
    redis.call('ZREM', held, first[1])
    if redis.call('HGET', task_prefix .. first[1], 'state') == 'queued' then
      redis.call('ZADD', queued, first[2], first[1])
      unheld[#unheld + 1] = first[1]
      return
    end
  end
end

local function drop_unique(ulid, uniq)
  if uniq and redis.call('GET', uniq_prefix .. uniq) == ulid then redis.call('DEL', uniq_prefix .. uniq) end
end
-- end limits ----------------------------------------------------------------------------------

local picked, expired_ids, expired_scores, unstart = {}, {}, {}, {}
local wf_done = {}
while #picked < count and #expired_ids < MAX_EXPIRED and #held_ids < MAX_HELD do
  local popped = redis.call('ZPOPMIN', queued, count - #picked)
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local ulid = popped[j]
    local key = task_prefix .. ulid
    local f = redis.call('HMGET', key, 'state', 'attempt', 'start_by', 'name', 'payload', 'ctype',
                         'headers', 'max', 'lease', 'timeout', 'due', 'ttl', 'wf', 'presults', 'rpass',
                         'uniq', 'ckey', 'climit', 'pn', 'p2', 'p3', 'created')
    if f[1] == 'queued' then
      local attempt = tonumber(f[2] or '0')
      local start_by = tonumber(f[3] or '0')
      if start_by > 0 then unstart[#unstart + 1] = ulid end
      if attempt == 0 and start_by > 0 and start_by <= now then
        local ttl = tonumber(f[12]) or DEFAULT.ttl
        redis.call('HSET', key, 'state', 'expired', 'reason', 'schedule_to_start', 'finished', now)
        redis.call('PEXPIREAT', key, now + ttl)
        expired_ids[#expired_ids + 1] = ulid
        if f[13] then wf_done[#wf_done + 1] = ulid end
        expired_scores[#expired_scores + 1] = now + ttl
        expired_scores[#expired_scores + 1] = ulid
        -- limits: an expired task frees its unique key and lets one held task of its key go
        drop_unique(ulid, f[16])
        let_one_go(f[17])
      elseif held_back(ulid, f[17], f[18], popped[j + 1]) then
        -- limits: held back, it keeps its schedule-to-start deadline
        if unstart[#unstart] == ulid then unstart[#unstart] = nil end
      else
        picked[#picked + 1] = {ulid, key, attempt + 1, f}
      end
    end
    -- anything else is an index entry whose record is gone or moved on: dropped by the pop
  end
end

-- A payload stored in pieces (see enqueue.lua), joined again: `f` is the task's fields as read
-- above, its second and third pieces among them (payloads up to 192 bytes need no other read).
local function whole_payload(key, f)
  local pieces = tonumber(f[19])
  if not pieces then return f[5] end
  local rest = {f[20] or '', f[21] or ''}
  if pieces > 3 then
    local names = {}
    for j = 4, pieces do names[#names + 1] = 'p' .. j end
    local more = redis.call('HMGET', key, unpack(names))
    for j = 1, #more do rest[#rest + 1] = more[j] or '' end
  end
  return f[5] .. table.concat(rest, '', 1, pieces - 1)
end

local leased, to_run, run_ids = {}, {}, {}
if #picked > 0 then
  local last = redis.call('INCRBY', sequence, #picked)
  local first = last - #picked + 1
  for n, p in ipairs(picked) do
    local ulid, key, attempt, f = p[1], p[2], p[3], p[4]
    local token = first + n - 1
    local lease = tonumber(f[9]) or DEFAULT.lease
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
    leased[base + 3] = whole_payload(key, f)
    leased[base + 4] = f[6]
    leased[base + 5] = f[7]
    leased[base + 6] = attempt
    leased[base + 7] = f[8] or DEFAULT.max
    leased[base + 8] = token
    leased[base + 9] = lease
    leased[base + 10] = f[10]
    leased[base + 11] = f[11] or f[22]
    leased[base + 12] = f[14]
    leased[base + 13] = f[15]
  end
end

-- limits: take the tokens of the leased tasks; say when and why to call again
local retry_ms = -1
local left = redis.call('ZCARD', queued)
if rate > 0 then
  tokens = tokens - #picked
  if #picked > 0 then
    redis.call('HSET', bucket, 'tokens', tokens, 'ts', now_us)
    redis.call('PEXPIRE', bucket, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  end
  if tokens < 1 and left > 0 then retry_ms = math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
end
if retry_ms < 0 and left > 0 and (#held_ids >= MAX_HELD or #expired_ids >= MAX_EXPIRED) then retry_ms = 0 end
if left == 0 then slots_full = 0 end
-- end limits

in_chunks('ZADD', running, to_run)
in_chunks('ZADD', expired, expired_scores)
in_chunks('ZREM', start_deadlines, unstart)
if #run_ids > 0 then redis.call('PUBLISH', running_events, 'running ' .. table.concat(run_ids, ' ')) end
if #expired_ids > 0 then redis.call('PUBLISH', events, 'expired ' .. table.concat(expired_ids, ' ')) end
if #unheld > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(unheld, ' ')) end
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return {now, leased, expired_ids, retry_ms, slots_full}
