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


class Heartbeat:
    def __init__(
        self,
        *,
        beat: Callable[[bool], Any],
        interval: float,
        loop: asyncio.AbstractEventLoop,
        on_beat: Callable[[BeatResult], None],
        on_fatal: Callable[[BaseException], None],
        where: str,
        name: str,
    ) -> None:
        """``beat(grace)`` runs beat.lua once (see Worker._beat_call)."""
        self._beat = beat
        self.interval = interval
        self._loop = loop
        self._on_beat = on_beat
        self._on_fatal = on_fatal
        self._where = where
        self.grace = threading.Event()  # Redis was unavailable: the next beat grants grace
        self.beaten = threading.Event()  # a beat succeeded since the last outage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # When the event loop last ran a callback of ours: to say when a step blocks it.
        self._loop_seen = time.monotonic()
        self._blocked_logged = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def outage(self) -> None:
        """Another part of the worker found Redis unavailable: grace on the next beat,
        and no reaping until then."""
        self.grace.set()
        self.beaten.clear()

    def _run(self) -> None:
        delay = 0.0
        failures = 0
        while not self._stop.wait(delay):
            self._watch_loop()
            try:
                grace = self.grace.is_set()
                raw = self._beat(grace)
            except AUTH_ERRORS as exc:
                self._call_soon(self._on_fatal, exc)
                return
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("heartbeat failed")
                self.outage()
                failures += 1
                # Retry no slower than the heartbeat: once Redis is back, every worker
                # beats again within one heartbeat.
                delay = min(0.1 * 2 ** min(failures, 10), self.interval)
                log.warning(
                    "redis unavailable at %s (%s); heartbeat retrying in %.1fs",
                    self._where,
                    describe_outage(exc),
                    delay,
                )
                continue
            failures = 0
            delay = self.interval
            if grace:
                self.grace.clear()
            result = _result(raw)
            if result == "ok":
                self.beaten.set()
            self._call_soon(self._on_beat, result)

    def _call_soon(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: the worker is gone
            self._stop.set()

    def _watch_loop(self) -> None:
        """Log once per heartbeat while the event loop runs none of our callbacks."""
        now = time.monotonic()
        blocked = now - self._loop_seen
        if blocked > 2 * self.interval and now - self._blocked_logged > self.interval:
            self._blocked_logged = now
            log.warning(
                "the event loop has been blocked for %.0fs (an async def step doing "
                "blocking work? run it in a def step instead); heartbeats go on",
                blocked,
            )
        self._call_soon(self._seen, None)

    def _seen(self, _: Any) -> None:
        self._loop_seen = time.monotonic()


def _result(raw: Any) -> BeatResult:
    if isinstance(raw, list):
        return ("taken", _text(raw[1]), _text(raw[2]))
    return _text(raw)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
