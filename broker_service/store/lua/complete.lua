-- complete: stores the results of successful attempts; the task ends SUCCEEDED.
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running      ZSET     leased tasks
-- KEYS[3] succeeded    ZSET     succeeded tasks, score record expiry ms
-- KEYS[4] events       channel  the queue's pub/sub channel
-- KEYS[5] ready        HASH     ready tasks' packed records, by ulid
-- KEYS[6] ready_lists  prefix   `{ns:q}:ready:`; a priority appended names its LIST of ready ulids
-- KEYS[7] held         ZSET     tasks held back by their concurrency key, queued score
-- KEYS[8] conc_prefix  prefix   `{ns:q}:conc:`; a concurrency key appended names its SET of running ulids
-- KEYS[9] held_prefix  prefix   `{ns:q}:held:`; a concurrency key appended names its ZSET of held tasks
-- KEYS[10] uniq_prefix prefix   `{ns:q}:uniq:`; a unique key appended names its STRING
-- KEYS[11] wf_outbox   ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1] read       string   ulids, space separated, whose hashes to answer as this call leaves
--   them ('' = none): a waiter on the calling broker gets the result without another round trip
-- ARGV[2..] 4 per item:
--   ulid    string  the task's ulid
--   token   int     the lease token presented
--   result  bytes   result payload ('' = none, stored absent; a long one in pieces, see below)
--   rtype   string  result media type ('' = application/json, stored absent)
--
-- Returns: array, one integer per item: the attempt's run time in ms, or -1 when the token is
--   stale. Completing again with the token of the success answers the run time again and
--   writes nothing. The record expires `ttl` ms after finishing. Then, per ulid of `read`, its
--   hash as HGETALL answers it (an empty array when the record is gone).
-- Limits: the task releases its unique key and its concurrency slot; the oldest task held back by
--   its concurrency key becomes ready again, at the head of its list.
-- Publishes: `succeeded <ulids>`, `queued <ulids>` (held tasks let go). `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local running = KEYS[2]
local succeeded = KEYS[3]
local events = KEYS[4]
local ready = KEYS[5]
local ready_lists = KEYS[6]
local held = KEYS[7]
local conc_prefix = KEYS[8]
local held_prefix = KEYS[9]
local uniq_prefix = KEYS[10]
local wf_outbox = KEYS[11]
local read = ARGV[1]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

--#include put_pieces

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

local answers, done_ids, done_scores = {}, {}, {}
local wf_done = {}
for i = 2, #ARGV, 4 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local result = ARGV[i + 2]
  local rtype = ARGV[i + 3]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token', 'started', 'finished', 'ttl', 'cancel', 'wf',
                             'uniq', 'ckey')
  if f[2] ~= token then
    answers[#answers + 1] = -1
  elseif f[1] == 'running' then
    local ttl = tonumber(f[5]) or DEFAULT.ttl
    local fields = {'state', 'succeeded', 'finished', now}
    if result ~= '' then put_pieces(fields, 'result', 'r', 'rn', result) end
    if rtype ~= '' then fields[#fields + 1] = 'rtype'; fields[#fields + 1] = rtype end
    redis.call('HSET', key, unpack(fields))
    if f[6] then redis.call('HDEL', key, 'cancel', 'reason') end
    redis.call('PEXPIREAT', key, now + ttl)
    limits_left(ulid, f[8], f[9], true)
    done_ids[#done_ids + 1] = ulid
    if f[7] then wf_done[#wf_done + 1] = ulid end
    done_scores[#done_scores + 1] = now + ttl; done_scores[#done_scores + 1] = ulid
    answers[#answers + 1] = now - tonumber(f[3])
  elseif f[1] == 'succeeded' then
    answers[#answers + 1] = tonumber(f[4]) - tonumber(f[3])
  else
    answers[#answers + 1] = -1
  end
end

in_chunks('ZREM', running, done_ids)
in_chunks('ZADD', succeeded, done_scores)
if #done_ids > 0 then redis.call('PUBLISH', events, 'succeeded ' .. table.concat(done_ids, ' ')) end
if #unheld > 0 then redis.call('PUBLISH', events, 'queued ' .. table.concat(unheld, ' ')) end
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
for ulid in string.gmatch(read, '%S+') do answers[#answers + 1] = redis.call('HGETALL', task_prefix .. ulid) end
return answers
