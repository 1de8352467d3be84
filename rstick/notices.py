"""Done notices: one subscription that wakes everyone waiting on a run.

A run that ends publishes its status on ``{ns}:done:<run>`` (``lib.lua``'s
``finish``). Rather than a connection per waiter, a client keeps one
subscription for all its threads (``Notices``) and one per event loop
(``AsyncNotices``, in ``async_notices.py``), subscribes a run's channel while
someone waits on it, and wakes every waiter of that run when its notice arrives.

A waiter is woken to check the run's status: when its channel's subscription is
confirmed (so a status read after that cannot miss the notice), when the notice
arrives, and after a reconnection (notices may have been missed meanwhile). It
also checks now and then on its own (``Client.poll``), a safety net only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("rstick.client")

BACKOFF_FIRST = 0.1  # seconds before reconnecting a lost subscription; doubles each failure
BACKOFF_MAX = 5.0
LISTEN_TICK = 1.0  # seconds the sync listener reads before it looks whether it was closed


class _Wakeable(Protocol):
    channel: bytes

    def wake(self, status: bytes | None) -> None: ...


W = TypeVar("W", bound=_Wakeable)


class Subscriptions(Generic[W]):
    """Who waits on which channel, and what is subscribed on the current connection.

    No I/O: ``add`` and ``remove`` say when to send SUBSCRIBE or UNSUBSCRIBE, and
    the caller sends them in the order it was told. Redis acknowledges every
    SUBSCRIBE, in order; a channel counts as confirmed once its last SUBSCRIBE
    on this connection is, so that an acknowledgement of an earlier one (before
    an UNSUBSCRIBE) never confirms a later one too soon."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, set[W]] = {}
        self.live: set[bytes] = set()  # subscribed on this connection, not unsubscribed since
        self.unacked: dict[bytes, int] = {}  # SUBSCRIBEs sent on this connection, not yet acked
        self.connected = False

    def add(self, waiter: W) -> bool:
        """Count a waiter in; True when its channel must be subscribed now. A waiter
        on a channel already confirmed is woken at once."""
        channel = waiter.channel
        self.waiting.setdefault(channel, set()).add(waiter)
        if not self.connected:
            return False  # subscribed with the others when the connection is made
        if channel in self.live:
            if channel not in self.unacked:
                waiter.wake(None)
            return False
        self.live.add(channel)
        self.unacked[channel] = self.unacked.get(channel, 0) + 1
        return True

    def remove(self, waiter: W) -> bool:
        """Count a waiter out; True when its channel must be unsubscribed now."""
        channel = waiter.channel
        waiters = self.waiting.get(channel)
        if waiters is None or waiter not in waiters:
            return False
        waiters.discard(waiter)
        if waiters:
            return False
        del self.waiting[channel]
        if channel in self.live:
            self.live.discard(channel)
            return True
        return False

    def subscribed(self, channel: bytes) -> None:
        """Redis acknowledged a SUBSCRIBE of ``channel``."""
        left = self.unacked.get(channel, 0) - 1
        if left > 0:
            self.unacked[channel] = left
            return
        self.unacked.pop(channel, None)
        if channel in self.live:
            for waiter in self.waiting.get(channel, ()):
                waiter.wake(None)

    def message(self, channel: bytes, status: bytes) -> None:
        for waiter in self.waiting.get(channel, ()):
            waiter.wake(status)

    def connect(self) -> list[bytes]:
        """A new connection: every channel waited on is to be subscribed on it."""
        self.connected = True
        self.live = set(self.waiting)
        self.unacked = dict.fromkeys(self.waiting, 1)
        return list(self.waiting)

    def disconnect(self) -> None:
        self.connected = False
        self.live.clear()
        self.unacked.clear()

    def everyone(self) -> list[W]:
        return [w for waiters in self.waiting.values() for w in waiters]


def parse_reply(reply: Any) -> tuple[bytes, bytes, Any] | None:
    """(kind, channel, data) of a subscription's reply, else None."""
    if isinstance(reply, list) and len(reply) == 3 and isinstance(reply[1], bytes):
        return reply[0], reply[1], reply[2]
    return None


