-- Decide the limit checks of a batch of requests, one request after the other, each
-- atomically: a request consumes only if none of its enforced checks rejects, and the next
-- request sees what it consumed. The same rules as gateway/state/memory.py, the reference.
-- One call answers every request that reached the gateway in the same event-loop turn (on a
-- Cluster: every such request of one hash tag), so a request costs a share of one round trip.
--
-- KEYS: the state keys of request 1's checks, then request 2's, ... (on a Cluster all share
--       one hash tag).
-- ARGV: per request: now in seconds, or "" to use the Redis clock (one clock for the whole
--       fleet); its check count n; then kind, shadow, a, b, c, d per check
--   rate (0):        interval, burst, cost, max_delay
--   concurrency (1): max, token, lease, -
--   quota (2):       cost, limit, flag_only, expires_at
-- Returns one string: per request, per check "allowed,remaining,reset,retry_after,delay,over"
-- joined by ";", the requests joined by "|".

local redis_now = nil

-- Decide one request: its checks are KEYS[first + 1 .. first + n], their values start at ARGV[at].
local function decide(now, first, n, at)
  local out = {}
  local writes = {}
  local blocked = false

  for i = 1, n do
    local base = at + (i - 1) * 6
    local kind = tonumber(ARGV[base])
    local shadow = ARGV[base + 1] == '1'
    local a, b, c, d = ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
    local key = KEYS[first + i]
    local allowed, remaining, reset, retry, delay, over = 0, 0, 0, 0, 0, 0

    if kind == 0 then
      local interval, burst, cost, max_delay = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
      local tat = tonumber(redis.call('GET', key)) or now
      if tat < now then tat = now end
      local new_tat = tat + cost * interval
      local window = burst * interval
      local allow_at = new_tat - window
      if allow_at <= now + 1e-6 then
        allowed = 1
        remaining = math.floor((window - (new_tat - now)) / interval + 1e-3)
        reset = new_tat - now
      elseif max_delay > 0 and allow_at - now <= max_delay then
        allowed = 1
        reset = new_tat - now
        delay = allow_at - now
      else
        remaining = math.max(0, math.floor((window - (tat - now)) / interval + 1e-3))
        reset = tat - now
        retry = allow_at - now
      end
      writes[i] = new_tat
    elseif kind == 1 then
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
      reset = expires_at - now
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
        local base = at + (i - 1) * 6
        local kind = tonumber(ARGV[base])
        local key = KEYS[first + i]
        if kind == 0 then
          local ttl_ms = math.ceil((writes[i] - now) * 1000) + 1000
          redis.call('SET', key, string.format('%.6f', writes[i]), 'PX', ttl_ms)
        elseif kind == 1 then
          local lease = tonumber(ARGV[base + 4])
          redis.call('ZADD', key, now + lease, ARGV[base + 3])
          redis.call('PEXPIRE', key, math.ceil(lease * 1000))
        else
          local cost = tonumber(ARGV[base + 2])
          if cost > 0 then
            redis.call('INCRBYFLOAT', key, cost)
            redis.call('PEXPIREAT', key, math.ceil(tonumber(ARGV[base + 5]) * 1000) + 60000)
          end
        end
      end
    end
  end

  return table.concat(out, ';')
end

local answers = {}
local first, at = 0, 1
while at <= #ARGV do
  local now = tonumber(ARGV[at])
  if not now then
    if not redis_now then
      local t = redis.call('TIME')
      redis_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    now = redis_now
  end
  local n = tonumber(ARGV[at + 1])
  answers[#answers + 1] = decide(now, first, n, at + 2)
  first = first + n
  at = at + 2 + n * 6
end
return table.concat(answers, '|')
