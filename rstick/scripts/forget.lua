-- forget: remove a dead worker once nothing of it is left: no pinned run, no
-- entry in its personal stream. Its consumers in the shared queues go too.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, worker_deadline_ms, queue * n
-- Returns  1 when the worker was removed, 0 when it is alive or still holds work.
local p, w = ARGV[1], ARGV[2]
if beat_since(p, w, tonumber(ARGV[3])) then return 0 end
local personal = p .. ':w:' .. w
if redis.call('SCARD', p .. ':pinned:' .. w) > 0 or redis.call('XLEN', personal) > 0 then
  return 0
end
for j = 4, #ARGV do
  local q = p .. ':q:' .. ARGV[j]
  if redis.call('EXISTS', q) == 1 then
    local pending = redis.call('XPENDING', q, GROUP, '-', '+', 1, w)
    if pending[1] then return 0 end
    pcall(redis.call, 'XGROUP', 'DELCONSUMER', q, GROUP, w)
  end
end
redis.call('DEL', personal, p .. ':pinned:' .. w, p .. ':worker:' .. w)
redis.call('ZREM', p .. ':workers', w)
return 1
