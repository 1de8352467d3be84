"""Stopping a worker's loops: let running steps end (up to the drain timeout), then
cancel the loops until they are done.

The worker calls ``stop_loops`` when a stop is requested, before its final flush
and hand-off (``worker.py``): with the loops stopped first, no batch of outcomes
is in flight (or put back by a cancelled flush) after that flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .completion import Completer
from .plural import plural
from .steps import StepRunner

log = logging.getLogger("rstick.worker")

STOP_GRACE = 5.0  # seconds a task has to end once cancelled, at stop
CANCEL_EVERY = 0.1  # seconds between two cancels of a task that swallowed one


async def stop_loops(
    loops: list[asyncio.Task[None]],
    steps: StepRunner,
    completer: Completer,
    *,
    read_grace: float,
    drain_timeout: float,
) -> None:
    """``loops``: the fetch, complete and tick loops; ``read_grace``: how long the
    fetch loop's last (blocking) read may take to return."""
    fetch, complete, tick = loops
    await asyncio.wait([fetch], timeout=read_grace)
    # Hung steps ran past their timeout already: waiting on them cannot help.
    running = [task for key, task in steps.running.items() if key not in steps.hung]
    if running:
        _, late = await asyncio.wait(running, timeout=drain_timeout)
        if late:
            log.warning(
                "%s did not finish in %.0fs; they will be re-run",
                plural(len(late), "step"),
                drain_timeout,
            )
            await cancel(*late)
    await cancel(fetch, tick)
    async with completer.lock:  # no batch in flight: the complete loop is idle
        await cancel(complete)


async def cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait, up to STOP_GRACE, until they are done. Cancel again while
    one is not: on Python 3.11 asyncio.wait_for (used by redis-py) can swallow a
    cancellation (cpython gh-86296). A task that still runs then is abandoned."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + STOP_GRACE
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_EVERY)
    for task in pending:
        log.warning("task %s did not stop in %.0fs: abandoned", task.get_name(), STOP_GRACE)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception():
            log.error("task %s failed: %r", task.get_name(), task.exception())
