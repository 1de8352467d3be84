"""The client under a web app's load: many concurrent waits on few connections, and
nothing left open by threads that end, loops that end, or a closed app.

Connections are counted with CLIENT LIST, by the client name each test gives its
app in the URL (``?client_name=``): the workers' connections carry no name. The
bound is the default pool of 10 connections plus one subscription for done
notices: 11, for the sync side and for each event loop's async side alike.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis

from rstick import Rstick
from rstick.embedded import RedisServer
from rstick.errors import ClientClosed, PoolTimeout, ResultTimeout
from rstick.testing.processes import WorkerProcesses, wait_until
from tests.integration.harness.clients import connections, named_app, peak_connections, settled

APP = "tests.integration.harness.client_app:app"
HANDFUL = 11  # the default pool_size (10) and one subscription


def done_channels(url: str, namespace: str) -> list[bytes]:
    r = redis.Redis.from_url(url)
    try:
        channels: list[bytes] = r.pubsub_channels(f"{{{namespace}}}:done:*")
        return channels
    finally:
        r.close()


def failures(results: list[Any]) -> Counter[str]:
    return Counter(type(r).__name__ for r in results if isinstance(r, BaseException))


# -- many waiters, few connections ------------------------------------------------


def test_10000_concurrent_async_waits_in_one_process(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(2, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)
    n = 10_000

    async def one(i: int) -> Any:
        ref = await app.aenqueue("echo", {"n": i})
        return await ref.result(timeout=300)

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    with peak_connections(redis_url, name) as peak:
        results = asyncio.run(main())
    assert not failures(results)
    assert results == list(range(n))
    assert 1 <= peak[0] <= HANDFUL
    # asyncio.run closed its loop: the async side on that loop was closed with it.
    assert settled(redis_url, name, 0) == 0
    assert done_channels(redis_url, namespace) == []
    app.close()


def test_200_threads_enqueue_and_wait(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(2, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)
    n = 200
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait(60)
        try:
            results[i] = app.enqueue("echo", {"n": i}).result(timeout=300)
        except BaseException as exc:  # counted below
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    with peak_connections(redis_url, name) as peak:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert not failures(results)
    assert results == list(range(n))
    assert 1 <= peak[0] <= HANDFUL
    assert done_channels(redis_url, namespace) == []
    app.close()
    assert settled(redis_url, name, 0) == 0


def test_an_async_step_awaits_50_sticky_children_at_once(
    workers: WorkerProcesses, app: Rstick
) -> None:
    workers.start_many(1, APP, concurrency=4)
    ref = app.enqueue("Fanout", {"children": 50})
    out = ref.result(timeout=120)
    assert out["gather"]["squares"] == [i * i for i in range(50)]
    assert out["gather"]["workers"] == ["w1"]
    assert out["sibling"]["squares"] == [0, 1, 4, 9, 16]
    run = app.get_run(ref.run_id)
    assert run.status.value == "succeeded"
    assert [s.error for s in run.steps] == [None, None]
    assert "ignored" not in workers["w1"].output()


# -- nothing left open ----------------------------------------------------------------


def test_short_lived_threads_give_their_connections_back(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(1, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)
    app.enqueue("echo", {"n": 0}).result(timeout=60)  # the main thread's connections
    before = connections(redis_url, name)
    after_rounds = []
    for _ in range(3):
        results: list[Any] = []

        def one(i: int, results: list[Any] = results) -> None:
            results.append(app.enqueue("echo", {"n": i}).result(timeout=60))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == list(range(50))
        after_rounds.append(connections(redis_url, name))
    # The pool keeps what it opened, at most its size; every thread's connection went
    # back to it (150 threads came and went).
    assert 2 <= before <= HANDFUL
    assert max(after_rounds) <= HANDFUL
    assert app.client.kept_connections() == 1  # the main thread's, still alive
    app.close()
    assert settled(redis_url, name, 0) == 0


def test_close_leaves_nothing_open(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(1, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)
    loops_ready = threading.Barrier(4)
    stop = threading.Event()

    def loop_in_a_thread() -> None:
        async def serve() -> None:
            refs = [await app.aenqueue("echo", {"n": i}) for i in range(5)]
            assert [await ref.result(timeout=60) for ref in refs] == list(range(5))
            loops_ready.wait(60)
            while not stop.is_set():  # a long-lived loop, as a server's
                await asyncio.sleep(0.01)

        asyncio.run(serve())

    threads = [threading.Thread(target=loop_in_a_thread) for _ in range(3)]
    with app:
        for t in threads:
            t.start()
        assert app.enqueue("echo", {"n": 7}).result(timeout=60) == 7
        loops_ready.wait(60)
        assert connections(redis_url, name) >= 4 * 2  # the sync side and three loops
    # close() reached the loops running in other threads too.
    assert settled(redis_url, name, 0) == 0
    stop.set()
    for t in threads:
        t.join(60)
    assert settled(redis_url, name, 0) == 0


def test_async_with_app_closes_its_connections(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(1, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)

    async def main() -> int:
        async with app:
            refs = await asyncio.gather(*(app.aenqueue("echo", {"n": i}) for i in range(20)))
            results = await asyncio.gather(*(ref.result(timeout=60) for ref in refs))
            assert results == list(range(20))
            assert app.enqueue("echo", {"n": 1}).result(timeout=60) == 1  # the sync side too
            assert connections(redis_url, name) >= 4
        # The loop still runs: it is `async with`, not the loop's end, that closed them.
        for _ in range(1000):
            if connections(redis_url, name) == 0:
                return 0
            await asyncio.sleep(0.01)
        return connections(redis_url, name)

    assert asyncio.run(main()) == 0


def test_one_app_on_several_event_loops(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(1, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)

    async def batch(first: int) -> list[Any]:
        refs = await asyncio.gather(
            *(app.aenqueue("echo", {"n": i}) for i in range(first, first + 50))
        )
        return await asyncio.gather(*(ref.result(timeout=60) for ref in refs))

    # One asyncio.run after another: each loop gets its own pool, closed at its end.
    for first in (0, 50):
        assert asyncio.run(batch(first)) == list(range(first, first + 50))
        assert settled(redis_url, name, 0) == 0
    # Several loops at once, in threads.
    results: dict[int, Any] = {}

    def in_thread(k: int) -> None:
        try:
            results[k] = asyncio.run(batch(100 * k))
        except BaseException as exc:  # checked below
            results[k] = exc

    threads = [threading.Thread(target=in_thread, args=(k,)) for k in range(1, 5)]
    with peak_connections(redis_url, name) as peak:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert results == {k: list(range(100 * k, 100 * k + 50)) for k in range(1, 5)}
    assert peak[0] <= 4 * HANDFUL
    assert settled(redis_url, name, 0) == 0
    app.close()


# -- waiters that give up, lost subscriptions, a fork -------------------------------


def test_waiters_that_time_out_or_are_cancelled_leave_no_subscription(
    redis_url: str, namespace: str
) -> None:
    app, name = named_app(redis_url, namespace)

    @app.task()
    def never(ctx: Any) -> None:  # no worker serves it here
        return None

    refs = [app.enqueue("never") for _ in range(20)]
    for ref in refs[:5]:
        with pytest.raises(ResultTimeout):
            ref.result(timeout=0.01)

    async def give_up() -> None:
        arefs = [await app.aenqueue("never") for _ in range(20)]
        waits = [asyncio.create_task(ref.result(timeout=60)) for ref in arefs]
        await asyncio.sleep(0.2)
        assert len(done_channels(redis_url, namespace)) == 20  # subscribed, all of them
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        with pytest.raises(ResultTimeout):
            await arefs[0].result(timeout=0.01)
        await asyncio.sleep(0.2)  # the unsubscriptions go out on the loop's next turns
        assert done_channels(redis_url, namespace) == []

    asyncio.run(give_up())
    assert done_channels(redis_url, namespace) == []
    app.close()
    assert settled(redis_url, name, 0) == 0


def test_waiters_get_their_results_after_the_subscription_is_killed(
    make_workers: Any, redis_url: str, namespace: str
) -> None:
    app, name = named_app(redis_url, namespace)
    app.client.poll = 3600.0  # no polling to fall back on: only notices and re-checks
    r = redis.Redis.from_url(redis_url)
    workers = make_workers(redis_url, namespace)
    workers.start_many(1, APP, concurrency=10)
    workers.pause("w1")  # the runs wait while the subscription dies
    refs = [app.enqueue("echo", {"n": i}) for i in range(20)]
    results: list[Any] = [None] * 20

    def wait(i: int) -> None:
        try:
            results[i] = refs[i].result(timeout=120)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    wait_until(lambda: len(done_channels(redis_url, namespace)) == 20, 30, "20 subscriptions")
    killed = r.client_kill_filter(_type="pubsub")
    assert killed >= 1
    workers.resume("w1")
    for t in threads:
        t.join(120)
    assert results == list(range(20))
    r.close()
    app.close()
    assert settled(redis_url, name, 0) == 0


@pytest.mark.parametrize("fault", ["connections killed", "redis restarted"])
def test_waits_and_enqueues_ride_out_lost_connections(
    make_workers: Any, namespace: str, fault: str
) -> None:
    """Sync and async waits in progress, and the next enqueue on the same pools, go on
    through every connection killed (CLIENT KILL TYPE normal: a server's idle
    timeout or a proxy does the same) or Redis restarted (3 s down, AOF)."""
    with RedisServer(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        app, _ = named_app(server.url, namespace)
        workers: WorkerProcesses = make_workers(server.url, namespace)
        workers.start_many(1, APP, concurrency=20)
        workers.wait_ready()
        workers.pause("w1")  # the runs wait while the fault happens
        sync_refs = [app.enqueue("echo", {"n": i}) for i in range(5)]
        results: dict[str, Any] = {}
        async_ready = threading.Event()
        fault_done = threading.Event()

        def wait_sync(i: int) -> None:
            try:
                results[f"sync {i}"] = sync_refs[i].result(timeout=120)
            except BaseException as exc:
                results[f"sync {i}"] = exc

        async def async_side() -> None:
            refs = [await app.aenqueue("echo", {"n": 10 + i}) for i in range(5)]
            async_ready.set()
            got = await asyncio.gather(
                *(r.result(timeout=120) for r in refs), return_exceptions=True
            )
            results.update({f"async {i}": g for i, g in enumerate(got)})
            assert fault_done.wait(120)
            try:  # the same loop's pool, after the fault
                results["aenqueue after"] = await (await app.aenqueue("echo", {"n": 99})).result(
                    timeout=120
                )
            except BaseException as exc:
                results["aenqueue after"] = exc

        threads = [threading.Thread(target=wait_sync, args=(i,)) for i in range(5)]
        threads.append(threading.Thread(target=lambda: asyncio.run(async_side())))
        for t in threads:
            t.start()
        assert async_ready.wait(60)
        wait_until(lambda: len(done_channels(server.url, namespace)) == 10, 30, "10 subscriptions")
        if fault == "connections killed":
            with redis.Redis.from_url(server.url) as r:
                assert r.client_kill_filter(_type="normal", skipme=True) >= 2
        else:
            server.stop()
            time.sleep(3)  # the fault: Redis down for 3 s
            server.start()
        fault_done.set()
        workers.resume("w1")
        for t in threads:
            t.join(180)
        assert results == {
            **{f"sync {i}": i for i in range(5)},
            **{f"async {i}": 10 + i for i in range(5)},
            "aenqueue after": 99,
        }
        assert app.enqueue("echo", {"n": 7}).result(timeout=120) == 7
        app.close()


def _child_waits(app: Rstick) -> None:
    assert app.enqueue("echo", {"n": 42}).result(timeout=60) == 42


def test_a_forked_child_gets_connections_of_its_own(
    workers: WorkerProcesses, redis_url: str, namespace: str
) -> None:
    workers.start_many(1, APP, concurrency=10)
    app, name = named_app(redis_url, namespace)
    assert app.enqueue("echo", {"n": 1}).result(timeout=60) == 1  # pool and subscription open
    child = multiprocessing.get_context("fork").Process(target=_child_waits, args=(app,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert app.enqueue("echo", {"n": 2}).result(timeout=60) == 2  # the parent's still work
    app.close()
    assert settled(redis_url, name, 0) == 0


# -- a full pool -------------------------------------------------------------------------


def test_a_command_waits_for_a_free_connection_then_names_the_pool(
    redis_url: str, namespace: str
) -> None:
    app = Rstick(redis_url=redis_url, namespace=namespace, pool_size=2, pool_timeout=0.2)
    pool = app.client.redis.connection_pool
    held = [pool.get_connection(), pool.get_connection()]
    with pytest.raises(PoolTimeout) as info:
        app.get_run("x")
    assert str(info.value) == (
        "no free connection in rstick's sync pool (2 connections to 127.0.0.1:"
        f"{redis_url.split(':')[2].split('/')[0]}/0) within 0.2s: raise "
        "Rstick(pool_size=...) or pool_timeout=..."
    )
    assert isinstance(info.value, redis.ConnectionError)  # what redis-py callers catch
    # A connection given back within the timeout serves the waiting command.
    timer = threading.Timer(0.05, pool.release, args=(held.pop(),))
    timer.start()
    app.client.redis.connection_pool.timeout = 30
    with pytest.raises(Exception, match="not found"):
        app.get_run("x")
    timer.join()
    pool.release(held.pop())

    async def async_side() -> None:
        apool = app.client.aredis.connection_pool
        taken = [await apool.get_connection(), await apool.get_connection()]
        with pytest.raises(PoolTimeout, match="rstick's async pool \\(2 connections"):
            await app.client.aredis.get("x")
        for conn in taken:
            await apool.release(conn)

    asyncio.run(async_side())
    app.close()


def test_close_ends_waits_in_progress(redis_url: str, namespace: str) -> None:
    app, name = named_app(redis_url, namespace)

    @app.task()
    def never(ctx: Any) -> None:
        return None

    ref = app.enqueue("never")
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            ref.result(timeout=60)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    wait_until(lambda: done_channels(redis_url, namespace), 30, "the subscription")
    app.close()
    t.join(30)
    assert [type(e) for e in outcome] == [ClientClosed]
    assert settled(redis_url, name, 0) == 0


def test_a_wait_looking_at_its_run_when_the_client_closes_ends_too(
    redis_url: str, namespace: str
) -> None:
    app, name = named_app(redis_url, namespace)

    @app.task()
    def never(ctx: Any) -> None:
        return None

    ref = app.enqueue("never")
    redis_client = app.client.redis
    hget = redis_client.hget

    def close_then_hget(*args: Any) -> Any:
        app.close()  # as another thread would, right under this look
        return hget(*args)

    redis_client.hget = close_then_hget
    with pytest.raises(ClientClosed, match=f"while waiting for run {ref.run_id}"):
        ref.result(timeout=60)
    assert settled(redis_url, name, 0) == 0  # the closed pool reopened nothing
