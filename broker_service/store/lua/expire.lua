-- expire: ends waiting tasks past their schedule-to-start deadline as EXPIRED.
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[3] queued           ZSET     ready tasks
-- KEYS[4] scheduled        ZSET     delayed tasks
-- KEYS[5] expired          ZSET     expired tasks, score record expiry ms
-- KEYS[6] events           channel  the queue's pub/sub channel
-- KEYS[7] held             ZSET     tasks held back by their concurrency key, queued score
-- KEYS[8] held_prefix      prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[9] uniq_prefix      prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[10] wf_outbox        ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] limit  int  most deadlines handled by this call
--
-- Returns: array of the ulids that ended EXPIRED (reason schedule_to_start, kept `ttl` ms).
--   A deadline whose task already started or finished is only dropped from the index.
-- Limits: an expired task releases its unique key; one held back by its concurrency key leaves
--   the held sets; a queued one lets the oldest held task of its key go to `queued`.
-- Publishes: `expired <ulids>`, `queued <ulids>` (held tasks let go). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local start_deadlines = KEYS[2]
local queued = KEYS[3]
local scheduled = KEYS[4]
local expired = KEYS[5]
local events = KEYS[6]
local held = KEYS[7]
local held_prefix = KEYS[8]
local uniq_prefix = KEYS[9]
local wf_outbox = KEYS[10]
local limit = tonumber(ARGV[1])

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function in_chunks(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

-- limits: unique keys and held tasks of waiting tasks that end ---------------------------------
local unheld = {}

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

-- A waiting task ended: releases its unique key if it still holds it; held back, it leaves the
-- held sets, else, when it was queued, it lets one held task of its concurrency key go.
local function limits_ended(key, ulid, was_queued)
  local x = redis.call('HMGET', key, 'uniq', 'ckey')
  if x[1] and redis.call('GET', uniq_prefix .. x[1]) == ulid then redis.call('DEL', uniq_prefix .. x[1]) end
  if x[2] and was_queued then
    if redis.call('ZREM', held, ulid) == 1 then
      redis.call('ZREM', held_prefix .. x[2], ulid)
    else
      let_one_go(x[2])
    end
  end
end
-- end limits ------------------------------------------------------------------------------------

local due = redis.call('ZRANGEBYSCORE', start_deadlines, '-inf', now, 'LIMIT', 0, limit)
local ids, from_queued, from_scheduled, to_expired, wf_done = {}, {}, {}, {}, {}
for _, ulid in ipairs(due) do
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'attempt', 'ttl', 'wf')
  local state = f[1]
  if (state == 'queued' or state == 'scheduled' or state == 'pending') and tonumber(f[2] or '0') == 0 then
    local ttl = tonumber(f[3]) or DEFAULT.ttl
    if state == 'queued' then from_queued[#from_queued + 1] = ulid end
    if state == 'scheduled' then from_scheduled[#from_scheduled + 1] = ulid end
    limits_ended(key, ulid, state == 'queued')
    redis.call('HSET', key, 'state', 'expired', 'reason', 'schedule_to_start', 'finished', now)
    redis.call('PEXPIREAT', key, now + ttl)
    to_expired[#to_expired + 1] = now + ttl; to_expired[#to_expired + 1] = ulid
    ids[#ids + 1] = ulid
    if f[4] then wf_done[#wf_done + 1] = ulid end
  end
end

in_chunks('ZREM', start_deadlines, due)
in_chunks('ZREM', queued, from_queued)
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
