"""Workers in the test's own process, on fakeredis, with a clock the test moves.

    runner = LocalRunner(app, clock)          # the pytest fixture rstick_local does this
    ref = runner.enqueue("Thumbnail", {"url": "https://example.invalid/a.jpg"})
    runner.run_until_idle()
    assert ref.result(timeout=1)["resize"]["worker"] == "w1"

fakeredis cannot serve a blocking XREADGROUP, so nothing here runs a worker's
loops: ``drain`` calls ``Worker.run_once`` (non-blocking) round by round until a
whole round finds nothing to do. Needs fakeredis with Lua
(``pip install 'rstick[testing]'``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import fakeredis

from rstick.app import Rstick
from rstick.refs import RunRef
from rstick.testing.clock import FakeClock
from rstick.worker import Worker

MAX_STEPS = 1000  # entries a drain handles before it takes the work for endless


def on_fake_server(app: Rstick, server: Any) -> Rstick:
    """``app``, its sync and async clients on the fakeredis ``server``; returned."""
    app.client.use(
        sync=fakeredis.FakeRedis(server=server),
        aio=fakeredis.FakeAsyncRedis(server=server),
    )
    return app


@asynccontextmanager
async def started(app: Rstick, *ids: str, concurrency: int = 4) -> AsyncIterator[list[Worker]]:
    """Workers with these ids, registered (``start``), their pools shut at the end."""
    workers = [Worker(app, worker_id=i, concurrency=concurrency) for i in ids]
    for w in workers:
        await w.start()
    try:
        yield workers
    finally:
        for w in workers:
            w.threads.shutdown()
            # The process is gone: its heartbeat has lapsed, and the same id may start
            # again at once (the clock does not move by itself in these tests).
            await stop_beating(w.app, w.id())


async def drain(*workers: Worker, max_steps: int = MAX_STEPS) -> int:
    """Run the workers until a whole round finds nothing to do; returns the entries
    handled. Each beats first, as its heartbeat thread would (the clock may have
    moved). More than ``max_steps`` entries is an AssertionError: a workflow that
    never ends (a task that enqueues itself...), or a bigger ``max_steps`` needed."""
    total = 0
    while True:
        for w in workers:
            await w.beat()
        handled = sum([await w.run_once() for w in workers])
        if not handled:
            return total
        total += handled
        if total > max_steps:
            raise AssertionError(
                f"workers still busy after {total} steps (max_steps={max_steps}): "
                "does a workflow never end?"
            )


async def stop_beating(app: Rstick, worker_id: str) -> None:
    """The worker's heartbeat deadline is long past, as if its process died (in its
    record, which the scripts judge, and in the index of workers)."""
    await app.client.aredis.zadd(app.keys.workers, {worker_id: 1})
    await app.client.aredis.hset(app.keys.worker(worker_id), "deadline", 1)


class LocalRunner:
    """An app's workers in this process, on a fake Redis of their own.

    ``app`` is bound to a fresh fakeredis server until ``close()`` (which lets it
    connect to its real Redis again, when next used), so code under test that
    enqueues through it reaches these workers. ``clock`` must be installed
    (``FakeClock.install``): Redis's time moves only by ``advance``. The workers
    (ids ``workers``) run on an event loop of the runner's own: call it from
    sync code (a plain ``def test_...``).
    """

    def __init__(
        self,
        app: Rstick,
        clock: FakeClock,
        *,
        workers: Sequence[str] = ("w1",),
        concurrency: int = 4,
    ) -> None:
        self.app, self.clock = app, clock
        self.server = fakeredis.FakeServer()
        app.close()  # connections it may hold to its real Redis
        on_fake_server(app, self.server)
        self.workers = [Worker(app, worker_id=i, concurrency=concurrency) for i in workers]
        self._loop = asyncio.new_event_loop()
        self._started = False

    def __repr__(self) -> str:
        return f"LocalRunner(workers={[w.id() for w in self.workers]}, now={self.clock.now})"

    def enqueue(
        self, workflow: str, input: Any = None, *, run_id: str | None = None, delay: float = 0.0
    ) -> RunRef:
        """``app.enqueue``: the run waits for ``run_until_idle``."""
        return self.app.enqueue(workflow, input, run_id=run_id, delay=delay)

    def run_until_idle(self, max_steps: int = MAX_STEPS) -> int:
        """Run the workers until nothing is left to do now (a retry or a delay that is
        not due waits for ``advance``); returns the entries handled. Raises
        AssertionError past ``max_steps``."""
        return self._loop.run_until_complete(self._drain(max_steps))

    def advance(self, seconds: float) -> None:
        """Move Redis's clock (and so delays, retries, expiry) ``seconds`` on."""
        self.clock.advance(seconds)

    def close(self) -> None:
        """Shut the workers' thread pools and the loop; unbind the app."""
        try:
            for w in self.workers:
                w.threads.shutdown()
            self._loop.run_until_complete(self.app.aclose())
        finally:
            self._loop.close()
            self.app.close()

    async def _drain(self, max_steps: int) -> int:
        if not self._started:
            for w in self.workers:
                await w.start()
            self._started = True
        return await drain(*self.workers, max_steps=max_steps)
