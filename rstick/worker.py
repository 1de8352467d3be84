"""The worker: take entries, run their steps, complete them in batches.

The loop is three small coroutines that share one asyncio event loop:

- ``_fetch_loop``: while slots are free, read and claim a batch in one script
  call (``take.lua``: personal stream first, then the shared queues); when every
  stream is empty, block in XREADGROUP with the claim of what it delivers
  pipelined behind it (``blocking.py``), so a wake-up is one round trip;
- ``_complete_loop``: send finished steps' outcomes in one script call per batch;
- ``_tick_loop``: heartbeats, due delayed entries, the reaper (``reaper.py``)."""

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .app import Rstick, StepDef, WorkflowDef
from .blocking import BlockingConnection
from .codec import pack, unpack
from .context import Context
from .errors import StepTimeout, TaskInputError
from .keys import GROUP
from .names import check_name
from .reaper import Reaper, ReapReport
from .scripts import Scripts

log = logging.getLogger("rstick.worker")

TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def now_ms() -> int:
    return int(time.time() * 1000)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True)
class Job:
    """A claimed step: everything needed to run it and to complete it."""

    stream: str
    entry_id: str
    run_id: str
    workflow: WorkflowDef
    step: StepDef
    attempt: int
    epoch: int

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
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        for queue in queues or ():
            check_name("queue", queue, ValueError)
        self.app = app
        self.keys = app.keys
        self._id = default_worker_id() if worker_id is None else worker_id
        check_name("worker id", self._id, ValueError)
        self.concurrency = concurrency
        self.queues = queues or sorted({wf.queue for wf in app.workflows.values()}) or ["default"]
        self.drain_timeout = drain_timeout
        self.block_ms = int(block * 1000)
        self.personal = self.keys.personal(self._id)
        self.streams = [self.personal, *(self.keys.queue(q) for q in self.queues)]
        self._serves = " " + " ".join(app.workflows) + " "
        self.instances = {wf.name: wf.cls() for wf in app.workflows.values() if wf.cls}
        # Spare threads: a sync step abandoned by its timeout keeps its thread.
        self._threads = concurrency + 4
        self.pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"rstick-{self._id}")
        self.running: dict[str, asyncio.Task[None]] = {}
        self.outcomes: list[list[Any]] = []
        self._flushing: list[list[Any]] = []  # the batch the complete script is applying
        # The marks of the last take that left slots free (see take.lua), while they
        # hold: with them the worker may block in XREADGROUP and claim what the read
        # delivers in the same round trip. Only fetch() reads entries.
        self._marks: list[Any] | None = None
        # The blocking read's connection, and the client it was made for.
        self._blocking: tuple[Any, BlockingConnection | None] | None = None
        self.stopping = False
        self.steps_done = 0
        self._lent = 0
        self._slot_freed = asyncio.Event()
        self._outcome_ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
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

    # -- start and stop ----------------------------------------------------

    async def start(self) -> None:
        """Register this worker and its workflows, then take back what an earlier
        process with the same id left: its parked HARD runs, its pending entries."""
        self._loop = asyncio.get_running_loop()
        await self._register()
        report = await self.reaper.reap_worker(self._id, "restart")
        if report:
            log.info("worker %s took back what it held before: %s", self._id, report.summary())
        log.info(
            "worker %s started: queues %s, concurrency %d", self._id, self.queues, self.concurrency
        )

    async def _create_groups(self) -> None:
        for stream in self.streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)

    async def _register(self) -> None:
        await self._create_groups()
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(self._id))
        for wf in self.app.workflows.values():
            pipe.hset(self.keys.workflows, wf.name, wf.to_json())
            for event in wf.on_events:
                pipe.sadd(self.keys.event(event), wf.name)
        pipe.hset(
            self.keys.worker(self._id),
            mapping={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": " ".join(self.queues),
                "concurrency": self.concurrency,
                "started": now_ms(),
                "running": 0,
                "ttl": self.app.worker_ttl,
                "workflows": " ".join(self.app.workflows),
            },
        )
        pipe.zadd(self.keys.workers, {self._id: now_ms()})
        await pipe.execute()

    async def main(self) -> None:
        """Start (waiting for Redis if it is down), serve until a stop is
        requested, drain, hand off."""
        backoff = Backoff("start")
        while not self.stopping:
            try:
                await self.start()
                break
            except TRANSIENT as exc:
                await backoff.wait(exc)
        else:
            return
        loops = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._complete_loop(), name="complete"),
            asyncio.create_task(self._tick_loop(), name="tick"),
        ]
        await self._stop_requested.wait()
        await self._drain(loops)

    def request_stop(self) -> None:
        """Stop taking new work; a second call stops at once."""
        if self.stopping:
            log.warning("second stop signal: exiting now")
            os._exit(1)
        log.info(
            "stopping: finishing %d running steps (at most %.0fs)",
            len(self.running),
            self.drain_timeout,
        )
        self.stopping = True
        self._stop_requested.set()
        self._slot_freed.set()

    def run(self) -> None:
        """Run until SIGINT or SIGTERM; returns after a clean drain."""

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
            await self.main()

        asyncio.run(serve())

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        """Let running steps finish, stop the loops, deliver the last outcomes, hand off.

        The loops are stopped before the final flush, so that no batch is in flight
        (or put back by a cancelled flush) after it."""
        fetch, complete, tick = loops
        await asyncio.wait([fetch], timeout=self.block_ms / 1000 + 1)
        if self.running:
            _, late = await asyncio.wait(list(self.running.values()), timeout=self.drain_timeout)
            if late:
                log.warning(
                    "%d steps did not finish in %.0fs; they will be re-run",
                    len(late),
                    self.drain_timeout,
                )
                for task in late:
                    await _cancel(task)
        for task in (fetch, tick, complete):
            await _cancel(task)
        try:
            await self._final_flush()
            await self.hand_off()
        except TRANSIENT as exc:
            log.warning(
                "redis unavailable at stop (%s): the reaper will settle what %s held",
                exc,
                self._id,
            )
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _final_flush(self) -> None:
        """Deliver what is left, retrying a lost connection for a few seconds; an
        outcome that cannot be delivered leaves its entry pending, to be re-run."""
        backoff = Backoff("final flush", cap=1.0)
        for _ in range(10):
            try:
                await self.flush()
                return
            except TRANSIENT as exc:
                await backoff.wait(exc)
        raise RedisConnectionError(f"{len(self.outcomes)} outcomes not delivered")

    async def hand_off(self) -> None:
        """Leave as the reaper would find us dead: SOFT runs go back to the shared
        queue now, HARD runs stay parked for our return, and the worker's record
        goes once nothing of it is left."""
        await self.redis.zadd(self.keys.workers, {self._id: 0})
        report = await self.reaper.reap_worker(self._id, "dead")
        log.info(
            "worker %s stopped after %d steps (%s)",
            self._id,
            self.steps_done,
            report.summary() if report else "nothing to hand off",
        )

    # -- the loops ---------------------------------------------------------

    async def _fetch_loop(self) -> None:
        backoff = Backoff("read")
        # A reply lost with the connection can leave entries pending on this worker
        # that it never started: look for them after an error, and every worker_ttl
        # (redis-py retries some errors without telling us).
        recover_at = time.monotonic() + self.app.worker_ttl
        while not self.stopping:
            if self.free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                if time.monotonic() >= recover_at:
                    await self.recover_stranded()
                    recover_at = time.monotonic() + self.app.worker_ttl
                await self.fetch(self.block_ms)
                backoff.reset()
            except TRANSIENT as exc:
                recover_at = 0.0
                await backoff.wait(exc)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.warning("stream group missing (Redis lost its data?): creating it again")
                    with contextlib.suppress(*TRANSIENT):
                        await self._create_groups()
                else:
                    log.error("fetch failed: %s", exc)
                    await backoff.wait(exc)
            except Exception:  # a bug must not stop a worker that still beats
                log.exception("fetch failed")
                await backoff.wait(RuntimeError("fetch failed"))

    async def _complete_loop(self) -> None:
        backoff = Backoff("complete")
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            try:
                await self.flush()
                backoff.reset()
            except (*TRANSIENT, ResponseError) as exc:
                self._outcome_ready.set()
                await backoff.wait(exc)

    async def _tick_loop(self) -> None:
        """Every 100 ms move due delayed entries; every ``heartbeat`` seconds, beat,
        and reap if this worker holds the leader lock."""
        # Retry no slower than the heartbeat, so that after an outage every worker
        # beats again within one heartbeat of Redis coming back.
        backoff = Backoff("tick", cap=self.app.heartbeat)
        next_beat = 0.0
        # After an outage every heartbeat in Redis is old: reaping before the others
        # had time to beat again would declare live workers dead.
        trust_after = self.app.worker_ttl + self.app.heartbeat
        connected_since = time.monotonic()
        while True:
            try:
                if time.monotonic() >= next_beat:
                    await self.beat()
                    trusted = time.monotonic() - connected_since >= trust_after
                    if trusted and await self.reaper.lead():
                        await self.reaper.reap()
                    next_beat = time.monotonic() + self.app.heartbeat
                await self.move_due()
                backoff.reset()
                await asyncio.sleep(0.1)
            except TRANSIENT as exc:
                connected_since = time.monotonic()
                await backoff.wait(exc)
            except ResponseError as exc:  # e.g. scripts lost with Redis's data
                log.error("tick failed: %s", exc)
                await backoff.wait(exc)

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

    async def beat(self) -> None:
        keys = [self.keys.workers, self.keys.worker(self._id)]
        if not await self.scripts.beat(keys=keys, args=[self._id, now_ms(), len(self.running)]):
            # Declared dead during a pause: what we run now will be refused, and
            # what the reaper left us (parked HARD runs) is ours to take back.
            log.warning(
                "worker %s was declared dead (paused longer than worker_ttl); rejoining", self._id
            )
            await self._register()
            await self.reaper.reap_worker(self._id, "restart")

    async def move_due(self) -> int:
        moved: int = await self.scripts.due(
            keys=[self.keys.workflows], args=[self.keys.prefix, now_ms(), 100]
        )
        return moved

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
            replies, marks = await self._take(free, None, want_marks=block_ms is not None)
            if not replies and block_ms is not None:
                replies, marks = await self._wait_for_entries(free, block_ms, marks)
        else:
            replies, marks = await self._wait_for_entries(free, block_ms, marks)
        self._marks = marks or None
        for reply in replies:
            try:
                self._start(reply)
            except Exception:  # a bug: the step stays pending here and is recovered
                log.exception("could not start %r", reply[:3])
        if replies:
            # Let the new steps begin before the fetch loop's next round trip.
            await asyncio.sleep(0)
        return len(replies)

    def _take_args(
        self, free: int, marks: list[Any] | None, want_marks: bool, now: int | str
    ) -> list[Any]:
        args: list[Any] = [self.keys.prefix, self._id, now, self._serves, free]
        args.append("1" if want_marks else "")
        for i, stream in enumerate(self.streams):
            args += [stream, marks[i] if marks else ""]
        return args

    async def _take(
        self, free: int, marks: list[Any] | None, *, want_marks: bool
    ) -> tuple[list[Any], list[Any]]:
        """One take.lua call: (claim replies, marks or []). On the worker's own
        connection when it has one (redis-py's command path is a third of the
        fetch loop's CPU), else, and to load the script, redis-py's way."""
        args = self._take_args(free, marks, want_marks, now_ms())
        conn = self._blocking_connection()
        if conn is not None:
            command = ("EVALSHA", self.scripts.take.sha, 1, self.keys.workflows, *args)
            [reply] = await conn.call([command], 30.0)
            if not isinstance(reply, NoScriptError):
                if isinstance(reply, Exception):
                    raise reply
                return reply[0], reply[1]
        replies, new_marks = await self.scripts.take(keys=[self.keys.workflows], args=args)
        return replies, new_marks

    async def _wait_for_entries(
        self, free: int, block_ms: int, marks: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        """Block until an entry comes (or ``block_ms`` pass) and claim what the read
        delivered, in one round trip: take.lua rides in the pipeline behind the read,
        and Redis runs it as soon as the read is served.

        COUNT is per stream, so the read delivers at most one entry per stream;
        take.lua claims them (giving back any beyond ``free``) and reads nothing
        else, to keep the way to the step's start short: it returns no marks, so the
        next fetch takes whatever else there is. Returns as ``_take``."""
        take = self.scripts.take
        args = self._take_args(free, marks, True, now_ms())
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
        return reply[0], reply[1]

    def _blocking_connection(self) -> BlockingConnection | None:
        """The connection of this worker's blocking reads (``blocking.py``), made for
        the client in use; None when that client is served by a redis-py pipeline."""
        client = self.redis
        if self._blocking is None or self._blocking[0] is not client:
            self._blocking = (client, BlockingConnection.for_client(client))
        return self._blocking[1]

    def _start(self, reply: list[Any]) -> None:
        """Start the step a claim reply hands us; log the entries it did not."""
        kind, run_id, step_name = (_text(x) for x in reply[:3])
        if kind != "run":
            level = logging.WARNING if kind == "dead" else logging.DEBUG
            log.log(level, "%s %s/%s: %s", kind, run_id, step_name, _text(reply[3]))
            return
        attempt, epoch, wf = int(reply[3]), int(reply[4]), self.app.workflows[_text(reply[5])]
        step = wf.steps.get(step_name) or _missing_step(wf.name, step_name)
        job = Job(_text(reply[6]), _text(reply[7]), run_id, wf, step, attempt, epoch)
        try:
            data = unpack(reply[8])
            parents = {
                _text(reply[i]): unpack(reply[i + 1] or None) for i in range(10, len(reply), 2)
            }
        except Exception as exc:  # stored bytes that are not msgpack: retrying cannot help
            log.error(
                "%s/%s: corrupt payload (%s): failed and dead-lettered", run_id, step_name, exc
            )
            error = {"type": "CorruptPayload", "message": f"stored input is not msgpack: {exc}"}
            self._record(job, ("dead", pack({**error, "tb": ""}), 0))
            return
        ctx = Context(
            run_id, step_name, data, attempt, self, reassigned=reply[9] == b"1", parents=parents
        )
        self.running[job.key] = asyncio.create_task(self._execute(job, ctx))

    async def _execute(self, job: Job, ctx: Context) -> None:
        try:
            outcome = await self._outcome(job, ctx)
        finally:  # a cancelled step leaves its entry pending: it is re-run, never lost
            del self.running[job.key]
            self._slot_freed.set()
        self._record(job, outcome)

    def _record(self, job: Job, outcome: tuple[str, bytes, int]) -> None:
        """Queue an outcome for the complete loop's next batch."""
        kind, payload, due = outcome
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
                due,
                len(step.children),
                *step.children,
            ]
        )
        self.steps_done += 1
        self._outcome_ready.set()

    async def _outcome(self, job: Job, ctx: Context) -> tuple[str, bytes, int]:
        """Run the step: ("ok", output, 0), ("retry", error, due_ms) or ("fail", error, 0)."""
        step = job.step
        try:
            output = await self._call(job, ctx)
            return "ok", pack(output, "output", max_bytes=self.app.max_payload_bytes), 0
        except (Exception, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                raise  # the worker cancelled it (stopping): its entry stays pending
            # Anything else, a CancelledError the step's own code raised included,
            # fails the attempt.
            kind = type(exc).__name__
            error = pack({"type": kind, "message": str(exc), "tb": traceback.format_exc()})
            if job.attempt <= step.retries and not isinstance(exc, TaskInputError):
                log.info(
                    "%s/%s attempt %d failed (%s: %s): retrying",
                    job.run_id,
                    step.name,
                    job.attempt,
                    kind,
                    exc,
                )
                return "retry", error, now_ms() + int(step.retry_delay(job.attempt) * 1000)
            log.warning("%s/%s failed: %s: %s", job.run_id, step.name, kind, exc)
            return "fail", error, 0

    async def _call(self, job: Job, ctx: Context) -> Any:
        step, wf = job.step, job.workflow
        if wf.is_task:  # bound before the call: a TypeError of the task's own is its own
            args: tuple[Any, ...] = (ctx,)
            kwargs: dict[str, Any] = step.task_arguments(ctx, ctx.input)
        else:
            args, kwargs = (self.instances[wf.name], ctx), {}
        if step.is_async:
            call = step.fn(*args, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(self.pool, functools.partial(step.fn, *args, **kwargs))
        if step.timeout is None:
            return await call
        try:
            return await asyncio.wait_for(call, step.timeout)
        except TimeoutError:
            raise StepTimeout(f"step {step.name!r} timed out after {step.timeout}s") from None

    async def flush(self) -> None:
        """Send every pending outcome in one script call; log the refused ones."""
        while self.outcomes:
            batch, self.outcomes = self.outcomes[:500], self.outcomes[500:]
            args: list[Any] = [self.keys.prefix, self._id, now_ms(), len(batch)]
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
                text = reply.decode()
                if text.startswith("refused"):
                    log.warning("completion of %s/%s %s", item[3], item[4], text)
                elif text != "ok":
                    log.info("completion of %s/%s %s", item[3], item[4], text)

    async def recover_stranded(self) -> int:
        """Dispatch again the entries pending on this worker that it is not running:
        delivered in a reply that was lost with the connection. Returns how many.

        Only the fetch loop calls this, so no read is under way meanwhile."""
        known = {job for job in self.running}
        known |= {f"{item[1]} {item[2]}" for item in (*self.outcomes, *self._flushing)}
        report = ReapReport()
        now = now_ms()
        for stream in self.streams:
            try:
                pending = await self.redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=1000, consumername=self._id
                )
            except ResponseError:  # NOGROUP: recreated by the fetch loop
                continue
            ids = [p["message_id"] for p in pending]
            stranded = [i for i in ids if f"{stream} {_text(i)}" not in known]
            if stranded:
                await self.reaper.settle_entries(self._id, stream, stranded, now, report)
        if report:
            log.warning("recovered %d entries stranded by a lost reply", report.redispatched)
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
            # A def step waiting on a child keeps its thread: the slot it lends
            # needs a thread of its own, or a def step admitted into it would wait.
            self.pool._max_workers = self._threads + max(self._lent, 0)
            self._slot_freed.set()

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


def _text(value: bytes) -> str:
    """Decode a name from Redis; bytes that are not UTF-8 (hand-written entries) stay visible."""
    return value.decode(errors="backslashreplace")


async def _cancel(task: asyncio.Task[Any], timeout: float = 5.0) -> None:
    """Cancel a task and wait until it is done. Cancel again while it is not: on
    Python 3.11 asyncio.wait_for (used by redis-py) can swallow a cancellation
    (cpython gh-86296)."""
    for _ in range(int(timeout / 0.1)):
        if task.done():
            break
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.done():
        log.warning("task %s did not stop in %.0fs", task.get_name(), timeout)
    if task.done() and not task.cancelled() and task.exception():
        log.error("task %s failed: %r", task.get_name(), task.exception())


def _missing_step(workflow: str, step: str) -> StepDef:
    """A step this worker's code lacks (another version enqueued it): it fails clearly."""

    def missing(*_: Any) -> None:
        raise LookupError(f"this worker's workflow {workflow!r} has no step {step!r}")

    return StepDef(step, missing)


class Backoff:
    """Exponential backoff for a loop that lost Redis: one log line per attempt."""

    def __init__(self, what: str, first: float = 0.1, cap: float = 5.0) -> None:
        self.what, self.first, self.cap = what, first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, exc: BaseException) -> None:
        log.warning(
            "redis unavailable (%s: %s); %s retrying in %.1fs",
            type(exc).__name__,
            exc,
            self.what,
            self.delay,
        )
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
