-- lease: pops up to `count` ready tasks by priority (FIFO within one) and leases them to a worker.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] ready            HASH     ready tasks' packed records, by ulid
-- KEYS[3] ready_lists      prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[4] running          ZSET     leased tasks, score min(lease deadline, execution deadline)
-- KEYS[5] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[6] expired          ZSET     expired tasks, score record expiry ms
-- KEYS[7] sequence         STRING   fencing token counter
-- KEYS[8] events           channel  the queue's pub/sub channel
-- KEYS[9] limits           HASH     the queue's limits: max_running, rate, burst (absent = none)
-- KEYS[10] bucket          HASH     the rate limit's token bucket: tokens, ts (microseconds)
-- KEYS[11] held            ZSET     tasks held back by their concurrency key, queued score
-- KEYS[12] conc_prefix     prefix   `{ns:q}:conc:`; a concurrency key appended names its SET of running ulids
-- KEYS[13] held_prefix     prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[14] uniq_prefix     prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[15] wf_outbox       ZSET     workflow nodes that ended, for their workflow to advance
-- KEYS[16] running_events  channel  the queue's channel of `running` events (read by watchers only)
--
-- ARGV[1] count      int     most tasks to lease (expired ones do not count)
-- ARGV[2] worker_id  string  the worker that receives them
--
-- Limits: at most max_running - |running| tasks are leased, and no more than the whole tokens of
--   the bucket (refilled at `rate` per second up to `burst`, Redis TIME; a missing bucket is
--   full). A popped task whose concurrency key already has `climit` running tasks is held back:
--   written back as its task hash (state queued) into `held` and its key's held set, so it
--   is not popped again until a task of its key leaves (see complete.lua). An expired task
--   releases its unique key and lets one held task of its concurrency key become ready.
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
local ready = KEYS[2]
local ready_lists = KEYS[3]
local running = KEYS[4]
local start_deadlines = KEYS[5]
local expired = KEYS[6]
local sequence = KEYS[7]
local events = KEYS[8]
local limits = KEYS[9]
local bucket = KEYS[10]
local held = KEYS[11]
local conc_prefix = KEYS[12]
local held_prefix = KEYS[13]
local uniq_prefix = KEYS[14]
local wf_outbox = KEYS[15]
local running_events = KEYS[16]
local count = tonumber(ARGV[1])
local worker_id = ARGV[2]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local MAX_EXPIRED = 1000 -- bounds one call's work when many tasks expired unseen
local MAX_STALE = 1000 -- and when many list entries are stale

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

--#include in_chunks

--#include put_pieces

--#include lease_reply

-- ready: a ready task's record packed in `ready`, its ulid in its priority's list ------------
--#include to_ready
-- end ready ------------------------------------------------------------------------------------

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

--#include let_one_go

local function drop_unique(ulid, uniq)
  if uniq and redis.call('GET', uniq_prefix .. uniq) == ulid then redis.call('DEL', uniq_prefix .. uniq) end
end
-- end limits ----------------------------------------------------------------------------------

