-- forget: remove a dead worker once nothing of it is left: no pinned run, no
-- entry in its personal stream. Its consumers in the shared queues go too. Its
-- record stays a while as a tombstone marked reaped, so that should the process
-- wake up (a long pause) its heartbeat learns it was declared dead, not that
-- Redis lost its data.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, tombstone_seconds, queue * n    (Python: rstick.reaper)
-- Returns  1 when the worker was removed, 0 when it is alive or still holds work.
local p, w = ARGV[1], ARGV[2]
local now = now_ms()
if judge(p, w, now) then return 0 end
local personal = personal_key(p, w)
if redis.call('SCARD', pinned_key(p, w)) > 0 or redis.call('XLEN', personal) > 0 then
  return 0
end
for j = 4, #ARGV do
  local q = queue_key(p, ARGV[j])
  if redis.call('EXISTS', q) == 1 then
    -- pcall: the queue may have lost its group (a NOGROUP must not stop the pass).
    local pending = redis.pcall('XPENDING', q, GROUP, '-', '+', 1, w)
    if type(pending) == 'table' and pending[1] then return 0 end
    pcall(redis.call, 'XGROUP', 'DELCONSUMER', q, GROUP, w)
  end
end
redis.call('DEL', personal, pinned_key(p, w))
redis.call('ZREM', p .. ':workers', w)
if redis.call('EXISTS', worker_key(p, w)) == 1 then
  redis.call('HSET', worker_key(p, w), 'reaped', '1')
  redis.call('EXPIRE', worker_key(p, w), ARGV[3])
end
return 1
