-- lead: take or renew the reaper's leader lock; it always has a TTL.
-- KEYS[1]  {ns}:leader
-- ARGV     worker, ttl_ms
-- Returns  1 when this worker leads, else 0.
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
