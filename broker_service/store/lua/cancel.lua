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

-- pieces: a task hash keeps Redis's compact encoding (listpack) only while every value is at
-- most hash-max-listpack-value (64 bytes by default), so a longer payload or result is stored in
-- pieces of PIECE bytes: `payload` the first, `p2` .. `p<pn>` the rest, `pn` their number (a
-- result: `result`, `r2` .. `r<rn>`, `rn`). Beyond MAX_PIECES pieces the record could not stay
-- compact anyway: then one field.
local PIECE, MAX_PIECES = 64, 32

-- Appends `value` to the HSET arguments `fields` under `name`, in pieces when it is long.
local function put_pieces(fields, name, prefix, count_name, value)
  if #value <= PIECE or #value > PIECE * MAX_PIECES then
    fields[#fields + 1] = name; fields[#fields + 1] = value
    return
  end
  local pieces = math.ceil(#value / PIECE)
  fields[#fields + 1] = name; fields[#fields + 1] = string.sub(value, 1, PIECE)
  for j = 2, pieces do
    fields[#fields + 1] = prefix .. j; fields[#fields + 1] = string.sub(value, (j - 1) * PIECE + 1, j * PIECE)
  end
  fields[#fields + 1] = count_name; fields[#fields + 1] = pieces
end
-- end pieces ------------------------------------------------------------------------------------

-- ready: a ready task's record packed in `ready`, its ulid in its priority's list ------------
-- A packed record is the msgpack array {name, created, payload, field, value, ...}: the task
-- hash's fields but `state` (queued), the payload whole rather than in pieces (see KEYS.md).
local PACKED_APART = {state = true, name = true, created = true, payload = true, pn = true}

-- Moves the task hash of `ulid` into `ready`, at the head of its priority's list when `front`
-- (a task that waited before: let go, released, requeued), else at its tail.
local function to_ready(ulid, front)
  local key = task_prefix .. ulid
  local flat = redis.call('HGETALL', key)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  local payload, pieces = f.payload or '', tonumber(f.pn)
  if pieces then
    local parts = {payload}
    for j = 2, pieces do parts[j] = f['p' .. j] or '' end
    payload = table.concat(parts)
  end
  local packed = {f.name or '', f.created or '0', payload}
  for i = 1, #flat, 2 do
    local name = flat[i]
    if not PACKED_APART[name] and not (pieces and string.match(name, '^p%d+$')) then
      packed[#packed + 1] = name; packed[#packed + 1] = flat[i + 1]
    end
  end
  redis.call('HSET', ready, ulid, cmsgpack.pack(packed))
  redis.call('DEL', key)
  local list = ready_lists .. (f.prio or '0')
  if front then redis.call('LPUSH', list, ulid) else redis.call('RPUSH', list, ulid) end
end

-- Writes the packed record of `ulid` back as its task hash (state queued) and takes it out of
-- `ready`; its list entry stays behind, stale (lease skips it). False when `ulid` is not ready.
local function from_ready(ulid)
  local packed = redis.call('HGET', ready, ulid)
  if not packed then return false end
  local r = cmsgpack.unpack(packed)
  local fields = {'state', 'queued', 'name', r[1], 'created', r[2]}
  if r[3] ~= '' then put_pieces(fields, 'payload', 'p', 'pn', r[3]) end
  for i = 4, #r do fields[#fields + 1] = r[i] end
  redis.call('HDEL', ready, ulid)
  redis.call('HSET', task_prefix .. ulid, unpack(fields))
  return true
end

-- Deletes the ready lists of every priority (when `ready` is empty they hold stale entries only).
local function drop_lists()
  local lists = {}
  for prio = 0, 9 do lists[#lists + 1] = ready_lists .. prio end
  redis.call('DEL', unpack(lists))
end
-- end ready ------------------------------------------------------------------------------------

-- limits: unique keys and held tasks of waiting tasks that end ---------------------------------
local unheld = {}

-- Moves the oldest held task of `ckey` back to `ready`, at the head of its priority's list.
local function let_one_go(ckey)
  if not ckey then return end
  while true do
    local first = redis.call('ZPOPMIN', held_prefix .. ckey)
    if #first == 0 then return end
    redis.call('ZREM', held, first[1])
    if redis.call('HGET', task_prefix .. first[1], 'state') == 'queued' then
      to_ready(first[1], true)
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
