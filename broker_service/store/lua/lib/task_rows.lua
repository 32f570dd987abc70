-- Reads enqueue.lua's ARGV[1]: per task its ulid, its payload, its full row (false when it is a
-- (ulid, payload) pair of entries sharing the last full row's) and its task hash's key.
local function task_rows(tasks)
  local entries, ulids, payloads, rows, keys = cmsgpack.unpack(tasks), {}, {}, {}, {}
  local i, n = 1, 0
  while i <= #entries do
    n = n + 1
    local entry = entries[i]
    if type(entry) == 'table' then
      ulids[n], payloads[n], rows[n] = entry[1], entry[3], entry
      i = i + 1
    else
      ulids[n], payloads[n], rows[n] = entry, entries[i + 1], false
      i = i + 2
    end
    keys[n] = task_prefix .. ulids[n]
  end
  return ulids, payloads, rows, keys
end
