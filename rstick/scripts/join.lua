-- join: a worker process takes its id: at start, and to rejoin after it was declared
-- dead or Redis lost its record.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, instance, ttl_ms, (field, value) * n: its record
--          (Python: rstick.worker)
-- Returns  {"ok", now} (its record written, its heartbeat deadline now + ttl), or
--          {"busy", pid, host, ms_left, beat}: another process (another instance)
--          holds the id and its deadline has not passed; nothing written. `beat` is
--          when it last beat itself (a grace after an outage may push its deadline
--          though it beats no more: the caller waits while `beat` stands still).
local p, me, instance, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local wk = worker_key(p, me)
local h = redis.call('HMGET', wk, 'instance', 'reaped', 'pid', 'host')
if h[1] and h[1] ~= instance and not h[2] then
  local deadline = tonumber(redis.call('ZSCORE', p .. ':workers', me))
  if deadline and deadline > now then
    return {'busy', h[3], h[4], deadline - now, redis.call('HGET', wk, 'beat') or ''}
  end
end
redis.call('DEL', wk)
redis.call('HSET', wk, 'instance', instance, 'ttl', ttl, 'beat', now, 'deadline', now + ttl,
  unpack(ARGV, 5))
redis.call('ZADD', p .. ':workers', now + ttl, me)
return {'ok', now}
