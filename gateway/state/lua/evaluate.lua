-- Decide the limit checks of a batch of requests, one request after the other, each
-- atomically: a request consumes only if none of its enforced checks rejects, and the next
-- request sees what it consumed. The same rules as gateway/state/memory.py, the reference.
-- One call answers every request that reached the gateway in the same event-loop turn (on a
-- Cluster: every such request of one hash tag), so a request costs a share of one round trip.
--
-- KEYS: the state keys of request 1's checks, then request 2's, ... (on a Cluster all share
--       one hash tag).
-- ARGV: first the clock of buckets and slots: "redis" for Redis's own TIME (one clock for the
--       whole fleet), "" for each request's gateway time; then per request: the gateway's time
--       in seconds, its check count n, then kind, shadow, a, b, c, d per check (gateway/state/
--       redis_script.py builds them: CheckArguments, kinds LUA_RATE, LUA_CONCURRENCY, LUA_QUOTA)
--   RATE (0):        interval, burst, cost, max_delay
--   CONCURRENCY (1): max, token, lease, -
--   QUOTA (2):       cost, limit, flag_only, expires_at (the period's end, gateway time)
-- Returns one string: per request, per check "allowed,remaining,reset,retry_after,delay,over"
-- joined by ";", the requests joined by "|".
--
-- No key's expiry depends on the gateway's and Redis's clocks agreeing: every TTL is relative
-- (PX, PEXPIRE), computed from times of one clock. A bucket holds "units taken,when" (the same
-- at any rate: a throttle, a reinstatement or a new plan rate applies from now on); a quota's
-- period end is the gateway's, so it is measured from the gateway's time.

local RATE, CONCURRENCY, QUOTA = 0, 1, 2  -- a check's kind
local ARGUMENTS_PER_CHECK = 6  -- kind, shadow, a, b, c, d

-- Decide one request: its checks are KEYS[first + 1 .. first + n], their values start at ARGV[at].
-- `now` decides buckets and slots, `gateway_now` quotas.
local function decide(now, gateway_now, first, n, at)
  local out = {}
  local writes = {}
  local drains = {}
  local blocked = false

  for i = 1, n do
    local base = at + (i - 1) * ARGUMENTS_PER_CHECK
    local kind = tonumber(ARGV[base])
    local shadow = ARGV[base + 1] == '1'
    local a, b, c, d = ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
    local key = KEYS[first + i]
    local allowed, remaining, reset, retry, delay, over = 0, 0, 0, 0, 0, 0

    if kind == RATE then
      local interval, burst, cost, max_delay = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
      local owed = 0  -- seconds until the bucket is full again, at this rate
      local state = redis.call('GET', key)
      if state then
        local units, at = string.match(state, '^([^,]+),(.+)$')
        if units then
          owed = math.max(0, tonumber(units) * interval - math.max(0, now - tonumber(at)))
        else
          owed = math.max(0, (tonumber(state) or now) - now)  -- an earlier version's arrival time
        end
      end
      local after = owed + cost * interval
      local window = burst * interval
      local wait = after - window
      if wait <= 1e-6 then
        allowed = 1
        remaining = math.floor((window - after) / interval + 1e-3)
        reset = after
      elseif max_delay > 0 and wait <= max_delay then
        allowed = 1
        reset = after
        delay = wait
      else
        remaining = math.max(0, math.floor((window - owed) / interval + 1e-3))
        reset = owed
        retry = wait
      end
      writes[i] = after / interval
      drains[i] = after
    elseif kind == CONCURRENCY then
      local max = tonumber(a)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      local used = redis.call('ZCARD', key)
      if used + 1 <= max then
        allowed = 1
        remaining = max - used - 1
      else
        remaining = max - used
        retry = 1
      end
    else
      local cost, limit, flag_only, expires_at = tonumber(a), tonumber(b), c == '1', tonumber(d)
      local used = tonumber(redis.call('GET', key)) or 0
      local fits = used + cost <= limit and (cost > 0 or used < limit)
      reset = expires_at - gateway_now
      if fits then
        allowed = 1
        remaining = math.max(0, limit - used - cost)
      elseif flag_only then
        allowed = 1
        over = 1
      else
        remaining = math.max(0, limit - used)
        retry = reset
      end
    end

    if allowed == 0 and not shadow then blocked = true end
    out[i] = string.format('%d,%.6f,%.6f,%.6f,%.6f,%d', allowed, remaining, reset, retry, delay, over)
  end

  if not blocked then
    for i = 1, n do
      if string.sub(out[i], 1, 1) == '1' then
        local base = at + (i - 1) * ARGUMENTS_PER_CHECK
        local kind = tonumber(ARGV[base])
        local key = KEYS[first + i]
        if kind == RATE then
          -- Kept twice its drain time at this rate (and a second): a rate halved meanwhile (the
          -- ladder's throttle) still finds what was taken.
          local ttl_ms = math.ceil(drains[i] * 2000) + 1000
          redis.call('SET', key, string.format('%.17g,%.17g', writes[i], now), 'PX', ttl_ms)
        elseif kind == CONCURRENCY then
          local lease = tonumber(ARGV[base + 4])
          redis.call('ZADD', key, now + lease, ARGV[base + 3])
          redis.call('PEXPIRE', key, math.ceil(lease * 1000))
        else
          local cost = tonumber(ARGV[base + 2])
          if cost > 0 then
            redis.call('INCRBYFLOAT', key, cost)
            -- A minute past the period's end, by the gateway's clock.
            local ttl_ms = math.ceil((tonumber(ARGV[base + 5]) - gateway_now) * 1000) + 60000
            redis.call('PEXPIRE', key, math.max(ttl_ms, 1000))
          end
        end
      end
    end
  end

  return table.concat(out, ';')
end

local redis_now = nil
if ARGV[1] == 'redis' then
  local t = redis.call('TIME')
  redis_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local answers = {}
local first, at = 0, 2
while at <= #ARGV do
  local gateway_now = tonumber(ARGV[at])
  local n = tonumber(ARGV[at + 1])
  answers[#answers + 1] = decide(redis_now or gateway_now, gateway_now, first, n, at + 2)
  first = first + n
  at = at + 2 + n * ARGUMENTS_PER_CHECK
end
return table.concat(answers, '|')
