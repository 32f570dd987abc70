-- Writes the packed record of `ulid` back as its task hash (state queued) and takes it out of
-- `ready`; its list entry stays behind, stale (lease skips it). False when `ulid` is not ready.
local function from_ready(ulid)
  local packed = redis.call('HGET', ready, ulid)
  if not packed then return false end
  local r = cmsgpack.unpack(packed)
  local fields = {'state', 'queued', 'name', r[1], 'created', r[2]}
  if r[3] ~= '' then put_pieces(fields, 'payload', 'p', 'pn', r[3]) end
  for i = 4, #r do fields[#fields + 1] = r[i] end
  redis.call('HDEL', ready, ulid)
  redis.call('HSET', task_prefix .. ulid, unpack(fields))
  return true
end
