-- Deletes the ready lists of every priority (when `ready` is empty they hold stale entries only).
local function drop_lists()
  local lists = {}
  for prio = 0, 9 do lists[#lists + 1] = ready_lists .. prio end
  redis.call('DEL', unpack(lists))
end
