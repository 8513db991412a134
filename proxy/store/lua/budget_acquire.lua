-- Decide COUNT model calls, in order, against a route's budgets: atomically for every replica.
-- (Concurrent calls of one replica are decided in one script call: one round trip for all of them.)
-- KEYS[1]  rate key: the GCRA theoretical arrival time, microseconds (string)
-- KEYS[2]  cost key: hash {start = window start (s), spent = spend in that window}
-- ARGV[1]  interval_us: 1e6 / calls per second; 0 when the route has no rate budget
-- ARGV[2]  burst: calls allowed at once after idling
-- ARGV[3]  window_s: cost window length in seconds; 0 when the route has no cost budget
-- ARGV[4]  limit: spend allowed per window
-- ARGV[5]  reserve: each call's expected cost, added to the window's spend when the call is allowed
--          (settled against the actual cost when the model answers), so calls in flight cannot all
--          pass the limit check before any of them is charged
-- ARGV[6]  count: how many calls to decide (the first `granted` are allowed, the rest refused)
-- Returns {granted, reason for the refused ("" | "rate" | "cost"), calls_left, spent (string)}.
-- Time is the Redis server's (TIME), so replicas with skewed clocks share one budget.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local reserve = tonumber(ARGV[5])
local count = tonumber(ARGV[6] or '1')
local spent = 0
local start = 0
if window > 0 then
  start = math.floor(now_s / window) * window
  local stored = redis.call('HMGET', KEYS[2], 'start', 'spent')
  if tonumber(stored[1]) == start then
    spent = tonumber(stored[2]) or 0
  end
end
local tat = 0
if interval > 0 then
  tat = tonumber(redis.call('GET', KEYS[1]) or '0')
end
local granted, reason, left = 0, '', -1
for _ = 1, count do
  if window > 0 and spent >= limit then
    reason = 'cost'
    break
  end
  if interval > 0 then
    local new_tat = math.max(tat, now) + interval
    if new_tat - now > burst * interval then
      reason = 'rate'
      break
    end
    tat = new_tat
    left = math.floor((burst * interval - (new_tat - now)) / interval)
  end
  spent = spent + reserve
  granted = granted + 1
end
if granted > 0 and interval > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
if reason ~= '' then
  left = 0
end
if granted > 0 and window > 0 and reserve > 0 then
  redis.call('HSET', KEYS[2], 'start', string.format('%.0f', start), 'spent', string.format('%.17g', spent))
  redis.call('EXPIRE', KEYS[2], math.ceil(window * 2) + 60)
end
return {granted, reason, left, string.format('%.17g', spent)}
