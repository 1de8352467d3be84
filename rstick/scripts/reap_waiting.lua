-- reap_waiting: fail the steps that waited too long for a worker with their
-- workflow's code (see wait_for_code in lib.lua).
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, workflow, error, limit              (Python: rstick.reaper)
--          error: the SchedulingTimeout, msgpack bytes packed by the caller.
-- A step fails once its schedule_timeout has passed since its run began to wait,
-- and only while live workers read its queue and none of those has the code (a HARD
-- run's: while its own worker is live without it). With no worker up at all it
-- waits on.
-- Entries whose run ended or moved on are dropped.
-- Returns  the ids of the runs failed.
local p, wf, err, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local wk = wait_key(p, wf)
local failed = {}

local live = {}  -- worker -> {code, queues}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', p .. ':workers', '(' .. now, '+inf')) do
  local h = redis.call('HMGET', worker_key(p, w), 'code', 'queues', 'reaped')
  if not h[3] then live[w] = h end
end
-- Whether live workers read queue q and none of them has the code of a run made
-- with `shape` (one that has it but reads other queues cannot take the run: see
-- capable_worker in lib.lua).
local function served(q, shape)
  local reads, has = false, false
  for _, h in pairs(live) do
    if has_word(h[2], q) then
      reads = true
      if has_code(h[1], wf, shape) then has = true end
    end
  end
  return reads and not has
end

for _, e in ipairs(redis.call('XRANGE', wk, '-', '+', 'COUNT', limit)) do
  local f = entry_fields(e[2])
  local run, step = f['r'], f['s']
  local rk = run_key(p, run)
  local h = redis.call('HMGET', rk, 'status', 'epoch', step .. '.a', step .. '.st', 'sticky',
    'worker', 'queue', 'waiting_since', 'sto', step .. '.sto', 'shape')
  if not (active(h[1]) and h[2] == f['e'] and h[3] == f['a'] and h[4] == 'queued') then
    redis.call('XDEL', wk, e[1])
  else
    local timeout = tonumber(h[10]) or tonumber(h[9])
    local since = tonumber(h[8]) or now
    local pinned = h[5] ~= 'none' and h[6] and h[6] ~= ''
    local stuck = (pinned and live[h[6]] ~= nil) or (not pinned and served(h[7], h[11]))
    if stuck and now - since >= timeout * 1000 then
      history(p, run, 'ev', 'timed out', 's', step, 'reason', 'no_worker_with_code')
      fail_step(p, run, step, err, now)
      redis.call('XDEL', wk, e[1])
      failed[#failed + 1] = run
    end
  end
end
if redis.call('XLEN', wk) == 0 then
  redis.call('DEL', wk)
  redis.call('SREM', p .. ':waiting', wf)
end
return failed
