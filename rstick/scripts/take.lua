-- take: a worker's read and claim, one round trip; also how it picks up, in the
-- same round trip, what its blocking read has just delivered.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, instance, code (" name name|shape ... ", protocol.code_words),
--          free, want_marks ("1" or ""), dead_maxlen, (stream, mark) * n: personal stream first, then the
--          shared queues.                                  (Python: rstick.fetch)
--          Marks are "" (a plain take: read new entries while slots are free), or the
--          marks the worker's last plain take returned. Then the worker's blocking
--          XREADGROUP, pipelined just before this call, has delivered what came after
--          them: its pending entries with greater ids. Those are claimed (those beyond
--          free go back to the end of their stream), and nothing else is read: this is
--          the way from enqueue to a step's start, so it stays short, and the worker's
--          next take reads the rest.
-- Returns  {replies, marks, live}: one claim reply (see claim) per entry handled, never
--          more than free; marks when want_marks, on a plain take that left slots free:
--          each stream's group last-delivered id, in order, for the next blocking read
--          (whatever reaches a stream after the take, a root this take pinned there
--          included, is then delivered by that read); live is 0 when the worker's
--          heartbeat has lapsed, or its id was taken over by another process: it
--          claims nothing until it has beaten again (rejoined), for the reaper may be
--          settling what it holds.
-- A delivered entry whose step already runs here at its attempt (the reply of an
-- earlier try was lost, and redis-py sent the call again) stays pending, for the
-- worker's recovery of stranded entries: it is not started twice.
local p, me, instance, workflows = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local left, want_marks, dead_max = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7]
local now = now_ms()
local live = is_live(p, me, now, instance)
if not live then left = 0 end

