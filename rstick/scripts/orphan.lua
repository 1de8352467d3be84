-- orphan: fail a run that nothing can move on any more: active, yet no entry of it in
-- any stream, no pin, not parked, not waiting for code, no retry due (the reaper's
-- sweep found it so twice, with no history between; this re-checks what it can).
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, run, fingerprint (the id of its last history event), error
--          (Python: rstick.reaper, Reaper.sweep_orphans)
-- Returns  1 when the run was failed, 0 when it was not an orphan after all.
local p, run, fingerprint, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local rk = run_key(p, run)
local h = redis.call('HMGET', rk, 'status', 'sticky', 'worker', 'parked', 'waiting', 'steps',
  'epoch', 'follows')
if not active(h[1]) or (h[2] ~= 'none' and h[3] and h[3] ~= '') or h[4] or h[5] then
  return 0
end
-- A sticky child held until its parent is pinned again moves on with its parent.
if h[8] and h[8] ~= '' and active(redis.call('HGET', run_key(p, h[8]), 'status')) then
  return 0
end
local last = redis.call('XREVRANGE', hist_key(p, run), '+', '-', 'COUNT', 1)
if not last[1] or last[1][1] ~= fingerprint then return 0 end
local unfinished = nil
for _, s in ipairs(words(h[6])) do
  local sh = redis.call('HMGET', rk, s .. '.st', s .. '.a')
  if sh[1] == 'retrying' then
    local member = run .. '|' .. s .. '|' .. sh[2] .. '|' .. h[7]
    if redis.call('ZSCORE', p .. ':delayed', member) then return 0 end
  end
  if sh[1] == 'queued' or sh[1] == 'running' or sh[1] == 'retrying' then
    unfinished = unfinished or s
  end
end
if not unfinished then return 0 end
history(p, run, 'ev', 'orphaned', 's', unfinished,
  'reason', 'no entry of the run in any stream, and nothing else to move it on')
fail_step(p, run, unfinished, err, now)
return 1
