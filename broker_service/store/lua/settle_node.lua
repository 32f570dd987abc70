-- settle_node: records a workflow node's final state; answers what the workflow must do next.
--
-- KEYS[1] record  HASH     the workflow record `{ns:wf:<id>}:w`
-- KEYS[2] events  channel  the workflow's pub/sub channel
--
-- ARGV[1] node   string  the node's name
-- ARGV[2] state  string  its task's terminal state: succeeded, failed, cancelled or expired
--
-- A child is ready when its count of parents yet to succeed (`w/<child>`) reaches 0.
-- The node's state is recorded once (`s/<node>`); settling it again records nothing and answers
-- the same, so a pass interrupted by a crash is finished by repeating it. A node that did not
-- succeed makes the workflow FAILED (reason "node '<node>' failed", the first one wins) and
-- every unfinished descendant is to be cancelled. When no node is left unfinished the workflow
-- ends: SUCCEEDED, FAILED, or it stays CANCELLED; `finished` is set and the record expires
-- `ttl` ms later.
--
-- Returns: {state, ended, ready, cancel}: `state` the workflow's state ('' when the record is
--   gone); `ended` 1 when this call ended the workflow; `ready` the task ids of children whose
--   parents all SUCCEEDED and that are unfinished; `cancel` flat (task id, reason) of the
--   unfinished descendants to cancel.
-- Publishes: `node <node>` on the workflow's channel when the state was recorded.
-- Errors: none.

local record = KEYS[1]
local events = KEYS[2]
local node = ARGV[1]
local state = ARGV[2]

local head = redis.call('HMGET', record, 'state', 'reason')
local wf_state = head[1]
if not wf_state then return {'', 0, {}, {}} end

local function words(value)
  local out = {}
  if value then for w in string.gmatch(value, '%S+') do out[#out + 1] = w end end
  return out
end

local VERB = {failed = 'failed', cancelled = 'was cancelled', expired = 'expired'}
local ended = 0
if redis.call('HSETNX', record, 's/' .. node, state) == 1 then
  local left = redis.call('HINCRBY', record, 'left', -1)
  if state == 'succeeded' then
    for _, child in ipairs(words(redis.call('HGET', record, 'c/' .. node))) do
      redis.call('HINCRBY', record, 'w/' .. child, -1)
    end
  end
  if state ~= 'succeeded' then
    redis.call('HSET', record, 'bad', '1')
    if not head[2] then
      redis.call('HSET', record, 'reason', 'node \'' .. node .. '\' ' .. (VERB[state] or state))
    end
  end
  if left <= 0 and wf_state == 'running' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    wf_state = 'succeeded'
    if redis.call('HEXISTS', record, 'bad') == 1 then wf_state = 'failed' end
    redis.call('HSET', record, 'state', wf_state, 'finished', now)
    redis.call('PEXPIREAT', record, now + tonumber(redis.call('HGET', record, 'ttl')))
    ended = 1
  end
  redis.call('PUBLISH', events, 'node ' .. node)
end

local ready, cancel = {}, {}
local recorded = redis.call('HGET', record, 's/' .. node)
if recorded == 'succeeded' and wf_state == 'running' then
  for _, child in ipairs(words(redis.call('HGET', record, 'c/' .. node))) do
    local f = redis.call('HMGET', record, 's/' .. child, 'w/' .. child, 't/' .. child)
    if not f[1] and tonumber(f[2]) == 0 then ready[#ready + 1] = f[3] end
  end
elseif recorded ~= 'succeeded' then
  local why = VERB[recorded] or recorded
  local seen, frontier, depth = {}, {node}, 0
  while #frontier > 0 do
    depth = depth + 1
    local next_frontier = {}
    for _, current in ipairs(frontier) do
      for _, child in ipairs(words(redis.call('HGET', record, 'c/' .. current))) do
        if not seen[child] then
          seen[child] = true
          next_frontier[#next_frontier + 1] = child
          if not redis.call('HGET', record, 's/' .. child) then
            local kin = 'ancestor'
            if depth == 1 then kin = 'parent' end
            cancel[#cancel + 1] = redis.call('HGET', record, 't/' .. child)
            cancel[#cancel + 1] = kin .. ' \'' .. node .. '\' ' .. why
          end
        end
      end
    end
    frontier = next_frontier
  end
end
return {wf_state, ended, ready, cancel}