def subscription_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A pool's connection settings, for a connection that only listens: RESP2 (its
    replies are plain lists), bytes, and no read timeout (it waits for notices)."""
    out = dict(kwargs)
    out.update(protocol=2, decode_responses=False, socket_timeout=None)
    # redis-py 7+ turns maintenance notices on where it can; they need RESP3 or
    # hiredis, so without hiredis this RESP2 connection would refuse to be made.
    # A connection that only listens has no use for them.
    for key in ("maint_notifications_config", "maint_notifications_pool_handler"):
        if key in out:
            out[key] = None
    if "socket_keepalive" in out or "host" in out:
        out["socket_keepalive"] = True  # a peer gone without a word is noticed, in time
    return out


# -- the sync side ----------------------------------------------------------------


class Waiter:
    """One thread waiting on one run."""

    __slots__ = ("channel", "event", "status")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.event = threading.Event()
        self.status: bytes | None = None  # the run's final status, once its notice came

    def wake(self, status: bytes | None) -> None:
        if status is not None:
            self.status = status
        self.event.set()


class Notices:
    """The subscription of a sync client: a thread listens, waiting threads subscribe.

    Commands go out under one lock, in the order ``Subscriptions`` was told of
    them; the listener thread alone reads, reconnects and resubscribes."""

    def __init__(self, connect: Callable[[], Any], *, tick: float = LISTEN_TICK) -> None:
        self._connect = connect  # a new connection (not yet connected)
        self.tick = tick
        self.pid = os.getpid()
        self.closed = False
        self._lock = threading.Lock()
        self._subs: Subscriptions[Waiter] = Subscriptions()
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wanted = threading.Event()  # someone waits: (re)connect

    def watch(self, channel: bytes) -> Waiter:
        """A waiter on ``channel``, subscribed (or to be, once connected)."""
        waiter = Waiter(channel)
        with self._lock:
            if self.closed:
                waiter.wake(None)
                return waiter
            if self._subs.add(waiter):
                self._send(b"SUBSCRIBE", channel)
            self._wanted.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="rstick-notices", daemon=True
                )
                self._thread.start()
        return waiter

    def forget(self, waiter: Waiter) -> None:
        with self._lock:
            if self._subs.remove(waiter):
                self._send(b"UNSUBSCRIBE", waiter.channel)

    def channels(self) -> list[bytes]:
        """The channels waited on now."""
        with self._lock:
            return list(self._subs.waiting)

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect, stop the listener and wake every waiter (they see ``closed``)."""
        with self._lock:
            self.closed = True
            self._stop.set()
            self._wanted.set()
            conn, self._conn = self._conn, None
            self._subs.disconnect()
            waiters = self._subs.everyone()
            thread = self._thread
        for waiter in waiters:
            waiter.wake(None)
        if conn is not None:
            conn.disconnect()  # wakes the listener's read
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _send(self, *args: bytes) -> None:
        """Send a command, under the lock. A failure is the listener's to repair: it
        sees the connection fail too, reconnects and subscribes everything again."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.send_packed_command(conn.pack_command(*args), check_health=False)
        except Exception as exc:
            log.debug("sending %s on the notice subscription failed: %s", args[0], exc)
            self._conn = None
            self._subs.disconnect()

    def _listen(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            with self._lock:
                if not self._subs.waiting:  # nobody waits: connect again when someone does
                    self._wanted.clear()
            self._wanted.wait()
            if self._stop.is_set():
                return
            conn = self._connect()
            try:
                conn.connect()
            except Exception as exc:
                log.warning("result notices: cannot connect (%s); again in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            with self._lock:
                if self._stop.is_set():
                    conn.disconnect()
                    return
                self._conn = conn
                channels = self._subs.connect()
                if channels:
                    self._send(b"SUBSCRIBE", *channels)
            delay = BACKOFF_FIRST
            self._read(conn)
            with self._lock:
                if self._conn is conn:
                    self._conn = None
                    self._subs.disconnect()
            conn.disconnect()

    def _read(self, conn: Any) -> None:
        """Dispatch what ``conn`` receives until it fails, is replaced or closed."""
        while not self._stop.is_set():
            try:
                if self._conn is not conn:  # a send failed: reconnect
                    return
                if not conn.can_read(timeout=self.tick):
                    continue
                reply = conn.read_response(disconnect_on_error=False)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("result notices: connection lost (%s); reconnecting", exc)
                return
            parts = parse_reply(reply)
            if parts is None:
                continue
            kind, channel, data = parts
            with self._lock:
                if self._conn is not conn:
                    return
                if kind == b"message":
                    self._subs.message(channel, data)
                elif kind == b"subscribe":
                    self._subs.subscribed(channel)
