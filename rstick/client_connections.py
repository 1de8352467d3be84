"""A client's connections, all made when first needed (``Client`` is one).

For sync code: a pool of ``app.pool_size`` connections (some kept by threads for
enqueue: ``connections.ThreadConnections``) and one subscription to done notices,
shared by every thread (``notices.py``). For async code: the same again on each
event loop (``connections.LoopSide``). A command waits up to ``app.pool_timeout``
for a free connection. ``close()`` closes them all; a client used again afterwards
opens what it needs again, and so does a client inherited over a fork, in the child.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import Redis

from .connections import (
    AsyncPool,
    LoopSide,
    SyncPool,
    ThreadConnections,
    plain_pool,
    retry_kwargs,
)
from .notices import Notices, subscription_kwargs
from .scripts import Scripts

if TYPE_CHECKING:
    from .app import Rstick

# Threads keep at most 1/KEPT_SHARE of the sync pool's connections for themselves
# (connections.py): the rest serve every other thread.
KEPT_SHARE = 2


class Connections:
    def __init__(self, app: Rstick) -> None:
        self.app = app
        self._sync: Redis | None = None
        self._sync_given = False  # given by `use`: its owner closes it
        self._sync_scripts: Scripts | None = None
        self._kept: ThreadConnections | None = None
        self._notices: Notices | None = None
        self._async_given: aioredis.Redis | None = None
        self._loops: dict[asyncio.AbstractEventLoop, LoopSide] = {}
        self._last_loop: LoopSide | None = None
        self._lock = threading.Lock()
        # Resend a command whose connection broke (connections.retry_kwargs), for the
        # pools made from now on. A worker turns it off: it fences and sends its own
        # again (completion.py, fetch.py), and a resend under it ran a step twice.
        self.resend = True
        self._lock_pid = os.getpid()

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
                        **(retry_kwargs(asynchronous=False) if self.resend else {}),
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
            **(retry_kwargs(asynchronous=True) if self.resend else {}),
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
