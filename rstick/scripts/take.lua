-- take: a worker's read and claim, one round trip; also how it picks up, in the
-- same round trip, what its blocking read has just delivered.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, now_ms, workflows (" name name ... "), free,
--          want_marks ("1" or ""), (stream, mark) * n: personal stream first, then
--          the shared queues.
--          Marks are "" (a plain take: read new entries while slots are free), or the marks the worker's last plain take returned. Then
--          the worker's blocking XREADGROUP, pipelined just before this call, has
--          delivered what came after them: its pending entries with greater ids.
--          Those are claimed (those beyond free go back to the end of their stream),
--          and nothing else is read: this is the way from enqueue to a step's start,
--          so it stays short, and the worker's next take reads the rest.
-- Returns  {replies, marks}: one reply of claim_entry (lib.lua) per entry handled,
--          never more than free; marks when want_marks, on a plain take that left
--          slots free (so that no stream holds an entry not yet delivered): each
--          stream's last generated id, in order, for the next blocking read.
-- A delivered entry whose step already runs here at its attempt (the reply of an
-- earlier try was lost, and redis-py sent the call again) stays pending, for the
-- worker's recovery of stranded entries: it is not started twice.
local p, me, now, workflows = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local left, want_marks = tonumber(ARGV[5]), ARGV[6] == '1'
local out = {}

if ARGV[8] ~= '' then
  local n = (#ARGV - 6) / 2
  local read = {'XREADGROUP', 'GROUP', GROUP, me, 'STREAMS'}
  for k = 1, n do
    read[5 + k] = ARGV[5 + 2 * k]
    read[5 + n + k] = ARGV[6 + 2 * k]
  end
  local r = redis.call(unpack(read))
  -- {{stream, entries}, ...}; fakeredis answers {stream, entries, stream, entries, ...}
  local flat = r[1] ~= nil and type(r[1]) ~= 'table'
  for k = 1, #r, flat and 2 or 1 do
    local stream, delivered = r[k], r[k + 1]
    if not flat then stream, delivered = r[k][1], r[k][2] end
    for _, e in ipairs(delivered) do
      local id, kv = e[1], e[2]
      if not kv then
        redis.call('XACK', stream, GROUP, id)  -- deleted meanwhile: nothing to run
      elseif left > 0 then
        -- The worker's clock is from before its wait; the entry's id says when it came.
        local added = string.match(id, '^%d+')
        if tonumber(added) > tonumber(now) then now = added end
        local res = claim_entry(p, me, now, workflows, stream, id, kv, true)
        if res then
          out[#out + 1] = res
          left = left - 1
        end
      else
        redis.call('XADD', stream, '*', unpack(kv))
        redis.call('XACK', stream, GROUP, id)
        redis.call('XDEL', stream, id)
      end
    end
  end
  return {out, {}}
end

for j = 7, #ARGV, 2 do
  if left <= 0 then break end
  local stream = ARGV[j]
  local r = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', left, 'STREAMS', stream, '>')
  if r and r[1] then
    -- {{stream, entries}}; fakeredis answers {stream, entries}
    local got = type(r[1]) == 'table' and r[1][2] or r[2]
    for _, e in ipairs(got) do
      out[#out + 1] = claim_entry(p, me, now, workflows, stream, e[1], e[2])
    end
    left = left - #got
  end
end

local marks = {}
if want_marks and left > 0 then
  for j = 7, #ARGV, 2 do
    local info = redis.call('XINFO', 'STREAM', ARGV[j])
    for k = 1, #info, 2 do
      if info[k] == 'last-generated-id' then
        marks[#marks + 1] = info[k + 1]
        break
      end
    end
  end
end
return {out, marks}
