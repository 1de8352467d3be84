-- reap_entries: entries of a stream that a lost (or restarting) worker held.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, stream, kind, mode, now_ms, worker_deadline_ms,
--          max_deliveries, poison_error, entry_id * n
--          kind "pending": ids from the worker's pending list (delivered to it);
--          kind "scan":    ids of its personal stream (delivered or not).
--          mode as in reap_run.lua ("dead" checks the heartbeat atomically).
-- For each entry: one whose run ended or moved on (stale attempt or epoch, pinned
-- elsewhere) is deleted; a pending one still valid is dispatched again (a new
-- attempt if its step was running); a scanned one that is still valid stays.
-- Returns  {dispatched, deleted}, or "alive".
local p, w, stream, kind, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, worker_deadline, max_deliveries = tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8])
local poison_err = ARGV[9]

if mode == 'dead' and beat_since(p, w, worker_deadline) then return 'alive' end

local dispatched, deleted = 0, 0
local function forget(id)
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
end

for j = 10, #ARGV do
  local id = ARGV[j]
  local found = redis.call('XRANGE', stream, id, id)
  local f = {}
  if found[1] then
    local kv = found[1][2]
    for k = 1, #kv, 2 do f[kv[k]] = kv[k + 1] end
  end
  local run, step, attempt, epoch = f['r'], f['s'], f['a'], f['e']
  local h = {}
  if run and step then
    h = redis.call('HMGET', p .. ':run:' .. run, 'status', 'epoch', 'worker', 'sticky',
      step .. '.st', step .. '.a', step .. '.w')
  end
  local status, cur_epoch, pinned, sticky, st, a, sw = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
  local live = status and (status == 'queued' or status == 'running') and cur_epoch == epoch
    and a == attempt and (sticky == 'none' or pinned == '' or pinned == w
      or stream ~= p .. ':w:' .. w)
  if not live then
    forget(id)
    deleted = deleted + 1
  elseif kind == 'pending' then
    local rk = p .. ':run:' .. run
    local next_attempt = attempt
    if st == 'running' and sw == w then
      next_attempt = lose(p, run, step, w, 'worker lost', max_deliveries, poison_err, now)
    elseif st ~= 'queued' then
      next_attempt = nil  -- finished or failed meanwhile: nothing to run
    end
    forget(id)
    if next_attempt then
      redis.call('XADD', destination(p, rk), '*', 'r', run, 's', step, 'a', next_attempt,
        'e', epoch, 'w', f['w'])
      dispatched = dispatched + 1
    else
      deleted = deleted + 1
    end
  end
end
return {dispatched, deleted}
