-- cancel: end a run that has not finished. Its queued entries are dropped when
-- read; completions of its running steps are ignored.
-- KEYS[1]  {ns}:wf (routing only)
-- ARGV     prefix, run, reason
-- Returns  "cancelled", or the run's status when it had already ended ("" if none).
local p, run = ARGV[1], ARGV[2]
local now = now_ms()
local status = redis.call('HGET', p .. ':run:' .. run, 'status')
if not status then return '' end
if status ~= 'queued' and status ~= 'running' then return status end
redis.call('XADD', p .. ':hist:' .. run, '*', 'ev', 'cancelled', 'reason', ARGV[3])
finish(p, run, 'cancelled', now)
return 'cancelled'
