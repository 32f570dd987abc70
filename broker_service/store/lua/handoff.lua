-- handoff: writes new tasks straight to running for one worker, when nothing waits ahead of them.
--
-- KEYS[1] task_prefix     prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] ready           HASH     ready tasks' packed records, by ulid (must be empty)
-- KEYS[3] running         ZSET     leased tasks, score min(lease deadline, execution deadline)
-- KEYS[4] sequence        STRING   fencing token counter
-- KEYS[5] limits          HASH     the queue's limits (must be absent)
-- KEYS[6] running_events  channel  the queue's channel of `running` events (read by watchers only)
--
-- ARGV[1] tasks      msgpack  enqueue.lua's ARGV[1]: a full row per task, or a (ulid, payload) pair
-- ARGV[2] count      int      most tasks the worker takes
-- ARGV[3] worker_id  string   the worker that receives them
--
-- The tasks end as enqueue.lua then lease.lua would leave them, field for field, without the
-- detour through `ready` (packing a record, a list entry, popping, unpacking): so it applies only
-- when that lease would take exactly these tasks. The queue has no ready task and no limits, the
-- worker takes them all (`count`), and every task is ready now, new (no record has its ulid) and
-- plain: no idempotency, unique or concurrency key, no schedule-to-start timeout, no workflow.
-- Otherwise it writes nothing. Leased in lease's order: higher priority first, then as given.
--
-- Returns: false when it does not apply; else {enqueued, leased} as enqueue_lease answers them:
--   enqueue's answer ("queued" per task) and lease's ({now, leased, {}, -1, 0}).
-- Publishes: `running <ulids>` on running_events.
-- Errors: none.

local task_prefix = KEYS[1]
local ready = KEYS[2]
local running = KEYS[3]
local sequence = KEYS[4]
local limits = KEYS[5]
local running_events = KEYS[6]
local tasks = ARGV[1]
local count = tonumber(ARGV[2])
local worker_id = ARGV[3]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

-- One call's tasks stay within one EXISTS, one ZADD and one unpack of arguments.
local MAX_TASKS = 1000

--#include put_pieces

--#include lease_reply

--#include stored_options

--#include task_rows

if redis.call('HLEN', ready) > 0 or redis.call('EXISTS', limits) == 1 then return false end
local ulids, payloads, rows, keys = task_rows(tasks)
if #ulids > count or #ulids > MAX_TASKS then return false end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_text = string.format('%d', now)

-- What a full row's task shares with the (ulid, payload) pairs after it: its row, the record's
-- fields after the payload (numbers as text, as a packed record holds them), those fields by name.
local function shape_of(row)
  local run_at, delay = tonumber(row[15]), tonumber(row[16])
  local due = now + delay
  if run_at > 0 then due = run_at end
  if due > now or tonumber(row[17]) > 0 or row[18] ~= '' or row[20] ~= '' or row[21] ~= '' or row[24] ~= ''
      or row[26] ~= '' then
    return nil
  end
  local tail, rec = stored_options(row), {}
  for j = 1, #tail, 2 do
    if type(tail[j + 1]) == 'number' then tail[j + 1] = string.format('%d', tail[j + 1]) end
    rec[tail[j]] = tail[j + 1]
  end
  return {row = row, tail = tail, rec = rec, prio = tonumber(row[6])}
end

local picks, shape = {}, nil
for i = 1, #ulids do
  if rows[i] then
    shape = shape_of(rows[i])
    if not shape then return false end
  end
  picks[i] = {ulid = ulids[i], key = keys[i], payload = payloads[i], shape = shape, order = i}
end
if redis.call('EXISTS', unpack(keys)) > 0 then return false end
if #picks > 1 then
  table.sort(picks, function(a, b)
    if a.shape.prio ~= b.shape.prio then return a.shape.prio > b.shape.prio end
    return a.order < b.order
  end)
end

local enqueued, leased, to_run, run_ids = {}, {}, {}, {}
local last = redis.call('INCRBY', sequence, #picks)
local first = last - #picks + 1
for n, p in ipairs(picks) do
  local rec, tail = p.shape.rec, p.shape.tail
  local token = first + n - 1
  local lease = tonumber(rec.lease) or DEFAULT.lease
  local timeout = tonumber(rec.timeout or '0')
  local deadline = now + lease
  local hash = {'name', p.shape.row[2], 'created', now_text}
  if p.payload ~= '' then put_pieces(hash, 'payload', 'p', 'pn', p.payload) end
  for j = 1, #tail do hash[#hash + 1] = tail[j] end
  local h = #hash
  hash[h + 1], hash[h + 2], hash[h + 3], hash[h + 4] = 'state', 'running', 'attempt', 1
  hash[h + 5], hash[h + 6], hash[h + 7], hash[h + 8], hash[h + 9], hash[h + 10] =
    'token', token, 'worker', worker_id, 'started', now
  if timeout > 0 then
    local exec_dl = now + timeout
    if exec_dl < deadline then deadline = exec_dl end
    hash[#hash + 1] = 'exec_dl'; hash[#hash + 1] = exec_dl
  end
  redis.call('HSET', p.key, unpack(hash))
  to_run[#to_run + 1] = deadline; to_run[#to_run + 1] = p.ulid
  run_ids[#run_ids + 1] = p.ulid
  enqueued[p.order] = 'queued'
  lease_reply(leased, p.ulid, p.shape.row[2], p.payload, rec, 1, token, lease, now_text)
end
redis.call('ZADD', running, unpack(to_run))
redis.call('PUBLISH', running_events, 'running ' .. table.concat(run_ids, ' '))
return {enqueued, {now, leased, {}, -1, 0}}
