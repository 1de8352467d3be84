-- lib: functions shared by the scripts; the loader puts this file before each one.
-- Every script receives the key prefix "{ns}" as ARGV[1].

local GROUP = 'rstick'

-- End a run: status, finish time, retention, unpin, history, wake waiters.
local function finish(p, run, status, now)
  local rk = p .. ':run:' .. run
  local pinned = redis.call('HGET', rk, 'worker')
  redis.call('HSET', rk, 'status', status, 'finished', now)
  redis.call('HDEL', rk, 'parked')
  if pinned and pinned ~= '' then redis.call('SREM', p .. ':pinned:' .. pinned, run) end
  local ttl = tonumber(redis.call('HGET', rk, 'retention')) or 86400
  for _, k in ipairs({rk, p .. ':out:' .. run, p .. ':hist:' .. run}) do
    redis.call('EXPIRE', k, ttl)
  end
  redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'finished', 'status', status)
  redis.call('PUBLISH', p .. ':done:' .. run, status)
end

-- Fail one step and its run with an error (msgpack bytes packed by the caller).
local function fail_step(p, run, step, err, now)
  local rk = p .. ':run:' .. run
  redis.call('HSET', rk, step .. '.st', 'failed', step .. '.t1', now, step .. '.e', err,
    'error_step', step)
  finish(p, run, 'failed', now)
end

-- The stream a step of this run goes to now: the pinned worker's, else the queue.
local function destination(p, rk)
  local h = redis.call('HMGET', rk, 'sticky', 'worker', 'queue')
  if h[1] ~= 'none' and h[2] and h[2] ~= '' then return p .. ':w:' .. h[2] end
  return p .. ':q:' .. h[3]
end

-- A running step whose worker was lost: count it, and either fail it as poison
-- (it crashed its worker max_deliveries times) or make it a new attempt.
-- Returns the new attempt, or nil when the step was failed as poison.
local function lose(p, run, step, worker, reason, max_deliveries, poison_err, now)
  local rk = p .. ':run:' .. run
  local lost = redis.call('HINCRBY', rk, step .. '.lost', 1)
  if lost >= max_deliveries then
    redis.call('XADD', p .. ':dead', '*', 'reason',
      'step ' .. step .. ' lost its worker ' .. lost .. ' times', 'r', run, 's', step,
      'worker', worker)
    fail_step(p, run, step, poison_err, now)
    return nil
  end
  local attempt = redis.call('HINCRBY', rk, step .. '.a', 1)
  redis.call('HSET', rk, step .. '.st', 'queued')
  redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'lost', 's', step, 'w', worker,
    'a', attempt - 1, 'reason', reason)
  return attempt
end

-- Whether worker w beat after worker_deadline; when it did not, it is marked
-- reaped, so that should it wake up (a long pause) its next heartbeat tells it so.
local function beat_since(p, w, worker_deadline)
  local beat = tonumber(redis.call('ZSCORE', p .. ':workers', w))
  if beat and beat > worker_deadline then return true end
  if redis.call('EXISTS', p .. ':worker:' .. w) == 1 then
    redis.call('HSET', p .. ':worker:' .. w, 'reaped', '1')
  end
  return false
end

-- Claim one entry a worker read. kv is the entry's flat field/value list;
-- workflows is " name name ... " (what this worker can run). Returns one of
--   {"run", run, step, attempt, epoch, workflow, stream, entry_id, input, reassigned,
--    parent, output, parent, output, ...}
--   {"fwd", run, step, worker}   pinned elsewhere: moved to that worker's stream
--   {"drop", run, step, reason}  stale or finished: acknowledged and deleted
--   {"dead", run, step, reason, stream, id}  not a valid rstick message: dead-lettered
--                                 (run and step "" when the entry lacks them)
-- An unpinned sticky run is pinned here; its held roots go to this worker's stream.
-- With `again` (an entry already delivered to this worker, see take.lua), an entry
-- whose step already runs here at its attempt is left pending and nil returned.
local function claim_entry(p, me, now, workflows, stream, id, kv, again)
  local f = {}
  for k = 1, #kv, 2 do f[kv[k]] = kv[k + 1] end
  local run, step, attempt, epoch, wf = f['r'], f['s'], f['a'], f['e'], f['w']
  local function forget()
    redis.call('XACK', stream, GROUP, id)
    redis.call('XDEL', stream, id)
  end
  local reason = nil
  if not (run and step and attempt and epoch and wf) then
    reason = 'malformed entry: needs fields r, s, a, e, w'
  elseif not string.find(workflows, ' ' .. wf .. ' ', 1, true) then
    reason = 'worker ' .. me .. ' has no workflow ' .. wf
  end
  if reason then
    local dead = {'reason', reason, 'stream', stream, 'id', id, 'worker', me}
    for k = 1, #kv do dead[#dead + 1] = kv[k] end
    redis.call('XADD', p .. ':dead', '*', unpack(dead))
    forget()
    return {'dead', run or '', step or '', reason, stream, id}
  end

  local rk = p .. ':run:' .. run
  local h = redis.call('HMGET', rk, 'status', 'sticky', 'worker', 'epoch', step .. '.st',
    step .. '.a', 'held', 'reassigned', step .. '.par', 'input', step .. '.w')
  local status, sticky, pinned, cur_epoch, st, a, held = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
  if again and st == 'running' and h[11] == me and a == attempt and cur_epoch == epoch
      and (status == 'queued' or status == 'running') then
    return nil
  end
  local why = nil
  if not status then
    why = 'no such run'
  elseif status ~= 'queued' and status ~= 'running' then
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
    forget()
    return {'drop', run, step, why}
  end
  if sticky ~= 'none' and pinned ~= '' and pinned ~= me then
    redis.call('XADD', p .. ':w:' .. pinned, '*', 'r', run, 's', step, 'a', attempt, 'e', epoch,
      'w', wf)
    forget()
    return {'fwd', run, step, pinned}
  end
  if sticky ~= 'none' and pinned == '' then
    redis.call('HSET', rk, 'worker', me)
    redis.call('SADD', p .. ':pinned:' .. me, run)
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'pinned', 'w', me, 'epoch', epoch)
    if held and held ~= '' then
      for root in string.gmatch(held, '%S+') do
        local ra = redis.call('HGET', rk, root .. '.a')
        redis.call('XADD', p .. ':w:' .. me, '*', 'r', run, 's', root, 'a', ra, 'e', epoch,
          'w', wf)
      end
      redis.call('HSET', rk, 'held', '')
    end
  end
  if status == 'queued' then
    redis.call('HSET', rk, step .. '.st', 'running', step .. '.w', me, step .. '.t0', now,
      'status', 'running', 'started', now)
  else
    redis.call('HSET', rk, step .. '.st', 'running', step .. '.w', me, step .. '.t0', now)
  end
  redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'started', 's', step, 'w', me, 'a', attempt)
  local res = {'run', run, step, attempt, epoch, wf, stream, id, h[10], h[8] or '0'}
  if h[9] then
    local names = {}
    for name in string.gmatch(h[9], '%S+') do names[#names + 1] = name end
    local outs = redis.call('HMGET', p .. ':out:' .. run, unpack(names))
    for j = 1, #names do
      res[#res + 1] = names[j]
      res[#res + 1] = outs[j] or ''
    end
  end
  return res
end
