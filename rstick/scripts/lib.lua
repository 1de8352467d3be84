-- lib: functions shared by the scripts; the loader (rstick/scripts/__init__.py) puts
-- this file before each one, after the constants Python defines (GROUP).
-- Every script receives the key prefix "{ns}" as ARGV[1].
-- Time is Redis's (TIME), never a worker's clock: two processes compare it.

-- Milliseconds since the epoch, by Redis's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function run_key(p, run) return p .. ':run:' .. run end
local function hist_key(p, run) return p .. ':hist:' .. run end
local function personal_key(p, w) return p .. ':w:' .. w end
local function queue_key(p, q) return p .. ':q:' .. q end
local function pinned_key(p, w) return p .. ':pinned:' .. w end
local function worker_key(p, w) return p .. ':worker:' .. w end
local function wait_key(p, wf) return p .. ':wait:' .. wf end

-- A step's entry: the one place its fields are written.
local function add_entry(stream, run, step, attempt, epoch, wf)
  return redis.call('XADD', stream, '*', 'r', run, 's', step, 'a', attempt, 'e', epoch, 'w', wf)
end

-- An entry's fields as a table.
local function entry_fields(kv)
  local f = {}
  for k = 1, #kv, 2 do f[kv[k]] = kv[k + 1] end
  return f
end

local function ack_delete(stream, id)
  redis.call('XACK', stream, GROUP, id)
  redis.call('XDEL', stream, id)
end

local function history(p, run, ...)
  redis.call('XADD', hist_key(p, run), '*', ...)
end

local function dead_letter(p, maxlen, ...)
  redis.call('XADD', p .. ':dead', 'MAXLEN', '~', maxlen, '*', ...)
end

