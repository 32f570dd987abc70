-- read: reads tasks whichever side they are on, their hash or their packed record (read only).
--
-- KEYS[1] task_prefix  prefix  `{ns:q}:t:`; a ulid appended names a task hash
-- KEYS[2] ready        HASH    ready tasks' packed records, by ulid
--
-- ARGV[1..] 1 per task:
--   ulid  string  the task's ulid
--
-- Returns: array, one entry per ulid: its hash flat (field, value, ...) when it has one, else
--   its packed record (a string) when it is ready, else false (its record is gone). A task moves
--   between the two in one script call, so one call finds it on one side or the other.
-- Publishes: nothing.
-- Errors: none.

local task_prefix = KEYS[1]
local ready = KEYS[2]

local found = {}
for i, ulid in ipairs(ARGV) do
  local flat = redis.call('HGETALL', task_prefix .. ulid)
  if #flat > 0 then
    found[i] = flat
  else
    found[i] = redis.call('HGET', ready, ulid)
  end
end
return found
