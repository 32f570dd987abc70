-- create_workflow: writes a workflow's record and its graph; the commit point of a submit.
--
-- KEYS[1] record  HASH     the workflow record `{ns:wf:<id>}:w`
-- KEYS[2] events  channel  the workflow's pub/sub channel
--
-- ARGV[1] name     string  the workflow's label ('' = none, stored absent)
-- ARGV[2] ttl      int     how long the record is kept once the workflow finished, ms
-- ARGV[3..] 4 per node:
--   node      string  node name, in submission order (letters, digits, '_', '-', '.', ':')
--   task_id   string  the node's task id
--   parents   string  parent node names, space separated ('' = a root)
--   children  string  child node names, space separated ('' = an output node)
--
-- Returns: 1 when the record was written, 0 when it already existed (a retried submit: left
--   untouched).
-- Publishes: nothing (nobody waits on a workflow before its submit answers).
-- Errors: none.

local record = KEYS[1]
local events = KEYS[2]
local name = ARGV[1]
local ttl = ARGV[2]

if redis.call('EXISTS', record) == 1 then return 0 end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local names = {}
local fields = {'state', 'running', 'created', now, 'ttl', ttl}
if name ~= '' then fields[#fields + 1] = 'name'; fields[#fields + 1] = name end
for i = 3, #ARGV, 4 do
  local node = ARGV[i]
  names[#names + 1] = node
  fields[#fields + 1] = 't/' .. node; fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i + 2] ~= '' then
    local waiting = 0
    for _ in string.gmatch(ARGV[i + 2], '%S+') do waiting = waiting + 1 end
    fields[#fields + 1] = 'p/' .. node; fields[#fields + 1] = ARGV[i + 2]
    fields[#fields + 1] = 'w/' .. node; fields[#fields + 1] = waiting
  end
  if ARGV[i + 3] ~= '' then fields[#fields + 1] = 'c/' .. node; fields[#fields + 1] = ARGV[i + 3] end
end
fields[#fields + 1] = 'nodes'; fields[#fields + 1] = table.concat(names, ' ')
fields[#fields + 1] = 'left'; fields[#fields + 1] = #names
for i = 1, #fields, 4000 do
  redis.call('HSET', record, unpack(fields, i, math.min(i + 3999, #fields)))
end
return 1
