-- Compare-and-set a route's stage state: replace it only if its version is still the expected one.
-- KEYS[1]  state key (JSON string with a "version" field)
-- ARGV[1]  expected version
-- ARGV[2]  new state (JSON)
-- ARGV[3]  pub/sub channel told about the change ('' for none)
-- ARGV[4]  route name (the message)
-- Returns 1 when replaced, 0 when another writer changed it first (the caller adopts theirs).
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
if tonumber(cjson.decode(current)['version']) ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 1
