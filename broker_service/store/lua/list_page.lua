-- list_page: reads one page of an index (a per-state ZSET) with the records of its tasks (read only).
--
-- KEYS[1] index        ZSET    the index listed, in score order then member order
-- KEYS[2] task_prefix  prefix  `{ns:q}:t:`; a ulid appended names a task hash
--
-- ARGV[1] page_size  int     most entries answered
-- ARGV[2] score      string  score of the last entry already seen ('' = start at the beginning)
-- ARGV[3] member     string  member of the last entry already seen
-- ARGV[4..] field names read from each record (HMGET)
--
-- Returns: {more, entries}: `more` 1 when entries follow this page; `entries` flat, per entry:
--   ulid, score, then one value per field name (nil when absent). An entry whose record is
--   gone is answered with every value nil. The page starts right after (score, member), found
--   by rank, so entries inserted before it meanwhile are not seen and none is seen twice.
-- Publishes: nothing.
-- Errors: none.

local index = KEYS[1]
local task_prefix = KEYS[2]
local page_size = tonumber(ARGV[1])
local score = ARGV[2]
local member = ARGV[3]

local start = 0
if score ~= '' then
  local current = redis.call('ZSCORE', index, member)
  if current and tonumber(current) == tonumber(score) then
    start = redis.call('ZRANK', index, member) + 1
  else
    -- the last entry left or moved: binary search among the ties of its old score
    local lo = redis.call('ZCOUNT', index, '-inf', '(' .. score)
    local hi = redis.call('ZCOUNT', index, '-inf', score)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local at = redis.call('ZRANGE', index, mid, mid)[1]
      if at <= member then lo = mid + 1 else hi = mid end
    end
    start = lo
  end
end

local found = redis.call('ZRANGE', index, start, start + page_size, 'WITHSCORES')
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local more = 0
if #found > 2 * page_size then more = 1 end
local entries = {}
for j = 1, math.min(#found, 2 * page_size), 2 do
  local ulid = found[j]
  entries[#entries + 1] = ulid
  entries[#entries + 1] = found[j + 1]
  local values = redis.call('HMGET', task_prefix .. ulid, unpack(fields))
  for k = 1, #fields do entries[#entries + 1] = values[k] end
end
return {more, entries}
