-- extend: renews the leases a worker holds (heartbeat), also its re-claim after a reconnect.
--
-- KEYS[1] task_prefix  prefix  `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] running      ZSET    leased tasks, score min(lease deadline, execution deadline)
--
-- ARGV[1] worker_id  string  the worker presenting the leases (recorded as `worker`)
-- ARGV[2..] 2 per lease:
--   ulid   string  the task's ulid
--   token  int     the lease token presented
--
-- Returns: array, one LeaseState wire value per lease: 1 ACTIVE (renewed), 2 STALE (not running
--   or another token), 3 CANCEL_REQUESTED (renewed, but a cancel was requested: stop it).
-- Publishes: nothing.
-- Errors: none.

local task_prefix = KEYS[1]
local running = KEYS[2]
local worker_id = ARGV[1]

-- task defaults: a task hash leaves out these fields while they hold these values ----------
local DEFAULT = {max = 3, b_init = 1000, b_max = 600000, b_mult = 2, lease = 30000, ttl = 86400000}
-- end task defaults ---------------------------------------------------------------------------

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local answers, to_run = {}, {}
for i = 2, #ARGV, 2 do
  local ulid = ARGV[i]
  local token = ARGV[i + 1]
  local key = task_prefix .. ulid
  local f = redis.call('HMGET', key, 'state', 'token', 'lease', 'exec_dl', 'cancel', 'worker')
  if f[1] ~= 'running' or f[2] ~= token then
    answers[#answers + 1] = 2
  else
    local deadline = now + (tonumber(f[3]) or DEFAULT.lease)
    local exec_dl = tonumber(f[4] or '0')
    if exec_dl > 0 and exec_dl < deadline then deadline = exec_dl end
    to_run[#to_run + 1] = deadline; to_run[#to_run + 1] = ulid
    if f[6] ~= worker_id then redis.call('HSET', key, 'worker', worker_id) end
    if f[5] == '1' then answers[#answers + 1] = 3 else answers[#answers + 1] = 1 end
  end
end

for i = 1, #to_run, 4000 do
  redis.call('ZADD', running, unpack(to_run, i, math.min(i + 3999, #to_run)))
end
return answers
