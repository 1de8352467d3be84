"""The enqueue and wake-up fast paths on a real Redis: a worker blocked in
XREADGROUP claims what it is handed in the same round trip, on its bare
connection (rstick.blocking); enqueue sends one EVALSHA on a connection its
thread keeps; both recover when Redis loses its scripts or the connection."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import redis

from rstick import Context, Rstick, Worker
from rstick.blocking import BlockingConnection


def define(app: Rstick) -> None:
    @app.task
    async def job(ctx: Context) -> str:
        return ctx.worker.id()


async def blocked(url: str, n: int = 1) -> None:
    """Until ``n`` clients wait in a blocking XREADGROUP."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        for _ in range(500):
            clients = await client.client_list()
            if sum(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the worker did not block")
    finally:
        await client.aclose()


async def wake(w: Worker, app: Rstick, url: str) -> tuple[int, str]:
    """Block the worker, enqueue one job, return (entries handled, run id)."""
    fetch = asyncio.create_task(w.fetch(5000))
    await blocked(url)
    ref = await asyncio.to_thread(app.enqueue, "job")
    handled = await asyncio.wait_for(fetch, 10)
    await settle(w)
    return handled, ref.run_id


async def settle(w: Worker) -> None:
    """Let the started steps end and deliver their outcomes."""
    if w.running:
        await asyncio.wait(list(w.running.values()))
    await w.flush()


def test_a_blocked_worker_claims_what_it_is_handed_on_its_own_connection(
    app: Rstick, redis_url: str
) -> None:
    define(app)

    async def scenario() -> None:
        w = Worker(app, worker_id="w1", concurrency=4)
        await w.start()
        assert isinstance(w.fetcher.blocking_connection(), BlockingConnection)
        assert await w.fetch(None) == 0
        for _ in range(3):
            handled, run_id = await wake(w, app, redis_url)
            assert handled == 1
            assert app.get_run(run_id).status.value == "succeeded"
        # Redis loses its scripts while the worker waits: it loads take.lua and
        # still claims what the read delivered.
        fetch = asyncio.create_task(w.fetch(5000))
        await blocked(redis_url)
        app.client.redis.script_flush()
        ref = await asyncio.to_thread(app.enqueue, "job")
        assert await asyncio.wait_for(fetch, 10) == 1
        await settle(w)
        assert app.get_run(ref.run_id).status.value == "succeeded"
        # Its connection is killed while it waits: a transient error, then it goes on.
        fetch = asyncio.create_task(w.fetch(5000))
        await blocked(redis_url)
        r = app.client.redis
        [reader] = [c for c in r.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"]]
        r.client_kill_filter(_id=reader["id"])
        with contextlib.suppress(redis.ConnectionError):
            await asyncio.wait_for(fetch, 10)
        handled, run_id = await wake(w, app, redis_url)
        assert handled == 1 and app.get_run(run_id).status.value == "succeeded"
        w.threads.shutdown()

    asyncio.run(scenario())


def test_enqueue_recovers_from_lost_scripts_and_connections(app: Rstick) -> None:
    define(app)
    app.enqueue("job")  # registers the workflow
    r = app.client.redis
    first = app.enqueue("job")
    assert app.client._own_connection() is not None
    r.script_flush()
    after_flush = app.enqueue("job")
    r.client_kill_filter(_type="normal", skipme=True)
    after_kill = app.enqueue("job")
    for ref in (first, after_flush, after_kill):
        assert app.get_run(ref.run_id).status.value == "queued"
    assert r.zcard(app.keys.runs("job")) == 4


def test_a_long_lived_client_registers_its_workflow_again_when_redis_lost_it(
    app: Rstick, own_server: Any
) -> None:
    """A restart without persistence, a FLUSHDB or a failover empties the registry; a
    client that defined the workflow goes on enqueueing, sync and async alike."""
    client = Rstick(redis_url=own_server.url, namespace=app.namespace)
    define(client)
    client.enqueue("job")
    r = client.client.redis

    async def scenario() -> None:
        for _ in range(2):
            r.flushall()
            ref = client.enqueue("job")
            assert client.get_run(ref.run_id).status.value == "queued"
            r.flushall()
            aref = await client.aenqueue("job")
            assert client.get_run(aref.run_id).status.value == "queued"
            r.flushall()
            assert len(client.enqueue_many("job", [None, None])) == 2
            assert r.zcard(client.keys.runs("job")) == 2

    asyncio.run(scenario())
    client.close()


def test_a_thread_gives_its_enqueue_connection_back_when_it_ends(app: Rstick) -> None:
    define(app)
    app.enqueue("job")  # registers the workflow, in a pipeline
    app.enqueue("job")
    assert app.client.kept_connections() == 1  # the main thread's
    # More threads than may keep one (half the pool): the others borrow one per call.
    threads = [threading.Thread(target=lambda: app.enqueue("job")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert app.client.kept_connections() == 1
    # Every connection but the main thread's is free: the pool hands them all out.
    pool = app.client.redis.connection_pool
    pool.timeout = 1.0
    taken = [pool.get_connection() for _ in range(app.pool_size - 1)]
    for conn in taken:
        pool.release(conn)
