"""The client's connections on fakeredis: pools that make a command wait and then say
which pool was full, the connections threads keep, and closed pools."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import fakeredis
import pytest
from drive import run

from rstick import Rstick
from rstick.connections import AsyncPool, SyncPool, ThreadConnections
from rstick.errors import ClientClosed, PoolTimeout


def sync_pool(server: Any, size: int, timeout: float = 0.01) -> SyncPool:
    fake = fakeredis.FakeRedis(server=server).connection_pool
    kwargs = {**fake.connection_kwargs, "host": "10.0.0.1", "port": 6380, "db": 2}
    return SyncPool(
        connection_class=fake.connection_class, max_connections=size, timeout=timeout, **kwargs
    )


def test_a_full_sync_pool_says_which_pool_and_how_big(fake_server: Any) -> None:
    pool = sync_pool(fake_server, 2)
    held = [pool.get_connection(), pool.get_connection()]
    with pytest.raises(PoolTimeout) as info:
        pool.get_connection()
    assert str(info.value) == (
        "no free connection in rstick's sync pool (2 connections to 10.0.0.1:6380/2) "
        "within 0.01s: raise Rstick(pool_size=...) or pool_timeout=..."
    )
    pool.release(held.pop())
    assert pool.get_connection() is not None  # a connection given back serves the next


def test_a_full_async_pool_says_which_pool_and_how_big(fake_server: Any) -> None:
    fake = fakeredis.FakeAsyncRedis(server=fake_server).connection_pool
    kwargs = {**fake.connection_kwargs, "host": "10.0.0.1", "port": 6380, "db": 0}

    async def scenario() -> str:
        pool = AsyncPool(
            connection_class=fake.connection_class, max_connections=1, timeout=0.01, **kwargs
        )
        held = await pool.get_connection()
        with pytest.raises(PoolTimeout) as info:
            await pool.get_connection()
        await pool.release(held)
        return str(info.value)

    assert run(scenario()).startswith(
        "no free connection in rstick's async pool (1 connections to 10.0.0.1:6380/0) within"
    )


def test_a_closed_pool_opens_nothing_again(fake_server: Any) -> None:
    pool = sync_pool(fake_server, 2)
    pool.release(pool.get_connection())
    pool.close()
    with pytest.raises(ClientClosed, match=r"^the client was closed$"):
        pool.get_connection()


def test_at_most_limit_threads_keep_a_connection_and_give_it_back(fake_server: Any) -> None:
    pool = sync_pool(fake_server, 4)
    kept = ThreadConnections(pool, limit=2)
    got: list[Any] = []
    all_took = threading.Barrier(5)

    def take() -> None:
        got.append(kept.get())
        assert kept.get() is got[-1] or got[-1] is None  # the same one all along
        all_took.wait(10)

    threads = [threading.Thread(target=take) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(conn is not None for conn in got) == 2
    assert kept.kept == 0  # their threads ended
    taken = [pool.get_connection() for _ in range(4)]  # all free again
    assert len({id(conn) for conn in taken}) == 4


def test_pool_settings_are_checked() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="pool_size"):
            Rstick(pool_size=bad)  # type: ignore[arg-type]
    for bad_timeout in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="pool_timeout"):
            Rstick(pool_timeout=bad_timeout)
    app = Rstick(redis_url="redis://127.0.0.1:1/0", pool_size=3, pool_timeout=0.5)
    pool = app.client.redis.connection_pool
    assert (type(pool), pool.max_connections, pool.timeout) == (SyncPool, 3, 0.5)

    async def async_pool() -> Any:
        return app.client.aredis.connection_pool

    apool = asyncio.run(async_pool())
    assert (type(apool), apool.max_connections, apool.timeout) == (AsyncPool, 3, 0.5)
    app.close()
