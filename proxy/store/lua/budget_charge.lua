-- Settle a model call: add the difference between its actual and reserved cost (negative for a
-- refund) to the current cost window.
-- KEYS[1]  cost key: hash {start = window start (s), spent = spend in that window}
-- ARGV[1]  window_s: cost window length in seconds (windows are aligned to the Unix epoch, so UTC)
-- ARGV[2]  amount to add (may be negative)
-- Returns the window's spend after adding (string). A new window starts from zero; a refund never
-- takes a window below zero (the reservation may belong to the previous window).
local t = redis.call('TIME')
local window = tonumber(ARGV[1])
local start = math.floor(tonumber(t[1]) / window) * window
if tonumber(redis.call('HGET', KEYS[1], 'start')) ~= start then
  redis.call('HSET', KEYS[1], 'start', string.format('%.0f', start), 'spent', '0')
end
local spent = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2]))
if spent < 0 then
  redis.call('HSET', KEYS[1], 'spent', '0')
  spent = 0
end
redis.call('EXPIRE', KEYS[1], math.ceil(window * 2) + 60)
return tostring(spent)
