"""The worker's reads (take.lua, and the blocking read), on a bare connection.

An idle worker waits in ``XREADGROUP ... BLOCK`` with the claim of what the read
delivers pipelined behind it (``Worker._wait_for_entries``), so the wake-up is on
the path from enqueue to the step's start. redis-py's asyncio pipeline costs
about 0.1 ms of Python there on a 2-core VM, and its command path a third of
the fetch loop's CPU under load; this is an asyncio protocol that packs the
commands and parses the replies with hiredis, nothing more.

It serves plain TCP and unix-socket URLs (AUTH and SELECT as the URL says) when
hiredis is installed; ``BlockingConnection.for_client`` answers None otherwise,
and the worker uses a redis-py pipeline instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio.connection as aconnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis
except ImportError:  # the optional extra: the worker falls back to a redis-py pipeline
    hiredis = None  # type: ignore[assignment]


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        assert hiredis is not None
        self.reader = hiredis.Reader()
        self.replies: list[Any] = []
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None
        # Called with the replies as soon as they are all in, before the waiting
        # coroutine resumes (a turn of the event loop later): see Fetcher.
        self.early: Callable[[list[Any]], None] | None = None
        self.taken: list[Any] | None = None  # the replies `early` was given

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                self.replies.append(reply)
        except Exception as exc:  # a protocol error: this connection is done
            self._fail(RedisConnectionError(f"bad reply from Redis: {exc}"))
            return
        waiter = self.waiter
        if waiter is not None and len(self.replies) >= self.want and not waiter.done():
            if self.early is not None:
                self.taken = _replies(self.replies, self.want)
                self.early(self.taken)
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class BlockingConnection:
    """One connection for one worker's reads; ``call`` is never concurrent (only
    the worker's fetch uses it)."""

    def __init__(self, kwargs: dict[str, Any], unix: bool) -> None:
        self.kwargs = kwargs
        self.unix = unix
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected_before = False
        # Set when a connection replaced one that was lost: a reply may have been lost
        # with it (the worker then recovers its stranded entries). Cleared by the worker.
        self.reconnected = False

    @classmethod
    def for_client(cls, client: Any) -> BlockingConnection | None:
        """A connection like the redis-py asyncio client's, or None when its kind
        (TLS, a credential provider, RESP3, not a real server) is not served here."""
        pool = getattr(client, "connection_pool", None)
        if not hasattr(hiredis, "pack_command") or pool is None:  # hiredis >= 2.2.1 packs
            return None
        kind = getattr(pool, "connection_class", None)
        kwargs = dict(getattr(pool, "connection_kwargs", {}))
        if kwargs.get("credential_provider") or kwargs.get("protocol") not in (None, 2, "2"):
            return None
        if kind is aconnection.Connection:
            return cls(kwargs, unix=False)
        if kind is aconnection.UnixDomainSocketConnection:
            return cls(kwargs, unix=True)
        return None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._protocol is not None and self._protocol.lost is None and self._loop is loop:
            return self._protocol
        self.close()
        timeout = self.kwargs.get("socket_connect_timeout") or 5.0
        try:
            if self.unix:
                connect = loop.create_unix_connection(_Protocol, self.kwargs["path"])
            else:
                connect = loop.create_connection(
                    _Protocol, self.kwargs.get("host", "localhost"), self.kwargs.get("port", 6379)
                )
            transport, protocol = await asyncio.wait_for(connect, timeout)
        except TimeoutError:
            raise RedisTimeoutError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self._transport, self._protocol, self._loop = transport, protocol, loop
        self.reconnected = self.reconnected or self._connected_before
        self._connected_before = True
        hello: list[tuple[Any, ...]] = []
        if self.kwargs.get("password"):
            user = self.kwargs.get("username")
            hello.append(
                ("AUTH", user, self.kwargs["password"])
                if user
                else ("AUTH", self.kwargs["password"])
            )
        if self.kwargs.get("db"):
            hello.append(("SELECT", self.kwargs["db"]))
        if self.kwargs.get("client_name"):
            hello.append(("CLIENT", "SETNAME", self.kwargs["client_name"]))
        if hello:
            for reply in await self._exchange(protocol, hello, timeout):
                if isinstance(reply, Exception):
                    self.close()
                    raise reply
        return protocol

    async def call(
        self,
        commands: list[tuple[Any, ...]],
        timeout: float,
        early: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """Send the commands in one write; their replies, errors as redis-py exceptions.
        ``early`` is called with them as soon as they are in: a turn of the event loop
        sooner than this returns."""
        protocol = await self._connect()
        protocol.early = early
        try:
            return await self._exchange(protocol, commands, timeout)
        finally:
            protocol.early = None

    async def _exchange(
        self, protocol: _Protocol, commands: list[tuple[Any, ...]], timeout: float
    ) -> list[Any]:
        assert hiredis is not None and self._transport is not None
        loop = asyncio.get_running_loop()
        protocol.want = len(commands)
        waiter = protocol.waiter = loop.create_future()
        self._transport.write(b"".join([hiredis.pack_command(c) for c in commands]))
        # A timer rather than asyncio.wait_for, which costs a turn of the event loop
        # between the reply and this coroutine.
        timer = loop.call_later(timeout, _expire, waiter, timeout)
        try:
            await waiter
        except BaseException:  # timed out, lost, or cancelled (the worker stops)
            self.close()  # a reply may still come: this connection cannot be reused
            raise
        finally:
            timer.cancel()
            protocol.waiter = None
        if protocol.taken is not None:
            taken, protocol.taken = protocol.taken, None
            return taken
        return _replies(protocol.replies, len(commands))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = self._protocol = self._loop = None


def _replies(replies: list[Any], n: int) -> list[Any]:
    """The first ``n`` replies, taken out of ``replies``, errors as redis-py's."""
    assert hiredis is not None
    out = [_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies[:n]]
    del replies[:n]
    return out


def _expire(waiter: asyncio.Future[None], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(RedisTimeoutError(f"no reply from Redis in {timeout:.0f}s"))


def _error(reply: Exception) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)
