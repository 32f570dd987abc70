-- An enqueue row's entries (enqueue.lua's ARGV[1]) that a task record keeps only when they
-- differ from what their absent field means, three values each: entry, field, absent value
-- (one flat table: a table per entry would be built again on every call).
local OPTIONAL = {
  4, 'ctype', '', 5, 'headers', '', 6, 'prio', 0, 7, 'max', DEFAULT.max,
  8, 'b_init', DEFAULT.b_init, 9, 'b_max', DEFAULT.b_max, 10, 'b_mult', DEFAULT.b_mult, 11, 'b_jit', 0,
  12, 'timeout', 0, 13, 'lease', DEFAULT.lease, 14, 'ttl', DEFAULT.ttl, 18, 'idem', '', 20, 'uniq', '',
  21, 'ckey', '', 22, 'climit', 0, 23, 'sched', '', 24, 'wf', '', 25, 'node', '', 26, 'parents', '',
  27, 'rpass', 0,
}

-- The record fields of enqueue row `row` after its name, creation time and payload, as HSET
-- arguments: each optional entry that differs from its absent value, in OPTIONAL's order.
local function stored_options(row)
  local tail = {}
  for i = 1, #OPTIONAL, 3 do
    local value, absent = row[OPTIONAL[i]], OPTIONAL[i + 2]
    if value ~= absent and tonumber(value) ~= absent then
      tail[#tail + 1] = OPTIONAL[i + 1]; tail[#tail + 1] = value
    end
  end
  return tail
end
