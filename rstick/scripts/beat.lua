-- beat: a worker's heartbeat: its deadline, in Redis time, moves to now + its ttl.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, instance, ttl_ms, running, grace ("1" or "")
--          (Python: rstick.heartbeat)
--          grace: the first beat after this worker saw Redis unavailable (down, or
--          refusing writes). Every stored deadline went by meanwhile, through no fault
--          of their workers: each live worker's deadline is pushed to now + its own
--          ttl, so that none is taken for dead before it could beat again (one
--          already declared dead stays so).
-- Returns  "ok"; "reaped" (declared dead meanwhile: the worker must rejoin before it
--          claims again); "unknown" (no record: Redis lost its data); or
--          {"taken", pid, host}: another process took this worker id over.
local p, me, instance, ttl, running, grace = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()
local h = redis.call('HMGET', worker_key(p, me), 'instance', 'reaped', 'pid', 'host')
if not h[1] then return 'unknown' end
if h[1] ~= instance then return {'taken', h[3], h[4]} end
if h[2] then return 'reaped' end
if grace == '1' then
  local workers = p .. ':workers'
  for _, w in ipairs(redis.call('ZRANGE', workers, 0, -1)) do
    local wh = redis.call('HMGET', worker_key(p, w), 'ttl', 'reaped')
    local wttl, deadline = tonumber(wh[1]), tonumber(redis.call('ZSCORE', workers, w))
    if wttl and not wh[2] and deadline and deadline < now + wttl then
      redis.call('ZADD', workers, now + wttl, w)
    end
  end
end
redis.call('ZADD', p .. ':workers', now + tonumber(ttl), me)
redis.call('HSET', worker_key(p, me), 'running', running, 'beat', now)
return 'ok'
