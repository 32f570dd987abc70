-- A task left running (for good when `ended`): frees its concurrency slot and lets one held task
-- of its key go; when it ended, releases its unique key if it still holds it. `uniq` and `ckey`
-- are the task's fields of those names (read by the caller with the rest of its record).
local function limits_left(ulid, uniq, ckey, ended)
  if ended and uniq and redis.call('GET', uniq_prefix .. uniq) == ulid then redis.call('DEL', uniq_prefix .. uniq) end
  if ckey then
    redis.call('SREM', conc_prefix .. ckey, ulid)
    let_one_go(ckey)
  end
end
