"""The worker: take entries, run their steps, complete them in batches.

The loop is three small coroutines that share one asyncio event loop, and a
heartbeat thread beside them:

- ``_fetch_loop``: while slots are free, read and claim a batch in one script
  call (``take.lua``: personal stream first, then the shared queues); when every
  stream is empty, block in XREADGROUP with the claim of what it delivers
  pipelined behind it (``blocking.py``), so a wake-up is one round trip;
- ``_complete_loop``: send finished steps' outcomes in one script call per batch;
- ``_tick_loop``: due delayed entries, entries waiting for this worker's code, and
  the reaper (``reaper.py``);
- ``heartbeat.py``: the heartbeat, in a thread, so that a step blocking the event
  loop cannot make the worker look dead.

A worker claims only while its heartbeat holds (take.lua checks it by Redis's
clock): a worker declared dead during a pause claims nothing until it has
rejoined, so what the reaper settles and what the worker runs never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from .app import Rstick, StepDef, WorkflowDef
from .blocking import BlockingConnection
from .codec import pack, unpack
from .context import Context
from .errors import StepTimeout, WorkerIdInUse
from .heartbeat import BeatResult, Heartbeat
from .keys import GROUP
from .outage import AUTH_ERRORS, describe_outage, is_outage
from .protocol import Claim, text
from .reaper import Reaper, ReapReport
from .scripts import Scripts
from .threads import StepThreads

log = logging.getLogger("rstick.worker")

TICK = 0.1  # seconds between moves of due delayed entries
CANCEL_GRACE = 1.0  # seconds an async step past its timeout has to honour its cancel
STOP_GRACE = 5.0  # seconds the loops have to end once cancelled, at stop
MAX_COMPLETE_BATCH = 500  # outcomes per complete script call
RECOVER_BATCH = 1000  # pending entries looked at per stream by recover_stranded
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 5.0  # seconds: a loop's retries after an outage


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed step: everything needed to run it and to complete it."""

    stream: str
    entry_id: str
    run_id: str
    workflow: WorkflowDef
    step: StepDef
    attempt: int
    epoch: int
    lost: int  # earlier attempts lost with their worker: they use up no retries

    @property
    def key(self) -> str:
        """Unique among running jobs: two streams can hand out one entry id in the same ms."""
        return f"{self.stream} {self.entry_id}"


