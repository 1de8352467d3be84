"""The client's connections: bounded pools where a command waits its turn, the
connections threads keep for enqueue, and the async side of a client, one per
event loop and closed with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

import redis.asyncio as aioredis
from redis import BlockingConnectionPool
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from . import defaults
from .async_notices import AsyncNotices
from .errors import ClientClosed, PoolTimeout
from .notices import subscription_kwargs
from .scripts import Scripts

log = logging.getLogger("rstick.client")

POOL_SIZE, POOL_TIMEOUT = defaults.POOL_SIZE, defaults.POOL_TIMEOUT
LOOP_CLOSE_TIMEOUT = 5.0  # seconds close() waits for another thread's loop to close its side

# A client's command whose connection broke (killed, timed out by the server, Redis
# restarted) is sent again on a new one, a few times: enqueue is idempotent by run
# id, and reads are reads. Without it a pooled connection the server closed while
# idle failed the next command, though Redis was up. Workers do without it
# (Connections.resend).
RETRIES = 3
RETRY_BACKOFF = dict(cap=0.5, base=0.05)  # seconds: 0.05, 0.1, 0.2


def retry_kwargs(*, asynchronous: bool) -> dict[str, Any]:
    """The ``retry`` of the client's pools (for ``from_url``)."""
    backoff = ExponentialBackoff(**RETRY_BACKOFF)
    retry = AsyncRetry(backoff, RETRIES) if asynchronous else Retry(backoff, RETRIES)
    return {"retry": retry, "retry_on_error": [RedisConnectionError, RedisTimeoutError]}


_PLAIN = (Connection, UnixDomainSocketConnection)  # the connections enqueue writes to itself
_EMPTY = "No connection available."  # redis-py's message when its blocking pool timed out


def _server(kwargs: dict[str, Any]) -> str:
    """Where a pool connects, without credentials: host:port/db or the socket path."""
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def pool_timeout(pool: Any, which: str) -> PoolTimeout:
    return PoolTimeout(
        f"no free connection in rstick's {which} pool ({pool.max_connections} connections "
        f"to {_server(pool.connection_kwargs)}) within {pool.timeout:g}s: raise "
        "Rstick(pool_size=...) or pool_timeout=..."
    )


class SyncPool(BlockingConnectionPool):
    """The sync client's pool: a command waits for a free connection, up to the timeout.
    Once closed it opens nothing again (the client makes a new pool when used again)."""

    closed = False

    def close(self) -> None:
        self.closed = True
        self.disconnect()

    def release(self, connection: Any) -> None:
        super().release(connection)  # type: ignore[no-untyped-call]
        if self.closed:  # a command that was running at close() reconnected it
            connection.disconnect()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.closed:
            raise ClientClosed()
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if str(exc) != _EMPTY:
                raise
            raise pool_timeout(self, "sync") from None


class AsyncPool(aioredis.BlockingConnectionPool):
    """An event loop's pool: a command waits for a free connection, up to the timeout.
    Once closed it opens nothing again."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        if self.closed:  # a command that was running at close reconnected it
            await connection.disconnect()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.closed:
            raise ClientClosed()
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if str(exc) != _EMPTY:
                raise
            raise pool_timeout(self, "async") from None


def plain_pool(client: Any) -> Any:
    """The client's pool when enqueue may write to its connections itself (plain TCP or
    Unix socket, RESP2 or 3: replies to EVALSHA read the same), else None (TLS,
    sentinel, fakeredis, ...)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(pool, "connection_class", None) not in _PLAIN:
        return None
    return pool


class _Kept:
    """A thread's kept connection; its pool gets it back when this goes with the thread."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: Any) -> None:
        self.conn = conn


class ThreadConnections:
    """The connections that threads keep for enqueue, taken from one pool.

    redis-py's command path (and even taking a connection from a pool and giving
    it back) costs microseconds on the path from enqueue to start, so a thread
    keeps one connection for its enqueues; when the thread ends its connection
    goes back to the pool. At most ``limit`` threads keep one at a time, so that
    the rest of the pool serves everything else; other threads borrow one per call.
    """

    def __init__(self, pool: Any, limit: int) -> None:
        self.pool = pool
        self.limit = limit
        self.pid = os.getpid()
        self.kept = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def get(self) -> Any:
        """This thread's connection, or None when ``limit`` threads keep one already."""
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None:
            return kept.conn
        with self._lock:
            if self.kept >= self.limit:
                return None
            self.kept += 1
        try:
            conn = self.pool.get_connection()
        except BaseException:
            with self._lock:
                self.kept -= 1
            raise
        kept = self._local.kept = _Kept(conn)
        weakref.finalize(kept, self._give_back, conn).atexit = False
        return conn

    def _give_back(self, conn: Any) -> None:
        with self._lock:
            self.kept -= 1
        if os.getpid() == self.pid:  # a forked child's copy is not its to give
            self.pool.release(conn)


class LoopSide:
    """The async side of a client on one event loop: a pool, the scripts registered
    on it, and the loop's subscription to done notices.

    An event loop's connections belong to it, so each loop gets its own. It is
    closed by ``aclose()``, by the client's ``close()``, and, when the loop ends
    by ``asyncio.run`` (or anything else that shuts down its async generators),
    by the loop's own shutdown: a generator made for that purpose closes it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: Any,
        *,
        owned: bool,
        forget: Callable[[LoopSide], None],
    ) -> None:
        self.loop = loop
        self.redis = client
        self.owned = owned  # made here, closed here (a client given by `use` is not)
        self.pid = os.getpid()
        self.closed = False
        self.scripts = Scripts.register(client)
        pool = client.connection_pool
        kwargs = subscription_kwargs(pool.connection_kwargs)
        self.notices = AsyncNotices(lambda: pool.connection_class(**kwargs), loop)
        self._forget = forget
        self._until_loop_ends = self._close_at_loop_end()
        # Run it to its yield now: the running loop counts it among its async
        # generators from the first step on, and closes it when it shuts down.
        with contextlib.suppress(StopIteration):
            self._until_loop_ends.asend(None).send(None)

    async def _close_at_loop_end(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close it, on its own loop."""
        if self.closed:
            return
        self.closed = True
        self._forget(self)
        try:
            await self.notices.aclose()
        finally:
            if self.owned:
                await self.redis.aclose(close_connection_pool=True)

    def close(self) -> None:
        """Close it from any thread: on its loop, wherever that runs. From inside that
        loop this can only schedule it (``await aclose()`` there instead)."""
        if self.closed or self.loop.is_closed() or self.pid != os.getpid():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if running is self.loop:
                task = self.loop.create_task(self.aclose())
                task.add_done_callback(_log_failure)
            elif self.loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self.aclose(), self.loop)
                future.result(LOOP_CLOSE_TIMEOUT)
            elif running is None:
                self.loop.run_until_complete(self.aclose())
        except Exception as exc:  # the loop stopped meanwhile, or is stuck: nothing to do
            log.warning("could not close the connections of event loop %r: %s", self.loop, exc)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing an event loop's connections failed: %s", task.exception())
