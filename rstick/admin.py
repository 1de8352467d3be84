"""Reading runs and workers, cancelling runs, and the dead letters: what the command
line's ``runs``, ``workers`` and ``dead`` commands (and a dashboard) call.

A mixin of ``Client`` (``client.py``), apart from enqueueing."""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from .errors import RunNotFound
from .keys import Keys
from .protocol import ENTRY_FIELDS
from .records import Cancellation, Run, RunStatus, WorkerInfo
from .scripts import Scripts

CANCEL_BATCH = 500  # cancel.lua calls per round trip, cancelling a tree of runs
LIST_SCAN = 10_000  # the most recent runs list_runs looks at for a status
HGETALL_BATCH = 500  # run hashes read per round trip


class Admin:
    """Reads and maintenance; ``redis``, ``scripts`` and ``keys`` are the client's."""

    keys: Keys

    @property
    def redis(self) -> Any:
        raise NotImplementedError

    @property
    def scripts(self) -> Scripts:
        raise NotImplementedError

    def get_run(self, run_id: str) -> Run:
        raw = self.redis.hgetall(self.keys.run(run_id))
        if not raw:
            raise RunNotFound(run_id)
        return Run.from_hash(run_id, raw)

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """The run's history stream, oldest first: one dict per event, with its time.
        (The last step's success and the run's end are one entry, written together:
        told here as the two events they are.)"""
        out = []
        for entry_id, fields in self.redis.xrange(self.keys.hist(run_id)):
            event = {k.decode(): v.decode() for k, v in fields.items()}
            event["at"] = int(entry_id.split(b"-")[0]) / 1000
            if event["ev"] == "finished" and "s" in event:
                succeeded = {"ev": "succeeded", "s": event.pop("s"), "w": event.pop("w")}
                succeeded["a"] = event.pop("a")
                out.append({**succeeded, "at": event["at"]})
            out.append(event)
        return out

    def list_runs(self, status: str | None = None, limit: int = 20) -> list[Run]:
        """Most recent runs first, across workflows; with ``status``, only those
        (looks at the 10,000 most recent)."""
        scan = LIST_SCAN if status else limit
        pipe = self.redis.pipeline(transaction=False)
        names = sorted(k.decode() for k in self.redis.hkeys(self.keys.workflows))
        for name in names:
            pipe.zrevrange(self.keys.runs(name), 0, scan - 1, withscores=True)
        newest = heapq.merge(*pipe.execute(), key=lambda m: -m[1])
        ids = [m.decode() for m, _ in itertools.islice(newest, scan)]
        runs: list[Run] = []
        for start in range(0, len(ids), HGETALL_BATCH):
            chunk = ids[start : start + HGETALL_BATCH]
            pipe = self.redis.pipeline(transaction=False)
            for run_id in chunk:
                pipe.hgetall(self.keys.run(run_id))
            for run_id, raw in zip(chunk, pipe.execute(), strict=True):
                if raw and (status is None or raw.get(b"status", b"").decode() == status):
                    runs.append(Run.from_hash(run_id, raw))
                    if len(runs) >= limit:
                        return runs
        return runs

    def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker, alive or not, judged by Redis's clock."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.keys.workers, 0, -1, withscores=True)
        (seconds, micros), deadlines = pipe.execute()
        now = int(seconds) + int(micros) / 1e6
        pipe = self.redis.pipeline(transaction=False)
        for wid, _ in deadlines:
            pipe.hgetall(self.keys.worker(wid.decode()))
            pipe.scard(self.keys.pinned(wid.decode()))
        replies = pipe.execute()
        workers = []
        for n, (wid, deadline) in enumerate(deadlines):
            info, pinned = replies[2 * n], replies[2 * n + 1]
            workers.append(WorkerInfo.from_hash(wid.decode(), info, deadline / 1000, pinned, now))
        return workers

    def cancel(
        self, run_id: str, reason: str = "cancelled by user", *, children: bool = True
    ) -> Cancellation:
        """Cancel a run that has not finished and, with ``children``, every unfinished
        descendant: its children, theirs, and so on, through finished runs too (a
        finished run's child may still run).

        Each run is cancelled atomically by one script call, which also names its
        children; the tree is walked a level at a time, up to CANCEL_BATCH calls per
        round trip, each run once. A child spawned after its parent was cancelled is
        refused (enqueue.lua), so none escapes the walk."""
        [(status, ended_here, found)] = self._cancel_runs([(run_id, reason)])
        if not status:
            raise RunNotFound(run_id)
        cancelled = [run_id] if ended_here else []
        seen = {run_id}
        level = [(child, run_id) for child in found] if children else []
        while level:
            batch = []
            for child, parent in level:
                if child not in seen:
                    seen.add(child)
                    batch.append((child, f"parent run {parent} was cancelled"))
            level = []
            for start in range(0, len(batch), CANCEL_BATCH):
                chunk = batch[start : start + CANCEL_BATCH]
                for (child, _), (_, ended_here, grandchildren) in zip(
                    chunk, self._cancel_runs(chunk), strict=True
                ):
                    if ended_here:
                        cancelled.append(child)
                    level += [(g, child) for g in grandchildren]
        return Cancellation(run_id, RunStatus(status), tuple(cancelled))

    def _cancel_runs(self, runs: list[tuple[str, str]]) -> list[tuple[str, bool, list[str]]]:
        """cancel.lua for each (run, reason), in one round trip: for each, its status
        ("" when there is no such run), whether this call cancelled it, its children."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id, reason in runs:
            self.scripts.cancel(
                keys=[self.keys.workflows], args=[self.keys.prefix, run_id, reason], client=pipe
            )
        out = []
        for reply in pipe.execute():
            status, ended_here, *found = (x.decode() for x in reply)
            out.append((status, ended_here == "1", found))
        return out

    # -- dead letters -------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: each with its id, reason and the original entry's fields."""
        out = []
        for entry_id, fields in self.redis.xrevrange(self.keys.dead, count=limit):
            letter = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            letter["id"] = entry_id.decode()
            out.append(letter)
        return out

    def requeue_dead(self, dead_id: str) -> str:
        """Put a dead-lettered message back on the stream it came from; returns its new id."""
        found = self.redis.xrange(self.keys.dead, dead_id, dead_id)
        if not found:
            raise KeyError(f"no dead letter {dead_id}")
        fields = found[0][1]
        message = {k: fields[k] for k in (f.encode() for f in ENTRY_FIELDS) if k in fields}
        if len(message) < 5 or b"stream" not in fields:
            raise ValueError(f"dead letter {dead_id} is not a complete rstick message")
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(fields[b"stream"], message)
        pipe.xdel(self.keys.dead, dead_id)
        new_id: bytes = pipe.execute()[0]
        return new_id.decode()

    def purge_dead(self) -> int:
        """Delete every dead letter; returns how many there were."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xlen(self.keys.dead)
        pipe.delete(self.keys.dead)
        count: int = pipe.execute()[0]
        return count
