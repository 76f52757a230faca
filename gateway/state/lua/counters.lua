-- Add amounts to counter sets listed under an index in one call (gateway/state/redis_counters.py):
-- the same commands its pipeline sends a Cluster, so the gateway writes one command, not one
-- a field.
--
-- KEYS: the index, then each set's key (the index, ":", the set's name).
-- ARGV: the TTL in ms of the index and every set; then per set: its field count n, then n pairs
--       of field and amount.

local index, ttl = KEYS[1], ARGV[1]
local names = {}
local at = 2
for i = 2, #KEYS do
  local key = KEYS[i]
  names[#names + 1] = string.sub(key, #index + 2)
  local n = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, n do
    redis.call('HINCRBYFLOAT', key, ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  redis.call('PEXPIRE', key, ttl)
end
-- SADD takes its members in slices: Lua's unpack has a stack limit.
for first = 1, #names, 200 do
  redis.call('SADD', index, unpack(names, first, math.min(first + 199, #names)))
end
redis.call('PEXPIRE', index, ttl)
return #names
