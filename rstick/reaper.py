"""The reaper: finds dead workers and settles what they held.

It runs in every worker under a leader lock (and once on demand with
``rstick reap``). Each change to one run is one script call, so reapers racing
each other, or a worker waking up from a long pause, cannot corrupt a run:
every script re-checks the worker's heartbeat and the run's state itself.

- SOFT runs get a new epoch and lose their pin; their steps go back to the
  shared queue, in-flight ones as a new attempt ("worker lost").
- HARD runs are parked until ``schedule_timeout``; past it, they fail with
  SchedulingTimeout. Nothing of a HARD run ever runs on another worker.
- Entries a dead worker held in the shared queues are dispatched again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

from redis.exceptions import ResponseError

from .codec import pack
from .definitions import WorkflowDef
from .keys import GROUP
from .orphans import ORPHAN_SWEEP_SECONDS, OrphanSweep
from .protocol import standstill_ms
from .reap_report import STILL_PARKED, ReapReport

if TYPE_CHECKING:
    from .app import Rstick

log = logging.getLogger("rstick.reaper")

Mode = Literal["dead", "restart", "recover"]
BATCH = 100
MAX_ROUNDS = 1000  # bounded loops: 100,000 entries per stream per pass
DEAD_PER_PASS = 100  # dead workers settled per pass; the next pass takes the rest
# How long a forgotten worker's record stays, marked reaped: a process that wakes
# from a pause shorter than this learns it was declared dead (not that Redis lost
# its data) and rejoins.
TOMBSTONE_SECONDS = 7 * 86400


class Reaper:
    def __init__(self, app: Rstick, worker_id: str = "") -> None:
        self.app = app
        self.keys = app.keys
        self.worker_id = worker_id
        self._poison = pack(
            {
                "type": "PoisonMessage",
                "tb": "",
                "message": f"the step lost its worker {app.max_deliveries} times",
            }
        )
        self.orphans = OrphanSweep(app)
        self._dead_offset = 0  # where the next page of dead workers starts (lead.lua)
        self._dead_before: set[str] = set()  # the dead workers of the last pass, for its log
        self._next_sweep = time.monotonic() + ORPHAN_SWEEP_SECONDS
        self._timeout = pack(
            {
                "type": "SchedulingTimeout",
                "tb": "",
                "message": "the run's worker did not come back before its schedule_timeout",
            }
        )

    @property
    def redis(self) -> Any:
        return self.app.client.aredis

    @property
    def scripts(self) -> Any:
        return self.app.client.ascripts

    async def reap(self, *, lead: bool = True) -> ReapReport:
        """Settle every dead worker, fail what waited too long for a worker with its
        code, and trim the runs index past each workflow's retention.

        With ``lead``, only if this worker holds (or takes) the leader lock, whose
        TTL outlives two heartbeats; ``rstick reap`` reaps without it."""
        report = ReapReport()
        ttl = int(self.app.heartbeat * 3000)
        got = await self.scripts.lead(
            keys=[self.keys.leader],
            args=[
                self.keys.prefix,
                self.worker_id if lead else "",
                ttl,
                self._dead_offset,
                DEAD_PER_PASS,
                standstill_ms(self.app.heartbeat),
            ],
        )
        if not got:
            return report
        # A full page: the next pass looks at the next one (see lead.lua); else from
        # the start again.
        self._dead_offset = self._dead_offset + DEAD_PER_PASS if len(got) > DEAD_PER_PASS else 0
        for raw in got[1:]:
            worker = raw.decode()
            report.dead_workers.append(worker)
            await self.reap_worker(worker, "dead", report)
        await self.reap_waiting(report)
        await self.trim_runs()
        if lead and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + ORPHAN_SWEEP_SECONDS
            await self.orphans.sweep(report)
        if report.news(self._dead_before):
            log.info("reaped: %s", report.summary())
        self._dead_before = set(report.dead_workers)
        return report

    async def reap_worker(
        self, worker: str, mode: Mode, report: ReapReport | None = None
    ) -> ReapReport:
        """Settle one worker's pinned runs and the entries it held.

        ``dead``: it stopped beating (every script checks again, atomically).
        ``restart``: it is this process, starting again under the same id: nothing
        of it runs yet, so every entry pending on it is stranded.
        """
        report = report if report is not None else ReapReport()
        if not await self._runs(worker, mode, report):
            return report
        queues = await self._queues(worker, mode)
        streams = [self.keys.personal(worker), *(self.keys.queue(q) for q in queues)]
        for stream in streams:
            for _ in range(MAX_ROUNDS):
                try:
                    pending = await self.redis.xpending_range(
                        stream, GROUP, min="-", max="+", count=BATCH, consumername=worker
                    )
                except ResponseError:  # NOGROUP: the stream or its group is gone
                    break
                if not pending:
                    break
                ids = [p["message_id"] for p in pending]
                if not await self._entries(worker, stream, "pending", mode, ids, report):
                    return report

        if mode == "dead":
            personal = self.keys.personal(worker)
            start = "-"
            for _ in range(MAX_ROUNDS):
                batch = await self.redis.xrange(personal, min=start, max="+", count=BATCH)
                if not batch:
                    break
                ids = [entry_id for entry_id, _ in batch]
                if not await self._entries(worker, personal, "scan", mode, ids, report):
                    return report
                start = "(" + ids[-1].decode()
            removed = await self.scripts.forget(
                keys=[self.keys.workflows],
                args=[self.keys.prefix, worker, TOMBSTONE_SECONDS, *queues],
            )
            if removed:
                report.removed_workers.append(worker)
                log.info("worker %s removed: nothing of it is left", worker)
        return report

    async def resume(self, worker: str) -> ReapReport:
        """A worker rejoining while it runs steps: unpark its HARD runs. Its pending
        entries are its own to sort out (``Worker.recover_stranded``): the ones it
        runs are not lost."""
        report = ReapReport()
        await self._runs(worker, "restart", report)
        return report

    async def _runs(self, worker: str, mode: Mode, report: ReapReport) -> bool:
        """reap_run.lua for each run pinned to the worker; False if it is alive."""
        for run in await self._members(self.keys.pinned(worker)):
            action = (
                await self.scripts.reap_run(
                    keys=[self.keys.workflows],
                    args=[
                        self.keys.prefix,
                        worker,
                        run,
                        mode,
                        self.app.max_deliveries,
                        self._timeout,
                        self._poison,
                        self.app.dead_maxlen,
                    ],
                )
            ).decode()
            if action == "alive":
                return False
            if action != "gone":
                report.runs[action].append(run)
                if action != STILL_PARKED:  # said when it was parked
                    log.info("run %s of worker %s: %s", run, worker, action)
        return True

    async def settle_entries(
        self, worker: str, instance: str, stream: str, ids: list[bytes], report: ReapReport
    ) -> bool:
        """Dispatch again entries pending on a live ``worker`` that it is not running
        (their reply was lost with the connection): at the same attempt, as their steps
        never started. False, with nothing done, when the process ``instance`` no
        longer holds the worker's id (or its heartbeat lapsed)."""
        return await self._entries(worker, stream, "pending", "recover", ids, report, instance)

    async def _entries(
        self,
        worker: str,
        stream: str,
        kind: str,
        mode: Mode,
        ids: list[bytes],
        report: ReapReport,
        instance: str = "",
    ) -> bool:
        """Returns False when the worker turned out to be alive (for "recover": when
        ``instance`` does not hold it)."""
        res = await self.scripts.reap_entries(
            keys=[self.keys.workflows],
            args=[
                self.keys.prefix,
                worker,
                stream,
                kind,
                mode,
                self.app.max_deliveries,
                self._poison,
                self.app.dead_maxlen,
                instance,
                *ids,
            ],
        )
        if res == b"alive":
            return False
        report.redispatched += int(res[0])
        report.deleted += int(res[1])
        return True

    async def reap_waiting(self, report: ReapReport) -> None:
        """Fail the steps that waited past their schedule_timeout for a worker with
        their workflow's code while live workers served their queue (reap_waiting.lua)."""
        for raw in await self.redis.smembers(self.keys.waiting):
            workflow = raw.decode()
            error = pack(
                {
                    "type": "SchedulingTimeout",
                    "tb": "",
                    "message": f"no live worker has the code of workflow {workflow!r} "
                    "(it waited longer than its schedule_timeout)",
                }
            )
            failed = await self.scripts.reap_waiting(
                keys=[self.keys.workflows],
                args=[self.keys.prefix, workflow, error, BATCH],
            )
            for run in failed:
                report.runs["timed out waiting for code"].append(run.decode())

    async def trim_runs(self) -> None:
        """Drop from each workflow's runs index what is past its retention."""
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        definitions = await self.redis.hgetall(self.keys.workflows)
        pipe = self.redis.pipeline(transaction=False)
        for name, raw in definitions.items():
            retention = WorkflowDef.from_json(raw).retention
            if retention is None:
                retention = self.app.retention
            cutoff = now_ms - int(retention * 1000)
            pipe.zremrangebyscore(self.keys.runs(name.decode()), "-inf", cutoff)
        await pipe.execute()

    async def _members(self, key: str) -> list[str]:
        out: list[str] = []
        cursor = 0
        for _ in range(MAX_ROUNDS):
            cursor, batch = await self.redis.sscan(key, cursor, count=BATCH)
            out += [m.decode() for m in batch]
            if cursor == 0:
                break
        return out

    async def _queues(self, worker: str, mode: Mode) -> list[str]:
        """The queues where the worker may hold entries: those of its record; at a
        restart, also every queue known (the process before may have read other
        queues than this one, or served workflows this one lacks)."""
        raw = await self.redis.hget(self.keys.worker(worker), "queues")
        names = set(raw.decode().split()) if raw else set()
        if mode == "restart" or not names:
            names |= {wf.queue for wf in self.app.workflows.values()}
            for raw_def in (await self.redis.hvals(self.keys.workflows)) or ():
                names.add(WorkflowDef.from_json(raw_def).queue)
        return sorted(names) or ["default"]
