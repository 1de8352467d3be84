-- lead: take or renew the reaper's leader lock (it always has a TTL), and name the
-- workers whose heartbeat deadline has passed, by Redis's clock.
-- KEYS[1]  {ns}:leader
-- ARGV     prefix, worker ("": no lock, as for `rstick reap`), lock_ttl_ms, offset,
--          limit, gap_ms                                (Python: rstick.reaper)
--          gap_ms: when no beat nor pass landed for longer, Redis stood still
--          (note_activity in lib.lua): nobody is judged on this pass, all get grace.
--          offset: where this page of dead workers starts; the reaper moves it on
--          while pages come full, so that dead workers it cannot forget yet (their
--          HARD runs parked) never hide the ones that died after them.
-- Returns  {} when another worker leads, else {"lead", dead worker ids...}; never the
--          caller itself (a leader back from a long pause has not beaten yet).
local p, me, ttl, offset, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if me ~= '' then
  local cur = redis.call('GET', KEYS[1])
  if not cur then
    redis.call('SET', KEYS[1], me, 'PX', ttl)
  elseif cur == me then
    redis.call('PEXPIRE', KEYS[1], ttl)
  else
    return {}
  end
end
local out = {'lead'}
if me ~= '' and note_activity(p, now_ms(), tonumber(ARGV[6])) then return out end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', p .. ':workers', '-inf', now_ms(),
    'LIMIT', offset, limit)) do
  if w ~= me then out[#out + 1] = w end
end
return out
