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
