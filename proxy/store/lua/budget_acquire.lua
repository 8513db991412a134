-- Decide one model call against a route's budgets, atomically for every replica.
-- KEYS[1]  rate key: the GCRA theoretical arrival time, microseconds (string)
-- KEYS[2]  cost key: hash {start = window start (s), spent = spend in that window}
-- ARGV[1]  interval_us: 1e6 / calls per second; 0 when the route has no rate budget
-- ARGV[2]  burst: calls allowed at once after idling
-- ARGV[3]  window_s: cost window length in seconds; 0 when the route has no cost budget
-- ARGV[4]  limit: spend allowed per window
-- Returns {allowed (1|0), reason ("" | "rate" | "cost"), calls_left, spent (string)}.
-- Time is the Redis server's (TIME), so replicas with skewed clocks share one budget.
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local spent = 0
if window > 0 then
  local start = math.floor(now_s / window) * window
  local stored = redis.call('HMGET', KEYS[2], 'start', 'spent')
  if tonumber(stored[1]) == start then
    spent = tonumber(stored[2]) or 0
  end
  if spent >= tonumber(ARGV[4]) then
    return {0, 'cost', 0, tostring(spent)}
  end
end
if interval <= 0 then
  return {1, '', -1, tostring(spent)}
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now)
local new_tat = base + interval
if new_tat - now > burst * interval then
  return {0, 'rate', 0, tostring(spent)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, '', math.floor((burst * interval - (new_tat - now)) / interval), tostring(spent)}
