"""Delivering outcomes: what finished steps left, sent to complete.lua in batches.

The worker's complete loop calls ``flush`` whenever outcomes are waiting. A batch
is applied whole or not at all (complete.lua is one script); one whose call fails
is kept, in order, for the next try, so nothing is dropped; one applied whose reply
was lost is answered "applied before" when sent again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .backoff import Backoff
from .keys import Keys
from .outage import is_outage
from .plural import plural
from .protocol import Outcome, text
from .steps import Job, StepResult

log = logging.getLogger("rstick.worker")

MAX_COMPLETE_BATCH = 500  # outcomes per complete script call
STOP_TRIES = 10  # tries of the last flush at stop, through an outage
STOP_BACKOFF_CAP = 1.0  # seconds, at most, between two of them


class Completer:
    def __init__(self, client: Any, keys: Keys, worker_id: str, dead_maxlen: int) -> None:
        """``client``: the app's Client (its scripts belong to the running loop)."""
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.dead_maxlen = dead_maxlen
        self.outcomes: list[Outcome] = []
        self.recorded = 0  # outcomes recorded since the worker started
        self._flushing: list[Outcome] = []  # the batch the complete script is applying
        self.lock = asyncio.Lock()  # held while a batch is in flight

    def record(self, job: Job, result: StepResult) -> None:
        """Queue a step's outcome for the next batch."""
        kind, payload, delay_ms = result
        self.outcomes.append(
            Outcome(
                kind,
                job.stream,
                job.entry_id,
                job.run_id,
                job.step.name,
                job.attempt,
                job.epoch,
                payload,
                delay_ms,
                job.step.children,
            )
        )
        self.recorded += 1

    def entries(self) -> set[str]:
        """The entries whose outcome is waiting or being delivered."""
        return {outcome.entry for outcome in (*self.outcomes, *self._flushing)}

    async def flush(self) -> None:
        """Send every waiting outcome, a batch per script call; log the refused ones."""
        async with self.lock:
            while self.outcomes:
                batch = self.outcomes[:MAX_COMPLETE_BATCH]
                self.outcomes = self.outcomes[MAX_COMPLETE_BATCH:]
                args: list[Any] = [self.keys.prefix, self.worker_id, self.dead_maxlen, len(batch)]
                for outcome in batch:
                    args += outcome.to_args()
                self._flushing = batch
                try:
                    replies = await self.client.ascripts.complete(
                        keys=[self.keys.workflows], args=args
                    )
                except BaseException:
                    self.outcomes[:0] = batch  # kept for the next try: nothing is dropped
                    raise
                finally:
                    self._flushing = []
                for outcome, reply in zip(batch, replies, strict=True):
                    _log(outcome, text(reply))

    async def flush_at_stop(self, where: str) -> None:
        """The last flush, as the worker stops: an outage is retried for a few
        seconds; an outcome that cannot be delivered leaves its entry pending, to be
        re-run. ``where``: the Redis URL for the log."""
        backoff = Backoff("final flush", where, cap=STOP_BACKOFF_CAP)
        for _ in range(STOP_TRIES):
            try:
                await self.flush()
                return
            except Exception as exc:
                if not is_outage(exc):
                    raise
                await backoff.wait(exc)
        raise ConnectionError(f"{plural(len(self.outcomes), 'outcome')} not delivered")


def _log(outcome: Outcome, result: str) -> None:
    where = f"{outcome.run_id}/{outcome.step}"
    if result == "refused: no such run":  # expired, or retention 0 and resent
        log.info("completion of %s: its run is gone", where)
    elif result.startswith("refused"):
        log.warning("completion of %s %s", where, result)
    elif result == "applied before":
        log.debug("completion of %s was applied before", where)
    elif result != "ok":
        log.info("completion of %s %s", where, result)