class Worker:
    """Runs the steps of the app's workflows. ``run()`` blocks until stopped."""

    def __init__(
        self,
        app: Rstick,
        *,
        worker_id: str | None = None,
        concurrency: int = 10,
        queues: list[str] | None = None,
        drain_timeout: float = 30.0,
        block: float = 1.0,
        max_hung: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.app = app
        self.keys = app.keys
        self._id = worker_id or default_worker_id()
        # This process's claim on the id: another process starting with the same id
        # cannot take it while this one beats, and this one stops once it is taken.
        self.instance = uuid.uuid4().hex
        self.concurrency = concurrency
        self.queues = queues or sorted({wf.queue for wf in app.workflows.values()}) or ["default"]
        self.drain_timeout = drain_timeout
        self.block_ms = int(block * 1000)
        # Steps abandoned by their timeout and still running (a thread cannot be
        # killed; a coroutine may ignore its cancel): past this many, the worker stops.
        self.max_hung = concurrency if max_hung is None else max_hung
        self.personal = self.keys.personal(self._id)
        self.streams = [self.personal, *(self.keys.queue(q) for q in self.queues)]
        self._serves = " " + " ".join(app.workflows) + " "
        self.instances = {wf.name: wf.cls() for wf in app.workflows.values() if wf.cls}
        self.threads = StepThreads(f"rstick-{self._id}")
        self.running: dict[str, asyncio.Task[None]] = {}
        self.hung: set[str] = set()
        self.outcomes: list[list[Any]] = []
        self._flushing: list[list[Any]] = []  # the batch the complete script is applying
        self._completing = asyncio.Lock()  # held while a batch is in flight
        # The marks of the last take that left slots free (see take.lua), while they
        # hold: with them the worker may block in XREADGROUP and claim what the read
        # delivers in the same round trip. Only fetch() reads entries.
        self._marks: list[Any] | None = None
        # The blocking read's connection, and the client it was made for.
        self._blocking: tuple[Any, BlockingConnection | None] | None = None
        self.stopping = False
        self.exit_code = 0
        self._hand_off = True
        self.steps_done = 0
        self._lent = 0
        self.live = asyncio.Event()  # the heartbeat holds: the worker may claim
        self._rejoin: str | None = None  # why the worker must rejoin before it claims
        self._wake = asyncio.Event()  # a slot freed, a beat came, or a stop: look again
        self._outcome_ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.heartbeat: Heartbeat | None = None
        self.reaper = Reaper(app, self._id)

    def id(self) -> str:
        return self._id

    @property
    def redis(self) -> Any:
        return self.app.client.aredis

    @property
    def scripts(self) -> Scripts:
        return self.app.client.ascripts

    @property
    def free(self) -> int:
        return self.concurrency + self._lent - len(self.running)

    @property
    def where(self) -> str:
        """The Redis this worker uses, without its password, for log lines."""
        return redis_location(self.redis)

    # -- start and stop ----------------------------------------------------

    async def start(self) -> None:
        """Take this worker's id, register its workflows, then take back what an earlier
        process with the same id left: its parked HARD runs, its pending entries."""
        self._loop = asyncio.get_running_loop()
        await self.join()
        report = await self.reaper.reap_worker(self._id, "restart")
        if report:
            log.info("worker %s took back what it held before: %s", self._id, report.summary())
        self.live.set()
        log.info(
            "worker %s started: queues %s, concurrency %d", self._id, self.queues, self.concurrency
        )

    async def join(self) -> None:
        """Write this worker's record and heartbeat (join.lua), its workflows and its
        stream groups. Another live process with the same id is waited for, up to its
        ttl and a heartbeat (a worker restarted right after a crash must get its id
        back); if it still beats then, WorkerIdInUse."""
        give_up = time.monotonic() + self.app.worker_ttl + self.app.heartbeat
        waited = False
        while True:
            reply = await self.scripts.join(keys=[self.keys.workflows], args=self._join_args())
            if not isinstance(reply, list):
                break
            _, pid, host, left_ms = reply
            holder = f"pid {text(pid)} on {text(host)}"
            if time.monotonic() + int(left_ms) / 1000 > give_up:
                raise WorkerIdInUse(self._id, holder)
            if not waited:
                log.warning(
                    "worker id %s is held by %s, which beat %.1fs ago: waiting for it to lapse",
                    self._id,
                    holder,
                    self.app.worker_ttl - int(left_ms) / 1000,
                )
                waited = True
            await asyncio.sleep(min(int(left_ms) / 1000 + 0.05, self.app.heartbeat / 2))
        await self._create_groups()
        pipe = self.redis.pipeline(transaction=False)
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
            "running": len(self.running),
            "heartbeat": self.app.heartbeat,
            "workflows": " ".join(self.app.workflows),
        }
        args: list[Any] = [self.keys.prefix, self._id, self.instance, self._ttl_ms]
        for field, value in record.items():
            args += [field, value]
        return args

    @property
    def _ttl_ms(self) -> int:
        return int(self.app.worker_ttl * 1000)

    async def _create_groups(self) -> None:
        for stream in self.streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)

    async def main(self) -> None:
        """Start (waiting for Redis if it is down), serve until a stop is
        requested, drain, hand off."""
        backoff = Backoff("start", self.where)
        while not self.stopping:
            try:
                await self.start()
                break
            except AUTH_ERRORS:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    raise
                await backoff.wait(exc)
        else:
            return
        # Its commands give up within a heartbeat: a stuck connection is no beat.
        beat_client, self._beat_scripts = self.app.client.dedicated(self.app.heartbeat)
        self.heartbeat = Heartbeat(
            beat=self._beat_call,
            interval=self.app.heartbeat,
            loop=asyncio.get_running_loop(),
            on_beat=self._on_beat,
            on_fatal=self._on_fatal,
            where=self.where,
            name=f"rstick-{self._id}-heartbeat",
        )
        self.heartbeat.start()
        loops = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._complete_loop(), name="complete"),
            asyncio.create_task(self._tick_loop(), name="tick"),
        ]
        try:
            await self._stop_requested.wait()
            await self._drain(loops)
        finally:
            self.heartbeat.stop()
            if beat_client is not self.app.client.redis:
                beat_client.close()

    def request_stop(self, exit_code: int = 0, *, hand_off: bool = True) -> None:
        """Stop taking new work and drain. ``hand_off=False``: leave without handing
        runs back (another process holds this worker id now)."""
        self._hand_off = self._hand_off and hand_off
        self.exit_code = self.exit_code or exit_code
        if self.stopping:
            return
        log.info(
            "stopping: finishing %s (at most %.0fs)",
            plural(len(self.running), "running step"),
            self.drain_timeout,
        )
        self.stopping = True
        self._stop_requested.set()
        self._wake.set()

    def _on_signal(self) -> None:
        """SIGINT or SIGTERM: drain; a second one exits at once."""
        if self.stopping:
            log.warning("second stop signal: exiting now")
            os._exit(1)
        self.request_stop()

    def run(self) -> int:
        """Run until SIGINT or SIGTERM; returns the exit code after a clean drain
        (0, or 1 when the worker stopped itself: hung steps, its id taken over)."""

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal)
            await self.main()

        # Not asyncio.run: at its end it waits for every task, and a step that ignores
        # its cancellation would keep the process from ever exiting.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(serve())
        finally:
            for task in asyncio.all_tasks(loop):
                task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
            loop.close()
        return self.exit_code

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        """Let running steps finish, stop the loops, deliver the last outcomes, hand off.

        The loops are stopped before the final flush, so that no batch is in flight
        (or put back by a cancelled flush) after it."""
        fetch, complete, tick = loops
        await asyncio.wait([fetch], timeout=self.block_ms / 1000 + 1)
        running = [t for key, t in self.running.items() if key not in self.hung]
        if running:
            _, late = await asyncio.wait(running, timeout=self.drain_timeout)
            if late:
                log.warning(
                    "%s did not finish in %.0fs; they will be re-run",
                    plural(len(late), "step"),
                    self.drain_timeout,
                )
                await _cancel(*late)
        await _cancel(fetch, tick)
        async with self._completing:  # no batch in flight: the complete loop is idle
            await _cancel(complete)
        if not self._hand_off:
            self.threads.shutdown()
            return
        try:
            await self._final_flush()
            await self.hand_off()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "redis unavailable at stop (%s): the reaper will settle what %s held",
                describe_outage(exc),
                self._id,
            )
        finally:
            self.threads.shutdown()

    async def _final_flush(self) -> None:
        """Deliver what is left, retrying an outage for a few seconds; an outcome that
        cannot be delivered leaves its entry pending, to be re-run."""
        backoff = Backoff("final flush", self.where, cap=1.0)
        for _ in range(10):
            try:
                await self.flush()
                return
            except Exception as exc:
                if not is_outage(exc):
                    raise
                await backoff.wait(exc)
        raise ConnectionError(f"{plural(len(self.outcomes), 'outcome')} not delivered")

    async def hand_off(self) -> None:
        """Leave as the reaper would find us dead: SOFT runs go back to the shared
        queue now, HARD runs stay parked for our return, and the worker's record
        goes once nothing of it is left."""
        await self.redis.zadd(self.keys.workers, {self._id: 0})
        report = await self.reaper.reap_worker(self._id, "dead")
        log.info(
            "worker %s stopped after %s (%s)",
            self._id,
            plural(self.steps_done, "step"),
            report.summary() if report else "nothing to hand off",
        )

    # -- the heartbeat -------------------------------------------------------

    def _beat_call(self, grace: bool) -> Any:
        """beat.lua once, on the heartbeat thread's own connection."""
        return self._beat_scripts.beat(keys=[self.keys.workflows], args=self._beat_args(grace))

    def _beat_args(self, grace: bool) -> list[Any]:
        return [
            self.keys.prefix,
            self._id,
            self.instance,
            self._ttl_ms,
            len(self.running),
            "1" if grace else "",
        ]

    async def beat(self, grace: bool = False) -> None:
        """One heartbeat from the event loop (the thread does this in a running worker)."""
        reply = await self.scripts.beat(keys=[self.keys.workflows], args=self._beat_args(grace))
        self._on_beat(reply if isinstance(reply, str) else _beat_result(reply))

    def _on_beat(self, result: BeatResult) -> None:
        """What a heartbeat learned, on the event loop."""
        if result == "ok":
            self.live.set()
        elif isinstance(result, tuple):
            _, pid, host = result
            log.error(
                "worker id %s was taken over by pid %s on %s (this process was paused or "
                "cut off from Redis for longer than its ttl): stopping without handing off",
                self._id,
                pid,
                host,
            )
            self.live.clear()
            self.request_stop(1, hand_off=False)
        elif self._rejoin is None and result in ("reaped", "unknown"):
            self.live.clear()
            self._rejoin = result
            self._say_why_it_rejoins(result)
        self._wake.set()

    def _on_fatal(self, exc: BaseException) -> None:
        log.error("cannot log in to Redis at %s: %s", self.where, exc)
        self.request_stop(1, hand_off=False)

    def _say_why_it_rejoins(self, reason: str) -> None:
        if reason == "reaped":
            log.warning(
                "worker %s was declared dead: no heartbeat reached Redis for longer than "
                "its ttl (%.0fs), so its in-flight steps were re-run elsewhere or will be; "
                "rejoining",
                self._id,
                self.app.worker_ttl,
            )
        else:
            log.warning(
                "worker %s: its record is gone from Redis (a restart without persistence, "
                "a FLUSHDB or a failover lost its data); registering again",
                self._id,
            )

    async def _rejoin_now(self) -> None:
        """Rejoin after the reaper declared this worker dead (a pause, a partition
        longer than its ttl) or Redis lost its record: register again, take back the
        HARD runs parked for it, and recover the entries it holds but does not run.
        The steps it runs are left alone: their results are judged when they come.
        Redis unavailable half-way: the fetch loop calls this again, and it all
        happens again (each part may run twice)."""
        await self.join()
        report = await self.reaper.resume(self._id)
        await self.recover_stranded()
        self._rejoin = None
        if report:
            log.info("worker %s rejoined: %s", self._id, report.summary())
        self.live.set()

    # -- the loops ---------------------------------------------------------

    async def _fetch_loop(self) -> None:
        backoff = Backoff("read", self.where)
        # A reply lost with the connection can leave entries pending on this worker
        # that it never started: look for them after an error or a reconnection, and
        # every worker_ttl (redis-py retries some errors without telling us).
        recover_at = time.monotonic() + self.app.worker_ttl
        while not self.stopping:
            if self._rejoin is None and (not self.live.is_set() or self.free <= 0):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if self._rejoin is not None:
                    await self._rejoin_now()
                    recover_at = time.monotonic() + self.app.worker_ttl
                    continue
                conn = self._blocking[1] if self._blocking else None
                if time.monotonic() >= recover_at or (conn is not None and conn.reconnected):
                    if conn is not None:
                        conn.reconnected = False
                    await self.recover_stranded()
                    recover_at = time.monotonic() + self.app.worker_ttl
                await self.fetch(self.block_ms)
                backoff.reset()
            except Exception as exc:
                if is_outage(exc):
                    recover_at = 0.0
                    self._outage()
                elif isinstance(exc, AUTH_ERRORS):
                    self._on_fatal(exc)
                    return
                elif "NOGROUP" in str(exc):
                    log.warning("stream group missing (Redis lost its data?): creating it again")
                    with contextlib.suppress(Exception):
                        await self._create_groups()
                    continue
                else:  # a bug must not stop a worker that still beats
                    log.exception("fetch failed")
                await backoff.wait(exc)

    async def _complete_loop(self) -> None:
        backoff = Backoff("complete", self.where)
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            try:
                await self.flush()
                backoff.reset()
            except Exception as exc:
                if is_outage(exc):
                    self._outage()
                elif not isinstance(exc, ResponseError):
                    log.exception("complete failed")
                self._outcome_ready.set()
                await backoff.wait(exc)

    async def _tick_loop(self) -> None:
        """Every TICK seconds move due delayed entries and take over entries waiting
        for this worker's code; every ``heartbeat`` seconds reap, if this worker leads."""
        backoff = Backoff("tick", self.where, cap=self.app.heartbeat)
        next_reap = 0.0
        while True:
            try:
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.app.heartbeat
                    if self._trusted():
                        await self.reaper.reap()
                await self.move_due()
                backoff.reset()
                await asyncio.sleep(TICK)
            except Exception as exc:
                if is_outage(exc):
                    self._outage()
                elif not isinstance(exc, ResponseError):
                    log.exception("tick failed")
                await backoff.wait(exc)

    def _outage(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.outage()

    def _trusted(self) -> bool:
        """Whether this worker may judge others: it beat since it last saw Redis
        unavailable, and that beat gave every worker its ttl again (beat.lua's grace)."""
        hb = self.heartbeat
        return hb is not None and hb.beaten.is_set() and not hb.grace.is_set()

    async def run_once(self) -> int:
        """One non-blocking pass, for tests: move due, fetch, run to the end, complete.

        Returns the entries handled (started, forwarded, dropped or dead-lettered).
        """
        await self.move_due()
        handled = await self.fetch(None) if self.free > 0 else 0
        if self.running:
            await asyncio.wait(list(self.running.values()))
        await self.flush()
        return handled

    # -- the phases --------------------------------------------------------

    async def move_due(self) -> int:
        """Due delayed entries to their streams, waiting entries this worker can run to
        its own; returns how many moved."""
        moved, adopted = await self.scripts.due(
            keys=[self.keys.workflows],
            args=[
                self.keys.prefix,
                100,
                self._id,
                self._serves,
                " " + " ".join(self.queues) + " ",
            ],
        )
        if adopted:
            log.info("took over %s waiting for this worker's code", plural(adopted, "step"))
        return int(moved) + int(adopted)

    async def fetch(self, block_ms: int | None) -> int:
        """Take up to ``free`` entries and start their steps; returns entries handled.

        One script call reads and claims while there is work. When every stream is
        empty the worker blocks in XREADGROUP (scripts cannot) with the claim of what
        the read delivers pipelined behind it: Redis runs that claim as soon as the
        read is served, so an idle worker starts a new step one round trip after it
        was enqueued, not two.
        """
        marks, self._marks = self._marks, None  # a failed call leaves no stale marks
        free = self.free
        if block_ms is None or marks is None:
            replies, marks, live = await self._take(free, None, want_marks=block_ms is not None)
            if live and not replies and block_ms is not None:
                replies, marks, live = await self._wait_for_entries(free, block_ms, marks)
        else:
            replies, marks, live = await self._wait_for_entries(free, block_ms, marks)
        if not live:
            # Our heartbeat lapsed: claim nothing until the next beat says we may.
            self.live.clear()
            return 0
        self._marks = marks or None
        for reply in replies:
            try:
                self._start(Claim.from_reply(reply))
            except Exception:  # a bug: the step stays pending here and is recovered
                log.exception("could not start %r", reply[:3])
        if replies:
            # Let the new steps begin before the fetch loop's next round trip.
            await asyncio.sleep(0)
        return len(replies)

    def _take_args(self, free: int, marks: list[Any] | None, want_marks: bool) -> list[Any]:
        args: list[Any] = [self.keys.prefix, self._id, self._serves, free]
        args += ["1" if want_marks else "", self.app.dead_maxlen]
        for i, stream in enumerate(self.streams):
            args += [stream, marks[i] if marks else ""]
        return args

    async def _take(
        self, free: int, marks: list[Any] | None, *, want_marks: bool
    ) -> tuple[list[Any], list[Any], bool]:
        """One take.lua call: (claim replies, marks or [], live). On the worker's own
        connection when it has one (redis-py's command path is a third of the
        fetch loop's CPU), else, and to load the script, redis-py's way."""
        args = self._take_args(free, marks, want_marks)
        conn = self._blocking_connection()
        if conn is not None:
            command = ("EVALSHA", self.scripts.take.sha, 1, self.keys.workflows, *args)
            [reply] = await conn.call([command], 30.0)
            if not isinstance(reply, NoScriptError):
                if isinstance(reply, Exception):
                    raise reply
                return reply[0], reply[1], bool(reply[2])
        reply = await self.scripts.take(keys=[self.keys.workflows], args=args)
        return reply[0], reply[1], bool(reply[2])

    async def _wait_for_entries(
        self, free: int, block_ms: int, marks: list[Any]
    ) -> tuple[list[Any], list[Any], bool]:
        """Block until an entry comes (or ``block_ms`` pass) and claim what the read
        delivered, in one round trip: take.lua rides in the pipeline behind the read,
        and Redis runs it as soon as the read is served.

        COUNT is per stream, so the read delivers at most one entry per stream;
        take.lua claims them (giving back any beyond ``free``) and reads nothing
        else, to keep the way to the step's start short: it returns no marks, so the
        next fetch takes whatever else there is. Returns as ``_take``."""
        take = self.scripts.take
        args = self._take_args(free, marks, True)
        conn = self._blocking_connection()
        if conn is not None:
            read_cmd: tuple[Any, ...] = ("XREADGROUP", "GROUP", GROUP, self._id, "COUNT", 1)
            read_cmd += ("BLOCK", block_ms, "STREAMS", *self.streams, *(">" for _ in self.streams))
            take_cmd = ("EVALSHA", take.sha, 1, self.keys.workflows, *args)
            # No reply past the block means a dead connection, not a slow Redis.
            timeout = block_ms / 1000 + 30
            read, reply = await conn.call([read_cmd, take_cmd], timeout)
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xreadgroup(
                GROUP, self._id, dict.fromkeys(self.streams, ">"), count=1, block=block_ms
            )
            pipe.evalsha(take.sha, 1, self.keys.workflows, *args)
            read, reply = await pipe.execute(raise_on_error=False)
        if self.stopping and conn is not None:
            conn.close()  # the fetch loop ends now
        if isinstance(reply, NoScriptError) and not isinstance(read, Exception):
            # Redis lost its scripts: load take.lua and claim what the read delivered.
            return await self._take(free, marks, want_marks=True)
        for result in (read, reply):
            if isinstance(result, Exception):
                raise result
        return reply[0], reply[1], bool(reply[2])

    def _blocking_connection(self) -> BlockingConnection | None:
        """The connection of this worker's blocking reads (``blocking.py``), made for
        the client in use; None when that client is served by a redis-py pipeline."""
        client = self.redis
        if self._blocking is None or self._blocking[0] is not client:
            self._blocking = (client, BlockingConnection.for_client(client))
        return self._blocking[1]

    def _start(self, claim: Claim) -> None:
        """Start the step a claim hands us; log the entries it did not."""
        if claim.kind != "run":
            where = f"{claim.run_id}/{claim.step}"
            if claim.kind == "dead":
                log.warning("dead-lettered an entry that is no rstick message: %s", claim.detail)
            elif claim.kind == "wait":
                log.info("%s waits for a worker with its code: %s", where, claim.detail)
            elif claim.kind == "fwd":
                log.debug("%s forwarded to worker %s", where, claim.detail)
            else:
                log.debug("%s dropped: %s", where, claim.detail)
            return
        wf = self.app.workflows[claim.workflow]
        step = wf.steps.get(claim.step) or _missing_step(wf.name, claim.step)
        job = Job(
            claim.stream,
            claim.entry_id,
            claim.run_id,
            wf,
            step,
            claim.attempt,
            claim.epoch,
            claim.lost,
        )
        try:
            data = unpack(claim.input)
            parents = {name: unpack(raw) for name, raw in claim.parents.items()}
        except Exception as exc:  # stored bytes that are not msgpack: retrying cannot help
            log.error(
                "%s/%s: corrupt payload (%s): failed and dead-lettered", job.run_id, step.name, exc
            )
            error = {"type": "CorruptPayload", "message": f"stored input is not msgpack: {exc}"}
            self._record(job, ("dead", pack({**error, "tb": ""}), 0))
            return
        ctx = Context(
            job.run_id,
            step.name,
            data,
            job.attempt,
            self,
            reassigned=claim.reassigned,
            parents=parents,
        )
        self.running[job.key] = asyncio.create_task(self._execute(job, ctx))

    async def _execute(self, job: Job, ctx: Context) -> None:
        try:
            outcome = await self._outcome(job, ctx)
        except asyncio.CancelledError:
            raise  # the worker stops: the entry stays pending, to be re-run
        except BaseException as exc:  # our own handling failed: the step still ends
            log.exception(
                "%s/%s: the worker could not handle its outcome", job.run_id, job.step.name
            )
            outcome = ("fail", pack(describe_failure(exc)), 0)
        finally:
            self.running.pop(job.key, None)
            self._wake.set()
        self._record(job, outcome)

    def _record(self, job: Job, outcome: tuple[str, bytes, int]) -> None:
        """Queue an outcome for the complete loop's next batch."""
        kind, payload, delay_ms = outcome
        step = job.step
        self.outcomes.append(
            [
                kind,
                job.stream,
                job.entry_id,
                job.run_id,
                step.name,
                job.attempt,
                job.epoch,
                payload,
                delay_ms,
                len(step.children),
                *step.children,
            ]
        )
        self.steps_done += 1
        self._outcome_ready.set()

    async def _outcome(self, job: Job, ctx: Context) -> tuple[str, bytes, int]:
        """Run the step: ("ok", output, 0), ("retry", error, delay_ms) or ("fail", error, 0)."""
        step = job.step
        try:
            return "ok", pack(await self._call(job, ctx), "output"), 0
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                raise  # the worker cancelled it (stopping): its entry stays pending
            # Anything else the step raised fails the attempt: a CancelledError of its
            # own, SystemExit, KeyboardInterrupt, an exception whose str() raises.
            error = describe_failure(exc)
            # Attempts lost with a worker are no errors of the step's: retries are for these.
            errors = job.attempt - job.lost
            if errors <= step.retries:
                log.info(
                    "%s/%s attempt %d failed (%s: %s): retrying",
                    job.run_id,
                    step.name,
                    job.attempt,
                    error["type"],
                    error["message"],
                )
                return "retry", pack(error), int(step.retry_delay(errors) * 1000)
            log.warning(
                "%s/%s failed: %s: %s", job.run_id, step.name, error["type"], error["message"]
            )
            return "fail", pack(error), 0

    async def _call(self, job: Job, ctx: Context) -> Any:
        step, wf = job.step, job.workflow
        if wf.is_task:
            data = ctx.input
            args: tuple[Any, ...] = (ctx,) if data is None else (ctx, data)
            kwargs: dict[str, Any] = {}
            if isinstance(data, dict):
                args, kwargs = (ctx,), {str(k): v for k, v in data.items()}
        else:
            args, kwargs = (self.instances[wf.name], ctx), {}
        if step.is_async:
            if step.timeout is None:
                return await step.fn(*args, **kwargs)
            work: asyncio.Future[Any] = asyncio.ensure_future(step.fn(*args, **kwargs))
        else:
            work = asyncio.wrap_future(
                self.threads.submit(functools.partial(step.fn, *args, **kwargs))
            )
            if step.timeout is None:
                return await work
        try:
            done, _ = await asyncio.wait([work], timeout=step.timeout)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if done:
            return work.result()
        work.cancel()  # a coroutine stops here, if it honours the cancel; a thread does not
        if step.is_async:
            done, _ = await asyncio.wait([work], timeout=CANCEL_GRACE)
        if not done:
            self._abandon(job, work)
        raise StepTimeout(f"step {step.name!r} timed out after {step.timeout}s")

    def _abandon(self, job: Job, work: asyncio.Future[Any]) -> None:
        """A step past its timeout that goes on running: its thread (or coroutine) is
        left to finish, and the worker keeps its full capacity meanwhile; past
        ``max_hung`` of them it stops, so that its supervisor starts a fresh process."""
        key = job.key
        self.hung.add(key)
        work.add_done_callback(lambda _: self.hung.discard(key))
        log.warning(
            "%s/%s ignored its timeout and goes on running (%s hung, limit %d)",
            job.run_id,
            job.step.name,
            plural(len(self.hung), "step"),
            self.max_hung,
        )
        if len(self.hung) > self.max_hung and not self.stopping:
            log.error(
                "%s hung past their timeout (threads cannot be killed): stopping so that "
                "a supervisor starts a fresh worker",
                plural(len(self.hung), "step"),
            )
            self.request_stop(1)

    async def flush(self) -> None:
        """Send every pending outcome in one script call; log the refused ones."""
        async with self._completing:
            while self.outcomes:
                batch = self.outcomes[:MAX_COMPLETE_BATCH]
                self.outcomes = self.outcomes[MAX_COMPLETE_BATCH:]
                args: list[Any] = [self.keys.prefix, self._id, self.app.dead_maxlen, len(batch)]
                for item in batch:
                    args += item
                self._flushing = batch
                try:
                    replies = await self.scripts.complete(keys=[self.keys.workflows], args=args)
                except BaseException:
                    self.outcomes[:0] = batch  # kept for the next try: nothing is dropped
                    raise
                finally:
                    self._flushing = []
                for item, reply in zip(batch, replies, strict=True):
                    result = text(reply)
                    if result.startswith("refused"):
                        log.warning("completion of %s/%s %s", item[3], item[4], result)
                    elif result == "applied before":
                        log.debug("completion of %s/%s was applied before", item[3], item[4])
                    elif result != "ok":
                        log.info("completion of %s/%s %s", item[3], item[4], result)

    async def recover_stranded(self) -> int:
        """Dispatch again the entries pending on this worker that it is not running:
        delivered in a reply that was lost with the connection. Returns how many.

        Only the fetch loop calls this, so no read is under way meanwhile."""
        known = set(self.running)
        known |= {f"{item[1]} {item[2]}" for item in (*self.outcomes, *self._flushing)}
        report = ReapReport()
        for stream in self.streams:
            try:
                pending = await self.redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=RECOVER_BATCH, consumername=self._id
                )
            except ResponseError:  # NOGROUP: recreated by the fetch loop
                continue
            ids = [p["message_id"] for p in pending]
            stranded = [i for i in ids if f"{stream} {text(i)}" not in known]
            if stranded:
                await self.reaper.settle_entries(self._id, stream, stranded, report)
        if report:
            log.warning(
                "recovered %s stranded by a lost reply", plural(report.redispatched, "entry")
            )
        return report.redispatched

    # -- children ------------------------------------------------------------

    @contextlib.contextmanager
    def lend_slot(self) -> Iterator[None]:
        """While a step waits on a child, its slot serves others: no deadlock."""
        self._adjust_lent(1)
        try:
            yield
        finally:
            self._adjust_lent(-1)

    def _adjust_lent(self, delta: int) -> None:
        def apply() -> None:
            self._lent += delta
            self._wake.set()

        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            apply()
        else:
            loop.call_soon_threadsafe(apply)


