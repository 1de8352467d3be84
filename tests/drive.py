"""Driving workers on fakeredis from a test: start them, run them until idle.

``started``, ``drain`` and ``stop_beating`` are the ones users get
(``rstick.testing.local``); here are the unit tests' own shortcuts around them."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from rstick import Rstick
from rstick.testing.local import drain, on_fake_server, started, stop_beating

__all__ = ["drain", "outputs", "run", "run_until_idle", "sibling", "started", "stop_beating"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def outputs(app: Rstick, run_id: str) -> dict[bytes, bytes]:
    """The packed outputs a run's hash holds, by step (its fields "<step>.o")."""
    raw = app.client.redis.hgetall(app.keys.run(run_id))
    return {k[:-2]: v for k, v in raw.items() if k.endswith(b".o")}


def sibling(app: Rstick, **settings: Any) -> Rstick:
    """Another app (another code base, or settings) on the same fake server and namespace."""
    server = app.client.redis.connection_pool.connection_kwargs["server"]
    other = Rstick(redis_url="redis://fake", namespace=app.namespace, **settings)
    return on_fake_server(other, server)


def run_until_idle(app: Rstick, *ids: str, concurrency: int = 4) -> int:
    """Start workers with these ids and drain them; returns entries handled."""

    async def go() -> int:
        async with started(app, *ids, concurrency=concurrency) as workers:
            return await drain(*workers)

    return run(go())
