"""Driving workers on fakeredis from a test: start them, run them until idle.

fakeredis cannot serve a blocking XREADGROUP, so the unit tests never run a
worker's loops: ``drain`` calls ``Worker.run_once`` (non-blocking) round by
round until a whole round finds nothing to do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import fakeredis

from rstick import Rstick, Worker

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


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


async def drain(*workers: Worker, max_rounds: int = 50) -> int:
    """Run the workers until a whole round finds nothing to do; returns entries handled.
    Each beats first, as its heartbeat thread would (the test's clock may have moved)."""
    total = 0
    for _ in range(max_rounds):
        for w in workers:
            await w.beat()
        handled = sum([await w.run_once() for w in workers])
        if not handled:
            return total
        total += handled
    raise AssertionError(f"workers still busy after {max_rounds} rounds")


def outputs(app: Rstick, run_id: str) -> dict[bytes, bytes]:
    """The packed outputs a run's hash holds, by step (its fields "<step>.o")."""
    raw = app.client.redis.hgetall(app.keys.run(run_id))
    return {k[:-2]: v for k, v in raw.items() if k.endswith(b".o")}


async def stop_beating(app: Rstick, worker_id: str) -> None:
    """The worker's heartbeat deadline is long past, as if its process died (in its
    record, which the scripts judge, and in the index of workers)."""
    await app.client.aredis.zadd(app.keys.workers, {worker_id: 1})
    await app.client.aredis.hset(app.keys.worker(worker_id), "deadline", 1)


def sibling(app: Rstick, **settings: Any) -> Rstick:
    """Another app (another code base, or settings) on the same fake server and namespace."""
    server = app.client.redis.connection_pool.connection_kwargs["server"]
    other = Rstick(redis_url="redis://fake", namespace=app.namespace, **settings)
    other.client.use(
        sync=fakeredis.FakeRedis(server=server), aio=fakeredis.FakeAsyncRedis(server=server)
    )
    return other


def run_until_idle(app: Rstick, *ids: str, concurrency: int = 4) -> int:
    """Start workers with these ids and drain them; returns entries handled."""

    async def go() -> int:
        async with started(app, *ids, concurrency=concurrency) as workers:
            return await drain(*workers)

    return run(go())
