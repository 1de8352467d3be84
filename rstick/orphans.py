"""The orphan sweep: fail the runs that nothing can move on any more.

A run is an orphan when it is active but no entry of it is left in any stream and
nothing else (a pin, a park, a wait for code, a due retry) can move it on: its
entries were deleted by hand, or lost with Redis's data. The leading reaper sweeps
every ORPHAN_SWEEP_SECONDS (``reaper.py``); orphan.lua re-checks each run and fails
it as ``Orphaned``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .codec import pack
from .definitions import WorkflowDef
from .reap_report import ReapReport

if TYPE_CHECKING:
    from .app import Rstick

log = logging.getLogger("rstick.reaper")

# A sweep reads every stream, so it is rare and bounded; a run is failed only when
# two sweeps this far apart both found it so, with no history between them.
ORPHAN_SWEEP_SECONDS = 300.0
ORPHAN_SCAN_LIMIT = 200_000  # entries read per sweep; past it the sweep is skipped
BATCH = 100  # runs looked at per pipeline
MAX_ROUNDS = 1000  # bounded loops: reads per stream per sweep
READ_COUNT = 1000  # entries per XRANGE, members per ZSCAN


class OrphanSweep:
    def __init__(self, app: Rstick) -> None:
        self.app = app
        self.keys = app.keys
        self._error = pack(
            {
                "type": "Orphaned",
                "tb": "",
                "message": "no entry of the run was left in any stream and nothing else "
                "could move it on (its entries were deleted by hand, or lost with Redis's data)",
            }
        )
        self._suspects: dict[str, bytes] = {}  # run id -> its last history id, last sweep

    @property
    def redis(self) -> Any:
        return self.app.client.aredis

    @property
    def scripts(self) -> Any:
        return self.app.client.ascripts

    async def sweep(self, report: ReapReport) -> None:
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
            args = [self.keys.prefix, run, fingerprint, self._error]
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
                batch = await self.redis.xrange(stream, min=start, max="+", count=READ_COUNT)
                budget -= len(batch)
                if budget < 0:
                    return None
                runs.update(f[b"r"].decode() for _, f in batch if b"r" in f)
                if len(batch) < READ_COUNT:
                    break
                start = "(" + batch[-1][0].decode()
        cursor = 0
        for _ in range(MAX_ROUNDS):
            cursor, members = await self.redis.zscan(self.keys.delayed, cursor, count=READ_COUNT)
            budget -= len(members)
            if budget < 0:
                return None
            runs.update(m.decode().rsplit("|", 3)[0] for m, _ in members)
            if cursor == 0:
                break
        return runs
