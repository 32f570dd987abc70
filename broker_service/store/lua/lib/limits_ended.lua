-- A waiting task ended: releases its unique key if it still holds it; held back, it leaves the
-- held sets, else, when it was queued, it lets one held task of its concurrency key go.
local function limits_ended(key, ulid, was_queued)
  local x = redis.call('HMGET', key, 'uniq', 'ckey')
  if x[1] and redis.call('GET', uniq_prefix .. x[1]) == ulid then redis.call('DEL', uniq_prefix .. x[1]) end
  if x[2] and was_queued then
    if redis.call('ZREM', held, ulid) == 1 then
      redis.call('ZREM', held_prefix .. x[2], ulid)
    else
      let_one_go(x[2])
    end
  end
end
