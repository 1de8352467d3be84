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
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from redis.exceptions import ResponseError

from .app import WorkflowDef
from .codec import pack
from .keys import GROUP
from .plural import plural

if TYPE_CHECKING:
    from .app import Rstick

log = logging.getLogger("rstick.reaper")

Mode = Literal["dead", "restart"]
BATCH = 100
MAX_ROUNDS = 1000  # bounded loops: 100,000 entries per stream per pass


@dataclass
class ReapReport:
    """What one pass did."""

    dead_workers: list[str] = field(default_factory=list)
    runs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    redispatched: int = 0
    deleted: int = 0
    removed_workers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.dead_workers or self.runs or self.redispatched or self.deleted)

    def to_json(self) -> dict[str, Any]:
        return {
            "dead_workers": self.dead_workers,
            "runs": dict(self.runs),
            "redispatched_entries": self.redispatched,
            "deleted_entries": self.deleted,
            "removed_workers": self.removed_workers,
        }

    def summary(self) -> str:
        if not self:
            return "nothing to reap"
        parts = [plural(len(self.dead_workers), "dead worker")]
        parts += [
            f"{plural(len(ids), 'run')} {action}" for action, ids in sorted(self.runs.items())
        ]
        parts.append(f"{plural(self.redispatched, 'entry', 'entries')} dispatched again")
        parts.append(f"{plural(self.deleted, 'stale entry', 'stale entries')} deleted")
        parts.append(f"{plural(len(self.removed_workers), 'worker')} removed")
        return ", ".join(parts)


class Reaper:
    def __init__(self, app: Rstick, worker_id: str = "") -> None:
        self.app = app
        self.keys = app.keys
        self.worker_id = worker_id
        self.ttl_ms = int(app.worker_ttl * 1000)
        self._errors = (
            pack(
                {
                    "type": "SchedulingTimeout",
                    "tb": "",
                    "message": "the run's worker did not come back before its schedule_timeout",
                }
            ),
            pack(
                {
                    "type": "PoisonMessage",
                    "tb": "",
                    "message": f"the step lost its worker {app.max_deliveries} times",
                }
            ),
        )

    @property
    def redis(self) -> Any:
        return self.app.client.aredis

    @property
    def scripts(self) -> Any:
        return self.app.client.ascripts

    async def lead(self) -> bool:
        """Take or renew the leader lock (its TTL outlives two heartbeats)."""
        ttl = int(self.app.heartbeat * 3000)
        return bool(await self.scripts.lead(keys=[self.keys.leader], args=[self.worker_id, ttl]))

    async def dead_workers(self, now: int) -> list[str]:
        ids = await self.redis.zrangebyscore(self.keys.workers, "-inf", now - self.ttl_ms)
        return [i.decode() for i in ids]

    async def reap(self) -> ReapReport:
        """Settle every dead worker, and trim the index of runs past retention."""
        now = int(time.time() * 1000)
        report = ReapReport()
        for worker in await self.dead_workers(now):
            report.dead_workers.append(worker)
            await self.reap_worker(worker, "dead", report)
        await self.redis.zremrangebyscore(
            self.keys.runs, "-inf", now - int(self.app.retention * 1000)
        )
        if report:
            log.info("reaped: %s", report.summary())
        return report

    async def reap_worker(
        self, worker: str, mode: Mode, report: ReapReport | None = None
    ) -> ReapReport:
        """Settle one worker's pinned runs and the entries it held.

        ``dead``: it stopped beating (every script checks again, atomically).
        ``restart``: it is this process, starting again under the same id.
        """
        report = report if report is not None else ReapReport()
        now = int(time.time() * 1000)
        deadline = now - self.ttl_ms
        common = [self.keys.prefix, worker]
        wf = [self.keys.workflows]
        timeout_err, poison_err = self._errors

        for run in await self._members(self.keys.pinned(worker)):
            action = (
                await self.scripts.reap_run(
                    keys=wf,
                    args=[
                        *common,
                        run,
                        mode,
                        now,
                        deadline,
                        self.app.max_deliveries,
                        timeout_err,
                        poison_err,
                    ],
                )
            ).decode()
            if action == "alive":
                return report
            if action != "gone":
                report.runs[action].append(run)
                log.info("run %s of worker %s: %s", run, worker, action)

        queues = await self._queues(worker)
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
                if not await self._entries(
                    worker, stream, "pending", mode, now, deadline, ids, report
                ):
                    return report

        if mode == "dead":
            personal = self.keys.personal(worker)
            start = "-"
            for _ in range(MAX_ROUNDS):
                batch = await self.redis.xrange(personal, min=start, max="+", count=BATCH)
                if not batch:
                    break
                ids = [entry_id for entry_id, _ in batch]
                if not await self._entries(
                    worker, personal, "scan", mode, now, deadline, ids, report
                ):
                    return report
                start = "(" + ids[-1].decode()
            if await self.scripts.forget(keys=wf, args=[*common, deadline, *queues]):
                report.removed_workers.append(worker)
                log.info("worker %s removed: nothing of it is left", worker)
        return report

    async def settle_entries(
        self, worker: str, stream: str, ids: list[bytes], now: int, report: ReapReport
    ) -> None:
        """Dispatch again entries pending on a live ``worker`` that it is not running
        (their reply was lost with the connection): as at a restart."""
        await self._entries(worker, stream, "pending", "restart", now, 0, ids, report)

    async def _entries(
        self,
        worker: str,
        stream: str,
        kind: str,
        mode: Mode,
        now: int,
        deadline: int,
        ids: list[bytes],
        report: ReapReport,
    ) -> bool:
        """Returns False when the worker turned out to be alive."""
        res = await self.scripts.reap_entries(
            keys=[self.keys.workflows],
            args=[
                self.keys.prefix,
                worker,
                stream,
                kind,
                mode,
                now,
                deadline,
                self.app.max_deliveries,
                self._errors[1],
                *ids,
            ],
        )
        if res == b"alive":
            return False
        report.redispatched += int(res[0])
        report.deleted += int(res[1])
        return True

    async def _members(self, key: str) -> list[str]:
        out: list[str] = []
        cursor = 0
        for _ in range(MAX_ROUNDS):
            cursor, batch = await self.redis.sscan(key, cursor, count=BATCH)
            out += [m.decode() for m in batch]
            if cursor == 0:
                break
        return out

    async def _queues(self, worker: str) -> list[str]:
        """The queues the worker read: from its record, else every queue known."""
        raw = await self.redis.hget(self.keys.worker(worker), "queues")
        if raw:
            return list(raw.decode().split())
        names = {wf.queue for wf in self.app.workflows.values()}
        for raw_def in (await self.redis.hvals(self.keys.workflows)) or ():
            names.add(WorkflowDef.from_json(raw_def).queue)
        return sorted(names) or ["default"]
