"""The client side: enqueue runs, wait for their results, read runs and workers."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .app import WorkflowDef
from .codec import pack, unpack
from .connections import AsyncPool, LoopSide, SyncPool, ThreadConnections, plain_pool
from .errors import (
    ClientClosed,
    ResultTimeout,
    RunCancelled,
    RunFailed,
    RunNotFound,
    StepError,
    UnknownWorkflow,
)
from .limits import optional_seconds, seconds
from .names import check_name
from .notices import AsyncWaiter, Notices, subscription_kwargs
from .records import FINISHED, Cancellation, Run, RunStatus, WorkerInfo
from .scripts import Scripts

if TYPE_CHECKING:
    from .app import Rstick


def _bulks(args: Iterable[Any]) -> bytes:
    """Arguments as RESP bulk strings, encoded as redis-py does (str as UTF-8,
    numbers by repr)."""
    out = []
    for value in args:
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes):
            value = repr(value).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)


@dataclass(frozen=True)
class _Fields:
    """The part of enqueue.lua's ARGV that every run of a definition shares."""

    wf: WorkflowDef
    args: list[Any]
    packed: bytes


@dataclass(frozen=True)
class _Call:
    """One call of enqueue.lua: its ARGV is head, the definition's fields, tail."""

    run_id: str
    head: list[Any]
    fields: _Fields
    tail: list[Any]

    @property
    def args(self) -> list[Any]:
        return [*self.head, *self.fields.args, *self.tail]

    def packed(self, sha: str, key: str) -> bytes:
        """EVALSHA sha 1 key ARGV..., as the bytes Redis reads."""
        n = 4 + len(self.head) + len(self.fields.args) + len(self.tail)
        return b"".join(
            (
                b"*%d\r\n" % n,
                _bulks(("EVALSHA", sha, 1, key, *self.head)),
                self.fields.packed,
                _bulks(self.tail),
            )
        )


POLL = 5.0  # seconds between a waiter's own status checks: a safety net under the notices
CANCEL_BATCH = 500  # cancel.lua calls per round trip, cancelling a tree of runs


def new_run_id() -> str:
    """128 random bits in hex: uuid4().hex's form, without building a UUID (a third
    of the time, on the path from enqueue to start)."""
    return os.urandom(16).hex()


