-- beat: a worker's heartbeat.
-- KEYS[1]  {ns}:workers
-- KEYS[2]  {ns}:worker:<id>
-- ARGV     worker, now_ms, running
-- Returns  1, or 0 when the reaper declared this worker dead meanwhile (it must
--          re-register and take back what it still holds).
if redis.call('HGET', KEYS[2], 'reaped') or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'running', ARGV[3])
return 1
