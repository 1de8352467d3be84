-- release: give entries a worker read but cannot start back to the end of their stream.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix (unused), n, (stream, entry_id, field, value, field, value, ...
--          terminated by the empty string) * n
-- Returns  the number of entries given back.
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  local stream, id = ARGV[i], ARGV[i + 1]
  local fields = {}
  i = i + 2
  while ARGV[i] ~= '' do
    fields[#fields + 1] = ARGV[i]
    i = i + 1
  end
  i = i + 1
  redis.call('XADD', stream, '*', unpack(fields))
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
end
return n
