-- reap_run: one run pinned to a worker that is gone (or is coming back).
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, run, mode, max_deliveries, timeout_error, poison_error,
--          dead_maxlen                                  (Python: rstick.reaper)
--          mode "dead":    the worker is dead if its heartbeat deadline has passed
--                          (checked here, atomically, by Redis's clock);
--          mode "restart": the worker itself is starting again under the same id.
--          The errors are msgpack bytes packed by the caller.
-- Returns  "alive" (nothing done), "gone" (not pinned there any more), "reassigned"
--          (SOFT: new epoch, no pin, its steps back to the shared queue), "follows
--          parent" (a sticky child of a SOFT parent: it moves with its parent),
--          "parked" / "still parked" (HARD: waiting for the worker), "timed out" (HARD:
--          deadline passed, run failed), "resumed" (restart: unparked), "poisoned".
-- A sticky child goes where its parent goes, whatever its own strategy: with a HARD
-- parent it is parked, with a SOFT one it follows it to the parent's next worker.
local p, w, run, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_deliveries, timeout_err, poison_err, dead_max = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local now = now_ms()
local rk = run_key(p, run)

if mode == 'dead' and judge(p, w, now) then return 'alive' end
local h = redis.call('HMGET', rk, 'status', 'sticky', 'worker', 'steps', 'parked', 'sto',
  'sticky_child', 'parent_run')
local status, sticky, pinned, steps, parked = h[1], h[2], h[3], h[4], h[5]
if not active(status) or pinned ~= w then
  redis.call('SREM', pinned_key(p, w), run)
  return 'gone'
end

if mode == 'restart' then
  if parked then
    redis.call('HDEL', rk, 'parked')
    history(p, run, 'ev', 'unparked', 'w', w)
  end
  return 'resumed'
end

local strategy, how, to = sticky, 'queue', nil
if h[7] == '1' then
  local parent = redis.call('HMGET', run_key(p, h[8]), 'status', 'sticky', 'worker')
  if active(parent[1]) and parent[2] == 'hard' then
    strategy = 'hard'
  elseif active(parent[1]) and parent[2] == 'soft' then
    strategy = 'soft'
    if parent[3] ~= '' and parent[3] ~= w then how, to = 'pin', parent[3] else how, to = 'follow', h[8] end
  end
end

if strategy == 'hard' then
  if not parked then
    -- The deadline is the shortest schedule_timeout among the steps still to run.
    local timeout = tonumber(h[6])
    for _, s in ipairs(words(steps)) do
      local sh = redis.call('HMGET', rk, s .. '.st', s .. '.sto')
      local sto = tonumber(sh[2])
      if sto and sh[1] ~= 'succeeded' and sto < timeout then timeout = sto end
    end
    local deadline = now + math.floor(timeout * 1000)
    redis.call('HSET', rk, 'parked', deadline)
    history(p, run, 'ev', 'parked', 'w', w, 'until', deadline)
    return 'parked'
  end
  if now < tonumber(parked) then return 'still parked' end
  local failed = nil
  for _, s in ipairs(words(steps)) do
    local st = redis.call('HGET', rk, s .. '.st')
    if st == 'queued' or st == 'running' or st == 'retrying' then
      redis.call('HSET', rk, s .. '.st', 'failed', s .. '.t1', now, s .. '.e', timeout_err)
      failed = failed or s
    end
  end
  history(p, run, 'ev', 'timed out', 'w', w)
  fail_step(p, run, failed or words(steps)[1], timeout_err, now)
  return 'timed out'
end

if not reassign(p, run, w, how, to, max_deliveries, poison_err, dead_max, now) then
  return 'poisoned'
end
return how == 'queue' and 'reassigned' or 'follows parent'
