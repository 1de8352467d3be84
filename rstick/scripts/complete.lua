-- complete: record a batch of step outcomes, fenced by attempt, epoch and worker.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, dead_maxlen, n,
--          (outcome, stream, entry_id, run, step, attempt, epoch, payload, delay_ms,
--           nchildren, child * nchildren) * n    (Python: rstick.worker, Outcome)
--          outcome is "ok" (payload: output), "retry" (payload: error; due in delay_ms)
--          "fail" (payload: error) or "dead" (fail, and dead-letter the entry: its
--          stored input could not be read).
-- Returns  one string per item: "ok", "ignored: <why>" (the run already ended),
--          "applied before" (this very completion was applied already: a resend after
--          a lost reply) or "refused: <why>" (a stale attempt: nothing applied).
-- Success releases each child whose parents are all done: to the pinned
-- worker's stream for a sticky run, else to the run's queue.
-- An accepted, ignored or resent item acknowledges and deletes its entry. A refused
-- one does so only when the entry is pending for this worker and no longer carries a
-- step to run (see forgettable): it is never another worker's to take.
local p, me, dead_max, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
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
  local f = entry_fields(found[1][2])
  local run, step, attempt, epoch = f['r'], f['s'], f['a'], f['e']
  if not (run and step and attempt and epoch) then return true end
  local h = redis.call('HMGET', run_key(p, run), 'status', 'epoch', step .. '.a',
    step .. '.st', step .. '.w')
  local live = active(h[1]) and h[2] == epoch and h[3] == attempt
    and (h[4] == 'queued' or (h[4] == 'running' and h[5] == me))
  return not live
end

for _ = 1, n do
  local outcome, stream, id, run, step, attempt, epoch, payload, delay = ARGV[i], ARGV[i + 1],
    ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local nchildren = tonumber(ARGV[i + 9])
  local children_at = i + 10
  i = children_at + nchildren

  local rk = run_key(p, run)
  -- One HMGET for all this item needs: the fence, the route of released children,
  -- their pending parents, and what finish needs should the run end here.
  local fields = {'status', 'epoch', 'worker', 'sticky', 'queue', step .. '.st', step .. '.a',
    step .. '.w', 'wf', step .. '.c', 'follows', 'left'}
  local at_children = #fields + 1
  for j = 0, nchildren - 1 do fields[#fields + 1] = ARGV[children_at + j] .. '.p' end
  local at_finish = #fields + 1
  for _, f in ipairs(FINISH_FIELDS) do fields[#fields + 1] = f end
  local h = redis.call('HMGET', rk, unpack(fields))
  local status, cur_epoch, pinned, sticky, queue, st, a, sw = h[1], h[2], h[3], h[4], h[5], h[6],
    h[7], h[8]
  local res = 'ok'
  if not status then
    res = 'refused: no such run'
  elseif h[10] == attempt and (a ~= attempt or st ~= 'running') then
    res = 'applied before'  -- attempt numbers are unique per step: this one was ours
  elseif cur_epoch ~= epoch then
    res = 'refused: stale epoch ' .. epoch .. ' (run is at ' .. cur_epoch .. ')'
  elseif a ~= attempt or sw ~= me or (st ~= 'running' and active(status)) then
    res = 'refused: attempt ' .. attempt .. ' on ' .. me .. ' is stale (step is ' ..
      tostring(st) .. ', attempt ' .. tostring(a) .. ' on ' .. tostring(sw) .. ')'
  elseif not active(status) then  -- it ended (cancelled, or failed in another step)
    res = 'ignored: run is ' .. status
    if st == 'running' then
      redis.call('HSET', rk, step .. '.st', 'abandoned', step .. '.t1', now, step .. '.c', attempt)
    end
  else
    res = nil  -- accepted: see below
  end
  local at_parked = at_finish + 4  -- FINISH_FIELDS[5]
  if res == nil and h[at_parked] then
    -- A HARD run parked while its worker was thought dead, and this completion from
    -- that very worker proves it back: the run is its again (its rejoin may follow).
    history(p, run, 'ev', 'unparked', 'w', me, 'reason', 'its worker completed a step')
    redis.call('HDEL', rk, 'parked')
    h[at_parked] = false
  end
  if res ~= nil then
    -- refused, ignored or applied before: nothing more to do
  elseif outcome == 'ok' then
    res = 'ok'
    local left = tonumber(h[12]) - 1
    local set = {step .. '.st', 'succeeded', step .. '.t1', now, step .. '.c', attempt,
      step .. '.o', payload, 'left', left}
    local dest = nil
    for j = 0, nchildren - 1 do
      local child = ARGV[children_at + j]
      local pending = tonumber(h[at_children + j]) - 1
      set[#set + 1] = child .. '.p'
      set[#set + 1] = pending
      if pending == 0 then
        set[#set + 1] = child .. '.st'
        set[#set + 1] = 'queued'
        set[#set + 1] = child .. '.a'
        set[#set + 1] = '1'
        dest = dest or route(p, sticky, pinned, queue, h[11])
        dispatch(p, run, child, '1', epoch, h[9], dest)
      end
    end
    if left == 0 then  -- the run's last step: one write, one history event, for both
      local known = {}
      for k = 1, #FINISH_FIELDS do known[k] = h[at_finish + k - 1] end
      finish(p, run, 'succeeded', now, known, set, {'s', step, 'w', me, 'a', attempt})
    else
      redis.call('HSET', rk, unpack(set))
      history(p, run, 'ev', 'succeeded', 's', step, 'w', me, 'a', attempt)
    end
  elseif outcome == 'retry' then
    res = 'ok'
    local next_attempt = tostring(tonumber(attempt) + 1)
    local due = now + tonumber(delay)
    redis.call('HSET', rk, step .. '.st', 'retrying', step .. '.t1', now, step .. '.e', payload,
      step .. '.a', next_attempt, step .. '.c', attempt)
    redis.call('ZADD', p .. ':delayed', due, run .. '|' .. step .. '|' .. next_attempt .. '|' .. epoch)
    history(p, run, 'ev', 'retry', 's', step, 'w', me, 'a', attempt, 'due', due)
  else
    res = 'ok'
    if outcome == 'dead' then  -- its stored input is unreadable: a retry cannot help
      dead_letter(p, dead_max, 'reason', 'corrupt payload', 'stream', stream, 'id', id,
        'worker', me, 'r', run, 's', step, 'a', attempt, 'e', epoch)
    end
    redis.call('HSET', rk, step .. '.c', attempt)
    history(p, run, 'ev', 'failed', 's', step, 'w', me, 'a', attempt)
    fail_step(p, run, step, payload, now)
  end
  if string.sub(res, 1, 8) ~= 'refused:' or forgettable(stream, id) then
    ack_delete(stream, id)
  end
  out[#out + 1] = res
end
return out
