-- due: move delayed entries whose time has come into their streams.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, now_ms, limit
-- Returns  the number of entries moved. A member is "run|step|attempt|epoch";
-- it goes to the pinned worker's stream for a pinned sticky run, else to the
-- run's queue. A member whose run ended or moved on is dropped.
local p, now, limit = ARGV[1], ARGV[2], ARGV[3]
local key = p .. ':delayed'
local members = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
local moved = 0
for _, m in ipairs(members) do
  redis.call('ZREM', key, m)
  local run, step, attempt, epoch = string.match(m, '^(.+)|([^|]+)|([^|]+)|([^|]+)$')
  if run then
    local rk = p .. ':run:' .. run
    local h = redis.call('HMGET', rk, 'status', 'epoch', step .. '.a', step .. '.st', 'wf')
    if (h[1] == 'queued' or h[1] == 'running') and h[2] == epoch and h[3] == attempt
        and (h[4] == 'retrying' or h[4] == 'queued') then
      redis.call('HSET', rk, step .. '.st', 'queued')
      redis.call('XADD', destination(p, rk), '*', 'r', run, 's', step, 'a', attempt, 'e', epoch,
        'w', h[5])
      moved = moved + 1
    end
  end
end
return moved
