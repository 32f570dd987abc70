-- complete: stores the results of successful attempts; the task ends SUCCEEDED.
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running      ZSET     leased tasks
-- KEYS[3] succeeded    ZSET     succeeded tasks, score record expiry ms
-- KEYS[4] events       channel  the queue's pub/sub channel
-- KEYS[5] wf_outbox    ZSET     workflow nodes that ended, for their workflow to advance
--
-- ARGV[1..] 4 per item:
--   ulid    string  the task's ulid
--   token   int     the lease token presented
--   result  bytes   result payload ('' = none, stored absent)
--   rtype   string  result media type ('' = none, stored absent)
--
-- Returns: array, one integer per item: the attempt's run time in ms, or -1 when the token is
--   stale. Completing again with the token of the success answers the run time again and
--   writes nothing. The record expires `ttl` ms after finishing.
-- Publishes: `succeeded <ulids>`. `workflow <ulids>` when workflow nodes ended (added to `wf_outbox`).
-- Errors: none.

local task_prefix = KEYS[1]
local running = KEYS[2]
local succeeded = KEYS[3]
local events = KEYS[4]
local wf_outbox = KEYS[5]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function in_chunks(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

local answers, done_ids, done_scores, wf_done = {}, {}, {}, {}
for i = 1, #ARGV, 4 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local result = ARGV[i + 2]
  local rtype = ARGV[i + 3]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token', 'started', 'finished', 'ttl', 'cancel', 'wf')
  if f[2] ~= token then
    answers[#answers + 1] = -1
  elseif f[1] == 'running' then
    local ttl = tonumber(f[5])
    local fields = {'state', 'succeeded', 'finished', now}
    if result ~= '' then fields[#fields + 1] = 'result'; fields[#fields + 1] = result end
    if rtype ~= '' then fields[#fields + 1] = 'rtype'; fields[#fields + 1] = rtype end
    redis.call('HSET', key, unpack(fields))
    if f[6] then redis.call('HDEL', key, 'cancel', 'reason') end
    redis.call('PEXPIREAT', key, now + ttl)
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
-- workflow outbox: nodes that ended, for their workflows to advance (broker_service/workflows.py)
if #wf_done > 0 then
  local entries = {}
  for _, id in ipairs(wf_done) do entries[#entries + 1] = now; entries[#entries + 1] = id end
  in_chunks('ZADD', wf_outbox, entries)
  redis.call('PUBLISH', events, 'workflow ' .. table.concat(wf_done, ' '))
end
return answers
