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
