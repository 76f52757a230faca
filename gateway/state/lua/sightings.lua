-- Record sightings and answer the detectors' queries in one call (gateway/state/redis_sightings.py):
-- the same commands its pipeline sends a Cluster, run here so the gateway writes one command
-- and reads one reply instead of four commands a key written and one a query.
--
-- KEYS: the keys written, then the keys queried.
-- ARGV: the number of keys written; then per key written: the horizon (members scored below it
--       are forgotten: "(" and a time), the cap (members kept), the TTL in ms, the number of
--       members n, then n pairs of last-seen time and member; then per key queried: since.
-- Returns per query, in order: the flat list member, last seen, ... of members seen at or after since.

local written = tonumber(ARGV[1])
local at = 2
-- ZADD takes its pairs in slices: Lua's unpack has a stack limit.
local SLICE = 200

for i = 1, written do
  local key = KEYS[i]
  local horizon, cap, ttl, n = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], tonumber(ARGV[at + 3])
  at = at + 4
  local first = 0
  while first < n do
    local count = math.min(SLICE, n - first)
    local pairs = {}
    for j = 1, 2 * count do
      pairs[j] = ARGV[at + 2 * first + j - 1]
    end
    -- GT: a later write never moves a member back in time; new members are added.
    redis.call('ZADD', key, 'GT', unpack(pairs))
    first = first + count
  end
  at = at + 2 * n
  redis.call('ZREMRANGEBYSCORE', key, '-inf', horizon)
  redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
  redis.call('PEXPIRE', key, ttl)
end

local answers = {}
for i = written + 1, #KEYS do
  answers[#answers + 1] = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[at], '+inf', 'WITHSCORES')
  at = at + 1
end
return answers
