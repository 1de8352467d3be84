-- claim: take a batch of entries a worker read with a blocking XREADGROUP.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, now_ms, workflows (" name name ... "), n,
--          (stream, entry_id, field, value, ..., "") * n
-- Returns  one reply of claim_entry (lib.lua) per entry, in order.
local p, me, now, workflows, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
local i = 6
for _ = 1, n do
  local stream, id = ARGV[i], ARGV[i + 1]
  local kv = {}
  i = i + 2
  while ARGV[i] ~= '' do
    kv[#kv + 1] = ARGV[i]
    i = i + 1
  end
  i = i + 1
  out[#out + 1] = claim_entry(p, me, now, workflows, stream, id, kv)
end
return out
