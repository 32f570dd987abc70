local function publish(kind, ids)
  if #ids > 0 then redis.call('PUBLISH', events, kind .. ' ' .. table.concat(ids, ' ')) end
end
