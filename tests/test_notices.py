"""Done notices: the bookkeeping of one shared subscription, and the sync and async
subscriptions on fakeredis: many waiters, no residue, and a look at every run after
a lost connection."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from drive import drain, run, run_until_idle, started
from redis.exceptions import ConnectionError as RedisConnectionError

from rstick import Context, ResultTimeout, Rstick
from rstick.async_notices import AsyncNotices
from rstick.notices import Notices, Subscriptions, subscription_kwargs
from rstick.refs import AsyncRunRef


class Recorder:
    """A waiter that writes down its wakes."""

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.wakes: list[bytes | None] = []

    def wake(self, status: bytes | None) -> None:
        self.wakes.append(status)


# -- the bookkeeping -------------------------------------------------------------


def test_a_channel_is_subscribed_once_and_confirmed_for_all_its_waiters() -> None:
    subs: Subscriptions[Recorder] = Subscriptions()
    subs.connect()
    a, b = Recorder(b"run1"), Recorder(b"run1")
    assert subs.add(a) is True  # send SUBSCRIBE run1
    assert subs.add(b) is False  # already on its way
    assert a.wakes == b.wakes == []  # not confirmed yet: no look at the run yet
    subs.subscribed(b"run1")
    assert a.wakes == b.wakes == [None]
    late = Recorder(b"run1")
    assert subs.add(late) is False
    assert late.wakes == [None]  # confirmed already: it looks at once


def test_a_notice_wakes_every_waiter_of_its_run_only() -> None:
    subs: Subscriptions[Recorder] = Subscriptions()
    subs.connect()
    a, b, other = Recorder(b"run1"), Recorder(b"run1"), Recorder(b"run2")
    for w in (a, b, other):
        subs.add(w)
    subs.message(b"run1", b"succeeded")
    assert a.wakes == b.wakes == [b"succeeded"]
    assert other.wakes == []


def test_the_last_waiter_of_a_run_unsubscribes_it() -> None:
    subs: Subscriptions[Recorder] = Subscriptions()
    subs.connect()
    a, b = Recorder(b"run1"), Recorder(b"run1")
    subs.add(a)
    subs.add(b)
    assert subs.remove(a) is False
    assert subs.remove(a) is False  # twice is harmless
    assert subs.remove(b) is True  # send UNSUBSCRIBE run1
    assert subs.waiting == {} and subs.live == set()


def test_an_old_acknowledgement_does_not_confirm_a_new_subscription() -> None:
    # SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE of one channel, before any reply: the first
    # SUBSCRIBE's acknowledgement comes before Redis has read the second one.
    subs: Subscriptions[Recorder] = Subscriptions()
    subs.connect()
    first = Recorder(b"run1")
    assert subs.add(first)
    assert subs.remove(first)
    second = Recorder(b"run1")
    assert subs.add(second)
    subs.subscribed(b"run1")  # the first one's
    assert second.wakes == []
    subs.subscribed(b"run1")  # its own
    assert second.wakes == [None]
    assert first.wakes == []


def test_a_new_connection_subscribes_every_run_waited_on_and_wakes_them_all() -> None:
    subs: Subscriptions[Recorder] = Subscriptions()
    before = Recorder(b"run1")
    assert subs.add(before) is False  # no connection yet: nothing to send
    subs.connect()
    confirmed = Recorder(b"run2")
    subs.add(confirmed)
    subs.subscribed(b"run1")
    subs.subscribed(b"run2")
    assert before.wakes == confirmed.wakes == [None]
    subs.disconnect()
    during = Recorder(b"run3")
    assert subs.add(during) is False
    # Notices may have been published meanwhile: everyone looks again once resubscribed.
    assert sorted(subs.connect()) == [b"run1", b"run2", b"run3"]
    for channel in (b"run1", b"run2", b"run3"):
        subs.subscribed(channel)
    assert before.wakes == confirmed.wakes == [None, None]
    assert during.wakes == [None]


# -- the sync subscription -----------------------------------------------------------


def define(app: Rstick) -> None:
    @app.task
    def double(ctx: Context, n: int) -> int:
        return 2 * n


def test_threads_share_one_subscription_and_leave_nothing_subscribed(app: Rstick) -> None:
    define(app)
    refs = [app.enqueue("double", {"n": i}) for i in range(20)]
    results: dict[int, Any] = {}

    def wait(i: int) -> None:
        results[i] = refs[i].result(timeout=30)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    notices = app.client.notices
    wait_until(lambda: len(notices.channels()) == 20)
    run_until_idle(app, "w1")
    for t in threads:
        t.join(30)
    assert results == {i: 2 * i for i in range(20)}
    assert notices.channels() == []
    assert numsub(app, [r.run_id for r in refs]) == [0] * 20
    assert app.client.notices is notices  # one for the client, all along


def test_a_waiter_that_times_out_leaves_nothing_subscribed(app: Rstick) -> None:
    define(app)
    ref = app.enqueue("double", {"n": 1})
    with pytest.raises(ResultTimeout):
        ref.result(timeout=0.05)
    assert app.client.notices.channels() == []
    assert numsub(app, [ref.run_id]) == [0]


class Breakable:
    """A fakeredis connection that the test can make fail, as a lost connection does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def can_read(self, timeout: float = 0) -> bool:
        if self.broken:
            raise RedisConnectionError("lost")
        return bool(self.inner.can_read(timeout))


