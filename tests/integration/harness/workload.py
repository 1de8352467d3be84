"""The workload of the worker tests, served by real ``rstick worker`` processes:

    rstick worker tests.integration.harness.workload:app --redis URL --namespace NS

``record`` counts its executions in Redis itself (``HINCRBY`` on
``executions_key``), outside rstick's own state, so a test sees a job that ran
twice even if rstick accepted only one result.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis

from rstick import Context, Rstick, StickyStrategy

app = Rstick()  # the worker's --redis / --namespace set where it lives

_local = threading.local()  # sync steps run in a thread pool: one client per thread


def executions_key(namespace: str) -> str:
    return "{" + namespace + "}:test:executions"


def _redis(url: str) -> redis.Redis:
    client: redis.Redis | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = redis.Redis.from_url(url)
    return client


GATE_LIMIT = 30.0  # a gated job never waits longer, even if its test died


@app.task
def record(ctx: Context, n: int, gate: str | None = None) -> dict[str, Any]:
    """Count this execution of job ``n``; with ``gate``, first wait until that file exists
    (so a test knows the job is running while it does something)."""
    if gate:
        Path(gate + ".started").touch()
        deadline = time.monotonic() + GATE_LIMIT
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    worker_app = ctx.worker.app
    _redis(str(worker_app.redis_url)).hincrby(executions_key(str(worker_app.namespace)), str(n))
    return {"n": n, "worker": ctx.worker.id()}


@app.workflow(sticky=StickyStrategy.SOFT)
class Chain3:
    """a -> b -> c: each step after the first reaches the worker's own stream."""

    @app.step()
    def a(self, ctx: Context) -> str:
        return ctx.worker.id()

    @app.step(parents=["a"])
    async def b(self, ctx: Context) -> str:
        return ctx.worker.id()

    @app.step(parents=["b"])
    def c(self, ctx: Context) -> str:
        return ctx.worker.id()
