-- claim: take a batch of entries a worker just read.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, now_ms, n,
--          (stream, entry_id, run, step, attempt, epoch, workflow, nparents, parent * nparents) * n
-- For each entry, in order, returns one of
--   {"run", input, reassigned, parent, output, parent, output, ...}  run it now
--   {"fwd", worker}   a sticky run pinned elsewhere: moved to that worker's stream
--   {"drop", reason}  stale or finished: acknowledged and deleted, nothing to run
-- An unpinned sticky run is pinned here, and its held roots are released into
-- this worker's personal stream.
local p, me, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local mine = p .. ':w:' .. me
local out = {}
local i = 5

local function drop(stream, id, reason)
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
  return {'drop', reason}
end

for _ = 1, n do
  local stream, id, run, step, attempt, epoch, wf = ARGV[i], ARGV[i + 1], ARGV[i + 2],
    ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local nparents = tonumber(ARGV[i + 7])
  local parents_at = i + 8
  i = parents_at + nparents

  local rk = p .. ':run:' .. run
  local h = redis.call('HMGET', rk, 'status', 'sticky', 'worker', 'epoch', step .. '.st',
    step .. '.a', 'held', 'reassigned')
  local status, sticky, pinned, cur_epoch, st, a, held = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
  local res
  if not status then
    res = drop(stream, id, 'no such run')
  elseif status ~= 'queued' and status ~= 'running' then
    res = drop(stream, id, 'run is ' .. status)
  elseif not st then
    res = drop(stream, id, 'no such step')
  elseif cur_epoch ~= epoch then
    res = drop(stream, id, 'stale epoch ' .. epoch .. ' (run is at ' .. cur_epoch .. ')')
  elseif a ~= attempt then
    res = drop(stream, id, 'stale attempt ' .. attempt .. ' (step is at ' .. a .. ')')
  elseif st ~= 'queued' then
    res = drop(stream, id, 'step is ' .. st)
  elseif sticky ~= 'none' and pinned ~= '' and pinned ~= me then
    redis.call('XADD', p .. ':w:' .. pinned, '*', 'r', run, 's', step, 'a', attempt, 'e', epoch,
      'w', wf)
    redis.call('XACK', stream, GROUP, id)
    redis.call('XDEL', stream, id)
    res = {'fwd', pinned}
  else
    if sticky ~= 'none' and pinned == '' then
      redis.call('HSET', rk, 'worker', me)
      redis.call('SADD', p .. ':pinned:' .. me, run)
      redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'pinned', 'w', me, 'epoch', epoch)
      if held and held ~= '' then
        for root in string.gmatch(held, '%S+') do
          local ra = redis.call('HGET', rk, root .. '.a')
          redis.call('XADD', mine, '*', 'r', run, 's', root, 'a', ra, 'e', epoch, 'w', wf)
        end
        redis.call('HSET', rk, 'held', '')
      end
    end
    redis.call('HSET', rk, step .. '.st', 'running', step .. '.w', me, step .. '.t0', now)
    if status == 'queued' then redis.call('HSET', rk, 'status', 'running', 'started', now) end
    redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'started', 's', step, 'w', me, 'a', attempt)
    res = {'run', redis.call('HGET', rk, 'input'), h[8] or '0'}
    if nparents > 0 then
      local names = {}
      for j = 0, nparents - 1 do names[#names + 1] = ARGV[parents_at + j] end
      local outs = redis.call('HMGET', p .. ':out:' .. run, unpack(names))
      for j = 1, nparents do
        res[#res + 1] = names[j]
        res[#res + 1] = outs[j] or ''
      end
    end
  end
  out[#out + 1] = res
end
return out
