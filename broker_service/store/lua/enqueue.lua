-- enqueue: writes new tasks of one queue, each to `ready` (ready now) or `scheduled` (due later).
--
-- KEYS[1] task_prefix      prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] ready            HASH     ready tasks' packed records, by ulid
-- KEYS[3] ready_lists      prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[4] scheduled        ZSET     delayed tasks, score due ms
-- KEYS[5] start_deadlines  ZSET     waiting tasks with a schedule-to-start deadline
-- KEYS[6] events           channel  the queue's pub/sub channel
-- KEYS[7] pending          ZSET     workflow nodes waiting for their parents, score created ms
-- KEYS[8] idem_prefix      prefix   `{ns:q}:idem:`; an idempotency key appended names its STRING
-- KEYS[9] uniq_prefix      prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
--
-- ARGV[1] tasks            msgpack  an array with an entry per task: its full row, an array of the
--   27 entries below, in this order (strings as raw, numbers as numbers); one argument however
--   many tasks, which keeps a batch cheap to send and to read. Two entries ulid, payload in the
--   array itself, not in a row of their own, are a task like the last full row before them but
--   for those two: a batch of one task over many arguments sends (and this script reads and
--   checks) its shared entries once, and reads its tasks without a table each.
--   ulid           string  the task's ulid
--   name           string  task name
--   payload        bytes   opaque payload ('' = none, stored absent)
--   ctype          string  payload media type ('' = application/json, stored absent)
--   headers        string  headers as a JSON object ('' = none, stored absent)
--   prio           int     priority 0..9
--   max            int     attempts allowed
--   b_init         int     first retry backoff, ms
--   b_max          int     backoff cap, ms
--   b_mult         string  backoff multiplier, a decimal number
--   b_jit          string  jitter fraction 0..1, a decimal number
--   timeout        int     execution timeout per attempt, ms (0 = none)
--   lease          int     lease duration, ms
--   ttl            int     result TTL, ms
--   run_at         int     absolute due time, ms (0 = none)
--   delay          int     delay from now, ms (used when run_at is 0)
--   start_timeout  int     schedule-to-start timeout counted from due, ms (0 = none)
--   idem           string  idempotency key ('' = none)
--   idem_ttl       int     how long the idempotency key is remembered, ms
--   uniq           string  unique key ('' = none)
--   ckey           string  concurrency key ('' = none)
--   climit         int     most running tasks with `ckey` (0 = none)
--   sched          string  id of the schedule whose tick submitted it ('' = none)
--   wf             string  workflow id ('' = none)
--   node           string  workflow node name ('' = none)
--   parents        string  parent task ids, space separated ('' = none)
--   rpass          int     how parents' results are handed over (ResultPassing, 0 = none)
-- ARGV[2] quiet            string   '1': publish no `wake` (the caller leases at once and wakes
--   others itself if tasks are left, see scripts.py ENQUEUE_LEASE); '' = publish it
--
-- A task ready now is packed into `ready` (the fields below, see KEYS.md) and its ulid appended
-- to its priority's list; any other gets its own task hash. Every key, id and number above is
-- stored in the record under its entry name when it is not
-- empty or 0 (a payload over 64 bytes in pieces: see `pieces` below) (`idem_ttl` is not stored); max, b_init, b_max, b_mult, lease and ttl only when they
-- differ from DEFAULT (the readers of those fields apply the same table). A task with parents (or any workflow node) is written `pending` into
-- `pending` (it waits for its workflow to release it) instead of `ready` or `scheduled`; its
-- `delay` and `start_timeout` are then stored as `delay` and `start_tmo`, to count from release.
--
-- Idempotency key: the first task with `idem` takes `{ns:q}:idem:<idem>` (its ulid, PX idem_ttl);
-- while that key lives, a task with the same `idem` stores nothing and answers the holder (also
-- when the holder's record has expired: then with state ''). Unique key: a task with `uniq` takes
-- `{ns:q}:uniq:<uniq>` while it waits or runs (the scripts that end a task release it); a task with
-- the same `uniq` stores nothing and answers the holder, and its `idem`, if any, then names the
-- holder too. A holder that no longer waits or runs does not count. Within one call the checks
-- see the tasks written before, so the second of two tasks sharing a key is a duplicate.
--
-- Returns: one entry per task, in order: its state label ("queued" when ready, "scheduled" or "pending"),
--   or for a duplicate "<state> <holder ulid> <kind>" (state the holder's, '' when its record is
--   gone; kind "idempotency" or "unique"). A ulid that already exists is left untouched and
--   answers its current state (a retried enqueue is idempotent).
-- Publishes: `wake` when `ready` was empty before and now is not (unless `quiet`).
-- Errors: none.

local task_prefix = KEYS[1]
local ready = KEYS[2]
local ready_lists = KEYS[3]
local scheduled = KEYS[4]
local start_deadlines = KEYS[5]
local events = KEYS[6]
local pending = KEYS[7]
local idem_prefix = KEYS[8]
local uniq_prefix = KEYS[9]
local tasks = ARGV[1]
local quiet = ARGV[2]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

--#include put_pieces

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

--#include in_chunks

local fresh = {} -- ulids this call made ready (written to `ready` at its end)

-- The state of task `ulid`: its hash's, or queued when it is ready; nil when there is none.
local function state_of(ulid)
  if fresh[ulid] then return 'queued' end
  return redis.call('HGET', task_prefix .. ulid, 'state') or (redis.call('HEXISTS', ready, ulid) == 1 and 'queued') or nil
end

-- limits: idempotency and unique keys ------------------------------------------------------
local LIVE = {pending = true, scheduled = true, queued = true, running = true}

-- The task an idempotency or unique key already names: ulid, state, which key matched (or nil).
local function taken(idem, idem_ttl, uniq)
  if idem ~= '' then
    local holder = redis.call('GET', idem_prefix .. idem)
    if holder then
      return holder, state_of(holder) or '', 'idempotency'
    end
  end
  if uniq ~= '' then
    local holder = redis.call('GET', uniq_prefix .. uniq)
    if holder then
      local state = state_of(holder)
      if state and LIVE[state] then
        if idem ~= '' then redis.call('SET', idem_prefix .. idem, holder, 'PX', idem_ttl) end
        return holder, state, 'unique'
      end
    end
  end
  return nil
end

local function claim(ulid, idem, idem_ttl, uniq)
  if idem ~= '' then redis.call('SET', idem_prefix .. idem, ulid, 'PX', idem_ttl) end
  if uniq ~= '' then redis.call('SET', uniq_prefix .. uniq, ulid) end
end
-- end limits ----------------------------------------------------------------------------------

local was_empty = redis.call('HLEN', ready) == 0
local to_ready, to_schedule, to_start_by, to_pend, answers = {}, {}, {}, {}, {}
local to_lists = {} -- priority -> ulids to append to its list
local now_text = string.format('%d', now)

--#include stored_options

-- What a full row's task shares with the (ulid, payload) pairs after it, worked out once: state,
-- due time, the index it goes to and its score there, and the record's fields after the payload.
-- (Numbers go to Redis as decimal text made here once, not converted again per task.)
local function shape_of(row)
  local prio, run_at, delay, start_timeout = tonumber(row[6]), tonumber(row[15]), tonumber(row[16]), tonumber(row[17])
  local due = now + delay
  if run_at > 0 then due = run_at end
  if due < now then due = now end
  local tail = stored_options(row)
  local shape = {name = row[2], due = string.format('%d', due), idem = row[18], idem_ttl = row[19],
                 uniq = row[20], tail = tail}
  shape.keyed = shape.idem ~= '' or shape.uniq ~= ''
  -- a workflow node waits pending, roots too: its workflow releases it once its record is written
  if row[26] ~= '' or row[24] ~= '' then
    shape.state, shape.index, shape.score = 'pending', to_pend, now_text
    -- its delay and schedule-to-start timeout count from its release: kept for that
    if delay > 0 then tail[#tail + 1] = 'delay'; tail[#tail + 1] = delay end
    if start_timeout > 0 then tail[#tail + 1] = 'start_tmo'; tail[#tail + 1] = start_timeout end
    return shape
  end
  if due > now then
    shape.state, shape.index, shape.score = 'scheduled', to_schedule, shape.due
  else
    shape.state, shape.ready = 'queued', true
    local list = to_lists[prio]
    if not list then list = {}; to_lists[prio] = list end
    shape.list = list
  end
  if start_timeout > 0 then
    shape.start_by = string.format('%d', due + start_timeout)
    tail[#tail + 1] = 'start_by'; tail[#tail + 1] = shape.start_by
  end
  if shape.ready then -- a packed record holds text, as a task hash would
    for j = 2, #tail, 2 do
      if type(tail[j]) == 'number' then tail[j] = string.format('%d', tail[j]) end
    end
    -- Its tasks' records differ only in their payload, the third of 3 + #tail strings: the
    -- msgpack bytes before and after it are made once (an array's elements are packed alone).
    local n = 3 + #tail
    local header = n < 16 and string.char(0x90 + n) or string.char(0xdc, math.floor(n / 256), n % 256)
    shape.before = header .. cmsgpack.pack(shape.name, now_text)
    shape.after = #tail > 0 and cmsgpack.pack(unpack(tail)) or ''
  end
  return shape
end

--#include task_rows

local ulids, payloads, rows, keys = task_rows(tasks)
-- A new batch names no existing task: one EXISTS (task hashes) and one HMGET (ready records)
-- for all spare a lookup per task.
local any_exist, is_ready = false, {}
for i = 1, #keys, 4000 do
  local last = math.min(i + 3999, #keys)
  any_exist = any_exist or redis.call('EXISTS', unpack(keys, i, last)) > 0
  local found = redis.call('HMGET', ready, unpack(ulids, i, last))
  for j = 1, #found do
    if found[j] then any_exist = true; is_ready[i + j - 1] = true end
  end
end

local shape, tail
for i = 1, #ulids do
  local ulid, payload = ulids[i], payloads[i]
  if rows[i] then shape = shape_of(rows[i]); tail = shape.tail end

  local key = keys[i]
  local existing = any_exist and ((is_ready[i] and 'queued') or redis.call('HGET', key, 'state'))
  local holder, held_state, kind
  if not existing and shape.keyed then holder, held_state, kind = taken(shape.idem, shape.idem_ttl, shape.uniq) end
  if existing then
    answers[i] = existing
  elseif holder then
    answers[i] = held_state .. ' ' .. holder .. ' ' .. kind
  elseif shape.ready then -- ready now: due is created, so no `due` (see ready in KEYS.md)
    to_ready[#to_ready + 1] = ulid; to_ready[#to_ready + 1] = shape.before .. cmsgpack.pack(payload) .. shape.after
    fresh[ulid] = true
    shape.list[#shape.list + 1] = ulid
    if shape.start_by then to_start_by[#to_start_by + 1] = shape.start_by; to_start_by[#to_start_by + 1] = ulid end
    if shape.keyed then claim(ulid, shape.idem, shape.idem_ttl, shape.uniq) end
    answers[i] = shape.state
  else
    local fields = {'state', shape.state, 'name', shape.name, 'created', now_text}
    if shape.due ~= now_text then fields[#fields + 1] = 'due'; fields[#fields + 1] = shape.due end
    if payload ~= '' then put_pieces(fields, 'payload', 'p', 'pn', payload) end
    local n = #fields
    for j = 1, #tail do fields[n + j] = tail[j] end
    redis.call('HSET', key, unpack(fields))

    local index = shape.index
    index[#index + 1] = shape.score; index[#index + 1] = ulid
    if shape.start_by then to_start_by[#to_start_by + 1] = shape.start_by; to_start_by[#to_start_by + 1] = ulid end
    if shape.keyed then claim(ulid, shape.idem, shape.idem_ttl, shape.uniq) end
    answers[i] = shape.state
  end
end

in_chunks('HSET', ready, to_ready)
for prio, ulids in pairs(to_lists) do in_chunks('RPUSH', ready_lists .. prio, ulids) end
in_chunks('ZADD', scheduled, to_schedule)
in_chunks('ZADD', start_deadlines, to_start_by)
in_chunks('ZADD', pending, to_pend)
if was_empty and #to_ready > 0 and quiet ~= '1' then redis.call('PUBLISH', events, 'wake') end
return answers
