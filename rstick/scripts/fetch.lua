-- fetch: read and claim in one round trip, for a worker with free slots. The
-- personal stream comes first (finish pinned runs before taking new ones), then
-- the shared queues in order; never more entries than free slots.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, now_ms, workflows (" name name ... "), free,
--          personal stream, queue stream * n
-- Returns  one reply of claim_entry (lib.lua) per entry read; none when all are
--          empty (the worker then blocks in XREADGROUP, which a script cannot).
local p, me, now, workflows, left = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
for j = 6, #ARGV do
  if left <= 0 then break end
  local stream = ARGV[j]
  local r = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', left, 'STREAMS', stream, '>')
  if r and r[1] then
    -- {{stream, entries}}; fakeredis answers {stream, entries}
    local entries = type(r[1]) == 'table' and r[1][2] or r[2]
    for _, e in ipairs(entries) do
      out[#out + 1] = claim_entry(p, me, now, workflows, stream, e[1], e[2])
    end
    left = left - #entries
  end
end
return out
