-- complete: record a batch of step outcomes, fenced by attempt, epoch and worker.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, now_ms, n,
--          (outcome, stream, entry_id, run, step, attempt, epoch, payload, due_ms,
--           nchildren, child * nchildren) * n
--          outcome is "ok" (payload: output), "retry" (payload: error; due_ms: when)
--          or "fail" (payload: error).
-- Returns  one string per item: "ok", "ignored: <why>" (the run already ended) or
--          "refused: <why>" (a stale attempt: nothing applied).
-- Success releases each child whose parents are all done: to the pinned
-- worker's stream for a sticky run, else to the run's queue.
local p, me, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
local i = 5

for _ = 1, n do
  local outcome, stream, id, run, step, attempt, epoch, payload, due = ARGV[i], ARGV[i + 1],
    ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local nchildren = tonumber(ARGV[i + 9])
  local children_at = i + 10
  i = children_at + nchildren

  local rk = p .. ':run:' .. run
  local h = redis.call('HMGET', rk, 'status', 'epoch', 'worker', 'sticky', 'queue',
    step .. '.st', step .. '.a', step .. '.w', 'wf')
  local status, cur_epoch, pinned, sticky, queue, st, a, sw = h[1], h[2], h[3], h[4], h[5], h[6],
    h[7], h[8]
  local res = 'ok'
  if not status then
    res = 'refused: no such run'
  elseif cur_epoch ~= epoch then
    res = 'refused: stale epoch ' .. epoch .. ' (run is at ' .. cur_epoch .. ')'
  elseif a ~= attempt or st ~= 'running' or sw ~= me then
    res = 'refused: attempt ' .. attempt .. ' on ' .. me .. ' is stale (step is ' ..
      tostring(st) .. ', attempt ' .. tostring(a) .. ' on ' .. tostring(sw) .. ')'
  elseif status ~= 'running' then
    res = 'ignored: run is ' .. status
    redis.call('HSET', rk, step .. '.st', 'abandoned', step .. '.t1', now)
  elseif outcome == 'ok' then
    redis.call('HSET', p .. ':out:' .. run, step, payload)
    redis.call('HSET', rk, step .. '.st', 'succeeded', step .. '.t1', now)
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'succeeded', 's', step, 'w', me,
      'a', attempt)
    for j = 0, nchildren - 1 do
      local child = ARGV[children_at + j]
      if redis.call('HINCRBY', rk, child .. '.p', -1) == 0 then
        redis.call('HSET', rk, child .. '.st', 'queued', child .. '.a', '1')
        local dest = p .. ':q:' .. queue
        if sticky ~= 'none' and pinned ~= '' then dest = p .. ':w:' .. pinned end
        redis.call('XADD', dest, '*', 'r', run, 's', child, 'a', '1', 'e', epoch, 'w', h[9])
      end
    end
    if redis.call('HINCRBY', rk, 'left', -1) == 0 then finish(p, run, 'succeeded', now) end
  elseif outcome == 'retry' then
    local next_attempt = tostring(tonumber(attempt) + 1)
    redis.call('HSET', rk, step .. '.st', 'retrying', step .. '.t1', now, step .. '.e', payload,
      step .. '.a', next_attempt)
    redis.call('ZADD', p .. ':delayed', due, run .. '|' .. step .. '|' .. next_attempt .. '|' .. epoch)
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'retry', 's', step, 'w', me, 'a', attempt,
      'due', due)
  else
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'failed', 's', step, 'w', me, 'a', attempt)
    fail_step(p, run, step, payload, now)
  end
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
  out[#out + 1] = res
end
return out
