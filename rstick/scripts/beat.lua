-- beat: a worker's heartbeat: its deadline, in Redis time, moves to now + its ttl.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, instance, ttl_ms, running, grace_since, gap_ms
--          (Python: rstick.membership.beat_args)
--          grace_since: on the first beat after this worker found Redis unavailable
--          (down, or refusing writes), the Redis time of its last good beat before
--          that; else "". Every deadline may have gone by meanwhile, through no
--          fault of its worker: grant_grace (lib.lua) from then, so that none is
--          taken for dead before it could beat again.
--          gap_ms: no beat landing anywhere for longer means Redis stood still
--          (note_activity in lib.lua): grace too, with no error seen by anyone.
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
if grace_since then grant_grace(p, grace_since, now) end
note_activity(p, now, tonumber(ARGV[7]))
redis.call('ZADD', p .. ':workers', now + ttl, me)
redis.call('HSET', wk, 'running', running, 'beat', now, 'deadline', now + ttl)
return {'ok', now}
