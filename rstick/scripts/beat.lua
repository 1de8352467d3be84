-- beat: a worker's heartbeat: its deadline, in Redis time, moves to now + its ttl.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, instance, ttl_ms, running, grace_since
--          (Python: rstick.heartbeat)
--          grace_since: on the first beat after this worker found Redis unavailable
--          (down, or refusing writes), the Redis time of its last good beat before
--          that; else "". Every deadline may have gone by meanwhile, through no
--          fault of its worker: each worker that was alive when the outage began
--          (its own last beat within its ttl of grace_since), and not declared dead
--          since, gets its deadline pushed to now + its ttl, so that none is taken
--          for dead before it could beat again. A worker already dead then gains
--          nothing, however often grace is given.
-- Returns  {"ok", now}; "reaped" (declared dead meanwhile: the worker must rejoin
--          before it claims again); "unknown" (no record: Redis lost its data); or
--          {"taken", pid, host}: another process took this worker id over.
local p, me, instance, ttl, running = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local grace_since = tonumber(ARGV[6])
local now = now_ms()
local wk = worker_key(p, me)
local h = redis.call('HMGET', wk, 'instance', 'reaped', 'pid', 'host')
if not h[1] then return 'unknown' end
if h[1] ~= instance then return {'taken', h[3], h[4]} end
if h[2] then return 'reaped' end
if grace_since then
  local workers = p .. ':workers'
  for _, w in ipairs(redis.call('ZRANGE', workers, 0, -1)) do
    local wh = redis.call('HMGET', worker_key(p, w), 'ttl', 'reaped', 'beat')
    local wttl, last = tonumber(wh[1]), tonumber(wh[3])
    if wttl and last and not wh[2] and last + wttl >= grace_since then
      local deadline = tonumber(redis.call('ZSCORE', workers, w))
      if deadline and deadline < now + wttl then
        redis.call('ZADD', workers, now + wttl, w)
        redis.call('HSET', worker_key(p, w), 'deadline', now + wttl)
      end
    end
  end
end
redis.call('ZADD', p .. ':workers', now + ttl, me)
redis.call('HSET', wk, 'running', running, 'beat', now, 'deadline', now + ttl)
return {'ok', now}
