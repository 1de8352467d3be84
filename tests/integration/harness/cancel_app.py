"""A family of runs for the cancel test, served by real ``rstick worker`` processes:

    rstick worker tests.integration.harness.cancel_app:app --redis URL --namespace NS

``Family`` (SOFT) spawns two sticky ``Kid`` runs and one plain ``PlainKid`` and waits
for them. Each child's step says in Redis that it started, then waits until the test
sets the release key, and says when it finished (outside rstick's own state).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from rstick import Context, Rstick, StickyStrategy

app = Rstick()  # the worker's --redis / --namespace set where it lives

GATE_LIMIT = 30.0  # a child never waits longer, even if its test died
_local = threading.local()  # sync steps run in a thread pool: one client per thread


def key(namespace: str, what: str) -> str:
    """``started`` and ``finished`` (lists of run ids), ``release`` (set by the test)."""
    return "{" + namespace + "}:test:" + what


def _redis(ctx: Context) -> tuple[redis.Redis, str]:
    client: redis.Redis | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = redis.Redis.from_url(str(ctx.worker.app.redis_url))
    return client, str(ctx.worker.app.namespace)


def _held(ctx: Context) -> str:
    client, namespace = _redis(ctx)
    client.rpush(key(namespace, "started"), ctx.run_id)
    deadline = time.monotonic() + GATE_LIMIT
    while not client.exists(key(namespace, "release")) and time.monotonic() < deadline:
        time.sleep(0.01)
    client.rpush(key(namespace, "finished"), ctx.run_id)
    return ctx.worker.id()


@app.workflow(sticky=StickyStrategy.SOFT)
class Kid:
    @app.step()
    def work(self, ctx: Context) -> str:
        return _held(ctx)


@app.workflow()
class PlainKid:
    @app.step()
    def work(self, ctx: Context) -> str:
        return _held(ctx)


@app.workflow(sticky=StickyStrategy.SOFT)
class Family:
    @app.step()
    def spawn(self, ctx: Context) -> dict[str, Any]:
        refs = [
            ctx.spawn_workflow("Kid", sticky=True),
            ctx.spawn_workflow("Kid", sticky=True),
            ctx.spawn_workflow("PlainKid"),
        ]
        return {ref.run_id: ref.result(timeout=60) for ref in refs}

    @app.step(parents=["spawn"])
    def after(self, ctx: Context) -> str:
        return ctx.worker.id()