def plural(n: int, noun: str) -> str:
    """``1 step``, ``2 steps``, ``3 entries``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def describe_failure(exc: BaseException) -> dict[str, str]:
    """What a failed step leaves behind: type, message, traceback; never raises,
    whatever the exception's ``__str__`` does."""
    kind = type(exc).__qualname__
    try:
        message = str(exc)
    except BaseException as err:
        message = f"<{kind} object: str() raised {type(err).__qualname__}>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except BaseException:
        tb = "".join(traceback.format_tb(exc.__traceback__)) + f"{kind}: {message}\n"
    return {"type": kind, "message": message, "tb": tb}


def redis_location(client: Any) -> str:
    """``redis://127.0.0.1:6390/0`` for a client, built from its connection settings so
    that no password can be in it."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _beat_result(raw: Any) -> BeatResult:
    if isinstance(raw, list):
        return ("taken", text(raw[1]), text(raw[2]))
    return text(raw)


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait, up to STOP_GRACE, until they are done. Cancel again while
    one is not: on Python 3.11 asyncio.wait_for (used by redis-py) can swallow a
    cancellation (cpython gh-86296). A task that still runs then is abandoned."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + STOP_GRACE
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.warning("task %s did not stop in %.0fs: abandoned", task.get_name(), STOP_GRACE)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception():
            log.error("task %s failed: %r", task.get_name(), task.exception())


def _missing_step(workflow: str, step: str) -> StepDef:
    """A step this worker's code lacks (another version enqueued it): it fails clearly."""

    def missing(*_: Any) -> None:
        raise LookupError(f"this worker's workflow {workflow!r} has no step {step!r}")

    return StepDef(step, missing)


class Backoff:
    """Exponential backoff for a loop that lost Redis: one log line per attempt."""

    def __init__(
        self, what: str, where: str, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF
    ) -> None:
        self.what, self.where, self.first, self.cap = what, where, first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, exc: BaseException) -> None:
        if is_outage(exc):
            log.warning(
                "redis unavailable at %s (%s); %s retrying in %.1fs",
                self.where,
                describe_outage(exc),
                self.what,
                self.delay,
            )
        else:
            log.warning("%s failed (%s); retrying in %.1fs", self.what, exc, self.delay)
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