-- Claim one entry this worker read; kv is its flat field/value list. Replies:
--   {"run", run, step, attempt, epoch, workflow, stream, entry_id, input, reassigned,
--    lost, parent, output, parent, output, ...}  a step to start here
--   {"fwd", run, step, worker}   pinned elsewhere, or moved to a worker with the code
--   {"wait", run, step, reason}  no live worker has the code: parked, the run says why
--   {"drop", run, step, reason}  stale or finished: acknowledged and deleted
--   {"dead", run, step, reason, stream, id}  not a valid rstick message: dead-lettered
--                                (run and step "" when the entry lacks them)
-- An unpinned sticky run is pinned here; its held roots go to this worker's stream.
-- With `again` (an entry already delivered to this worker), an entry whose step
-- already runs here at its attempt is left pending and nil returned.
local function claim(stream, id, kv, again)
  local f = entry_fields(kv)
  local run, step, attempt, epoch, wf = f['r'], f['s'], f['a'], f['e'], f['w']
  if not (run and step and attempt and epoch and wf) then
    local reason = 'malformed entry: needs fields r, s, a, e, w'
    local dead = {'reason', reason, 'stream', stream, 'id', id, 'worker', me}
    for k = 1, #kv do dead[#dead + 1] = kv[k] end
    dead_letter(p, dead_max, unpack(dead))
    ack_delete(stream, id)
    return {'dead', run or '', step or '', reason, stream, id}
  end

  local rk = run_key(p, run)
  local h = redis.call('HMGET', rk, 'status', 'sticky', 'worker', 'epoch', step .. '.st',
    step .. '.a', 'held', 'reassigned', step .. '.par', 'input', step .. '.w', step .. '.lost',
    'queue', 'followers', 'shape')
  local status, sticky, pinned, cur_epoch, st, a = h[1], h[2], h[3], h[4], h[5], h[6]
  if again and st == 'running' and h[11] == me and a == attempt and cur_epoch == epoch
      and active(status) then
    return nil
  end
  local why = nil
  if not status then
    why = 'no such run'
  elseif not active(status) then
    why = 'run is ' .. status
  elseif not st then
    why = 'no such step'
  elseif cur_epoch ~= epoch then
    why = 'stale epoch ' .. epoch .. ' (run is at ' .. cur_epoch .. ')'
  elseif a ~= attempt then
    why = 'stale attempt ' .. attempt .. ' (step is at ' .. a .. ')'
  elseif st ~= 'queued' then
    why = 'step is ' .. st
  end
  if why then
    ack_delete(stream, id)
    return {'drop', run, step, why}
  end
  local sticky_run = sticky ~= 'none'
  if sticky_run and pinned ~= '' and pinned ~= me then
    add_entry(personal_key(p, pinned), run, step, attempt, epoch, wf)
    ack_delete(stream, id)
    return {'fwd', run, step, pinned}
  end

  if not has_code(workflows, wf, h[15]) then
    -- This worker lacks the code (the workflow, or its definition the run was made
    -- with): the run waits for one that has it, never lost.
    local lacks = has_word(workflows, wf) and ('the definition of workflow ' .. wf
      .. ' this run was made with (another deploy?)') or ('workflow ' .. wf)
    ack_delete(stream, id)
    if sticky_run and pinned == me then
      if sticky == 'soft' then  -- it may move: to whichever worker has the code
        reassign(p, run, me, 'queue', nil, nil, nil, dead_max, now)
        return {'drop', run, step, 'run moved: this worker lacks ' .. lacks}
      end
      wait_for_code(p, run, step, attempt, epoch, wf, now)  -- HARD: only here, later
      return {'wait', run, step, 'worker ' .. me .. ' lacks ' .. lacks}
    end
    local spread = tonumber(string.match(id, '^%d+')) + tonumber(string.match(id, '%d+$'))
    local other = capable_worker(p, wf, h[15], h[13], now, me, spread)
    if other then
      add_entry(personal_key(p, other), run, step, attempt, epoch, wf)
      return {'fwd', run, step, other}
    end
    wait_for_code(p, run, step, attempt, epoch, wf, now)
    return {'wait', run, step, 'no live worker has ' .. lacks}
  end

  if sticky_run and pinned == '' then
    pin(p, run, me, epoch, wf, h[7], h[14], now)
  end
  if status == 'queued' then
    redis.call('HSET', rk, step .. '.st', 'running', step .. '.w', me, step .. '.t0', now,
      'status', 'running', 'started', now)
  else
    redis.call('HSET', rk, step .. '.st', 'running', step .. '.w', me, step .. '.t0', now)
  end
  history(p, run, 'ev', 'started', 's', step, 'w', me, 'a', attempt)
  local res = {'run', run, step, attempt, epoch, wf, stream, id, h[10], h[8] or '0', h[12] or '0'}
  if h[9] then
    local names = words(h[9])
    local fields = {}
    for j = 1, #names do fields[j] = names[j] .. '.o' end
    local outs = redis.call('HMGET', rk, unpack(fields))
    for j = 1, #names do
      res[#res + 1] = names[j]
      res[#res + 1] = outs[j] or ''
    end
  end
  return res
end

-- Whether the step of an entry (its field/value list) runs here now, at its attempt.
local function running_here(kv)
  local f = entry_fields(kv)
  if not (f['r'] and f['s']) then return false end
  local h = redis.call('HMGET', run_key(p, f['r']), 'epoch', f['s'] .. '.st', f['s'] .. '.a',
    f['s'] .. '.w')
  return h[1] == f['e'] and h[2] == 'running' and h[3] == f['a'] and h[4] == me
end

local out = {}
local live_flag = live and 1 or 0

if ARGV[9] ~= '' then
  local n = (#ARGV - 7) / 2
  local read = {'XREADGROUP', 'GROUP', GROUP, me, 'STREAMS'}
  for k = 1, n do
    read[5 + k] = ARGV[6 + 2 * k]
    read[5 + n + k] = ARGV[7 + 2 * k]
  end
  local r = redis.call(unpack(read))
  -- {{stream, entries}, ...}; fakeredis answers {stream, entries, stream, entries, ...}
  local flat = r[1] ~= nil and type(r[1]) ~= 'table'
  for k = 1, #r, flat and 2 or 1 do
    local stream, delivered = r[k], r[k + 1]
    if not flat then stream, delivered = r[k][1], r[k][2] end
    for _, e in ipairs(delivered) do
      local id, kv = e[1], e[2]
      if not kv then
        redis.call('XACK', stream, GROUP, id)  -- deleted meanwhile: nothing to run
      elseif left > 0 then
        local res = claim(stream, id, kv, true)
        if res then
          out[#out + 1] = res
          left = left - 1
        end
      elseif not running_here(kv) then
        -- No slot for it (or not live): back to the end of its stream, undelivered.
        -- (One already running here was claimed by an earlier try of this very call,
        -- whose reply was lost: it stays pending, for recover_stranded.)
        redis.call('XADD', stream, '*', unpack(kv))
        ack_delete(stream, id)
      end
    end
  end
  return {out, {}, live_flag}
end

for j = 8, #ARGV, 2 do
  if left <= 0 then break end
  local stream = ARGV[j]
  local r = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', left, 'STREAMS', stream, '>')
  if r and r[1] then
    -- {{stream, entries}}; fakeredis answers {stream, entries}
    local got = type(r[1]) == 'table' and r[1][2] or r[2]
    for _, e in ipairs(got) do
      out[#out + 1] = claim(stream, e[1], e[2])
    end
    left = left - #got
  end
end

local marks = {}
if want_marks and left > 0 then
  for j = 8, #ARGV, 2 do
    local groups = redis.call('XINFO', 'GROUPS', ARGV[j])
    for _, g in ipairs(groups) do
      local name, last = nil, nil
      for k = 1, #g, 2 do
        if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then last = g[k + 1] end
      end
      if name == GROUP then
        marks[#marks + 1] = last
        break
      end
    end
  end
end
return {out, marks, live_flag}
