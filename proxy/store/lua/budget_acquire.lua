-- Decide one model call against a route's budgets, atomically for every replica.
-- KEYS[1]  rate key: the GCRA theoretical arrival time, microseconds (string)
-- KEYS[2]  cost key: hash {start = window start (s), spent = spend in that window}
-- ARGV[1]  interval_us: 1e6 / calls per second; 0 when the route has no rate budget
-- ARGV[2]  burst: calls allowed at once after idling
-- ARGV[3]  window_s: cost window length in seconds; 0 when the route has no cost budget
-- ARGV[4]  limit: spend allowed per window
-- ARGV[5]  reserve: the call's expected cost, added to the window's spend when the call is allowed
--          (settled against the actual cost when the model answers), so concurrent calls in
--          flight cannot all pass the limit check before any of them is charged
-- Returns {allowed (1|0), reason ("" | "rate" | "cost"), calls_left, spent (string)}.
-- Time is the Redis server's (TIME), so replicas with skewed clocks share one budget.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local spent = 0
local start = 0
if window > 0 then
  start = math.floor(now_s / window) * window
  local stored = redis.call('HMGET', KEYS[2], 'start', 'spent')
  if tonumber(stored[1]) == start then
    spent = tonumber(stored[2]) or 0
  end
  if spent >= tonumber(ARGV[4]) then
    return {0, 'cost', 0, tostring(spent)}
  end
end
local left = -1
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local base = math.max(tat, now)
  local new_tat = base + interval
  if new_tat - now > burst * interval then
    return {0, 'rate', 0, tostring(spent)}
  end
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  left = math.floor((burst * interval - (new_tat - now)) / interval)
end
local reserve = tonumber(ARGV[5])
if window > 0 and reserve > 0 then
  if spent == 0 then
    redis.call('HSET', KEYS[2], 'start', string.format('%.0f', start), 'spent', '0')
  end
  spent = tonumber(redis.call('HINCRBYFLOAT', KEYS[2], 'spent', ARGV[5]))
  redis.call('EXPIRE', KEYS[2], math.ceil(window * 2) + 60)
end
return {1, '', left, tostring(spent)}
