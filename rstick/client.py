"""The client side: enqueue runs, wait for their results, read runs and workers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import Redis
from redis.exceptions import NoScriptError

from .admin import Admin
from .codec import pack
from .connections import AsyncPool, LoopSide, SyncPool, ThreadConnections, plain_pool
from .definitions import WorkflowDef, check_task_input
from .errors import (
    RunCancelled,
    UnknownWorkflow,
)
from .events import Events
from .fastpath import Call, Fields, bulks, send_packed
from .ids import new_run_id
from .limits import seconds
from .notices import Notices, subscription_kwargs
from .protocol import RunField, enqueue_fields
from .refs import AsyncRunRef, RunRef
from .scripts import Scripts

if TYPE_CHECKING:
    from .app import Rstick


# Threads keep at most 1/KEPT_SHARE of the sync pool's connections for themselves
# (connections.py): the rest serve every other thread.
KEPT_SHARE = 2
POLL = 5.0  # seconds between a waiter's own status checks: a safety net under the notices


class Client(Admin, Events):
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
        self._fields: dict[tuple[str, bool], Fields] = {}
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
    ) -> Call:
        if type(delay) is not float or delay != 0.0:  # the default needs no check
            delay = seconds("delay", delay)
        check_task_input(wf, input)
        data = pack(input, "input", max_bytes=self.app.max_payload_bytes)
        delay_ms = int(delay * 1000) if delay > 0 else 0
        head = (self.keys.prefix, wf.name, wf.queue, pin, *parent)
        tail: tuple[Any, ...] = (RunField.WORKER, pin, RunField.PARENT_RUN, parent[0])
        tail += (RunField.PARENT_STEP, parent[1])
        if pin and parent[0]:  # a sticky child: it goes where its parent goes (reap_run.lua)
            tail += (RunField.STICKY_CHILD, "1")
        tail += (RunField.INPUT,)
        fields = self.run_fields(wf, pinned=bool(pin))
        return Call(run_id, head, delay_ms, fields, tail, data)

    def run_fields(self, wf: WorkflowDef, *, pinned: bool) -> Fields:
        """What enqueue.lua is given for any run of ``wf``, built (and packed) once
        per definition: the roots it dispatches now, then the run's hash.

        Every step waits at attempt 0 but the roots, queued at attempt 1. The roots
        of a run pinned at creation all go to its worker now; an unpinned sticky
        run sends its first root to the shared queue and holds the others until a
        worker pins it; any other run sends every root now."""
        cached = self._fields.get((wf.name, pinned))
        if cached is not None and cached.wf is wf:
            return cached
        retention = wf.retention if wf.retention is not None else self.app.retention
        args = enqueue_fields(wf, pinned=pinned, retention=retention)
        fields = self._fields[(wf.name, pinned)] = Fields(wf, args, bulks(args))
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

    def _send_enqueues(self, wf: WorkflowDef, calls: list[Call]) -> list[Any]:
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
                results = send_packed(conn, calls, script.sha, key)
                if kept is not None and kept.pool.closed:  # closed meanwhile: not reopened
                    conn.disconnect()
            elif (pool := plain_pool(self.redis)) is not None:
                conn = pool.get_connection()
                try:
                    results = send_packed(conn, calls, script.sha, key)
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
                    limit = self.app.pool_size // KEPT_SHARE
                    kept = ThreadConnections(pool, limit=limit)
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
