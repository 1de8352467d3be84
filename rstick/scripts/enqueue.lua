-- enqueue: create a run and dispatch its ready steps.
-- KEYS[1]  {ns}:wf (the definitions hash; also routes the call to the namespace's slot)
-- ARGV     prefix, run_id, workflow, queue, pin_worker, parent_run, parent_step, now_ms,
--          due_ms (0: now), ndispatch, step * ndispatch,
--          (field, value) * rest: the run's hash, which the client builds from the
--          definition (Client.run_fields): status "queued" at epoch 0, every step
--          "waiting" at attempt 0 but the roots, "queued" at attempt 1, the parents
--          of each step, and "held": the roots of a sticky run that wait, queued, for
--          a worker to pin the run.
--          The steps dispatched now: every root of a run pinned at creation (a sticky
--          child) to its worker's stream; the first root of an unpinned sticky run,
--          and every root of any other run, to the shared queue.
-- Returns  "ok", "exists" (same run id enqueued before: nothing written),
--          "unknown" (no such workflow: nothing written) or "parent cancelled" (a
--          step of a cancelled run spawning a child: nothing written, as the
--          cancel of that run may have listed its children already).
local p, run_id, wf, queue, pin = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local parent_run, parent_step, now, due = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
if redis.call('HEXISTS', KEYS[1], wf) == 0 then return 'unknown' end
if parent_run ~= ''
    and redis.call('HGET', p .. ':run:' .. parent_run, 'status') == 'cancelled' then
  return 'parent cancelled'
end
local rk = p .. ':run:' .. run_id
if redis.call('EXISTS', rk) == 1 then return 'exists' end

local ndispatch = tonumber(ARGV[10])
redis.call('HSET', rk, unpack(ARGV, 11 + ndispatch))

local stream = p .. ':q:' .. queue
if pin ~= '' then
  stream = p .. ':w:' .. pin
  redis.call('SADD', p .. ':pinned:' .. pin, run_id)
end
for j = 11, 10 + ndispatch do
  if due > 0 then
    redis.call('ZADD', p .. ':delayed', due, run_id .. '|' .. ARGV[j] .. '|1|0')
  else
    redis.call('XADD', stream, '*', 'r', run_id, 's', ARGV[j], 'a', '1', 'e', '0', 'w', wf)
  end
end
redis.call('ZADD', p .. ':runs', now, run_id)
if parent_run ~= '' then
  -- 'c|': a step's own fields are '<step>.<what>', and a step may be named c.
  redis.call('HSET', p .. ':run:' .. parent_run, 'c|' .. run_id, parent_step)
  if pin ~= '' then
    redis.call('XADD', p .. ':hist:' .. run_id, '*', 'ev', 'created', 'wf', wf, 'w', pin,
      'parent', parent_run .. '/' .. parent_step)
  else
    redis.call('XADD', p .. ':hist:' .. run_id, '*', 'ev', 'created', 'wf', wf,
      'parent', parent_run .. '/' .. parent_step)
  end
elseif pin ~= '' then
  redis.call('XADD', p .. ':hist:' .. run_id, '*', 'ev', 'created', 'wf', wf, 'w', pin)
else
  redis.call('XADD', p .. ':hist:' .. run_id, '*', 'ev', 'created', 'wf', wf)
end
return 'ok'
