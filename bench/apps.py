"""The benchmark's workflows: the same module in the bench process and its workers."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from rstick import Context, Rstick, StickyStrategy

NAMESPACE = "bench"
PEER_LATENCIES = "bench:peer:latencies"  # the huey row's latencies, both sides (peer.py)
PEER_COUNTER = "bench:peer:count"


def build(url: str | None, retention: float = 86400.0) -> Rstick:
    """An app with a no-op task, a time-stamping task and a three-step sticky chain."""
    app = Rstick(redis_url=url, namespace=NAMESPACE, retention=retention)

    @app.task
    async def noop(ctx: Context) -> None:
        return None

    @app.task
    async def stamp(ctx: Context) -> float:
        # The first thing the step does: when it started, for enqueue-to-start latency.
        return time.time()

    @app.task
    def stamp_sync(ctx: Context) -> float:
        return time.time()

    peer_redis: dict[str, aioredis.Redis] = {}  # one client in the worker process

    @app.task
    async def stamp_incr(ctx: Context, t: float) -> None:
        # The huey row (peer.py): the latency first, then one INCR, as huey's task does.
        late = time.time() - t
        r = peer_redis.get("r")
        if r is None:
            r = peer_redis["r"] = aioredis.Redis.from_url(str(ctx.worker.app.redis_url))
        await r.incr(PEER_COUNTER)
        await r.rpush(PEER_LATENCIES, late)

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Chain:
        @app.step()
        async def a(self, ctx: Context) -> None:
            return None

        @app.step(parents=["a"])
        async def b(self, ctx: Context) -> None:
            return None

        @app.step(parents=["b"])
        async def c(self, ctx: Context) -> None:
            return None

    return app


# What the worker processes serve (``rstick worker bench.apps:app``; --redis says where).
app = build(None)
short_lived = build(None, retention=1)  # the memory workload: finished runs go at once
APP = "bench.apps:app"
SHORT_LIVED = "bench.apps:short_lived"
