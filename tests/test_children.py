"""Child workflows on fakeredis: sticky children pinned at creation, refusals, the
parent link, and the slot a waiting parent lends its child (no deadlock)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import fakeredis
import pytest

from rstick import (
    AsyncRunRef,
    Context,
    Rstick,
    RunFailed,
    RunRef,
    StickyChildError,
    StickyStrategy,
    Worker,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sibling(app: Rstick) -> Rstick:
    """Another app (another code base) on the same fake server and namespace."""
    server = app.client.redis.connection_pool.connection_kwargs["server"]
    other = Rstick(redis_url="redis://fake", namespace=app.namespace)
    other.client.use(
        sync=fakeredis.FakeRedis(server=server), aio=fakeredis.FakeAsyncRedis(server=server)
    )
    return other


def define(app: Rstick) -> None:
    @app.workflow(sticky=StickyStrategy.SOFT)
    class Child:
        @app.step()
        def work(self, ctx: Context) -> dict[str, Any]:
            return {"worker": ctx.worker.id(), "input": ctx.input}

    @app.workflow()
    class Plain:
        @app.step()
        def work(self, ctx: Context) -> str:
            return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Spawner:
        """Spawns input["child"] and returns at once (the test drives the child)."""

        @app.step()
        def spawn(self, ctx: Context) -> dict[str, Any]:
            ref = ctx.spawn_workflow(ctx.input["child"], {"n": 1}, sticky=ctx.input["sticky"])
            return {"child": ref.run_id, "worker": ctx.worker.id()}

    @app.workflow(sticky=StickyStrategy.SOFT)
    class AsyncSpawner:
        @app.step()
        async def spawn(self, ctx: Context) -> dict[str, Any]:
            ref = await ctx.aspawn_workflow("Child", {"n": 2}, sticky=True)
            assert isinstance(ref, AsyncRunRef)
            return {"child": ref.run_id, "worker": ctx.worker.id()}

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Waiter:
        """Waits on its sticky child: with one slot, only a lent slot lets it finish."""

        @app.step()
        def wait(self, ctx: Context) -> dict[str, Any]:
            ref = ctx.spawn_workflow("Child", {"n": 3}, sticky=True)
            return {"worker": ctx.worker.id(), "child": ref.result(timeout=10)}

    @app.workflow(sticky=StickyStrategy.SOFT)
    class AsyncWaiter:
        @app.step()
        async def wait(self, ctx: Context) -> dict[str, Any]:
            ref = await ctx.aspawn_workflow("Child", {"n": 4}, sticky=True)
            return {"worker": ctx.worker.id(), "child": await ref.result(timeout=10)}


def stream_runs(app: Rstick, stream: str) -> list[str]:
    """The run ids of the entries a stream holds."""
    return [f[b"r"].decode() for _, f in app.client.redis.xrange(stream)]


def snapshot(app: Rstick) -> dict[bytes, Any]:
    """Every key of the fake server with its value: "nothing written" is equality."""
    r = app.client.redis
    return {k: r.dump(k) for k in r.keys("*")}


# -- pinned at creation --------------------------------------------------------


def test_sticky_child_is_pinned_to_the_parents_worker_at_creation(app: Rstick) -> None:
    define(app)
    keys = app.keys

    async def scenario() -> str:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        parent = app.enqueue("Spawner", {"child": "Child", "sticky": True})
        assert await w1.run_once() == 1
        child_id: str = parent.result(timeout=1)["spawn"]["child"]

        child = app.get_run(child_id)
        assert child.worker == "w1"
        assert child.parent == f"{parent.run_id}/spawn"
        assert stream_runs(app, keys.personal("w1")) == [child_id]
        assert child_id not in stream_runs(app, keys.queue("default"))
        assert child_id.encode() in app.client.redis.smembers(keys.pinned("w1"))

        # Another worker of the same code reads the shared queue: nothing for it there.
        w2 = Worker(app, worker_id="w2")
        await w2.start()
        assert await w2.run_once() == 0
        assert await w1.run_once() == 1
        return child_id

    child_id = run(scenario())
    assert RunRef(app.client, child_id).result(timeout=1) == {
        "work": {"worker": "w1", "input": {"n": 1}}
    }
    created = app.client.history(child_id)[0]
    assert created["ev"] == "created"
    assert created["w"] == "w1"


def test_async_spawn_pins_the_child_too(app: Rstick) -> None:
    define(app)

    async def scenario() -> str:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        parent = await app.aenqueue("AsyncSpawner")
        assert await w1.run_once() == 1
        out = await parent.result(timeout=1)
        child_id: str = out["spawn"]["child"]
        assert app.get_run(child_id).worker == "w1"
        assert app.get_run(child_id).parent == f"{parent.run_id}/spawn"
        assert stream_runs(app, app.keys.personal("w1")) == [child_id]
        assert await w1.run_once() == 1
        return child_id

    child_id = run(scenario())
    assert RunRef(app.client, child_id).result(timeout=1)["work"]["worker"] == "w1"


def test_child_without_sticky_is_an_ordinary_run_that_records_its_parent(app: Rstick) -> None:
    define(app)

    async def scenario() -> str:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        parent = app.enqueue("Spawner", {"child": "Plain", "sticky": False})
        assert await w1.run_once() == 1
        child_id: str = parent.result(timeout=1)["spawn"]["child"]
        child = app.get_run(child_id)
        assert child.worker is None
        assert child.parent == f"{parent.run_id}/spawn"
        assert stream_runs(app, app.keys.queue("default")) == [child_id]
        assert stream_runs(app, app.keys.personal("w1")) == []
        return child_id

    run(scenario())


# -- refusals ------------------------------------------------------------------


def context_on(worker: Worker) -> Context:
    return Context("parent-run", "spawn", None, 1, worker)


def test_sticky_child_without_a_sticky_strategy_is_refused_and_nothing_written(
    app: Rstick,
) -> None:
    define(app)
    ctx = context_on(Worker(app, worker_id="w1"))
    before = snapshot(app)
    with pytest.raises(StickyChildError, match=r"'Plain'.*has no sticky strategy"):
        ctx.spawn_workflow("Plain", {}, sticky=True)
    with pytest.raises(StickyChildError, match="has no sticky strategy"):
        run(ctx.aspawn_workflow("Plain", {}, sticky=True))
    assert snapshot(app) == before


def test_sticky_child_this_worker_has_not_registered_is_refused_and_nothing_written(
    app: Rstick,
) -> None:
    define(app)
    other = sibling(app)

    @other.workflow(sticky=StickyStrategy.SOFT)
    class Remote:
        @other.step()
        def work(self, ctx: Context) -> None:
            return None

    run(Worker(other, worker_id="elsewhere").start())  # Remote is known in Redis...
    assert app.client.definition("Remote").sticky == StickyStrategy.SOFT
    ctx = context_on(Worker(app, worker_id="w1"))  # ...but not to this worker
    before = snapshot(app)
    with pytest.raises(StickyChildError, match="worker w1 has not registered it"):
        ctx.spawn_workflow("Remote", {}, sticky=True)
    with pytest.raises(StickyChildError, match="has not registered"):
        run(ctx.aspawn_workflow("Remote", {}, sticky=True))
    assert snapshot(app) == before


def test_a_refused_spawn_fails_the_parent_step_with_the_rule(app: Rstick) -> None:
    define(app)

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        assert await w1.run_once() == 0
        parent = app.enqueue("Spawner", {"child": "Plain", "sticky": True})
        assert await w1.run_once() == 1
        with pytest.raises(RunFailed) as failed:
            parent.result(timeout=1)
        assert failed.value.step == "spawn"
        assert failed.value.error_type == "StickyChildError"
        assert "has no sticky strategy" in failed.value.error_message

    run(scenario())
    assert [r.workflow for r in app.client.list_runs()] == ["Spawner"]


# -- a waiting parent lends its slot -------------------------------------------


def test_lend_slot_adds_a_slot_while_waiting_and_takes_it_back(app: Rstick) -> None:
    define(app)

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        assert w1.free == 1
        with w1.lend_slot():
            assert w1.free == 2
            with w1.lend_slot():  # a parent waiting on two children in turn, nested
                assert w1.free == 3
            assert w1.free == 2
        assert w1.free == 1

        # From a step's thread the change is handed to the event loop.
        entered = asyncio.Event()
        leave = asyncio.Event()
        loop = asyncio.get_running_loop()

        def in_thread() -> None:
            with w1.lend_slot():
                loop.call_soon_threadsafe(entered.set)
                asyncio.run_coroutine_threadsafe(leave.wait(), loop).result(timeout=5)

        thread = loop.run_in_executor(None, in_thread)
        await asyncio.wait_for(entered.wait(), 5)
        await wait_until(lambda: w1.free == 2)
        leave.set()
        await asyncio.wait_for(thread, 5)
        await wait_until(lambda: w1.free == 1)

    run(scenario())


async def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def serve_until_idle(worker: Worker, timeout: float = 10.0) -> None:
    """Run what is running to the end, completing outcomes as they come (what the
    worker's complete loop does), so a parent sees its child finish."""
    deadline = time.monotonic() + timeout
    while worker.running:
        if time.monotonic() > deadline:
            raise AssertionError(f"steps still running after {timeout}s: {list(worker.running)}")
        await asyncio.wait(list(worker.running.values()), timeout=0.05)
        await worker.flush()
    await worker.flush()


@pytest.mark.parametrize("workflow", ["Waiter", "AsyncWaiter"])
def test_a_parent_waiting_on_its_sticky_child_lends_its_only_slot(
    app: Rstick, workflow: str
) -> None:
    define(app)

    async def scenario() -> RunRef:
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        parent = app.enqueue(workflow)
        assert await w1.fetch(None) == 1
        # The parent runs and spawns its child: its slot is lent while it waits...
        await wait_until(lambda: w1.free == 1 and app.client.redis.xlen(w1.personal) == 1)
        assert len(w1.running) == 1
        # ...so the child's step, in this worker's stream, is taken with it.
        assert await w1.fetch(None) == 1
        assert len(w1.running) == 2
        await serve_until_idle(w1)
        assert w1.free == 1  # the slot came back
        return parent

    parent = run(scenario())
    out = parent.result(timeout=1)
    assert out["wait"]["worker"] == "w1"
    assert out["wait"]["child"]["work"]["worker"] == "w1"
    child = [r for r in app.client.list_runs() if r.workflow == "Child"]
    assert len(child) == 1
    assert child[0].parent == f"{parent.run_id}/wait"
