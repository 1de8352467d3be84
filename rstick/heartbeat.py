"""A worker's heartbeat, from a thread of its own.

The beat is what keeps a worker's runs on it, so it must not depend on the event
loop being free: an ``async def`` step that blocks the loop, or one that swallows
its cancellation, would otherwise make a busy worker look dead and have its runs
moved (``beat.lua`` says how a beat is judged). A pause of the whole process
(SIGSTOP, a frozen VM) stops this thread too, as it should.

What a beat learns goes to the worker through ``on_beat``, called on the worker's
event loop: ``"ok"``, ``"reaped"``, ``"unknown"`` or ``("taken", pid, host)``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .outage import AUTH_ERRORS, describe_outage, is_outage

log = logging.getLogger("rstick.worker")

BeatResult = str | tuple[str, str, str]
FIRST_RETRY = 0.1  # seconds before a failed beat is tried again; it doubles, up to interval
BLOCKED_LOG_EVERY = 10.0  # seconds between two lines saying the event loop is still blocked


class Heartbeat:
    def __init__(
        self,
        *,
        beat: Callable[[str], Any],
        interval: float,
        loop: asyncio.AbstractEventLoop,
        on_beat: Callable[[BeatResult], None],
        on_fatal: Callable[[BaseException], None],
        where: str,
        name: str,
    ) -> None:
        """``beat(grace_since)`` runs beat.lua once (see Worker._beat_call)."""
        self._beat = beat
        self.interval = interval
        self._loop = loop
        self._on_beat = on_beat
        self._on_fatal = on_fatal
        self._where = where
        self._lock = threading.Lock()
        # Outages seen by any part of the worker, and how many the last good beat
        # answered with grace: the next beat grants grace while they differ.
        self._outages = 0
        self._answered = 0
        self._last_ok_redis_ms = 0  # Redis time of the last good beat (or the join)
        self.last_ok = 0.0  # time.monotonic() of the last good beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # When the event loop last ran a callback of ours: to say when a step blocks it.
        self._loop_seen = time.monotonic()
        self._ticked = time.monotonic()  # when this thread last looked
        self._blocked_logged = 0.0

    def start(self, joined_ms: int) -> None:
        """Beat from now on; ``joined_ms``: the Redis time the worker joined at."""
        self._last_ok_redis_ms = joined_ms
        self.last_ok = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop beating; with ``timeout``, wait that long for a beat in flight to end."""
        self._stop.set()
        if timeout is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def outage(self) -> None:
        """Some part of the worker found Redis unavailable: the next good beat grants
        grace (beat.lua), and the worker judges no other until then."""
        with self._lock:
            self._outages += 1

    @property
    def grace_pending(self) -> bool:
        with self._lock:
            return self._outages != self._answered

    def recent(self, now: float) -> bool:
        """Whether a beat succeeded within the last two intervals, with no outage
        unanswered since: the worker may judge others."""
        return now - self.last_ok < 2 * self.interval and not self.grace_pending

    def _run(self) -> None:
        delay = 0.0
        failures = 0
        while not self._stop.wait(delay):
            self._watch_loop()
            with self._lock:
                outages = self._outages
                grace = outages != self._answered
            since = str(self._last_ok_redis_ms) if grace else ""
            try:
                raw = self._beat(since)
            except AUTH_ERRORS as exc:
                self._call_soon(self._on_fatal, exc)
                return
            except Exception as exc:
                if is_outage(exc):
                    self.outage()
                else:
                    log.exception("heartbeat failed")
                failures += 1
                # Retry no slower than the heartbeat: once Redis is back, every worker
                # beats again within one heartbeat.
                delay = min(FIRST_RETRY * 2 ** min(failures, 10), self.interval)
                log.warning(
                    "redis unavailable at %s (%s); heartbeat retrying in %.1fs",
                    self._where,
                    describe_outage(exc),
                    delay,
                )
                continue
            failures = 0
            delay = self.interval
            result = result_of(raw)
            if isinstance(raw, list) and result == "ok":
                with self._lock:
                    self._answered = outages  # an outage seen meanwhile waits its turn
                self._last_ok_redis_ms = int(raw[1])
                self.last_ok = time.monotonic()
            self._call_soon(self._on_beat, result)

    def _call_soon(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: the worker is gone
            self._stop.set()

    def _watch_loop(self) -> None:
        """Log, every BLOCKED_LOG_EVERY seconds, while the event loop runs none of our
        callbacks."""
        now = time.monotonic()
        if now - self._ticked > 2 * self.interval:  # this thread stood still too: the
            self._loop_seen = now  # whole process was paused (SIGSTOP), not the loop
        self._ticked = now
        blocked = now - self._loop_seen
        if blocked > 2 * self.interval and now - self._blocked_logged > BLOCKED_LOG_EVERY:
            self._blocked_logged = now
            log.warning(
                "the event loop has been blocked for %.0fs (an async def step doing "
                "blocking work? run it in a def step instead); heartbeats go on",
                blocked,
            )
        self._call_soon(self._seen, None)

    def _seen(self, _: Any) -> None:
        self._loop_seen = time.monotonic()


def result_of(raw: Any) -> BeatResult:
    """beat.lua's reply as the worker reads it."""
    if isinstance(raw, list):
        if _text(raw[0]) == "ok":
            return "ok"
        return ("taken", _text(raw[1]), _text(raw[2]))
    return _text(raw)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
