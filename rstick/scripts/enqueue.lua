-- enqueue: create a run and dispatch its ready steps.
-- KEYS[1]  {ns}:wf (the definitions hash; also routes the call to the namespace's slot)
-- ARGV     prefix, workflow, queue, pin_worker, parent_run, parent_step, run_id,
--          delay_ms (0: now), ndispatch, step * ndispatch,
--          (field, value) * rest: the run's hash, which the client builds from the
--          definition (Python: rstick.protocol, enqueue_fields; rstick.fastpath, Call): status "queued" at
--          epoch 0, every step "waiting" at attempt 0 but the roots, "queued" at
--          attempt 1, the parents of each step, its retention, and "held": the roots
--          of a sticky run that wait, queued, for a worker to pin the run.
--          The steps dispatched now: every root of a run pinned at creation (a sticky
--          child) to its worker's stream; the first root of an unpinned sticky run,
--          and every root of any other run, to the shared queue.
-- Returns  "ok", "exists" (same run id enqueued before: nothing written),
--          "unknown" (no such workflow: nothing written) or "parent cancelled" (a
--          step of a cancelled run spawning a child: nothing written, as the
--          cancel of that run may have listed its children already).
local p, wf, queue, pin_to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local parent_run, parent_step, run_id, delay = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
if redis.call('HEXISTS', KEYS[1], wf) == 0 then return 'unknown' end
if parent_run ~= '' and redis.call('HGET', run_key(p, parent_run), 'status') == 'cancelled' then
  return 'parent cancelled'
end
local rk = run_key(p, run_id)
if redis.call('EXISTS', rk) == 1 then return 'exists' end

local now = now_ms()
local ndispatch = tonumber(ARGV[9])
redis.call('HSET', rk, 'created', now, unpack(ARGV, 10 + ndispatch))

local stream = queue_key(p, queue)
if pin_to ~= '' then
  stream = personal_key(p, pin_to)
  redis.call('SADD', pinned_key(p, pin_to), run_id)
end
for j = 10, 9 + ndispatch do
  if delay > 0 then
    redis.call('ZADD', p .. ':delayed', now + delay, run_id .. '|' .. ARGV[j] .. '|1|0')
  else
    add_entry(stream, run_id, ARGV[j], '1', '0', wf)
  end
end
redis.call('ZADD', p .. ':runs:' .. wf, now, run_id)
local created = {'ev', 'created', 'wf', wf}
if pin_to ~= '' then
  created[#created + 1] = 'w'
  created[#created + 1] = pin_to
end
if parent_run ~= '' then
  created[#created + 1] = 'parent'
  created[#created + 1] = parent_run .. '/' .. parent_step
  -- An expired parent is not created again as a hash without a TTL. 'c|': a step's
  -- own fields are '<step>.<what>', and a step may be named c.
  if redis.call('EXISTS', run_key(p, parent_run)) == 1 then
    redis.call('HSET', run_key(p, parent_run), 'c|' .. run_id, parent_step)
  end
end
history(p, run_id, unpack(created))
return 'ok'
