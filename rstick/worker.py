"""The worker: take entries, run their steps, complete them in batches.

The loop is three small coroutines that share one asyncio event loop, and a
heartbeat thread beside them:

- ``_fetch_loop``: while slots are free, read and claim a batch (``fetch.py``) and
  start the steps it hands over (``steps.py``);
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
import logging
import os
import socket
import time
import uuid
from typing import Any

from redis.exceptions import ResponseError

from . import defaults
from .app import Rstick
from .backoff import Backoff
from .completion import Completer
from .credentials import hide_password, login_failure
from .drain import cancel, stop_loops
from .errors import LoginFailed
from .fetch import Fetcher
from .heartbeat import Heartbeat
from .membership import Membership
from .names import check_name
from .outage import AUTH_ERRORS, describe_outage, is_outage
from .plural import plural
from .preflight import check_server_once
from .process import serve
from .protocol import Claim, code_words
from .reaper import Reaper
from .scripts import Scripts
from .steps import Job, StepResult, StepRunner, entry_key
from .threads import StepThreads

log = logging.getLogger("rstick.worker")

TICK = 0.1  # seconds between moves of due delayed entries


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Worker:
    """Runs the steps of the app's workflows. ``run()`` blocks until stopped."""

    def __init__(
        self,
        app: Rstick,
        *,
        worker_id: str | None = None,
        concurrency: int = defaults.CONCURRENCY,
        queues: list[str] | None = None,
        drain_timeout: float = defaults.DRAIN_TIMEOUT,
        block: float = defaults.BLOCK,
        max_hung: int | None = None,
        allow_eviction: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        for queue in queues or ():
            check_name("queue", queue, ValueError)
        self.app = app
        app.client.resend = False  # see Connections.resend
        self.keys = app.keys
        self._id = default_worker_id() if worker_id is None else worker_id
        check_name("worker id", self._id, ValueError)
        # This process's claim on the id: another process starting with the same id
        # cannot take it while this one beats, and this one stops once it is taken.
        self.instance = uuid.uuid4().hex
        self.concurrency = concurrency
        self.queues = queues or sorted({wf.queue for wf in app.workflows.values()}) or ["default"]
        self.drain_timeout = drain_timeout
        self.block_ms = int(block * 1000)
        self._wake = asyncio.Event()  # a slot freed, a beat came, or a stop: look again
        self.allow_eviction = allow_eviction  # start on an allkeys-* Redis (preflight.py)
        self.threads = StepThreads(f"rstick-{self._id}")
        serves = code_words(app.workflows.values())
        self.fetcher = Fetcher(
            app.client, self.keys, self._id, self.instance, self.queues, serves, app.dead_maxlen
        )
        self.streams = self.fetcher.streams  # its personal stream first, then the queues
        self.personal = self.streams[0]
        # Steps abandoned by their timeout and still running (a thread cannot be
        # killed; a coroutine may ignore its cancel): past max_hung, the worker stops.
        self.steps = StepRunner(
            app,
            self,
            concurrency=concurrency,
            threads=self.threads,
            max_hung=concurrency if max_hung is None else max_hung,
            record=self._record,
            freed=self._wake.set,
            too_many_hung=lambda: self.request_stop(1),
        )
        self.completer = Completer(app.client, self.keys, self._id, app.dead_maxlen)
        self.fetcher.start_early = self._start_claims
        self.membership = Membership(
            app,
            self._id,
            self.instance,
            queues=self.queues,
            streams=self.streams,
            concurrency=concurrency,
            running=lambda: len(self.running),
            taken=lambda: self.request_stop(1, hand_off=False),
            fatal=self._on_fatal,
            beat_came=self._wake.set,
            code=serves,
        )
        self.stopping = False
        self._confirming: set[asyncio.Future[None]] = set()  # claims held after a pause
        self._held: set[str] = set()  # their entries (steps.entry_key)
        self.exit_code = 0
        self._hand_off = True
        self._fatal: BaseException | None = None  # why the worker stopped itself, raised by main
        self._outcome_ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
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
    def running(self) -> dict[str, asyncio.Task[None]]:
        """The steps running now, by entry."""
        return self.steps.running

    @property
    def hung(self) -> set[str]:
        """Steps past their timeout that go on running."""
        return self.steps.hung

    @property
    def free(self) -> int:
        return self.steps.free

    def lend_slot(self) -> contextlib.AbstractContextManager[None]:
        """While a step waits on a child, its slot serves others (``steps.py``)."""
        return self.steps.lend_slot()

    @property
    def where(self) -> str:
        """The Redis URL, its password hidden, for log lines."""
        return hide_password(str(self.app.redis_url))

    # -- start and stop ----------------------------------------------------

    async def start(self) -> None:
        """Take this worker's id, register its workflows, then take back what an earlier
        process with the same id left: its parked HARD runs, its pending entries."""
        self._loop = self.steps.loop = asyncio.get_running_loop()
        await check_server_once(self, self.redis, allow_eviction=self.allow_eviction)
        report = await self.membership.enter(self.reaper)
        self._started_at = time.monotonic()
        if report:
            log.info("worker %s took back what it held before: %s", self._id, report.summary())
        log.info(
            "worker %s started: queues %s, concurrency %d", self._id, self.queues, self.concurrency
        )

    async def join(self) -> int:
        """Take this worker's id and register it (``membership.py``); returns the Redis
        time it joined at."""
        return await self.membership.join()

    async def main(self) -> None:
        """Start (waiting for Redis if it is down), serve until a stop is
        requested, drain, hand off."""
        backoff = Backoff("start", self.where)
        heartbeat = self.membership.make_heartbeat(asyncio.get_running_loop(), self.where)
        outage = False
        while not self.stopping:
            try:
                await self.start()
                break
            except Exception as exc:
                if not (is_outage(exc) or isinstance(exc, AUTH_ERRORS)):
                    raise
                outage = True
                await backoff.wait(exc)  # a refused login raises LoginFailed
        else:
            return
        if outage:  # every deadline may have gone by meanwhile: its first beat gives grace
            heartbeat.outage()
        loops = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._complete_loop(), name="complete"),
            asyncio.create_task(self._tick_loop(), name="tick"),
        ]
        try:
            stop = asyncio.create_task(self._stop_requested.wait())
            await asyncio.wait([stop, *loops], return_when=asyncio.FIRST_COMPLETED)
            # A loop ends early only by raising (a refused login, see Backoff): stop.
            for task in loops:
                if task.done() and not task.cancelled() and task.exception():
                    self._fatal = self._fatal or task.exception()
                    self.request_stop(1, hand_off=False)
            await cancel(stop)
            await self._drain(loops)
            if self._fatal is not None:
                raise self._fatal
        finally:
            self.membership.stop_heartbeat()

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
        if self._loop is not None:  # others forward it no more work (capable_worker)
            self._draining = self._loop.create_task(self._mark_draining())

    async def _mark_draining(self) -> None:
        with contextlib.suppress(Exception):  # best effort: an outage must not stop the stop
            await self.redis.hset(self.keys.worker(self._id), "draining", "1")

    def run(self) -> int:
        """Run until SIGINT or SIGTERM (a second one exits at once: ``process.py``);
        returns the exit code after a clean drain (0, or 1 when the worker stopped
        itself: hung steps, its id taken over)."""
        return serve(self)

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        """Let running steps finish and stop the loops (``drain.py``), then deliver the
        last outcomes and hand off."""
        await stop_loops(
            loops,
            self.steps,
            self.completer,
            read_grace=self.block_ms / 1000 + 1,
            drain_timeout=self.drain_timeout,
        )
        try:
            if self._hand_off:
                await self.completer.flush_at_stop(self.where)
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

    async def hand_off(self) -> None:
        """Leave as the reaper would find us dead (``Membership.leave``)."""
        report = await self.membership.leave(self.reaper)
        log.info(
            "worker %s stopped after %s (%s)",
            self._id,
            plural(self.steps_done, "step"),
            report.summary() if report else "nothing to hand off",
        )

    # -- the heartbeat -------------------------------------------------------

    @property
    def heartbeat(self) -> Heartbeat | None:
        """The heartbeat thread (``membership.py``), once ``main`` made it."""
        return self.membership.heartbeat

    async def beat(self, grace: bool = False) -> None:
        """One heartbeat from the event loop (the thread does this in a running worker);
        ``grace``: as the first beat after an outage."""
        self.membership.on_beat(await self.membership.beat(grace))

    def _on_fatal(self, exc: BaseException) -> None:
        """Redis refused our login: retrying cannot help, the worker stops."""
        self._fatal = LoginFailed(login_failure(str(self.app.redis_url), exc) or str(exc))
        self.request_stop(1, hand_off=False)

    async def rejoin(self) -> None:
        """Register again and take back what is ours (``Membership.rejoin_now``)."""

        async def take_back() -> str:
            report = await self.reaper.resume(self._id)
            await self.recover_stranded()
            return report.summary() if report else ""

        await self.membership.rejoin_now(take_back)

    @property
    def live(self) -> asyncio.Event:
        """Set while the heartbeat holds: the worker may claim."""
        return self.membership.live

    @property
    def rejoin_reason(self) -> str | None:
        """Why the worker must rejoin before it claims again ("reaped", "unknown")."""
        return self.membership.rejoin

    # -- the loops ---------------------------------------------------------

    async def _fetch_loop(self) -> None:
        backoff = Backoff("read", self.where)
        # A reply lost with the connection can leave entries pending on this worker
        # that it never started: look for them after an error or a reconnection, and
        # every worker_ttl (redis-py retries some errors without telling us).
        recover_at = time.monotonic() + self.app.worker_ttl
        while not self.stopping:
            if self.membership.rejoin is None and (not self.live.is_set() or self.free <= 0):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if self.membership.rejoin is not None:
                    await self.rejoin()
                    recover_at = time.monotonic() + self.app.worker_ttl
                    continue
                if self.fetcher.reconnected() or time.monotonic() >= recover_at:
                    await self.recover_stranded()
                    recover_at = time.monotonic() + self.app.worker_ttl
                await self.fetch(self.block_ms)
                backoff.reset()
            except Exception as exc:
                if is_outage(exc):
                    recover_at = 0.0
                    self._outage()
                elif "NOGROUP" in str(exc):
                    log.warning(
                        "a stream group of this worker is missing (the reaper forgot the "
                        "worker while it was away, or Redis lost its data): creating it again"
                    )
                    with contextlib.suppress(Exception):
                        await self.membership.create_groups()
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
        """Whether this worker may judge others: it beat within two heartbeats, that
        beat answered every outage it saw with grace (beat.lua), and it has been up for
        a ttl and a heartbeat (one that starts right after an outage must give the
        others time to beat again first)."""
        hb, now = self.heartbeat, time.monotonic()
        settled = now - self._started_at >= self.app.worker_ttl + self.app.heartbeat
        return hb is not None and settled and hb.recent(now)

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
        """Due delayed entries to their streams, and entries waiting for code this
        worker has to it (``fetch.py``); returns how many moved."""
        return await self.fetcher.move_due(adopt=not self.stopping)

    async def fetch(self, block_ms: int | None) -> int:
        """Take up to ``free`` entries (``fetch.py``) and start their steps; returns
        entries handled. ``block_ms`` None: never block."""
        claims, live = await self.fetcher.fetch(self.free, block_ms)
        if self.stopping:
            self.fetcher.close()  # the fetch loop ends now
        if not live:
            # Our heartbeat lapsed: claim nothing until the next beat says we may.
            self.live.clear()
            return 0
        self._start_claims(claims)
        if claims:
            # Let the new steps begin before the fetch loop's next round trip.
            await asyncio.sleep(0)
        return len(claims) + self.fetcher.started

    def _start_claims(self, claims: list[Claim]) -> None:
        stale_since = self.membership.paused_past_ttl()
        if claims and stale_since is not None:
            # Claimed, then paused past the ttl (SIGSTOP, a frozen VM) before they
            # started: the reaper may have run them elsewhere meanwhile. A beat says.
            task = asyncio.ensure_future(self._start_once_alive(claims, stale_since))
            held = {entry_key(c.stream, c.entry_id) for c in claims if c.kind == "run"}
            self._held |= held  # not stranded meanwhile (recover_stranded)
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
            task.add_done_callback(lambda _: self._held.difference_update(held))
            return
        self._start_now(claims)

    async def _start_once_alive(self, claims: list[Claim], stale_since: float) -> None:
        """Start ``claims`` if the next beat finds this worker alive; else drop them:
        the reaper dispatched them again, or ``recover_stranded`` will."""
        if await self.membership.alive_since(stale_since, lambda: self.stopping):
            self._start_now(claims)
        else:
            log.warning(
                "%s claimed before this worker stood still past its ttl not started "
                "(taken for dead meanwhile, or stopping): dispatched again",
                plural(len(claims), "step"),
            )

    def _start_now(self, claims: list[Claim]) -> None:
        for claim in claims:
            try:
                self.steps.start(claim)
            except Exception:  # a bug: the step stays pending here and is recovered
                log.exception("could not start %s/%s", claim.run_id, claim.step)

    def _record(self, job: Job, result: StepResult) -> None:
        self.completer.record(job, result)
        self._outcome_ready.set()

    @property
    def steps_done(self) -> int:
        """Steps whose outcome this worker recorded."""
        return self.completer.recorded

    async def flush(self) -> None:
        """Deliver every waiting outcome now (``completion.py``)."""
        await self.completer.flush()

    async def recover_stranded(self) -> int:
        """Dispatch again the entries pending on this worker that it is not running
        (``fetch.py``). Only the fetch loop calls this, so no read is under way."""
        known = set(self.running) | self.completer.entries() | self._held
        return await self.fetcher.recover_stranded(known, self.reaper)
