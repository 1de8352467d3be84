-- reap_run: one run pinned to a worker that is gone (or is coming back).
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, run, mode, now_ms, worker_deadline_ms, max_deliveries,
--          timeout_error, poison_error
--          mode "dead":    the worker is dead if its last heartbeat is older than
--                          worker_deadline_ms (checked here, atomically);
--          mode "restart": the worker itself is starting again under the same id.
--          The errors are msgpack bytes packed by the caller.
-- Returns  "alive" (nothing done), "gone" (not pinned there any more), "reassigned"
--          (SOFT: new epoch, no pin, its steps back to the shared queue), "parked" /
--          "still parked" (HARD: waiting for the worker), "timed out" (HARD: deadline
--          passed, run failed), "resumed" (restart: unparked), "poisoned".
local p, w, run, mode, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local worker_deadline, max_deliveries = tonumber(ARGV[6]), tonumber(ARGV[7])
local timeout_err, poison_err = ARGV[8], ARGV[9]
local rk = p .. ':run:' .. run
local pins = p .. ':pinned:' .. w

if mode == 'dead' and beat_since(p, w, worker_deadline) then return 'alive' end
local h = redis.call('HMGET', rk, 'status', 'sticky', 'worker', 'epoch', 'queue', 'steps',
  'parked', 'sto', 'wf')
local status, sticky, pinned, epoch, queue, steps, parked = h[1], h[2], h[3], h[4], h[5], h[6],
  h[7]
if not status or (status ~= 'queued' and status ~= 'running') or pinned ~= w then
  redis.call('SREM', pins, run)
  return 'gone'
end

local names = {}
for s in string.gmatch(steps, '%S+') do names[#names + 1] = s end

if mode == 'restart' then
  if parked then
    redis.call('HDEL', rk, 'parked')
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'unparked', 'w', w)
  end
  return 'resumed'
end

if sticky == 'hard' then
  if not parked then
    -- The deadline is the shortest schedule_timeout among the steps still to run.
    local timeout = tonumber(h[8]) or 300
    for _, s in ipairs(names) do
      local st = redis.call('HGET', rk, s .. '.st')
      local sto = tonumber(redis.call('HGET', rk, s .. '.sto'))
      if sto and st ~= 'succeeded' and sto < timeout then timeout = sto end
    end
    local deadline = now + math.floor(timeout * 1000)
    redis.call('HSET', rk, 'parked', deadline)
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'parked', 'w', w, 'until', deadline)
    return 'parked'
  end
  if now < tonumber(parked) then return 'still parked' end
  local failed = nil
  for _, s in ipairs(names) do
    local st = redis.call('HGET', rk, s .. '.st')
    if st == 'queued' or st == 'running' or st == 'retrying' then
      redis.call('HSET', rk, s .. '.st', 'failed', s .. '.t1', now, s .. '.e', timeout_err)
      failed = failed or s
    end
  end
  redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'timed out', 'w', w)
  fail_step(p, run, failed or names[1], timeout_err, now)
  return 'timed out'
end

-- SOFT: a new epoch fences everything the lost worker still holds; the run's
-- queued and in-flight steps go back to the shared queue, the first one now and
-- the others held until the next worker pins the run.
local new_epoch = tostring(tonumber(epoch) + 1)
redis.call('HSET', rk, 'epoch', new_epoch, 'worker', '', 'reassigned', '1')
redis.call('SREM', pins, run)
local back = {}
for _, s in ipairs(names) do
  local st = redis.call('HGET', rk, s .. '.st')
  if st == 'running' then
    if not lose(p, run, s, w, 'worker lost', max_deliveries, poison_err, now) then
      return 'poisoned'
    end
    back[#back + 1] = s
  elseif st == 'queued' then
    back[#back + 1] = s
  elseif st == 'retrying' then
    local a = redis.call('HGET', rk, s .. '.a')
    local old = run .. '|' .. s .. '|' .. a .. '|' .. epoch
    local due = redis.call('ZSCORE', p .. ':delayed', old)
    redis.call('ZREM', p .. ':delayed', old)
    redis.call('ZADD', p .. ':delayed', due or now, run .. '|' .. s .. '|' .. a .. '|' .. new_epoch)
  end
end
local held = {}
for j, s in ipairs(back) do
  if j == 1 then
    local a = redis.call('HGET', rk, s .. '.a')
    redis.call('XADD', p .. ':q:' .. queue, '*', 'r', run, 's', s, 'a', a, 'e', new_epoch,
      'w', h[9])
  else
    held[#held + 1] = s
  end
end
redis.call('HSET', rk, 'held', table.concat(held, ' '))
redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'reassigned', 'from', w, 'epoch', new_epoch)
return 'reassigned'
