-- Appends a leased task's 13 entries to `leased`, lease.lua's reply (false where a field is
-- absent): `rec` holds its record's fields by name, `due` when it became ready.
local function lease_reply(leased, ulid, name, payload, rec, attempt, token, lease, due)
  local base = #leased
  leased[base + 1] = ulid
  leased[base + 2] = name
  leased[base + 3] = payload
  leased[base + 4] = rec.ctype or false
  leased[base + 5] = rec.headers or false
  leased[base + 6] = attempt
  leased[base + 7] = rec.max or DEFAULT.max
  leased[base + 8] = token
  leased[base + 9] = lease
  leased[base + 10] = rec.timeout or false
  leased[base + 11] = due
  leased[base + 12] = rec.presults or false
  leased[base + 13] = rec.rpass or false
end
