-- progress: stores the progress reported by running attempts.
--
-- KEYS[1] task_prefix  prefix   `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] events       channel  the queue's pub/sub channel
--
-- ARGV[1..] 4 per report:
--   ulid      string  the task's ulid
--   token     int     the lease token presented
--   fraction  float   progress, 0 to 1
--   message   string  free-text message ('' = stored absent)
--
-- Returns: array, one integer per report: 1 if stored, 0 if the lease is stale.
-- Publishes: `progress <ulids>`.
-- Errors: none.

local task_prefix = KEYS[1]
local events = KEYS[2]

local answers, ids = {}, {}
for i = 1, #ARGV, 4 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local fraction = ARGV[i + 2]
  local message = ARGV[i + 3]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token')
  if f[1] ~= 'running' or f[2] ~= token then
    answers[#answers + 1] = 0
  else
    if message ~= '' then
      redis.call('HSET', key, 'prog', fraction, 'prog_msg', message)
    else
      redis.call('HSET', key, 'prog', fraction)
      redis.call('HDEL', key, 'prog_msg')
    end
    ids[#ids + 1] = ulid
    answers[#answers + 1] = 1
  end
end

if #ids > 0 then redis.call('PUBLISH', events, 'progress ' .. table.concat(ids, ' ')) end
return answers
