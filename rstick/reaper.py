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

from .codec import pack
from .definitions import WorkflowDef
from .keys import GROUP
from .plural import plural

if TYPE_CHECKING:
    from .app import Rstick

log = logging.getLogger("rstick.reaper")

Mode = Literal["dead", "restart", "recover"]
BATCH = 100
MAX_ROUNDS = 1000  # bounded loops: 100,000 entries per stream per pass
DEAD_PER_PASS = 100  # dead workers settled per pass; the next pass takes the rest
# Orphans: runs that nothing can move on (see orphan.lua). A sweep reads every
# stream, so it is rare and bounded; a run is failed only when two sweeps this far
# apart both found it so, with no history between them.
ORPHAN_SWEEP_SECONDS = 300.0
ORPHAN_SCAN_LIMIT = 200_000  # entries read per sweep; past it the sweep is skipped
# How long a forgotten worker's record stays, marked reaped: a process that wakes
# from a pause shorter than this learns it was declared dead (not that Redis lost
# its data) and rejoins.
TOMBSTONE_SECONDS = 7 * 86400


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
        self._poison = pack(
            {
                "type": "PoisonMessage",
                "tb": "",
                "message": f"the step lost its worker {app.max_deliveries} times",
            }
        )
        self._orphan = pack(
            {
                "type": "Orphaned",
                "tb": "",
                "message": "no entry of the run was left in any stream and nothing else "
                "could move it on (its entries were deleted by hand, or lost with Redis's data)",
            }
        )
        self._suspects: dict[str, bytes] = {}  # run id -> its last history id, last sweep
        self._dead_offset = 0  # where the next page of dead workers starts (lead.lua)
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
            await self.sweep_orphans(report)
        if report:
            log.info("reaped: %s", report.summary())
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

    async def sweep_orphans(self, report: ReapReport) -> None:
        """Fail the runs that nothing can move on any more: active, older than a sweep,
        with no entry in any stream, no pin, not parked, not waiting, no retry due.
        Found so in two sweeps with no history between, each is re-checked and failed
        by orphan.lua (as ``Orphaned``). Skipped, with a log line, past
        ORPHAN_SCAN_LIMIT entries."""
        referenced = await self._referenced_runs()
        if referenced is None:
            log.warning("orphan sweep skipped: more than %d entries to read", ORPHAN_SCAN_LIMIT)
            return
        seconds, _ = await self.redis.time()
        cutoff = (int(seconds) - ORPHAN_SWEEP_SECONDS) * 1000
        candidates: list[str] = []
        for name in await self.redis.hkeys(self.keys.workflows):
            ids = await self.redis.zrangebyscore(
                self.keys.runs(name.decode()), "-inf", cutoff, start=0, num=ORPHAN_SCAN_LIMIT
            )
            candidates += [i.decode() for i in ids if i.decode() not in referenced]
        suspects: dict[str, bytes] = {}
        for start in range(0, len(candidates), BATCH):
            chunk = candidates[start : start + BATCH]
            pipe = self.redis.pipeline(transaction=False)
            for run in chunk:
                pipe.hmget(
                    self.keys.run(run), "status", "sticky", "worker", "parked", "waiting", "follows"
                )
                pipe.xrevrange(self.keys.hist(run), count=1)
            replies = await pipe.execute()
            for n, run in enumerate(chunk):
                status, sticky, worker, parked, waiting, follows = replies[2 * n]
                last = replies[2 * n + 1]
                pinned = sticky not in (None, b"none") and bool(worker)
                active = status in (b"queued", b"running")
                if active and last and not (pinned or parked or waiting or follows):
                    suspects[run] = last[0][0]
        for run, fingerprint in suspects.items():
            if self._suspects.get(run) != fingerprint:
                continue
            args = [self.keys.prefix, run, fingerprint, self._orphan]
            if await self.scripts.orphan(keys=[self.keys.workflows], args=args):
                report.runs["failed as orphans"].append(run)
                log.warning("run %s failed as an orphan: nothing could move it on", run)
        failed = set(report.runs.get("failed as orphans", ()))
        self._suspects = {r: f for r, f in suspects.items() if r not in failed}

    async def _referenced_runs(self) -> set[str] | None:
        """Every run with an entry in a stream (queues, personal, waiting for code) or a
        delayed member; None past ORPHAN_SCAN_LIMIT entries."""
        queues = {
            WorkflowDef.from_json(raw).queue for raw in await self.redis.hvals(self.keys.workflows)
        }
        for worker in await self.redis.zrange(self.keys.workers, 0, -1):
            raw = await self.redis.hget(self.keys.worker(worker.decode()), "queues")
            queues |= set(raw.decode().split()) if raw else set()
        workers = [w.decode() for w in await self.redis.zrange(self.keys.workers, 0, -1)]
        waiting = [w.decode() for w in await self.redis.smembers(self.keys.waiting)]
        streams = [self.keys.queue(q) for q in sorted(queues)]
        streams += [self.keys.personal(w) for w in workers]
        streams += [self.keys.wait(wf) for wf in waiting]
        runs: set[str] = set()
        budget = ORPHAN_SCAN_LIMIT
        for stream in streams:
            start = "-"
            for _ in range(MAX_ROUNDS):
                batch = await self.redis.xrange(stream, min=start, max="+", count=1000)
                budget -= len(batch)
                if budget < 0:
                    return None
                runs.update(f[b"r"].decode() for _, f in batch if b"r" in f)
                if len(batch) < 1000:
                    break
                start = "(" + batch[-1][0].decode()
        cursor = 0
        for _ in range(MAX_ROUNDS):
            cursor, members = await self.redis.zscan(self.keys.delayed, cursor, count=1000)
            budget -= len(members)
            if budget < 0:
                return None
            runs.update(m.decode().rsplit("|", 3)[0] for m, _ in members)
            if cursor == 0:
                break
        return runs

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
