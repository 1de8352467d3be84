-- complete: record a batch of step outcomes, fenced by attempt, epoch and worker.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, now_ms, n,
--          (outcome, stream, entry_id, run, step, attempt, epoch, payload, due_ms,
--           nchildren, child * nchildren) * n
--          outcome is "ok" (payload: output), "retry" (payload: error; due_ms: when)
--          "fail" (payload: error) or "dead" (fail, and dead-letter the entry: its
--          stored input could not be read).
-- Returns  one string per item: "ok", "ignored: <why>" (the run already ended) or
--          "refused: <why>" (a stale attempt: nothing applied).
-- Success releases each child whose parents are all done: to the pinned
-- worker's stream for a sticky run, else to the run's queue.
-- An accepted or ignored item acknowledges and deletes its entry. A refused one
-- does so only when the entry is pending for this worker and no longer carries a
-- step to run (see forgettable): it is never another worker's to take.
local p, me, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
local i = 5

-- Whether a refused completion may acknowledge and delete its entry. Nothing
-- moves an entry between consumers (the reaper acknowledges a lost worker's
-- entry and XADDs a new one), so a refused completion's entry is one of:
-- - already acknowledged by the reaper (its run moved on): nothing to do;
-- - still pending for this worker, stale (its run ended, was reassigned under a
--   new epoch, or its step moved to a new attempt) and not yet reaped: forgotten
--   here, else it would stay in this live worker's pending list for ever;
-- - pending for another consumer, or never delivered (a completion that names
--   the wrong entry or worker): left alone, its holder or the reaper settles it;
-- - pending for this worker and still live: its step is queued or running here
--   at the entry's own attempt and epoch (a completion whose attempt or epoch
--   does not match its entry): left pending, as the reaper's handle on the step.
local function forgettable(stream, id)
  -- pcall: the stream or its group may be gone (a removed worker's stream).
  local pel = redis.pcall('XPENDING', stream, GROUP, id, id, 1)
  if type(pel) ~= 'table' or pel.err or not pel[1] or pel[1][2] ~= me then return false end
  local found = redis.call('XRANGE', stream, id, id)
  if not found[1] then return true end  -- deleted: only its pending mark is left
  local f = {}
  local kv = found[1][2]
  for k = 1, #kv, 2 do f[kv[k]] = kv[k + 1] end
  local run, step, attempt, epoch = f['r'], f['s'], f['a'], f['e']
  if not (run and step and attempt and epoch) then return true end
  local h = redis.call('HMGET', p .. ':run:' .. run, 'status', 'epoch', step .. '.a',
    step .. '.st', step .. '.w')
  local live = (h[1] == 'queued' or h[1] == 'running') and h[2] == epoch and h[3] == attempt
    and (h[4] == 'queued' or (h[4] == 'running' and h[5] == me))
  return not live
end

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
  elseif a ~= attempt or (st ~= 'running' and st ~= 'cancelled') or sw ~= me then
    res = 'refused: attempt ' .. attempt .. ' on ' .. me .. ' is stale (step is ' ..
      tostring(st) .. ', attempt ' .. tostring(a) .. ' on ' .. tostring(sw) .. ')'
  elseif status ~= 'running' then
    res = 'ignored: run is ' .. status
    if st == 'running' then  -- a step cancelled with its run (cancel.lua) stays so
      redis.call('HSET', rk, step .. '.st', 'abandoned', step .. '.t1', now)
    end
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
    if outcome == 'dead' then  -- its stored input is unreadable: a retry cannot help
      redis.call('XADD', p .. ':dead', '*', 'reason', 'corrupt payload', 'stream', stream, 'id', id,
        'worker', me, 'r', run, 's', step, 'a', attempt, 'e', epoch)
    end
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'failed', 's', step, 'w', me, 'a', attempt)
    fail_step(p, run, step, payload, now)
  end
  if string.sub(res, 1, 8) ~= 'refused:' or forgettable(stream, id) then
    redis.call('XACK', stream, GROUP, id)
    redis.call('XDEL', stream, id)
  end
  out[#out + 1] = res
end
return out
