-- pieces: a task hash keeps Redis's compact encoding (listpack) only while every value is at
-- most hash-max-listpack-value (64 bytes by default), so a longer payload or result is stored in
-- pieces of PIECE bytes: `payload` the first, `p2` .. `p<pn>` the rest, `pn` their number (a
-- result: `result`, `r2` .. `r<rn>`, `rn`). Beyond MAX_PIECES pieces the record could not stay
-- compact anyway: then one field.
local PIECE, MAX_PIECES = 64, 32

-- Appends `value` to the HSET arguments `fields` under `name`, in pieces when it is long.
local function put_pieces(fields, name, prefix, count_name, value)
  if #value <= PIECE or #value > PIECE * MAX_PIECES then
    fields[#fields + 1] = name; fields[#fields + 1] = value
    return
  end
  local pieces = math.ceil(#value / PIECE)
  fields[#fields + 1] = name; fields[#fields + 1] = string.sub(value, 1, PIECE)
  for j = 2, pieces do
    fields[#fields + 1] = prefix .. j; fields[#fields + 1] = string.sub(value, (j - 1) * PIECE + 1, j * PIECE)
  end
  fields[#fields + 1] = count_name; fields[#fields + 1] = pieces
end
