-- Add what an answered model call cost to the current cost window.
-- KEYS[1]  cost key: hash {start = window start (s), spent = spend in that window}
-- ARGV[1]  window_s: cost window length in seconds (windows are aligned to the Unix epoch, so UTC)
-- ARGV[2]  amount to add
-- Returns the window's spend after adding (string). A new window starts from zero.
local t = redis.call('TIME')
local window = tonumber(ARGV[1])
local start = math.floor(tonumber(t[1]) / window) * window
if tonumber(redis.call('HGET', KEYS[1], 'start')) ~= start then
  redis.call('HSET', KEYS[1], 'start', string.format('%.0f', start), 'spent', '0')
end
local spent = redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(window * 2) + 60)
return spent