def test_after_a_lost_connection_every_waiter_looks_at_its_run_again(app: Rstick) -> None:
    define(app)
    pool = app.client.redis.connection_pool
    kwargs = subscription_kwargs(pool.connection_kwargs)
    may_connect = threading.Event()
    may_connect.set()
    made: list[Breakable] = []

    def connect() -> Breakable:
        assert may_connect.wait(30)
        made.append(Breakable(pool.connection_class(**kwargs)))
        return made[-1]

    notices = app.client._notices = Notices(connect, tick=0.01)
    app.client.poll = 3600.0  # no polling: only the notices and the looks they cause
    refs = [app.enqueue("double", {"n": i}) for i in range(3)]
    results: dict[int, Any] = {}

    def wait(i: int) -> None:
        try:
            results[i] = refs[i].result()  # no timeout: no last look at the deadline either
        except BaseException as exc:  # checked below
            results[i] = exc

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: numsub(app, [r.run_id for r in refs]) == [1, 1, 1])
    # The connection is lost, and the runs finish before the next one is made:
    # their notices reach nobody.
    may_connect.clear()
    made[0].broken = True
    wait_until(lambda: numsub(app, [r.run_id for r in refs]) == [0, 0, 0])
    run_until_idle(app, "w1")
    may_connect.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert results == {0: 0, 1: 2, 2: 4}
    assert len(made) == 2
    notices.close()


def test_a_lost_connection_is_made_again_only_when_someone_waits(app: Rstick) -> None:
    define(app)
    pool = app.client.redis.connection_pool
    kwargs = subscription_kwargs(pool.connection_kwargs)
    made: list[Breakable] = []

    def connect() -> Breakable:
        made.append(Breakable(pool.connection_class(**kwargs)))
        return made[-1]

    notices = app.client._notices = Notices(connect, tick=0.01)
    ref = app.enqueue("double", {"n": 1})
    with pytest.raises(ResultTimeout):
        ref.result(timeout=0.05)
    made[0].broken = True
    # Nobody waits: the listener lets it go and waits for a waiter, not for Redis.
    wait_until(lambda: notices._conn is None)
    run_until_idle(app, "w1")
    assert len(made) == 1
    assert ref.result(timeout=5) == 2
    assert len(made) == 2
    notices.close()


def test_close_ends_the_waits_in_progress(app: Rstick) -> None:
    define(app)
    ref = app.enqueue("double", {"n": 1})
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            ref.result(timeout=30)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    notices = app.client.notices
    notices.tick = 0.01
    wait_until(lambda: notices.channels())
    app.close()
    t.join(30)
    assert [str(e) for e in outcome] == [
        f"the client was closed while waiting for run {ref.run_id}"
    ]


# -- the async subscription -------------------------------------------------------


def test_tasks_share_their_loops_subscription_and_leave_nothing_subscribed(
    app: Rstick,
) -> None:
    define(app)

    async def scenario() -> list[Any]:
        refs = [await app.aenqueue("double", {"n": i}) for i in range(50)]
        waits = asyncio.gather(*(ref.result(timeout=30) for ref in refs))
        notices = app.client._loop_side().notices
        for _ in range(100):
            if len(notices.channels()) == 50:
                break
            await asyncio.sleep(0)
        assert len(notices.channels()) == 50
        async with started(app, "w1", concurrency=50) as [w1]:
            await drain(w1)
        results = await waits
        await asyncio.sleep(0)  # the unsubscriptions go out on the next turn
        assert notices.channels() == []
        assert await anumsub(app, [r.run_id for r in refs]) == [0] * 50
        return results

    assert run(scenario()) == [2 * i for i in range(50)]


def test_cancelled_and_timed_out_async_waiters_leave_nothing_subscribed(app: Rstick) -> None:
    define(app)

    async def scenario() -> None:
        refs = [await app.aenqueue("double", {"n": i}) for i in range(10)]
        waits = [asyncio.create_task(ref.result(timeout=30)) for ref in refs]
        notices = app.client._loop_side().notices
        for _ in range(100):
            if len(notices.channels()) == 10:
                break
            await asyncio.sleep(0)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        with pytest.raises(ResultTimeout):
            await refs[0].result(timeout=0.01)
        await asyncio.sleep(0)
        assert notices.channels() == []
        assert await anumsub(app, [r.run_id for r in refs]) == [0] * 10

    run(scenario())


