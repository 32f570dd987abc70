-- set_limits: replaces a queue's limits (most running tasks, start rate and burst); zeros clear them.
--
-- KEYS[1] limits  HASH     the queue's limits: max_running, rate, burst (a field absent = no limit)
-- KEYS[2] events  channel  the queue's pub/sub channel
--
-- ARGV[1] max_running  int    most tasks of the queue running at once (0 = no limit)
-- ARGV[2] rate         float  most tasks started per second (0 = no limit)
-- ARGV[3] burst        int    size of the rate's token bucket (0 = max(1, rate)); kept only with a rate
--
-- Returns: how many limits are now set (0: none, the hash is gone). The token bucket is left as
--   it is: lease.lua caps what it holds at the new burst.
-- Publishes: `wake`, so dispatchers that waited for a slot or a token lease again at once.
-- Errors: none.

local limits = KEYS[1]
local events = KEYS[2]
local max_running = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])

local fields = {}
if max_running > 0 then fields[#fields + 1] = 'max_running'; fields[#fields + 1] = max_running end
if rate > 0 then
  fields[#fields + 1] = 'rate'; fields[#fields + 1] = ARGV[2]
  if burst > 0 then fields[#fields + 1] = 'burst'; fields[#fields + 1] = burst end
end

redis.call('DEL', limits)
if #fields > 0 then redis.call('HSET', limits, unpack(fields)) end
redis.call('PUBLISH', events, 'wake')
return #fields / 2
