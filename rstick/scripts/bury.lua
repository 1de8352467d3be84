-- bury: move an entry to the dead-letter stream, with the reason, and forget it.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, worker, stream, entry_id, reason, field, value, ...
-- Returns  the dead-letter entry's id.
local p, me, stream, id, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local dead = {'reason', reason, 'stream', stream, 'id', id, 'worker', me}
for j = 6, #ARGV do dead[#dead + 1] = ARGV[j] end
local dead_id = redis.call('XADD', p .. ':dead', '*', unpack(dead))
redis.call('XACK', stream, GROUP, id)
redis.call('XDEL', stream, id)
return dead_id