class Client:
    """Enqueues runs, reads state and waits for results; one per app.

    Its connections, all made when first needed: for sync code a pool of
    ``app.pool_size`` connections (some kept by threads for enqueue) and one
    subscription to done notices, shared by every thread; for async code the
    same again on each event loop (``LoopSide``). A command waits up to
    ``app.pool_timeout`` for a free connection. ``close()`` closes them all; a
    client used again afterwards opens what it needs again, and so does a
    client inherited over a fork, in the child."""

    def __init__(self, app: Rstick) -> None:
        self.app = app
        self.keys = app.keys
        self.poll = POLL
        self._sync: Redis | None = None
        self._sync_given = False  # given by `use`: its owner closes it
        self._sync_scripts: Scripts | None = None
        self._kept: ThreadConnections | None = None
        self._notices: Notices | None = None
        self._async_given: aioredis.Redis | None = None
        self._loops: dict[asyncio.AbstractEventLoop, LoopSide] = {}
        self._last_loop: LoopSide | None = None
        self._defs: dict[str, WorkflowDef] = {}
        self._registered: set[str] = set()
        self._fields: dict[tuple[str, bool], _Fields] = {}
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    # -- connections -------------------------------------------------------

    # redis-py annotates every command with one union of sync and async replies;
    # the clients are typed Any at this boundary and the values checked where used.
    @property
    def redis(self) -> Any:
        sync = self._sync
        if sync is None:
            with self._guard():  # threads starting together make one pool, not one each
                sync = self._sync
                if sync is None:
                    pool = SyncPool.from_url(
                        str(self.app.redis_url),
                        max_connections=self.app.pool_size,
                        timeout=self.app.pool_timeout,
                    )
                    sync = self._sync = Redis(connection_pool=pool)
        return sync

    @property
    def scripts(self) -> Scripts:
        scripts = self._sync_scripts
        if scripts is None:
            client = self.redis
            with self._guard():
                scripts = self._sync_scripts
                if scripts is None:
                    scripts = self._sync_scripts = Scripts.register(client)
        return scripts

    @property
    def aredis(self) -> Any:
        """The async client of the running event loop."""
        return self._loop_side().redis

    @property
    def ascripts(self) -> Scripts:
        return self._loop_side().scripts

    @property
    def notices(self) -> Notices:
        """The sync side's subscription to done notices."""
        notices = self._notices
        if notices is None or notices.closed or notices.pid != os.getpid():
            with self._guard():
                notices = self._notices
                if notices is None or notices.closed or notices.pid != os.getpid():
                    pool = self.redis.connection_pool
                    kwargs = subscription_kwargs(pool.connection_kwargs)
                    notices = Notices(lambda: pool.connection_class(**kwargs))
                    self._notices = notices
        return notices

    def _loop_side(self) -> LoopSide:
        loop = asyncio.get_running_loop()  # the async side is for code on an event loop
        side = self._last_loop
        if side is not None and side.loop is loop and not side.closed and side.pid == os.getpid():
            return side
        with self._guard():
            side = self._loops.get(loop)
            if side is None or side.closed or side.pid != os.getpid():
                side = self._loops[loop] = self._new_loop_side(loop)
        self._last_loop = side
        return side

    def _new_loop_side(self, loop: asyncio.AbstractEventLoop) -> LoopSide:
        if self._async_given is not None:
            return LoopSide(loop, self._async_given, owned=False, forget=self._forget_loop)
        pool = AsyncPool.from_url(
            str(self.app.redis_url),
            max_connections=self.app.pool_size,
            timeout=self.app.pool_timeout,
        )
        client = aioredis.Redis(connection_pool=pool)
        return LoopSide(loop, client, owned=True, forget=self._forget_loop)

    def _forget_loop(self, side: LoopSide) -> None:
        with self._guard():
            if self._loops.get(side.loop) is side:
                del self._loops[side.loop]
            if self._last_loop is side:
                self._last_loop = None

    def _guard(self) -> threading.Lock:
        """The client's lock; a forked child makes its own (the parent's may have been
        held by a thread that the child does not have), and forgets the parent's
        event loops, whose connections are the parent's."""
        pid = os.getpid()
        if self._lock_pid != pid:
            self._lock = threading.Lock()
            self._lock_pid = pid
            self._loops = {}
            self._last_loop = None
        return self._lock

    def dedicated(self, timeout: float) -> tuple[Any, Scripts]:
        """A sync client of its own, whose commands give up after ``timeout`` seconds,
        and its scripts: for a worker's heartbeat thread, which must not wait behind
        other users of the pool. A client given to ``use`` is shared instead."""
        if self._sync_given:
            return self.redis, self.scripts
        client = Redis.from_url(
            str(self.app.redis_url), socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return client, Scripts.register(client)

    def use(self, sync: Redis | None = None, aio: aioredis.Redis | None = None) -> None:
        """Use these clients instead of connecting to ``redis_url`` (tests, fakeredis)."""
        if sync is not None:
            self._sync, self._sync_given, self._sync_scripts = sync, True, None
            self._kept = self._notices = None
        if aio is not None:
            self._async_given = aio
            with self._guard():
                self._loops.clear()
                self._last_loop = None

    def kept_connections(self) -> int:
        """How many threads keep a connection for enqueue now."""
        kept = self._kept
        return kept.kept if kept is not None and kept.pid == os.getpid() else 0

    def close(self) -> None:
        """Close every connection of the client: the sync pool (with the connections
        threads keep), the subscription (waits in progress raise ``ClientClosed``),
        and the async side of every event loop. From inside a running loop, prefer
        ``await aclose()``: that loop's side can only be scheduled to close here."""
        with self._guard():
            notices, self._notices = self._notices, None
            sync = None
            if not self._sync_given:  # a client given by `use` is its owner's to close
                sync, self._sync = self._sync, None
                self._sync_scripts = None
                self._kept = None
            sides = list(self._loops.values())
            self._loops.clear()
            self._last_loop = None
        # The subscription first, so that the waits it wakes see it closed; a wait that
        # was looking at its run meanwhile finds its pool closed (``ClientClosed``).
        if notices is not None and notices.pid == os.getpid():
            notices.close()
        if sync is not None:
            sync.connection_pool.close()
        for side in sides:
            side.close()

    async def aclose(self) -> None:
        """``close()`` for async code: this loop's side is closed before it returns."""
        loop = asyncio.get_running_loop()
        with self._guard():
            side = self._loops.get(loop)
        if side is not None:
            await side.aclose()
        self.close()

    # -- definitions -------------------------------------------------------

    def definition(self, name: str) -> WorkflowDef:
        """The local definition, else the one a worker registered (cached)."""
        wf = self.app.workflows.get(name) or self._defs.get(name)
        if wf is None:
            raw = self.redis.hget(self.keys.workflows, name)
            if raw is None:
                raise UnknownWorkflow(name)
            wf = self._defs[name] = WorkflowDef.from_json(raw)
        return wf

    async def adefinition(self, name: str) -> WorkflowDef:
        wf = self.app.workflows.get(name) or self._defs.get(name)
        if wf is None:
            raw = await self.aredis.hget(self.keys.workflows, name)
            if raw is None:
                raise UnknownWorkflow(name)
            wf = self._defs[name] = WorkflowDef.from_json(raw)
        return wf

    def _register_local(self, pipe: Any, wf: WorkflowDef) -> int:
        """A workflow defined in this process may be enqueued before any worker starts:
        register it in ``pipe``, once per client. Returns the commands added."""
        if not self._needs_register(wf):
            return 0
        pipe.hset(self.keys.workflows, wf.name, wf.to_json())
        self._registered.add(wf.name)
        return 1

    def _needs_register(self, wf: WorkflowDef) -> bool:
        return wf.name in self.app.workflows and wf.name not in self._registered

    # -- enqueue -----------------------------------------------------------

    def enqueue_args(
        self,
        wf: WorkflowDef,
        run_id: str,
        input: Any = None,
        *,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of enqueue.lua; packing the input first refuses bad values."""
        call = self._enqueue_call(wf, run_id, input, delay=delay, pin=pin, parent=parent)
        return [self.keys.workflows], call.args

    def _enqueue_call(
        self,
        wf: WorkflowDef,
        run_id: str,
        input: Any,
        *,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> _Call:
        if type(delay) is not float or delay != 0.0:  # the default needs no check
            delay = seconds("delay", delay)
        _check_task_input(wf, input)
        data = pack(input, "input", max_bytes=self.app.max_payload_bytes)
        delay_ms = int(delay * 1000) if delay > 0 else 0
        head = [self.keys.prefix, run_id, wf.name, wf.queue, pin, *parent, delay_ms]
        tail = ["worker", pin, "input", data, "parent_run", parent[0], "parent_step", parent[1]]
        if pin and parent[0]:  # a sticky child: it goes where its parent goes (reap_run.lua)
            tail += ["sticky_child", "1"]
        return _Call(run_id, head, self.run_fields(wf, pinned=bool(pin)), tail)

    def run_fields(self, wf: WorkflowDef, *, pinned: bool) -> _Fields:
        """What enqueue.lua is given for any run of ``wf``, built (and packed) once
        per definition: the roots it dispatches now, then the run's hash.

        Every step waits at attempt 0 but the roots, queued at attempt 1. The roots
        of a run pinned at creation all go to its worker now; an unpinned sticky
        run sends its first root to the shared queue and holds the others until a
        worker pins it; any other run sends every root now."""
        cached = self._fields.get((wf.name, pinned))
        if cached is not None and cached.wf is wf:
            return cached
        roots = wf.roots
        sticky = wf.sticky.value != "none"
        now_roots = roots if pinned or not sticky else roots[:1]
        held = [] if pinned or not sticky else roots[1:]
        args: list[Any] = [len(now_roots), *now_roots]
        args += ["wf", wf.name, "kind", "task" if wf.is_task else "workflow", "status", "queued"]
        args += ["sticky", wf.sticky.value, "queue", wf.queue, "epoch", "0"]
        args += ["left", len(wf.steps), "sto", wf.schedule_timeout]
        retention = wf.retention if wf.retention is not None else self.app.retention
        args += ["retention", int(retention)]
        for s in wf.steps.values():
            root = not s.parents
            args += [f"{s.name}.st", "queued" if root else "waiting"]
            args += [f"{s.name}.a", "1" if root else "0"]
            if s.parents:
                args += [f"{s.name}.p", len(s.parents), f"{s.name}.par", " ".join(s.parents)]
            if s.schedule_timeout is not None:
                args += [f"{s.name}.sto", s.schedule_timeout]
        args += ["steps", " ".join(wf.steps), "held", " ".join(held)]
        fields = self._fields[(wf.name, pinned)] = _Fields(wf, args, _bulks(args))
        return fields

    def _checked(self, wf: WorkflowDef, result: bytes | str, parent_run: str = "") -> None:
        text = result.decode() if isinstance(result, bytes) else result
        if text == "unknown":
            self._defs.pop(wf.name, None)
            raise UnknownWorkflow(wf.name)
        if text == "parent cancelled":  # a step of a cancelled run spawning a child
            raise RunCancelled(parent_run)

    def _unknown(self, wf: WorkflowDef, results: list[Any]) -> list[int]:
        """The calls refused as "unknown workflow" that registering ``wf`` heals: it is
        defined here, and Redis lost the registry (a restart without persistence, a
        FLUSHDB, a failover) after this client registered it."""
        if wf.name not in self.app.workflows:
            return []
        unknown = [i for i, r in enumerate(results) if r in (b"unknown", "unknown")]
        if unknown:
            self._registered.discard(wf.name)
        return unknown

    def enqueue(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> RunRef:
        wf = self.definition(workflow)
        run_id = run_id or new_run_id()
        call = self._enqueue_call(wf, run_id, input, delay=delay, pin=pin, parent=parent)
        [result] = self._send_enqueues(wf, [call])
        self._checked(wf, result, parent[0])
        return RunRef(self, run_id)

    def enqueue_many(self, workflow: str, inputs: Iterable[Any]) -> list[RunRef]:
        wf = self.definition(workflow)
        calls = [self._enqueue_call(wf, new_run_id(), i) for i in inputs]
        results = self._send_enqueues(wf, calls)
        if results:
            self._checked(wf, results[-1])
        return [RunRef(self, call.run_id) for call in calls]

    def _send_enqueues(self, wf: WorkflowDef, calls: list[_Call]) -> list[Any]:
        """enqueue.lua once per call, all in one write: one round trip.

        On a plain connection pool the commands are packed here (the hash fields of
        a workflow's runs once and for all) and sent on a connection this thread
        keeps (or, when enough threads keep one, borrows for the call): redis-py's
        command path costs tens of microseconds per command, on the way from
        enqueue to start. Otherwise, and should that connection fail, they go in a
        redis-py pipeline of plain EVALSHA (its Script objects would add a SCRIPT
        EXISTS round trip). Calls refused with NOSCRIPT (Redis lost its scripts) are
        sent again once it is loaded. A run that got in before a failure answers
        "exists" when sent again."""
        script = self.scripts.enqueue
        key = self.keys.workflows
        results: list[Any] | None = None
        if not self._needs_register(wf):
            kept = self._thread_connections()
            conn = None if kept is None else kept.get()
            if conn is not None:
                results = self._send_packed(conn, calls, script.sha, key)
                if kept is not None and kept.pool.closed:  # closed meanwhile: not reopened
                    conn.disconnect()
            elif (pool := plain_pool(self.redis)) is not None:
                conn = pool.get_connection()
                try:
                    results = self._send_packed(conn, calls, script.sha, key)
                finally:
                    pool.release(conn)
        if results is None:
            pipe = self.redis.pipeline(transaction=False)
            skip = self._register_local(pipe, wf)
            for call in calls:
                pipe.evalsha(script.sha, 1, key, *call.args)
            results = pipe.execute(raise_on_error=False)[skip:]
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        missing += self._unknown(wf, results)
        if missing:
            script.sha = self.redis.script_load(script.script)
            # Redis that lost its scripts lost its data too, most likely (a restart
            # without persistence): wf is registered again with the calls sent again.
            self._registered.discard(wf.name)
            pipe = self.redis.pipeline(transaction=False)
            skip = self._register_local(pipe, wf)
            for i in missing:
                pipe.evalsha(script.sha, 1, key, *calls[i].args)
            for i, result in zip(missing, pipe.execute(raise_on_error=False)[skip:], strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    @staticmethod
    def _send_packed(conn: Any, calls: list[_Call], sha: str, key: str) -> list[Any] | None:
        """The calls' replies (errors among them), or None if the connection failed."""
        try:
            conn.send_packed_command([b"".join(c.packed(sha, key) for c in calls)])
            results = []
            for _ in calls:
                try:
                    results.append(conn.read_response())
                except ResponseError as exc:
                    results.append(exc)
            return results
        except Exception:
            conn.disconnect()  # it connects again when next used
            return None
        except BaseException:  # interrupted mid-reply: the connection is unusable
            conn.disconnect()
            raise

    def _own_connection(self) -> Any:
        """This thread's connection for enqueue, taken from the sync pool once and given
        back when the thread ends; None when the pool is not a plain one (TLS,
        sentinel, fakeredis, ...) or enough threads keep one already."""
        kept = self._thread_connections()
        return None if kept is None else kept.get()

    def _thread_connections(self) -> ThreadConnections | None:
        """The connections threads keep from the sync pool, if it is a plain one."""
        pool = plain_pool(self.redis)
        if pool is None:
            return None
        kept = self._kept
        if kept is None or kept.pool is not pool or kept.pid != os.getpid():
            with self._guard():
                kept = self._kept
                if kept is None or kept.pool is not pool or kept.pid != os.getpid():
                    # A fork or a new pool: the old one's connections are left untouched.
                    kept = ThreadConnections(pool, limit=self.app.pool_size // 2)
                    self._kept = kept
        return kept

    async def aenqueue(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        delay: float = 0.0,
        pin: str = "",
        parent: tuple[str, str] = ("", ""),
    ) -> AsyncRunRef:
        wf = await self.adefinition(workflow)
        run_id = run_id or new_run_id()
        keys, args = self.enqueue_args(wf, run_id, input, delay=delay, pin=pin, parent=parent)
        for _ in range(2):  # a second time only to register wf again (see _unknown)
            if self._needs_register(wf):  # no pipeline object on the common path
                pipe = self.aredis.pipeline(transaction=False)
                self._register_local(pipe, wf)
                await pipe.execute()
            # One EVALSHA, one round trip (the Script loads itself on NOSCRIPT).
            result = await self.ascripts.enqueue(keys=keys, args=args)
            if not self._unknown(wf, [result]):
                break
        self._checked(wf, result, parent[0])
        return AsyncRunRef(self, run_id)

    # -- events ------------------------------------------------------------

    def _event_runs(
        self, event: str, key: str | None, names: Iterable[bytes]
    ) -> list[tuple[str, str]]:
        """(workflow, run id) per listener; a key makes the run ids, and so the runs, unique."""
        out = []
        for raw in sorted(names):
            name = raw.decode()
            if key is None:
                run_id = new_run_id()
            else:
                run_id = hashlib.sha256(f"{event}\0{key}\0{name}".encode()).hexdigest()[:32]
            out.append((name, run_id))
        return out

    def _listeners(self, event: str) -> set[bytes]:
        names: set[bytes] = set(self.redis.smembers(self.keys.event(event)))
        names |= {w.name.encode() for w in self.app.workflows.values() if event in w.on_events}
        return names

    def emit(self, event: str, data: Any = None, *, key: str | None = None) -> list[RunRef]:
        check_name("event", event, ValueError)
        runs = self._event_runs(event, key, self._listeners(event))
        for name, _ in runs:  # a listener refusing the data refuses the emit: none starts
            _check_task_input(self.definition(name), data)
        refs = []
        for name, run_id in runs:
            refs.append(self.enqueue(name, data, run_id=run_id))
        return refs

    async def aemit(
        self, event: str, data: Any = None, *, key: str | None = None
    ) -> list[AsyncRunRef]:
        check_name("event", event, ValueError)
        names: set[bytes] = set(await self.aredis.smembers(self.keys.event(event)))
        names |= {w.name.encode() for w in self.app.workflows.values() if event in w.on_events}
        runs = self._event_runs(event, key, names)
        for name, _ in runs:
            _check_task_input(await self.adefinition(name), data)
        refs = []
        for name, run_id in runs:
            refs.append(await self.aenqueue(name, data, run_id=run_id))
        return refs

    # -- reading -----------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        raw = self.redis.hgetall(self.keys.run(run_id))
        if not raw:
            raise RunNotFound(run_id)
        return Run.from_hash(run_id, raw)

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """The run's history stream, oldest first: one dict per event, with its time."""
        out = []
        for entry_id, fields in self.redis.xrange(self.keys.hist(run_id)):
            event = {k.decode(): v.decode() for k, v in fields.items()}
            event["at"] = int(entry_id.split(b"-")[0]) / 1000
            out.append(event)
        return out

    def list_runs(self, status: str | None = None, limit: int = 20) -> list[Run]:
        """Most recent runs first, across workflows; with ``status``, only those
        (looks at the 10,000 most recent)."""
        scan = 10_000 if status else limit
        pipe = self.redis.pipeline(transaction=False)
        names = sorted(k.decode() for k in self.redis.hkeys(self.keys.workflows))
        for name in names:
            pipe.zrevrange(self.keys.runs(name), 0, scan - 1, withscores=True)
        newest = heapq.merge(*pipe.execute(), key=lambda m: -m[1])
        ids = [m.decode() for m, _ in itertools.islice(newest, scan)]
        runs: list[Run] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = self.redis.pipeline(transaction=False)
            for run_id in chunk:
                pipe.hgetall(self.keys.run(run_id))
            for run_id, raw in zip(chunk, pipe.execute(), strict=True):
                if raw and (status is None or raw.get(b"status", b"").decode() == status):
                    runs.append(Run.from_hash(run_id, raw))
                    if len(runs) >= limit:
                        return runs
        return runs

    def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker, alive or not, judged by Redis's clock."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.keys.workers, 0, -1, withscores=True)
        (seconds, micros), deadlines = pipe.execute()
        now = int(seconds) + int(micros) / 1e6
        pipe = self.redis.pipeline(transaction=False)
        for wid, _ in deadlines:
            pipe.hgetall(self.keys.worker(wid.decode()))
            pipe.scard(self.keys.pinned(wid.decode()))
        replies = pipe.execute()
        workers = []
        for n, (wid, deadline) in enumerate(deadlines):
            info, pinned = replies[2 * n], replies[2 * n + 1]
            workers.append(WorkerInfo.from_hash(wid.decode(), info, deadline / 1000, pinned, now))
        return workers

    def cancel(
        self, run_id: str, reason: str = "cancelled by user", *, children: bool = True
    ) -> Cancellation:
        """Cancel a run that has not finished and, with ``children``, every unfinished
        descendant: its children, theirs, and so on, through finished runs too (a
        finished run's child may still run).

        Each run is cancelled atomically by one script call, which also names its
        children; the tree is walked a level at a time, up to CANCEL_BATCH calls per
        round trip, each run once. A child spawned after its parent was cancelled is
        refused (enqueue.lua), so none escapes the walk."""
        [(status, ended_here, found)] = self._cancel_runs([(run_id, reason)])
        if not status:
            raise RunNotFound(run_id)
        cancelled = [run_id] if ended_here else []
        seen = {run_id}
        level = [(child, run_id) for child in found] if children else []
        while level:
            batch = []
            for child, parent in level:
                if child not in seen:
                    seen.add(child)
                    batch.append((child, f"parent run {parent} was cancelled"))
            level = []
            for start in range(0, len(batch), CANCEL_BATCH):
                chunk = batch[start : start + CANCEL_BATCH]
                for (child, _), (_, ended_here, grandchildren) in zip(
                    chunk, self._cancel_runs(chunk), strict=True
                ):
                    if ended_here:
                        cancelled.append(child)
                    level += [(g, child) for g in grandchildren]
        return Cancellation(run_id, RunStatus(status), tuple(cancelled))

    def _cancel_runs(self, runs: list[tuple[str, str]]) -> list[tuple[str, bool, list[str]]]:
        """cancel.lua for each (run, reason), in one round trip: for each, its status
        ("" when there is no such run), whether this call cancelled it, its children."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id, reason in runs:
            self.scripts.cancel(
                keys=[self.keys.workflows], args=[self.keys.prefix, run_id, reason], client=pipe
            )
        out = []
        for reply in pipe.execute():
            status, ended_here, *found = (x.decode() for x in reply)
            out.append((status, ended_here == "1", found))
        return out

    # -- dead letters -------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: each with its id, reason and the original entry's fields."""
        out = []
        for entry_id, fields in self.redis.xrevrange(self.keys.dead, count=limit):
            letter = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            letter["id"] = entry_id.decode()
            out.append(letter)
        return out

    def requeue_dead(self, dead_id: str) -> str:
        """Put a dead-lettered message back on the stream it came from; returns its new id."""
        found = self.redis.xrange(self.keys.dead, dead_id, dead_id)
        if not found:
            raise KeyError(f"no dead letter {dead_id}")
        fields = found[0][1]
        message = {k: fields[k] for k in (b"r", b"s", b"a", b"e", b"w") if k in fields}
        if len(message) < 5 or b"stream" not in fields:
            raise ValueError(f"dead letter {dead_id} is not a complete rstick message")
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(fields[b"stream"], message)
        pipe.xdel(self.keys.dead, dead_id)
        new_id: bytes = pipe.execute()[0]
        return new_id.decode()

    def purge_dead(self) -> int:
        """Delete every dead letter; returns how many there were."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xlen(self.keys.dead)
        pipe.delete(self.keys.dead)
        count: int = pipe.execute()[0]
        return count

    # -- results -----------------------------------------------------------

    def outcome(self, run_id: str, redis: Any = None) -> Any:
        """The result of a finished run, or the exception that says why there is none."""
        pipe = (redis or self.redis).pipeline(transaction=False)
        pipe.hgetall(self.keys.run(run_id))
        pipe.hgetall(self.keys.out(run_id))
        return self._outcome(run_id, *pipe.execute())

    async def aoutcome(self, run_id: str, redis: Any = None) -> Any:
        pipe = (redis or self.aredis).pipeline(transaction=False)
        pipe.hgetall(self.keys.run(run_id))
        pipe.hgetall(self.keys.out(run_id))
        return self._outcome(run_id, *(await pipe.execute()))

    def _outcome(
        self, run_id: str, raw_run: dict[bytes, bytes], raw_out: dict[bytes, bytes]
    ) -> Any:
        if not raw_run:
            raise RunNotFound(run_id)
        run = Run.from_hash(run_id, raw_run)
        if run.status == RunStatus.SUCCEEDED:
            return _shape(run, {k.decode(): unpack(v) for k, v in raw_out.items()})
        return self._raise_for(run)

    @staticmethod
    def _raise_for(run: Run) -> Any:
        if run.status == RunStatus.CANCELLED:
            raise RunCancelled(run.run_id)
        step = run.error_step or ""
        error = run.step(step).error if step else None
        raise RunFailed(run.run_id, step, error or StepError("Error", "unknown failure"))


def _check_task_input(wf: WorkflowDef, input: Any) -> None:
    """Refuse here, not on a worker after retries, a task input that cannot bind."""
    if wf.is_task:
        wf.steps[wf.name].task_arguments(None, input)


def _shape(run: Run, outs: dict[str, Any]) -> Any:
    """A task's result is its one output; a workflow's is ``{step: output}``."""
    if run.is_task:
        return outs.get(run.steps[0].name)
    return {s.name: outs.get(s.name) for s in run.steps}


class RunRef:
    """A handle on a run: its id, its state, and its result once it finishes."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        # A step waiting on its child lends its slot meanwhile, so the child can run.
        self.while_waiting: Callable[[], AbstractContextManager[None]] = nullcontext

    def __repr__(self) -> str:
        return f"RunRef({self.run_id!r})"

    def status(self) -> RunStatus:
        raw = self.client.redis.hget(self.client.keys.run(self.run_id), "status")
        if raw is None:
            raise RunNotFound(self.run_id)
        return RunStatus(raw.decode())

    def get(self) -> Run:
        return self.client.get_run(self.run_id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run; return its outputs or raise RunFailed / RunCancelled."""
        timeout = optional_seconds("timeout", timeout, bounded=False)
        with self.while_waiting():
            return self._wait(timeout)

    def _wait(self, timeout: float | None) -> Any:
        """Subscribe, then look at the run each time the subscription wakes us: once
        it is confirmed, when the run's notice comes, after a reconnection; and
        every ``client.poll`` seconds in any case."""
        client = self.client
        deadline = None if timeout is None else time.monotonic() + timeout
        redis = client.redis  # this one all along: once closed, it reopens nothing
        notices = client.notices
        waiter = notices.watch(client.keys.done(self.run_id).encode())
        try:
            looked = False
            while True:
                wait = client.poll
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if looked and wait <= 0:
                        raise ResultTimeout(f"run {self.run_id} did not finish in {timeout}s")
                waiter.event.wait(max(wait, 0.0))
                if notices.closed:
                    raise ClientClosed(self.run_id)
                waiter.event.clear()
                try:
                    raw = waiter.status or redis.hget(client.keys.run(self.run_id), "status")
                    if raw is not None and RunStatus(raw.decode()) in FINISHED:
                        return client.outcome(self.run_id, redis)
                except (RedisError, ClientClosed):
                    if notices.closed:  # closed under this look
                        raise ClientClosed(self.run_id) from None
                    raise
                looked = True
                if raw is None:
                    raise RunNotFound(self.run_id)
        finally:
            notices.forget(waiter)


class AsyncRunRef:
    """The async twin of RunRef, for ``aenqueue`` and ``aspawn_workflow``."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.while_waiting: Callable[[], AbstractContextManager[None]] = nullcontext

    def __repr__(self) -> str:
        return f"AsyncRunRef({self.run_id!r})"

    async def status(self) -> RunStatus:
        raw = await self.client.aredis.hget(self.client.keys.run(self.run_id), "status")
        if raw is None:
            raise RunNotFound(self.run_id)
        return RunStatus(raw.decode())

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run; return its outputs or raise RunFailed / RunCancelled."""
        timeout = optional_seconds("timeout", timeout, bounded=False)
        with self.while_waiting():
            return await self._wait(timeout)

    async def _wait(self, timeout: float | None) -> Any:
        """As ``RunRef._wait``, on this event loop's subscription."""
        client = self.client
        deadline = None if timeout is None else time.monotonic() + timeout
        side = client._loop_side()  # this one all along: once closed, it reopens nothing
        notices = side.notices
        waiter: AsyncWaiter = notices.watch(client.keys.done(self.run_id).encode())
        try:
            looked = False
            while True:
                wait = client.poll
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if looked and wait <= 0:
                        raise ResultTimeout(f"run {self.run_id} did not finish in {timeout}s")
                if not waiter.future.done():
                    await asyncio.wait((waiter.future,), timeout=max(wait, 0.0))
                if notices.closed:
                    raise ClientClosed(self.run_id)
                waiter.rearm()
                try:
                    raw = waiter.status or await side.redis.hget(
                        client.keys.run(self.run_id), "status"
                    )
                    if raw is not None and RunStatus(raw.decode()) in FINISHED:
                        return await client.aoutcome(self.run_id, side.redis)
                except (RedisError, ClientClosed):
                    if notices.closed:  # closed under this look
                        raise ClientClosed(self.run_id) from None
                    raise
                looked = True
                if raw is None:
                    raise RunNotFound(self.run_id)
        finally:
            notices.forget(waiter)