local function words(s)
  local out = {}
  if s then for w in string.gmatch(s, '%S+') do out[#out + 1] = w end end
  return out
end

local function has_word(list, word)
  return list and string.find(' ' .. list .. ' ', ' ' .. word .. ' ', 1, true) ~= nil or false
end

-- Whether `code` (a worker's " name name|shape ... ", Python: protocol.code_words)
-- can run a run of workflow `wf` made with `shape` (protocol.shape_of): a worker may
-- have another definition of it. A run made before shapes were kept has none.
local function has_code(code, wf, shape)
  if not shape or shape == '' then return has_word(code, wf) end
  return has_word(code, wf .. '|' .. shape)
end

local function active(status) return status == 'queued' or status == 'running' end

-- Every worker that was alive at `since` (its last beat within its ttl of it), and not
-- declared dead since, gets its deadline pushed to now + its ttl: Redis could not
-- take beats meanwhile, through no fault of theirs. A worker already dead then gains
-- nothing, however often grace is given.
local function grant_grace(p, since, now)
  local workers = p .. ':workers'
  for _, w in ipairs(redis.call('ZRANGE', workers, 0, -1)) do
    local wh = redis.call('HMGET', worker_key(p, w), 'ttl', 'reaped', 'beat')
    local wttl, last = tonumber(wh[1]), tonumber(wh[3])
    if wttl and last and not wh[2] and last + wttl >= since then
      local deadline = tonumber(redis.call('ZSCORE', workers, w))
      if deadline and deadline < now + wttl then
        redis.call('ZADD', workers, now + wttl, w)
        redis.call('HSET', worker_key(p, w), 'deadline', now + wttl)
      end
    end
  end
end

-- A heartbeat or a reaper's pass landed now. When none had for longer than gap_ms
-- (a few heartbeats), Redis stood still (CLIENT PAUSE, a long script, a failover
-- under way) or every worker did: nobody could beat meanwhile, so the first to land
-- grants grace to all, whichever lands first once Redis goes on. True then.
local function note_activity(p, now, gap_ms)
  local key = p .. ':active'
  local last = tonumber(redis.call('GET', key))
  redis.call('SET', key, now)
  if last and gap_ms and now - last > gap_ms then
    grant_grace(p, last, now)
    return true
  end
  return false
end

-- Whether worker w is alive: its heartbeat deadline, in Redis time, is still ahead,
-- and it was not declared dead since. With `instance`, also that this process (not
-- another one that took the id over) is the one holding it.
-- (The deadline is kept in the worker's record, and in {ns}:workers to list them.)
local function is_live(p, w, now, instance)
  local h = redis.call('HMGET', worker_key(p, w), 'deadline', 'reaped', 'instance')
  local deadline = tonumber(h[1])
  return deadline ~= nil and deadline > now and not h[2]
    and (instance == nil or h[3] == instance)
end

-- Whether worker w is alive; when it is not, it is marked reaped, so that should it
-- wake up (a long pause) its next heartbeat tells it so.
local function judge(p, w, now)
  if is_live(p, w, now) then return true end
  if redis.call('EXISTS', worker_key(p, w)) == 1 then
    redis.call('HSET', worker_key(p, w), 'reaped', '1')
  end
  return false
end

-- Sticky children detached to follow this run to its next worker (see reassign),
-- when the run ends before it is pinned again: they are let go like SOFT runs, their
-- first step to the shared queue, the others held until a worker pins them.
local function release_followers(p, run, followers)
  for child in string.gmatch(followers, '%S+') do
    local ck = run_key(p, child)
    local c = redis.call('HMGET', ck, 'status', 'worker', 'follows', 'held', 'epoch', 'wf', 'queue')
    if active(c[1]) and (not c[2] or c[2] == '') and c[3] == run then
      redis.call('HDEL', ck, 'follows')
      local held = {}
      for s in string.gmatch(c[4] or '', '%S+') do held[#held + 1] = s end
      if held[1] then
        add_entry(queue_key(p, c[7]), child, held[1], redis.call('HGET', ck, held[1] .. '.a'),
          c[5], c[6])
      end
      redis.call('HSET', ck, 'held', table.concat(held, ' ', 2))
      history(p, child, 'ev', 'released', 'reason', 'its parent ended before it was pinned')
    end
  end
end

-- The fields of a run that finish needs, read with the caller's own HMGET when it
-- can (complete.lua does, on the hot path): append them to its field list, then
-- pass the values from `at` on to finish.
local FINISH_FIELDS = {'worker', 'retention', 'waiting', 'followers', 'parked', 'follows'}

-- End a run: status, finish time, retention, unpin, history, wake waiters.
-- known: the values of FINISH_FIELDS in order (nil: read here); set: more fields to
-- write with the status (a last step's own); event: more fields of the "finished"
-- history event (a last step's success, told in it: see Admin.history).
local function finish(p, run, status, now, known, set, event)
  local rk = run_key(p, run)
  local h = known or redis.call('HMGET', rk, unpack(FINISH_FIELDS))
  local pinned, retention, waiting, followers, parked, follows = h[1], h[2], h[3], h[4], h[5],
    h[6]
  if followers and followers ~= '' then release_followers(p, run, followers) end
  local fields = set or {}
  fields[#fields + 1] = 'status'
  fields[#fields + 1] = status
  fields[#fields + 1] = 'finished'
  fields[#fields + 1] = now
  redis.call('HSET', rk, unpack(fields))
  if waiting or followers or parked or follows then
    redis.call('HDEL', rk, 'parked', 'waiting', 'waiting_since', 'follows', 'followers')
  end
  if pinned and pinned ~= '' then redis.call('SREM', pinned_key(p, pinned), run) end
  local ev = {'ev', 'finished', 'status', status}
  for _, x in ipairs(event or {}) do ev[#ev + 1] = x end
  history(p, run, unpack(ev))
  local ttl = tonumber(retention)
  for _, k in ipairs({rk, hist_key(p, run)}) do
    if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('DEL', k) end
  end
  redis.call('PUBLISH', p .. ':done:' .. run, status)
end

-- Fail one step and its run with an error (msgpack bytes packed by the caller).
local function fail_step(p, run, step, err, now)
  redis.call('HSET', run_key(p, run), step .. '.st', 'failed', step .. '.t1', now, step .. '.e', err,
    'error_step', step)
  finish(p, run, 'failed', now)
end

-- The stream a step of a run goes to now: its pinned worker's, else its queue; nil
-- for a sticky child waiting for its parent's next worker (see reassign).
local function route(p, sticky, worker, queue, follows)
  if sticky ~= 'none' and worker and worker ~= '' then return personal_key(p, worker) end
  if sticky ~= 'none' and follows and follows ~= '' then return nil end
  return queue_key(p, queue)
end

-- Send a step of a run where it goes now (see route), or hold it for the run's pin.
local function dispatch(p, run, step, attempt, epoch, wf, stream)
  if stream then
    add_entry(stream, run, step, attempt, epoch, wf)
  else
    local rk = run_key(p, run)
    local held = redis.call('HGET', rk, 'held')
    redis.call('HSET', rk, 'held', (held and held ~= '') and (held .. ' ' .. step) or step)
  end
end

-- dispatch, reading the run's route.
local function redispatch(p, run, step, attempt, epoch)
  local h = redis.call('HMGET', run_key(p, run), 'sticky', 'worker', 'queue', 'follows', 'wf')
  dispatch(p, run, step, attempt, epoch, h[5], route(p, h[1], h[2], h[3], h[4]))
end

-- A running step whose worker was lost: count it, and either fail it as poison
-- (it lost its worker max_deliveries times; nil: never) or make it a new attempt.
-- Returns the new attempt, or nil when the step was failed as poison.
local function lose(p, run, step, worker, reason, max_deliveries, poison_err, dead_max, now)
  local rk = run_key(p, run)
  local lost = redis.call('HINCRBY', rk, step .. '.lost', 1)
  if max_deliveries and lost >= tonumber(max_deliveries) then
    dead_letter(p, dead_max, 'reason', 'step ' .. step .. ' lost its worker ' .. lost .. ' times',
      'r', run, 's', step, 'worker', worker)
    fail_step(p, run, step, poison_err, now)
    return nil
  end
  local attempt = redis.call('HINCRBY', rk, step .. '.a', 1)
  redis.call('HSET', rk, step .. '.st', 'queued')
  history(p, run, 'ev', 'lost', 's', step, 'w', worker, 'a', attempt - 1, 'reason', reason)
  return attempt
end

-- Pin run to worker me: its held steps go to me's stream; so do its followers, the
-- sticky children moved with it (see reassign), and theirs in turn.
local pin
pin = function(p, run, me, epoch, wf, held, followers, now, reason, depth)
  local rk = run_key(p, run)
  redis.call('HSET', rk, 'worker', me, 'held', '')
  redis.call('HDEL', rk, 'follows', 'followers')
  redis.call('SADD', pinned_key(p, me), run)
  if reason then
    history(p, run, 'ev', 'pinned', 'w', me, 'epoch', epoch, 'reason', reason)
  else
    history(p, run, 'ev', 'pinned', 'w', me, 'epoch', epoch)
  end
  for _, s in ipairs(words(held)) do
    add_entry(personal_key(p, me), run, s, redis.call('HGET', rk, s .. '.a'), epoch, wf)
  end
  if (depth or 0) < 100 then  -- a tree of runs, never a cycle; bounded all the same
    for _, child in ipairs(words(followers)) do
      local c = redis.call('HMGET', run_key(p, child), 'status', 'worker', 'follows', 'held',
        'epoch', 'wf', 'followers')
      if active(c[1]) and (not c[2] or c[2] == '') and c[3] == run then
        pin(p, child, me, c[5], c[6], c[4], c[7], now, 'follows its parent', (depth or 0) + 1)
      end
    end
  end
end

-- Move a sticky run off worker w. A new epoch fences whatever w still holds; its
-- queued and running steps go back (running ones as a new attempt) and its retries
-- are re-keyed to the new epoch. By `how`:
--   "queue":  the first step goes to the shared queue, the others are held until the
--             next worker pins the run (SOFT);
--   "follow": every step is held until the parent run `to` is pinned again (a sticky
--             child follows its SOFT parent: the child's `follows`, the parent's
--             `followers`);
--   "pin":    pinned to worker `to` at once (the parent already moved there).
-- Returns false when a step was failed as poison (the run ended).
local function reassign(p, run, w, how, to, max_deliveries, poison_err, dead_max, now)
  local rk = run_key(p, run)
  local h = redis.call('HMGET', rk, 'epoch', 'steps', 'queue', 'wf', 'followers')
  local epoch, queue, wf = h[1], h[3], h[4]
  local new_epoch = tostring(tonumber(epoch) + 1)
  redis.call('HSET', rk, 'epoch', new_epoch, 'worker', '', 'reassigned', '1', 'held', '')
  redis.call('HDEL', rk, 'waiting', 'waiting_since')  -- it waits anew, wherever it goes
  redis.call('SREM', pinned_key(p, w), run)
  local back = {}
  for _, s in ipairs(words(h[2])) do
    local st = redis.call('HGET', rk, s .. '.st')
    if st == 'running' then
      if not lose(p, run, s, w, 'worker lost', max_deliveries, poison_err, dead_max, now) then
        return false
      end
      back[#back + 1] = s
    elseif st == 'queued' then
      back[#back + 1] = s
    elseif st == 'retrying' then
      local a = redis.call('HGET', rk, s .. '.a')
      local old = run .. '|' .. s .. '|' .. a .. '|' .. epoch
      local due = redis.call('ZSCORE', p .. ':delayed', old)
      redis.call('ZREM', p .. ':delayed', old)
      redis.call('ZADD', p .. ':delayed', due or now, run .. '|' .. s .. '|' .. a .. '|' .. new_epoch)
    end
  end
  history(p, run, 'ev', 'reassigned', 'from', w, 'epoch', new_epoch)
  if how == 'queue' then
    if back[1] then
      add_entry(queue_key(p, queue), run, back[1], redis.call('HGET', rk, back[1] .. '.a'),
        new_epoch, wf)
    end
    redis.call('HSET', rk, 'held', table.concat(back, ' ', 2))
  elseif how == 'pin' then
    pin(p, run, to, new_epoch, wf, table.concat(back, ' '), h[5], now, 'follows its parent')
  else
    redis.call('HSET', rk, 'held', table.concat(back, ' '), 'follows', to)
    local parent = run_key(p, to)
    local followers = redis.call('HGET', parent, 'followers')
    if not has_word(followers, run) then
      redis.call('HSET', parent, 'followers',
        (followers and followers ~= '') and (followers .. ' ' .. run) or run)
    end
  end
  return true
end

-- A live worker, other than `except` and not stopping, that can run a run of
-- workflow wf made with `shape` and reads queue q;
-- `spread` (any number) picks among several. nil when there is none.
local function capable_worker(p, wf, shape, q, now, except, spread)
  local live = redis.call('ZRANGEBYSCORE', p .. ':workers', '(' .. now, '+inf')
  local n = #live
  for k = 0, n - 1 do
    local w = live[(spread + k) % n + 1]
    if w ~= except then
      local h = redis.call('HMGET', worker_key(p, w), 'code', 'queues', 'reaped', 'draining')
      if not h[3] and not h[4] and has_code(h[1], wf, shape) and has_word(h[2], q) then
        return w
      end
    end
  end
  return nil
end

-- Park a step's entry until a worker with its workflow's code comes; the run says why.
local function wait_for_code(p, run, step, attempt, epoch, wf, now)
  local rk = run_key(p, run)
  redis.call('XADD', wait_key(p, wf), '*', 'r', run, 's', step, 'a', attempt, 'e', epoch, 'w', wf)
  redis.call('SADD', p .. ':waiting', wf)
  if not redis.call('HGET', rk, 'waiting') then
    redis.call('HSET', rk, 'waiting', 'no_worker_with_code', 'waiting_since', now)
    history(p, run, 'ev', 'waiting', 's', step, 'reason', 'no_worker_with_code')
  end
end
