-- due: move delayed entries whose time has come into their streams, and take over the
-- entries that wait for a worker with their workflow's code when this worker has it.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, limit, worker, code (" name name|shape ... ": protocol.code_words), queues (" name ... ")
-- Returns  {moved, adopted}. A delayed member is "run|step|attempt|epoch"; it goes to
-- the pinned worker's stream for a pinned sticky run, else to the run's queue. A
-- member whose run ended or moved on is dropped. A waiting entry goes to this
-- worker's own stream when its run may run here (not pinned to another worker, and
-- in a queue this worker reads); one whose run ended or moved on is dropped.
local p, limit, me, workflows, queues = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local key = p .. ':delayed'
local members = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
local moved = 0
for _, m in ipairs(members) do
  redis.call('ZREM', key, m)
  local run, step, attempt, epoch = string.match(m, '^(.+)|([^|]+)|([^|]+)|([^|]+)$')
  if run then
    local rk = run_key(p, run)
    local h = redis.call('HMGET', rk, 'status', 'epoch', step .. '.a', step .. '.st', 'wf',
      'sticky', 'worker', 'queue', 'follows')
    if active(h[1]) and h[2] == epoch and h[3] == attempt
        and (h[4] == 'retrying' or h[4] == 'queued') then
      redis.call('HSET', rk, step .. '.st', 'queued')
      dispatch(p, run, step, attempt, epoch, h[5], route(p, h[6], h[7], h[8], h[9]))
      moved = moved + 1
    end
  end
end

local adopted = 0
if redis.call('SCARD', p .. ':waiting') > 0 then
  for _, wf in ipairs(redis.call('SMEMBERS', p .. ':waiting')) do
    if has_word(workflows, wf) then
      local wk = wait_key(p, wf)
      for _, e in ipairs(redis.call('XRANGE', wk, '-', '+', 'COUNT', limit)) do
        local f = entry_fields(e[2])
        local rk = run_key(p, f['r'])
        local h = redis.call('HMGET', rk, 'status', 'epoch', f['s'] .. '.a', f['s'] .. '.st',
          'sticky', 'worker', 'queue', 'shape')
        local pinned = h[5] ~= 'none' and h[6] and h[6] ~= ''
        local stale = not (active(h[1]) and h[2] == f['e'] and h[3] == f['a'] and h[4] == 'queued')
        if stale then
          redis.call('XDEL', wk, e[1])
        elseif not has_code(workflows, wf, h[8]) then
          -- Made with another definition of the workflow than this worker's: it waits on.
        elseif (pinned and h[6] == me) or (not pinned and has_word(queues, h[7])) then
          add_entry(personal_key(p, me), f['r'], f['s'], f['a'], f['e'], wf)
          redis.call('XDEL', wk, e[1])
          if redis.call('HGET', rk, 'waiting') then
            redis.call('HDEL', rk, 'waiting', 'waiting_since')
            history(p, f['r'], 'ev', 'adopted', 's', f['s'], 'w', me)
          end
          adopted = adopted + 1
        end
      end
      if redis.call('XLEN', wk) == 0 then
        redis.call('DEL', wk)
        redis.call('SREM', p .. ':waiting', wf)
      end
    end
  end
end
return {moved, adopted}