-- LMPOP's arguments but the count: the ready lists, highest priority first (it pops from the
-- first that is not empty)
local lmpop = {10}
for prio = 9, 0, -1 do lmpop[#lmpop + 1] = ready_lists .. prio end
lmpop[12], lmpop[13] = 'LEFT', 'COUNT'

-- A popped task's packed record read: `rec` maps its fields to their values (the payload whole),
-- `hash` is the HSET arguments that write it back as its task hash, but for `state`.
local function unpacked(packed)
  local r = cmsgpack.unpack(packed)
  local rec, hash = {name = r[1], created = r[2], payload = r[3]}, {'name', r[1], 'created', r[2]}
  if r[3] ~= '' then put_pieces(hash, 'payload', 'p', 'pn', r[3]) end
  for i = 4, #r, 2 do
    rec[r[i]] = r[i + 1]
    hash[#hash + 1] = r[i]; hash[#hash + 1] = r[i + 1]
  end
  return rec, hash
end

-- `hash` with more HSET arguments appended (a later field wins over an earlier one).
local function with(hash, ...)
  local more = {...}
  for i = 1, #more do hash[#hash + 1] = more[i] end
  return hash
end

local picked, expired_ids, expired_scores, unstart = {}, {}, {}, {}
local wf_done = {}
local stale = 0
while #picked < count and #expired_ids < MAX_EXPIRED and #held_ids < MAX_HELD and stale < MAX_STALE do
  lmpop[14] = count - #picked
  local popped = redis.call('LMPOP', unpack(lmpop))
  if not popped then break end
  local prio = tonumber(string.sub(popped[1], #ready_lists + 1))
  local ulids = popped[2]
  local records, taken, seen = redis.call('HMGET', ready, unpack(ulids)), {}, {}
  for j, ulid in ipairs(ulids) do
    if not records[j] or seen[ulid] then
      stale = stale + 1 -- its task was cancelled, expired, or taken from an earlier entry
    else
      taken[#taken + 1] = ulid
      seen[ulid] = true
      local key = task_prefix .. ulid
      local rec, hash = unpacked(records[j])
      local attempt = tonumber(rec.attempt or '0')
      local start_by = tonumber(rec.start_by or '0')
      if start_by > 0 then unstart[#unstart + 1] = ulid end
      if attempt == 0 and start_by > 0 and start_by <= now then
        local ttl = tonumber(rec.ttl) or DEFAULT.ttl
        redis.call('HSET', key, unpack(with(hash, 'state', 'expired', 'reason', 'schedule_to_start', 'finished', now)))
        redis.call('PEXPIREAT', key, now + ttl)
        expired_ids[#expired_ids + 1] = ulid
        if rec.wf then wf_done[#wf_done + 1] = ulid end
        expired_scores[#expired_scores + 1] = now + ttl
        expired_scores[#expired_scores + 1] = ulid
        -- limits: an expired task frees its unique key and lets one held task of its key go
        drop_unique(ulid, rec.uniq)
        let_one_go(rec.ckey)
      elseif held_back(ulid, rec.ckey, rec.climit, (9 - prio) * 1e13 + tonumber(rec.due or rec.created)) then
        -- limits: held back as a task hash, it keeps its schedule-to-start deadline
        redis.call('HSET', key, unpack(with(hash, 'state', 'queued')))
        if unstart[#unstart] == ulid then unstart[#unstart] = nil end
      else
        picked[#picked + 1] = {ulid, key, attempt + 1, rec, hash}
      end
    end
  end
  if #taken > 0 then redis.call('HDEL', ready, unpack(taken)) end
end

local leased, to_run, run_ids = {}, {}, {}
if #picked > 0 then
  local last = redis.call('INCRBY', sequence, #picked)
  local first = last - #picked + 1
  for n, p in ipairs(picked) do
    local ulid, key, attempt, rec, hash = p[1], p[2], p[3], p[4], p[5]
    local token = first + n - 1
    local lease = tonumber(rec.lease) or DEFAULT.lease
    local timeout = tonumber(rec.timeout or '0')
    local deadline = now + lease
    with(hash, 'state', 'running', 'attempt', attempt, 'token', token, 'worker', worker_id, 'started', now)
    if timeout > 0 then
      local exec_dl = now + timeout
      if exec_dl < deadline then deadline = exec_dl end
      with(hash, 'exec_dl', exec_dl)
    end
    redis.call('HSET', key, unpack(hash))
    if attempt > 1 then redis.call('HDEL', key, 'prog', 'prog_msg') end
    to_run[#to_run + 1] = deadline; to_run[#to_run + 1] = ulid
    run_ids[#run_ids + 1] = ulid
    lease_reply(leased, ulid, rec.name, rec.payload, rec, attempt, token, lease, rec.due or rec.created)
  end
end

-- limits: take the tokens of the leased tasks; say when and why to call again
local retry_ms = -1
local left = redis.call('HLEN', ready)
if rate > 0 then
  tokens = tokens - #picked
  if #picked > 0 then
    redis.call('HSET', bucket, 'tokens', tokens, 'ts', now_us)
    redis.call('PEXPIRE', bucket, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  end
  if tokens < 1 and left > 0 then retry_ms = math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
end
if retry_ms < 0 and left > 0 and (#held_ids >= MAX_HELD or #expired_ids >= MAX_EXPIRED or stale >= MAX_STALE) then
  retry_ms = 0
end
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