class BreakableAsync:
    """An async fakeredis connection that the test can make fail."""

    def __init__(self, inner: Any, may_connect: asyncio.Event) -> None:
        self.inner = inner
        self.may_connect = may_connect
        self.lost = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def connect(self) -> None:
        await self.may_connect.wait()
        await self.inner.connect()

    async def read_response(self, **kwargs: Any) -> Any:
        read = asyncio.ensure_future(self.inner.read_response(**kwargs))
        lost = asyncio.ensure_future(self.lost.wait())
        await asyncio.wait({read, lost}, return_when=asyncio.FIRST_COMPLETED)
        if read.done():
            lost.cancel()
            return read.result()
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
        await self.inner.disconnect()
        raise RedisConnectionError("lost")


def test_after_a_lost_connection_every_async_waiter_looks_again(app: Rstick) -> None:
    define(app)
    app.client.poll = 3600.0

    async def scenario() -> list[Any]:
        side = app.client._loop_side()
        pool = side.redis.connection_pool
        kwargs = subscription_kwargs(pool.connection_kwargs)
        may_connect = asyncio.Event()
        may_connect.set()
        made: list[BreakableAsync] = []

        def connect() -> BreakableAsync:
            made.append(BreakableAsync(pool.connection_class(**kwargs), may_connect))
            return made[-1]

        side.notices = AsyncNotices(connect, asyncio.get_running_loop())
        refs: list[AsyncRunRef] = [await app.aenqueue("double", {"n": i}) for i in range(3)]
        waits = asyncio.gather(*(ref.result() for ref in refs))
        ids = [r.run_id for r in refs]
        for _ in range(1000):
            if await anumsub(app, ids) == [1, 1, 1]:
                break
            await asyncio.sleep(0.001)
        # The connection is lost, and the runs finish before the next one is made:
        # their notices go to the lost one, which nobody reads.
        may_connect.clear()
        made[0].lost.set()
        for _ in range(1000):
            if len(made) == 2:  # the reader is making the next one
                break
            await asyncio.sleep(0.001)
        assert len(made) == 2
        async with started(app, "w1") as [w1]:
            await drain(w1)
        may_connect.set()
        results = await asyncio.wait_for(waits, 30)
        assert len(made) == 2
        await side.notices.aclose()
        return results

    assert run(scenario()) == [0, 2, 4]


def test_each_event_loop_gets_its_own_side_closed_when_the_loop_ends(app: Rstick) -> None:
    define(app)

    async def one(n: int) -> Any:
        side = app.client._loop_side()
        ref = await app.aenqueue("double", {"n": n})
        async with started(app, "w1") as [w1]:
            await drain(w1)
        return side, await ref.result(timeout=5)

    first, result1 = run(one(1))
    second, result2 = run(one(2))
    assert (result1, result2) == (2, 4)
    assert first is not second
    assert first.closed and second.closed  # asyncio.run's shutdown closed each
    assert app.client._loops == {}


# -- helpers -------------------------------------------------------------------


def wait_until(condition: Any, rounds: int = 3000) -> None:
    """Wait for another thread to make ``condition`` true (bounded)."""
    done = threading.Event()
    for _ in range(rounds):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition never held")


def numsub(app: Rstick, run_ids: list[str]) -> list[int]:
    channels = [app.keys.done(r) for r in run_ids]
    return [n for _, n in app.client.redis.pubsub_numsub(*channels)]


async def anumsub(app: Rstick, run_ids: list[str]) -> list[int]:
    channels = [app.keys.done(r) for r in run_ids]
    return [n for _, n in await app.client.aredis.pubsub_numsub(*channels)]


@pytest.mark.parametrize("side", ["sync", "async"])
def test_the_listening_connection_is_made_without_hiredis(side: str) -> None:
    """redis-py 7+ turns maintenance notices on by default, and they refuse the RESP2
    pure-Python parser: the subscription must drop them, or every wait without
    hiredis falls back to polling (5 s) after a traceback."""
    import redis
    import redis.asyncio as aredis
    from redis._parsers import _AsyncRESP2Parser, _RESP2Parser

    module: Any = redis if side == "sync" else aredis
    parser = _RESP2Parser if side == "sync" else _AsyncRESP2Parser
    pool_kwargs = module.Redis(host="127.0.0.1").connection_pool.connection_kwargs
    kwargs = subscription_kwargs({**pool_kwargs, "parser_class": parser})

    connection = module.Connection(**kwargs)  # raised RedisError before

    assert connection.protocol in (2, "2")
