"""A worker's place in Redis: its id, held by this process; its record, workflows and
stream groups; what its heartbeat sends (beat.lua) and what the worker makes of the
replies.

``join`` is done at start and again to rejoin (after the reaper declared the worker
dead, or Redis lost its record); the heartbeat thread (``heartbeat.py``) sends
``beat_args`` every ``heartbeat`` seconds, and ``on_beat`` reads its result on the
event loop: ``live`` is set while the worker may claim, ``rejoin`` says why it must
rejoin first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .app import Rstick
from .errors import WorkerIdInUse
from .heartbeat import BeatResult, Heartbeat, result_of
from .keys import GROUP
from .protocol import code_words, standstill_ms, text
from .reap_report import ReapReport

if TYPE_CHECKING:
    from .reaper import Reaper

log = logging.getLogger("rstick.worker")

JOIN_WAIT_CAP = 3  # ttl + heartbeat windows a start waits for a holder that beats no more
CONFIRM_TICK = 0.05  # seconds between looks at the heartbeat, for steps held after a pause


class Membership:
    def __init__(
        self,
        app: Rstick,
        worker_id: str,
        instance: str,
        *,
        queues: list[str],
        streams: list[str],
        concurrency: int,
        running: Callable[[], int],
        taken: Callable[[], None] = lambda: None,
        fatal: Callable[[BaseException], None] = lambda _: None,
        beat_came: Callable[[], None] = lambda: None,
        code: str | None = None,
    ) -> None:
        """``instance``: this process's token for the id; ``running``: how many
        steps the worker runs now (its record shows it); ``code``: the app's code
        words (protocol.code_words), made once by the worker. The heartbeat calls
        ``taken`` when another process took the id, ``fatal`` when Redis refuses the
        login, ``beat_came`` after every beat it made sense of."""
        self.app = app
        self.keys = app.keys
        self.worker_id = worker_id
        self.instance = instance
        self.queues = queues
        self.streams = streams
        self.concurrency = concurrency
        self.code = code if code is not None else code_words(app.workflows.values())
        self._running = running
        self._taken = taken
        self._fatal = fatal
        self._beat_came = beat_came
        self.heartbeat: Heartbeat | None = None
        self._beating = False  # the heartbeat thread runs
        self._beat_client: Any = None
        self.beat_ms = 0  # Redis time of the last good beat (or of the join)
        self.live = asyncio.Event()  # the heartbeat holds: the worker may claim
        self.rejoin: str | None = None  # why the worker must rejoin before it claims
        self.died_at = 0.0  # time.monotonic() a beat last found it declared dead or forgotten

    @property
    def ttl_ms(self) -> int:
        return int(self.app.worker_ttl * 1000)

    async def enter(self, reaper: Reaper) -> ReapReport:
        """Join, start beating, and take back what an earlier process with this id
        left (its parked HARD runs, its pending entries): what it took back."""
        joined_ms = await self.join()
        if self.heartbeat is not None and not self._beating:
            self.heartbeat.start(joined_ms)  # beating while it takes back what it held
            self._beating = True
        report = await reaper.reap_worker(self.worker_id, "restart")
        self.live.set()
        return report

    async def leave(self, reaper: Reaper) -> ReapReport:
        """Leave as the reaper would find us dead: SOFT runs go back to the shared
        queue now, HARD runs stay parked for our return, and the worker's record
        goes once nothing of it is left. Returns what was handed off."""
        self.stop_heartbeat()  # a beat landing now would undo the hand-off
        pipe = self.app.client.aredis.pipeline(transaction=True)
        pipe.zadd(self.keys.workers, {self.worker_id: 0})
        pipe.hset(self.keys.worker(self.worker_id), "deadline", 0)
        await pipe.execute()
        return await reaper.reap_worker(self.worker_id, "dead")

    async def join(self) -> int:
        """Write this worker's record and heartbeat (join.lua), its workflows and its
        stream groups; returns the Redis time it joined at. Another live process with
        the same id is waited for, up to its ttl and a heartbeat (a worker restarted
        right after a crash must get its id back); if it still beats then,
        WorkerIdInUse. (A holder that beats no more is waited for while its deadline
        holds, up to a few ttls: grace after an outage may have pushed it.)"""
        await self.register()
        scripts = self.app.client.ascripts
        window = self.app.worker_ttl + self.app.heartbeat
        give_up, cap = time.monotonic() + window, time.monotonic() + JOIN_WAIT_CAP * window
        first_beat = None
        waited = False
        while True:  # bounded by cap
            reply = await scripts.join(keys=[self.keys.workflows], args=self._join_args())
            if text(reply[0]) == "ok":
                self.beat_ms = int(reply[1])
                break
            _, pid, host, left_ms, beat = reply
            holder = f"pid {text(pid)} on {text(host)}"
            first_beat = beat if first_beat is None else first_beat
            beats = beat != first_beat  # it beat again while we waited: it lives
            late = time.monotonic() + int(left_ms) / 1000
            if (beats and late > give_up) or late > cap:
                raise WorkerIdInUse(self.worker_id, holder)
            if not waited:
                log.warning(
                    "worker id %s is held by %s, which beat %.1fs ago: waiting for it to lapse",
                    self.worker_id,
                    holder,
                    self.app.worker_ttl - int(left_ms) / 1000,
                )
                waited = True
            await asyncio.sleep(min(int(left_ms) / 1000 + 0.05, self.app.heartbeat / 2))
        return self.beat_ms

    async def register(self) -> None:
        """Its workflows (for clients that lack their code, and for events) and its
        stream groups: done before join.lua makes the worker visible, so that whoever
        sees it can enqueue its workflows at once."""
        await self.create_groups()
        pipe = self.app.client.aredis.pipeline(transaction=False)
        for wf in self.app.workflows.values():
            pipe.hset(self.keys.workflows, wf.name, wf.to_json())
            for event in wf.on_events:
                pipe.sadd(self.keys.event(event), wf.name)
        await pipe.execute()

    def _join_args(self) -> list[Any]:
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": " ".join(self.queues),
            "concurrency": self.concurrency,
            "started": int(time.time() * 1000),
            "running": self._running(),
            "heartbeat": self.app.heartbeat,
            "workflows": " ".join(self.app.workflows),
            "code": self.code,  # what it can run, for its peers (lib.lua capable_worker)
        }
        args: list[Any] = [self.keys.prefix, self.worker_id, self.instance, self.ttl_ms]
        for field, value in record.items():
            args += [field, value]
        return args

    async def create_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.app.client.aredis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # it exists: fine; anything else is not
                    raise

    def beat_args(self, grace_since: str) -> list[Any]:
        """beat.lua's ARGV; ``grace_since``: see beat.lua."""
        return [
            self.keys.prefix,
            self.worker_id,
            self.instance,
            self.ttl_ms,
            self._running(),
            grace_since,
            standstill_ms(self.app.heartbeat),
        ]

    async def beat(self, grace: bool = False) -> BeatResult:
        """One heartbeat from the event loop (the thread beats in a running worker);
        ``grace``: as the first beat after an outage."""
        since = str(self.beat_ms) if grace else ""
        reply = await self.app.client.ascripts.beat(
            keys=[self.keys.workflows], args=self.beat_args(since)
        )
        result = result_of(reply)
        if result == "ok":
            self.beat_ms = int(reply[1])
        return result

    def paused_past_ttl(self) -> float | None:
        """When the last good beat was, if that is longer ago than the ttl (the
        process stood still: SIGSTOP, a frozen VM); else None."""
        heartbeat = self.heartbeat
        if heartbeat is not None and time.monotonic() - heartbeat.last_ok > self.app.worker_ttl:
            return heartbeat.last_ok
        return None

    async def alive_since(self, stale_since: float, stopping: Callable[[], bool]) -> bool:
        """Whether a beat after ``stale_since`` found this worker alive (not declared
        dead meanwhile); False once it learns otherwise, stops, or no beat comes
        within a ttl and a heartbeat. (A death is known by its time: the worker may
        have rejoined already, before or between two looks here.)"""
        heartbeat = self.heartbeat
        for _ in range(int((self.app.worker_ttl + self.app.heartbeat) / CONFIRM_TICK)):
            if heartbeat is None or self.rejoin is not None or stopping():
                return False
            if self.died_at >= stale_since:
                return False
            if heartbeat.last_ok > stale_since and self.live.is_set():
                return True
            await asyncio.sleep(CONFIRM_TICK)
        return False

    def make_heartbeat(self, loop: asyncio.AbstractEventLoop, where: str) -> Heartbeat:
        """The heartbeat thread (``heartbeat.py``), not yet started, on a connection
        of its own whose commands give up within a heartbeat: a stuck connection is
        no beat."""
        self._beat_client, scripts = self.app.client.dedicated(self.app.heartbeat)

        def beat(grace_since: str) -> Any:
            return scripts.beat(keys=[self.keys.workflows], args=self.beat_args(grace_since))

        self.heartbeat = Heartbeat(
            beat=beat,
            interval=self.app.heartbeat,
            loop=loop,
            on_beat=self.on_beat,
            on_fatal=self._fatal,
            where=where,
            name=f"rstick-{self.worker_id}-heartbeat",
        )
        return self.heartbeat

    def stop_heartbeat(self) -> None:
        """Stop beating (waiting up to a heartbeat for a beat in flight) and close the
        heartbeat's connection."""
        if self.heartbeat is not None:
            self.heartbeat.stop(timeout=self.app.heartbeat)
        if self._beat_client is not None and self._beat_client is not self.app.client.redis:
            self._beat_client.close()
        self._beat_client = None

    def on_beat(self, result: BeatResult) -> None:
        """What a heartbeat learned, on the event loop."""
        if self._learn(result):
            self._taken()
        self._beat_came()

    def _learn(self, result: BeatResult) -> bool:
        """True: another process took this worker id, and this one must stop without
        handing anything off."""
        if result == "ok":
            self.live.set()
        elif isinstance(result, tuple):
            _, pid, host = result
            log.error(
                "worker id %s was taken over by pid %s on %s (this process was paused or "
                "cut off from Redis for longer than its ttl): stopping without handing off",
                self.worker_id,
                pid,
                host,
            )
            self.live.clear()
            return True
        elif result in ("reaped", "unknown"):
            self.died_at = time.monotonic()  # kept after it rejoins (alive_since)
        if self.rejoin is None and result in ("reaped", "unknown"):
            self.live.clear()
            self.rejoin = result
            self._say_why_it_rejoins(result)
        return False

    def _say_why_it_rejoins(self, reason: str) -> None:
        if reason == "reaped":
            log.warning(
                "worker %s was declared dead: no heartbeat reached Redis for longer than "
                "its ttl (%.0fs), so its in-flight steps were re-run elsewhere or will be; "
                "rejoining",
                self.worker_id,
                self.app.worker_ttl,
            )
        else:
            log.warning(
                "worker %s: its record is gone from Redis (a restart without persistence, "
                "a FLUSHDB or a failover lost its data); registering again",
                self.worker_id,
            )

    async def rejoin_now(self, take_back: Callable[[], Awaitable[str]]) -> None:
        """Rejoin after the reaper declared this worker dead (a pause, a partition
        longer than its ttl) or Redis lost its record: register again, then
        ``take_back`` (the worker's: the HARD runs parked for it, the entries it holds
        but does not run; it returns what it took, for the log). The steps it runs are
        left alone: their results are judged when they come. Redis unavailable
        half-way: the fetch loop calls this again, and it all happens again (each
        part may run twice)."""
        await self.join()
        if self.heartbeat is not None:  # the join set a fresh deadline: a good beat
            self.heartbeat.last_ok = time.monotonic()
        took = await take_back()
        self.rejoin = None
        if took:
            log.info("worker %s rejoined: %s", self.worker_id, took)
        self.live.set()
