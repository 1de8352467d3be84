-- enqueue: create a run and dispatch its ready steps.
-- KEYS[1]  {ns}:wf (the definitions hash; also routes the call to the namespace's slot)
-- ARGV     prefix, run_id, workflow, kind, sticky, queue, input, now_ms,
--          pin_worker, parent_run, parent_step, retention_s, due_ms (0: now),
--          schedule_timeout_s, nsteps,
--          (step, nparents, parent * nparents, schedule_timeout_s or "") * nsteps,
--          nroots, root * nroots
-- Returns  "ok", "exists" (same run id enqueued before: nothing written) or
--          "unknown" (no such workflow: nothing written).
local p, run_id, wf, kind, sticky, queue, input, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local pin, parent_run, parent_step = ARGV[9], ARGV[10], ARGV[11]
if redis.call('HEXISTS', KEYS[1], wf) == 0 then return 'unknown' end
local rk = p .. ':run:' .. run_id
if redis.call('EXISTS', rk) == 1 then return 'exists' end

local due = tonumber(ARGV[13])
local nsteps = tonumber(ARGV[15])
local fields = {'wf', wf, 'kind', kind, 'status', 'queued', 'sticky', sticky, 'queue', queue,
  'worker', pin, 'epoch', '0', 'input', input, 'created', now, 'left', nsteps,
  'parent_run', parent_run, 'parent_step', parent_step, 'retention', ARGV[12], 'sto', ARGV[14]}
local names = {}
local i = 16
for _ = 1, nsteps do
  local s, nparents = ARGV[i], tonumber(ARGV[i + 1])
  names[#names + 1] = s
  fields[#fields + 1] = s .. '.st'; fields[#fields + 1] = 'waiting'
  fields[#fields + 1] = s .. '.a'; fields[#fields + 1] = '0'
  if nparents > 0 then
    local parents = {}
    for j = 1, nparents do parents[j] = ARGV[i + 1 + j] end
    fields[#fields + 1] = s .. '.p'; fields[#fields + 1] = nparents
    fields[#fields + 1] = s .. '.par'; fields[#fields + 1] = table.concat(parents, ' ')
  end
  i = i + 2 + nparents
  if ARGV[i] ~= '' then
    fields[#fields + 1] = s .. '.sto'; fields[#fields + 1] = ARGV[i]
  end
  i = i + 1
end
fields[#fields + 1] = 'steps'; fields[#fields + 1] = table.concat(names, ' ')

local nroots = tonumber(ARGV[i])
local roots = {}
for j = 1, nroots do roots[j] = ARGV[i + j] end

-- Where the roots go: a run pinned at creation (sticky child) sends every root
-- to its worker; an unpinned sticky run sends its first root to the shared
-- queue and holds the rest, queued, until a worker pins it; anything else is free.
local held = {}
local dispatch = {}
if pin ~= '' then
  dispatch = roots
  redis.call('SADD', p .. ':pinned:' .. pin, run_id)
elseif sticky ~= 'none' then
  dispatch = {roots[1]}
  for j = 2, nroots do held[#held + 1] = roots[j] end
else
  dispatch = roots
end
fields[#fields + 1] = 'held'; fields[#fields + 1] = table.concat(held, ' ')
for _, s in ipairs(roots) do
  fields[#fields + 1] = s .. '.st'; fields[#fields + 1] = 'queued'
  fields[#fields + 1] = s .. '.a'; fields[#fields + 1] = '1'
end
redis.call('HSET', rk, unpack(fields))

local stream = p .. ':q:' .. queue
if pin ~= '' then stream = p .. ':w:' .. pin end
for _, s in ipairs(dispatch) do
  if due > 0 then
    redis.call('ZADD', p .. ':delayed', due, run_id .. '|' .. s .. '|1|0')
  else
    redis.call('XADD', stream, '*', 'r', run_id, 's', s, 'a', '1', 'e', '0', 'w', wf)
  end
end
redis.call('ZADD', p .. ':runs', now, run_id)
if parent_run ~= '' then
  redis.call('HSET', p .. ':run:' .. parent_run, 'c.' .. run_id, parent_step)
end
local ev = {'ev', 'created', 'wf', wf}
if pin ~= '' then ev[#ev + 1] = 'w'; ev[#ev + 1] = pin end
if parent_run ~= '' then ev[#ev + 1] = 'parent'; ev[#ev + 1] = parent_run .. '/' .. parent_step end
redis.call('XADD', p .. ':hist:' .. run_id, '*', unpack(ev))
return 'ok'
