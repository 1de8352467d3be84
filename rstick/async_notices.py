"""Done notices for one event loop: ``AsyncNotices`` keeps one subscription for all
the loop's tasks that wait on runs (``notices.py`` says how notices work; this is
its asyncio side, one per event loop, made by ``connections.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .notices import BACKOFF_FIRST, BACKOFF_MAX, Subscriptions, parse_reply

log = logging.getLogger("rstick.client")


class AsyncWaiter:
    """One task waiting on one run: ``future`` is done when it should look again."""

    __slots__ = ("channel", "future", "status")

    def __init__(self, channel: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.future: asyncio.Future[None] = loop.create_future()
        self.status: bytes | None = None

    def wake(self, status: bytes | None) -> None:
        if status is not None:
            self.status = status
        if not self.future.done():
            self.future.set_result(None)

    def rearm(self) -> None:
        """Before a look at the run: a wake from now on is not lost."""
        if self.future.done():
            self.future = self.future.get_loop().create_future()


class AsyncNotices:
    """The subscription of one event loop: a task reads; waiters' SUBSCRIBE and
    UNSUBSCRIBE commands are gathered and sent once per turn of the loop."""

    def __init__(self, connect: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self._connect = connect
        self._loop = loop
        self.closed = False
        self._subs: Subscriptions[AsyncWaiter] = Subscriptions()
        self._conn: Any = None
        self._outgoing: list[tuple[bytes, bytes]] = []
        self._reader: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._wanted = asyncio.Event()  # someone waits: (re)connect

    def watch(self, channel: bytes) -> AsyncWaiter:
        waiter = AsyncWaiter(channel, self._loop)
        if self.closed:
            waiter.wake(None)
            return waiter
        if self._subs.add(waiter):
            self._queue(b"SUBSCRIBE", channel)
        self._wanted.set()
        if self._reader is None:
            self._reader = self._loop.create_task(self._run(), name="rstick-notices")
        return waiter

    def forget(self, waiter: AsyncWaiter) -> None:
        if self._subs.remove(waiter):
            self._queue(b"UNSUBSCRIBE", waiter.channel)

    def channels(self) -> list[bytes]:
        return list(self._subs.waiting)

    async def aclose(self) -> None:
        self.closed = True
        conn, self._conn = self._conn, None
        self._subs.disconnect()
        self._outgoing.clear()
        for waiter in self._subs.everyone():
            waiter.wake(None)
        tasks = [t for t in (self._reader, *self._flushes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if conn is not None:
            await conn.disconnect()

    def _queue(self, command: bytes, channel: bytes) -> None:
        if not self._outgoing:
            task = self._loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        self._outgoing.append((command, channel))

    async def _flush(self) -> None:
        """Send what was queued since the last flush, in order, one command per run of
        the same kind. Nothing is sent without a connection: the next one subscribes
        every channel waited on."""
        outgoing, self._outgoing = self._outgoing, []
        conn = self._conn
        if conn is None or not outgoing:
            return
        packed = [conn.pack_command(command, *channels) for command, channels in _runs(outgoing)]
        try:
            await conn.send_packed_command(b"".join(b"".join(p) for p in packed), False)
        except Exception as exc:
            log.debug("sending on the notice subscription failed: %s", exc)
            self._lost(conn)
            await conn.disconnect()  # the reader's read fails too, and it reconnects

    def _lost(self, conn: Any) -> None:
        if self._conn is conn:
            self._conn = None
            self._subs.disconnect()
            self._outgoing.clear()

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self.closed:
            if not self._subs.waiting:  # nobody waits: connect again when someone does
                self._wanted.clear()
                await self._wanted.wait()
            conn = self._connect()
            try:
                await conn.connect()
            except Exception as exc:
                log.warning("result notices: cannot connect (%s); again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except BaseException:  # cancelled (closed) while connecting: leave nothing open
                await conn.disconnect()
                raise
            self._conn = conn
            self._outgoing.clear()
            channels = self._subs.connect()
            try:
                if channels:
                    await conn.send_packed_command(
                        conn.pack_command(b"SUBSCRIBE", *channels), False
                    )
                delay = BACKOFF_FIRST
                while self._conn is conn:
                    parts = parse_reply(await conn.read_response(disconnect_on_error=False))
                    if parts is None or self._conn is not conn:
                        continue
                    kind, channel, data = parts
                    if kind == b"message":
                        self._subs.message(channel, data)
                    elif kind == b"subscribe":
                        self._subs.subscribed(channel)
            except Exception as exc:
                if not self.closed:
                    log.warning("result notices: connection lost (%s); reconnecting", exc)
            finally:
                self._lost(conn)
                await conn.disconnect()


def _runs(commands: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, list[bytes]]]:
    """Consecutive commands of one kind as one command with all their channels."""
    out: list[tuple[bytes, list[bytes]]] = []
    for command, channel in commands:
        if out and out[-1][0] == command:
            out[-1][1].append(channel)
        else:
            out.append((command, [channel]))
    return out
