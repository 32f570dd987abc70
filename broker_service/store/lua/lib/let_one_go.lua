-- Moves the oldest held task of `ckey` back to `ready`, at the head of its priority's list.
local function let_one_go(ckey)
  if not ckey then return end
  while true do
    local first = redis.call('ZPOPMIN', held_prefix .. ckey)
    if #first == 0 then return end
    redis.call('ZREM', held, first[1])
    if redis.call('HGET', task_prefix .. first[1], 'state') == 'queued' then
      to_ready(first[1], true)
      unheld[#unheld + 1] = first[1]
      return
    end
  end
end
