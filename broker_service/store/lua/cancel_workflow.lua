-- cancel_workflow: ends a running workflow CANCELLED; answers its unfinished nodes' tasks to cancel.
--
-- KEYS[1] record  HASH     the workflow record `{ns:wf:<id>}:w`
-- KEYS[2] events  channel  the workflow's pub/sub channel
--
-- ARGV[1] reason  string  why ('' = "cancelled"), stored as `reason`
--
-- The record expires `ttl` ms after this; nodes that end later are still recorded. Children of
-- a cancelled workflow are never released.
--
-- Returns: the task ids of the nodes not yet settled, in submission order.
-- Publishes: `cancelled` on the workflow's channel.
-- Errors: NOT_FOUND (no such workflow or its record expired), TERMINAL (already finished).

local record = KEYS[1]
local events = KEYS[2]
local reason = ARGV[1]

local head = redis.call('HMGET', record, 'state', 'ttl', 'nodes')
if not head[1] then
  return redis.error_reply('NOT_FOUND workflow')
end
if head[1] ~= 'running' then
  return redis.error_reply('TERMINAL workflow is ' .. head[1])
end
if reason == '' then reason = 'cancelled' end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', record, 'state', 'cancelled', 'finished', now, 'reason', reason)
redis.call('PEXPIREAT', record, now + tonumber(head[2]))

local open = {}
for node in string.gmatch(head[3], '%S+') do
  if not redis.call('HGET', record, 's/' .. node) then
    open[#open + 1] = redis.call('HGET', record, 't/' .. node)
  end
end
redis.call('PUBLISH', events, 'cancelled')
return open
