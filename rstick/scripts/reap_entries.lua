-- reap_entries: entries of a stream that a lost (or restarting) worker held.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, stream, kind, mode, max_deliveries, poison_error, dead_maxlen,
--          instance, entry_id * n                       (Python: rstick.reaper)
--          kind "pending": ids from the worker's pending list (delivered to it);
--          kind "scan":    ids of its personal stream (delivered or not).
--          mode as in reap_run.lua ("dead" checks the heartbeat atomically), or
--          "recover": a live worker's own entries that it is not running (a take
--          whose reply was lost with the connection): their steps were claimed but
--          never started, so they go back at the same attempt, no loss counted;
--          only while `instance` (the calling process) holds the worker id, for a
--          process whose id was taken over must not touch its successor's steps.
-- For each entry: one whose run ended or moved on (stale attempt or epoch, pinned
-- elsewhere) is deleted; a pending one still valid is dispatched again (a new
-- attempt if its step was running), except, for a dead worker, the running step of
-- a run parked for it: nothing else may run a HARD step, so it stays pending, for
-- the worker's return (or its rejoin, when it runs on) or the park's timeout; a
-- scanned one stays when its run is pinned to the worker (a parked HARD run waits
-- for it) and is dispatched again otherwise (a run's entry forwarded or handed to
-- the worker: it may run anywhere).
-- Returns  {dispatched, deleted}, or "alive" (dead mode: the worker lives; recover
--          mode: the id is not the caller's).
local p, w, stream, kind, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_deliveries, poison_err, dead_max, instance = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local now = now_ms()

if mode == 'dead' and judge(p, w, now) then return 'alive' end
if mode == 'recover' and not is_live(p, w, now, instance) then return 'alive' end

local dispatched, deleted = 0, 0
local own_stream = stream == personal_key(p, w)
for j = 10, #ARGV do
  local id = ARGV[j]
  local found = redis.call('XRANGE', stream, id, id)
  local f = found[1] and entry_fields(found[1][2]) or {}
  local run, step, attempt, epoch = f['r'], f['s'], f['a'], f['e']
  local h = {}
  if run and step then
    h = redis.call('HMGET', run_key(p, run), 'status', 'epoch', 'worker', 'sticky',
      step .. '.st', step .. '.a', step .. '.w')
  end
  local status, cur_epoch, pinned, sticky, st, a, sw = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
  local pinned_here = sticky ~= 'none' and pinned == w
  local live = active(status) and cur_epoch == epoch and a == attempt
    and (sticky == 'none' or pinned == '' or pinned_here or not own_stream)
  local next_attempt = nil
  local keep = false
  if live and kind == 'pending' then
    if st == 'running' and sw == w and mode == 'recover' then
      redis.call('HSET', run_key(p, run), step .. '.st', 'queued')
      next_attempt = attempt
    elseif st == 'running' and sw == w and mode == 'dead' and pinned_here then
      keep = true
    elseif st == 'running' and sw == w then
      next_attempt = lose(p, run, step, w, 'worker lost', max_deliveries, poison_err, dead_max, now)
    elseif st == 'queued' then
      next_attempt = attempt
    end
  elseif live and kind == 'scan' and not pinned_here and st == 'queued' then
    next_attempt = attempt
  end
  if keep then
    -- left pending: see above
  elseif next_attempt then
    ack_delete(stream, id)
    redispatch(p, run, step, next_attempt, epoch)
    dispatched = dispatched + 1
  elseif not live or kind == 'pending' then
    ack_delete(stream, id)
    deleted = deleted + 1
  end
end
return {dispatched, deleted}
