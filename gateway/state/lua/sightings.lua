-- Record sightings and answer the detectors' queries in one call (gateway/state/redis_sightings.py):
-- the same commands its pipeline sends a Cluster, run here so the gateway writes one command
-- and reads one reply instead of four commands a key written and one a query.
--
-- What is the same for many keys is sent once: a key's window, cap and TTL are one of a few
-- shapes (one per kind of key a detector writes), its horizon is worked out here from its
-- latest sighting, and a query of a key written in this call names it by its place in KEYS.
--
-- KEYS: the keys written, then the other keys queried.
-- ARGV: the number of keys written; the number of shapes, then per shape its window in seconds,
--       cap (members kept) and TTL in ms; then per key written: its shape (1-based), the
--       number of members n, then n pairs of last-seen time and member; then per query: its
--       key's place in KEYS (1-based) and since.
-- Returns per query, in order: the flat list member, last seen, ... of members seen at or after since.

local written = tonumber(ARGV[1])
local shapes = tonumber(ARGV[2])
local at = 3 + 3 * shapes
-- ZADD takes its pairs in slices: Lua's unpack has a stack limit.
local SLICE = 200

for i = 1, written do
  local key = KEYS[i]
  local shape = 3 + 3 * (tonumber(ARGV[at]) - 1)
  local window, cap, ttl = tonumber(ARGV[shape]), tonumber(ARGV[shape + 1]), ARGV[shape + 2]
  local n = tonumber(ARGV[at + 1])
  at = at + 2
  local latest = -math.huge
  local first = 0
  while first < n do
    local count = math.min(SLICE, n - first)
    local pairs = {}
    for j = 1, 2 * count do
      pairs[j] = ARGV[at + 2 * first + j - 1]
    end
    for j = 1, 2 * count, 2 do
      latest = math.max(latest, tonumber(pairs[j]))
    end
    -- GT: a later write never moves a member back in time; new members are added.
    redis.call('ZADD', key, 'GT', unpack(pairs))
    first = first + count
  end
  at = at + 2 * n
  -- Members last seen a window or more before this key's latest sighting go (%.17g: the exact double).
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%.17g', latest - window))
  redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
  redis.call('PEXPIRE', key, ttl)
end

local answers = {}
while at < #ARGV do
  answers[#answers + 1] = redis.call('ZRANGEBYSCORE', KEYS[tonumber(ARGV[at])], ARGV[at + 1], '+inf', 'WITHSCORES')
  at = at + 2
end
return answers
