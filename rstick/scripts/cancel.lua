-- cancel: end one run that has not finished, and name its children, so that the
-- caller can cancel them in turn: one run per call, so each call is atomic and
-- short, whatever the size of the tree.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, run, reason           (Python: rstick.client, Client.cancel)
-- Returns  {status, now, child, child, ...}: the run's status afterwards, and now
--          "1" when this call cancelled it, "0" when it had already ended; the
--          children (fields "c|<id>") are listed either way, as a finished run's
--          children may still run. {"", "0"} when there is no such run.
-- The run's unfinished steps (waiting, queued, running, retrying) become
-- "cancelled", and their delayed entries (a retry, a delayed start) go. Its queued
-- entries are dropped when read; a running step runs on, and its completion is
-- ignored (complete.lua).
local p, run = ARGV[1], ARGV[2]
local now = now_ms()
local rk = p .. ':run:' .. run
local h = redis.call('HMGET', rk, 'status', 'steps', 'epoch')
local status = h[1]
if not status then return {'', '0'} end
local out = {status, '0'}
if status == 'queued' or status == 'running' then
  out = {'cancelled', '1'}
  for step in string.gmatch(h[2] or '', '%S+') do
    local s = redis.call('HMGET', rk, step .. '.st', step .. '.a')
    local st = s[1] or 'waiting'
    if st == 'running' then
      redis.call('HSET', rk, step .. '.st', 'cancelled', step .. '.t1', now)
    elseif st == 'waiting' or st == 'queued' or st == 'retrying' then
      redis.call('HSET', rk, step .. '.st', 'cancelled')
      redis.call('ZREM', p .. ':delayed',
        run .. '|' .. step .. '|' .. (s[2] or '0') .. '|' .. (h[3] or '0'))
    end
  end
  redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'cancelled', 'reason', ARGV[3])
  finish(p, run, 'cancelled', now)
end
for _, field in ipairs(redis.call('HKEYS', rk)) do
  if string.sub(field, 1, 2) == 'c|' then out[#out + 1] = string.sub(field, 3) end
end
return out
