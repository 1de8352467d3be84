"""Child workflows on fakeredis: sticky children pinned at creation, refusals, the
parent link, and the slot a waiting parent lends its child (no deadlock)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from drive import run, run_until_idle, sibling, stop_beating

from rstick import (
    AsyncRunRef,
    Context,
    PayloadTooLarge,
    Rstick,
    RunFailed,
    RunRef,
    StickyChildError,
    StickyStrategy,
    Worker,
)
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock


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


def test_a_step_named_c_is_not_taken_for_a_child(app: Rstick) -> None:
    define(app)

    @app.workflow()
    class Abc:
        @app.step()
        def c(self, ctx: Context) -> str:
            return ctx.spawn_workflow("Plain").run_id

    parent = app.enqueue("Abc")
    run_until_idle(app, "w1")
    child_id = parent.result(timeout=1)["c"]
    # The step's own fields (c.st, c.a, c.w, c.t0, ...) are not children.
    assert parent.get().children == [child_id]


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


def test_a_child_input_over_the_size_limit_is_refused_and_nothing_written(app: Rstick) -> None:
    app.max_payload_bytes = 100
    define(app)
    ctx = context_on(Worker(app, worker_id="w1"))
    before = snapshot(app)
    for sticky in (True, False):
        with pytest.raises(PayloadTooLarge, match=r"^input is 205 bytes packed, over the limit"):
            ctx.spawn_workflow("Child", {"n": "n" * 200}, sticky=sticky)
        with pytest.raises(PayloadTooLarge, match="over the limit of 100"):
            run(ctx.aspawn_workflow("Child", {"n": "n" * 200}, sticky=sticky))
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


# -- idempotent spawn: a re-run step re-attaches to its child -------------------


def define_reruns(app: Rstick) -> None:
    """Parents whose step spawns, then fails its first attempt (retried at once)."""

    @app.workflow()
    class Flaky:
        @app.step()
        def work(self, ctx: Context) -> str:
            if ctx.input["fail"]:
                raise RuntimeError("the child was told to fail")
            return "fine"

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Retrier:
        """Two children (an ordinary one and a sticky one), then the attempt fails."""

        @app.step(retries=1, backoff=0)
        def spawn(self, ctx: Context) -> list[str]:
            key = {"key": f"{ctx.attempt}"} if ctx.input["keyed"] else {}
            plain = ctx.spawn_workflow("Plain", {"attempt": ctx.attempt}, **key)
            child = ctx.spawn_workflow("Child", {"attempt": ctx.attempt}, sticky=True, **key)
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails after spawning")
            return [plain.run_id, child.run_id]

    @app.workflow()
    class FlakyParent:
        """Waits on a child that fails when spawned by the first attempt."""

        @app.step(retries=1, backoff=0)
        def wait(self, ctx: Context) -> Any:
            key = {"key": f"{ctx.attempt}"} if ctx.input["keyed"] else {}
            ref = ctx.spawn_workflow("Flaky", {"fail": ctx.attempt == 1}, **key)
            return ref.result(timeout=10)


def define_plain_waiters(app: Rstick) -> None:
    """Parents waiting on an ordinary (not sticky) child: it goes to the shared queue."""

    @app.workflow()
    class PlainWaiter:
        @app.step()
        def wait(self, ctx: Context) -> dict[str, Any]:
            ref = ctx.spawn_workflow("Plain")
            return {"worker": ctx.worker.id(), "child": ref.result(timeout=ctx.input or 10)}

    @app.workflow()
    class AsyncPlainWaiter:
        @app.step()
        async def wait(self, ctx: Context) -> dict[str, Any]:
            ref = await ctx.aspawn_workflow("Plain")
            return {"worker": ctx.worker.id(), "child": await ref.result(timeout=10)}


def run_keys(app: Rstick) -> set[str]:
    prefix = app.keys.run("")
    return {k.decode()[len(prefix) :] for k in app.client.redis.keys(app.keys.run("*"))}


def created_events(app: Rstick, run_id: str) -> int:
    return sum(e["ev"] == "created" for e in app.client.history(run_id))


async def serve(worker: Worker, done: Any, timeout: float = 10.0) -> None:
    """What the worker's loops do, without blocking reads (fakeredis): move due
    entries, fetch into free slots, complete outcomes, until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout}s; running: {list(worker.running)}")
        await worker.move_due()
        if worker.free > 0:
            await worker.fetch(None)
        if worker.running:
            await asyncio.wait(list(worker.running.values()), timeout=0.02)
        else:
            await asyncio.sleep(0.005)
        await worker.flush()
    await serve_until_idle(worker, timeout)


def finished(app: Rstick, run_id: str) -> Any:
    return lambda: app.get_run(run_id).status.value in ("succeeded", "failed", "cancelled")


def family_finished(app: Rstick, run_id: str) -> Any:
    """The run and every child it spawned have finished."""
    return lambda: all(finished(app, r)() for r in [run_id, *app.get_run(run_id).children])


def test_a_retried_step_re_attaches_to_the_children_it_spawned(app: Rstick) -> None:
    define(app)
    define_reruns(app)

    async def scenario() -> RunRef:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        parent = app.enqueue("Retrier", {"keyed": False})
        await serve(w1, family_finished(app, parent.run_id))
        return parent

    parent = run(scenario())
    plain, child = parent.result(timeout=1)["spawn"]
    assert parent.get().step("spawn").attempts == 2
    # The second attempt spawned the same two children again: nothing new was created.
    assert sorted(parent.get().children) == sorted([plain, child])
    assert run_keys(app) == {parent.run_id, plain, child}
    for child_id in (plain, child):
        assert created_events(app, child_id) == 1
        assert app.get_run(child_id).parent == f"{parent.run_id}/spawn"
    # Each ran once, with the first attempt's input.
    assert RunRef(app.client, plain).result(timeout=1) == {"work": "w1"}
    assert RunRef(app.client, child).result(timeout=1)["work"]["input"] == {"attempt": 1}
    assert app.get_run(child).worker == "w1"


def test_an_explicit_key_per_attempt_starts_fresh_children(app: Rstick) -> None:
    define(app)
    define_reruns(app)

    async def scenario() -> RunRef:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        parent = app.enqueue("Retrier", {"keyed": True})
        await serve(w1, family_finished(app, parent.run_id))
        return parent

    parent = run(scenario())
    second = parent.result(timeout=1)["spawn"]
    children = parent.get().children
    assert len(children) == 4  # two per attempt
    assert set(second) < set(children)
    assert run_keys(app) == {parent.run_id, *children}
    first = set(children) - set(second)
    assert {app.get_run(c).workflow for c in first} == {"Plain", "Child"}
    for c in children:
        assert app.get_run(c).status.value == "succeeded"
        assert created_events(app, c) == 1
    # The second attempt's sticky child got the second attempt's input.
    assert RunRef(app.client, second[1]).result(timeout=1)["work"]["input"] == {"attempt": 2}


def test_a_re_run_on_another_worker_re_attaches_wherever_the_child_is(app: Rstick) -> None:
    """The step's worker was lost and the step runs again elsewhere (a new Context,
    attempt 2, another worker): same children in the same order, nothing written,
    and the refs it gets wait on the children the first attempt started."""
    define(app)

    async def scenario() -> None:
        w1, w2 = Worker(app, worker_id="w1"), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        # A parent run that stays out of the way (due in an hour): the test plays its step.
        parent = app.enqueue("Spawner", {"child": "Plain", "sticky": False}, delay=3600)
        first = Context(parent.run_id, "spawn", None, 1, w1)
        a = first.spawn_workflow("Plain", {"n": 1})
        b = first.spawn_workflow("Plain", {"n": 2})
        c = await first.aspawn_workflow("Child", {"n": 3}, sticky=True)
        assert len({a.run_id, b.run_id, c.run_id}) == 3  # one child per spawn call
        before = snapshot(app)

        again = Context(parent.run_id, "spawn", None, 2, w2, reassigned=True)
        a2 = await again.aspawn_workflow("Plain", {"n": "ignored"})
        b2 = again.spawn_workflow("Plain", {"n": "ignored"})
        c2 = again.spawn_workflow("Child", {"n": "ignored"}, sticky=True)
        assert [a2.run_id, b2.run_id, c2.run_id] == [a.run_id, b.run_id, c.run_id]
        assert snapshot(app) == before  # re-attached: nothing written
        assert app.get_run(c.run_id).worker == "w1"  # still pinned where it was made
        assert sorted(app.get_run(parent.run_id).children) == sorted([a.run_id, b.run_id, c.run_id])

        # Another step of the same run gets children of its own.
        assert Context(parent.run_id, "other", None, 1, w1).spawn_workflow("Plain").run_id not in {
            a.run_id,
            b.run_id,
        }

        await serve(w1, lambda: all(finished(app, r.run_id)() for r in (a, b, c)))
        assert await a2.result(timeout=1) == {"work": "w1"}
        assert b2.result(timeout=1) == {"work": "w1"}
        assert c2.result(timeout=1)["work"] == {"worker": "w1", "input": {"n": 3}}

    run(scenario())


@pytest.mark.parametrize("keyed", [False, True])
def test_a_retry_re_attached_to_a_failed_child_sees_the_failure_unless_keyed(
    app: Rstick, keyed: bool
) -> None:
    define(app)
    define_reruns(app)

    async def scenario() -> RunRef:
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        parent = app.enqueue("FlakyParent", {"keyed": keyed})
        await serve(w1, family_finished(app, parent.run_id))
        return parent

    parent = run(scenario())
    children = parent.get().children
    assert parent.get().step("wait").attempts == 2
    if keyed:  # attempt 2 started a child of its own, which succeeded
        assert parent.result(timeout=1) == {"wait": {"work": "fine"}}
        assert sorted(app.get_run(c).status.value for c in children) == ["failed", "succeeded"]
    else:  # attempt 2 re-attached to attempt 1's child, which had failed
        with pytest.raises(RunFailed) as failed:
            parent.result(timeout=1)
        assert failed.value.error_type == "RunFailed"
        assert "the child was told to fail" in failed.value.error_message
        assert [app.get_run(c).status.value for c in children] == ["failed"]
    assert run_keys(app) == {parent.run_id, *children}


# -- no deadlock with an ordinary child either ----------------------------------


@pytest.mark.parametrize("workflow", ["PlainWaiter", "AsyncPlainWaiter"])
def test_a_parent_waiting_on_an_ordinary_child_lends_its_only_slot(
    app: Rstick, workflow: str
) -> None:
    define(app)
    define_plain_waiters(app)

    async def scenario() -> tuple[RunRef, str]:
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        parent = app.enqueue(workflow)
        assert await w1.fetch(None) == 1
        # The parent spawned its child into the shared queue and waits on it: the
        # waiting parent is not counted as busy...
        await wait_until(lambda: w1.free == 1 and len(app.get_run(parent.run_id).children) == 1)
        child_id = app.get_run(parent.run_id).children[0]
        assert child_id in stream_runs(app, app.keys.queue("default"))
        assert len(w1.running) == 1
        # ...so the only worker, with its only slot, takes the child all the same.
        assert await w1.fetch(None) == 1
        assert len(w1.running) == 2
        await serve_until_idle(w1)
        assert w1.free == 1  # the slot came back
        return parent, child_id

    parent, child_id = run(scenario())
    assert parent.result(timeout=1) == {"wait": {"worker": "w1", "child": {"work": "w1"}}}
    assert app.get_run(child_id).parent == f"{parent.run_id}/wait"


def test_many_def_parents_waiting_on_ordinary_children_on_one_slot_all_finish(
    app: Rstick,
) -> None:
    define(app)
    define_plain_waiters(app)

    async def scenario() -> list[RunRef]:
        # Six def parents waiting at once, each holding a thread: more than the 1 + 4
        # threads the pool starts with, so it must grow with the slots they lend.
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        parents = app.enqueue_many("PlainWaiter", [2] * 6)  # each waits 2 s at most
        await serve(w1, lambda: all(family_finished(app, p.run_id)() for p in parents), 30)
        return parents

    for parent in run(scenario()):
        assert parent.result(timeout=1)["wait"]["child"] == {"work": "w1"}


# -- rstick runs show -------------------------------------------------------------


def test_runs_show_links_the_parent_and_its_child(
    app: Rstick, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from rstick_cli import settings
    from rstick_cli.main import cli

    define(app)

    async def scenario() -> RunRef:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        parent = app.enqueue("Spawner", {"child": "Child", "sticky": True})
        await serve(w1, family_finished(app, parent.run_id))
        return parent

    parent = run(scenario())
    (child,) = parent.get().children
    monkeypatch.setattr(settings, "make_app", lambda redis_url, namespace: sibling(app))

    def show(*args: str) -> str:
        result = CliRunner().invoke(cli, ["runs", "show", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    assert json.loads(show(parent.run_id, "--json"))["children"] == [child]
    shown = json.loads(show(child, "--json"))
    assert shown["parent"] == f"{parent.run_id}/spawn"
    assert shown["parent_status"] == "succeeded"
    assert child in show(parent.run_id)
    assert f"{parent.run_id}/spawn (succeeded)" in show(child)


# -- a sticky child goes where its parent goes -------------------------------------


def define_family(app: Rstick, parent: StickyStrategy) -> None:
    @app.workflow(sticky=StickyStrategy.SOFT)
    class SoftKid:
        @app.step()
        def work(self, ctx: Context) -> str:
            return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.HARD)
    class HardKid:
        @app.step()
        def work(self, ctx: Context) -> str:
            return ctx.worker.id()

    @app.workflow(sticky=parent)
    class Family:
        @app.step()
        def spawn(self, ctx: Context) -> str:
            return ctx.spawn_workflow(ctx.input, None, sticky=True).run_id

        @app.step(parents=["spawn"])
        def use(self, ctx: Context) -> str:
            return ctx.worker.id()


@pytest.mark.parametrize("kid", ["SoftKid", "HardKid"])
def test_a_sticky_child_moves_with_its_soft_parent(app: Rstick, kid: str) -> None:
    """Its own strategy aside, a sticky child belongs on its parent's worker: when a
    SOFT parent moves, the child follows it to whichever worker it lands on."""
    define_family(app, StickyStrategy.SOFT)
    parent = app.enqueue("Family", kid)

    async def scenario() -> None:
        w1, w2 = Worker(app, worker_id="w1", concurrency=1), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        await w1.run_once()  # spawn ran on w1: the child is pinned there, not yet run
        spawned = app.get_run(parent.run_id).children
        assert len(spawned) == 1 and app.get_run(spawned[0]).worker == "w1"
        await stop_beating(app, "w1")  # w1 dies
        report = await Reaper(app, "w2").reap(lead=False)
        assert report.runs["reassigned"] == [parent.run_id]
        assert report.runs["follows parent"] == spawned
        child = app.get_run(spawned[0])
        assert child.worker is None and child.status.value == "queued"
        for _ in range(5):
            await w2.run_once()
        assert app.get_run(spawned[0]).worker == "w2"

    run(scenario())
    assert parent.result(timeout=1)["use"] == "w2"
    [kid_id] = app.get_run(parent.run_id).children
    assert RunRef(app.client, kid_id).result(timeout=1) == {"work": "w2"}
    pins = [e for e in app.client.history(kid_id) if e["ev"] == "pinned"]
    assert [(e["w"], e.get("reason")) for e in pins] == [("w2", "follows its parent")]


def test_a_sticky_child_of_a_hard_parent_parks_with_it(app: Rstick) -> None:
    define_family(app, StickyStrategy.HARD)
    parent = app.enqueue("Family", "SoftKid")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        await w1.run_once()
        [kid_id] = app.get_run(parent.run_id).children
        await stop_beating(app, "w1")
        report = await Reaper(app, "x").reap(lead=False)
        assert sorted(report.runs["parked"]) == sorted([parent.run_id, kid_id])
        w2 = Worker(app, worker_id="w2")
        await w2.start()
        for _ in range(3):
            assert await w2.run_once() == 0  # nothing of either runs elsewhere
        back = Worker(app, worker_id="w1")
        await back.start()
        for _ in range(5):
            await back.run_once()

    run(scenario())
    assert parent.result(timeout=1)["use"] == "w1"
    [kid_id] = app.get_run(parent.run_id).children
    assert RunRef(app.client, kid_id).result(timeout=1) == {"work": "w1"}


def test_nested_sticky_children_all_move_with_their_soft_grandparent(
    app: Rstick, clock: FakeClock
) -> None:
    """G spawns P, P spawns C, all sticky on w1; w1 dies: G moves, and P and C follow
    it to its next worker, whatever order the reaper met them in."""

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Leaf:
        @app.step()
        def work(self, ctx: Context) -> str:
            return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Mid:
        @app.step()
        def spawn(self, ctx: Context) -> str:
            return ctx.spawn_workflow("Leaf", None, sticky=True).run_id

        @app.step(parents=["spawn"])
        def after(self, ctx: Context) -> str:
            return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Top:
        @app.step()
        def spawn(self, ctx: Context) -> str:
            return ctx.spawn_workflow("Mid", None, sticky=True).run_id

        @app.step(parents=["spawn"], retries=1, backoff=0.001)
        def after(self, ctx: Context) -> str:
            if ctx.attempt == 1:
                raise RuntimeError("its own retry must not be held")
            return ctx.worker.id()

    top = app.enqueue("Top")

    async def scenario() -> None:
        w1, w2 = Worker(app, worker_id="w1", concurrency=1), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        for _ in range(2):  # Top/spawn, then Mid/spawn: both pinned to w1
            await w1.run_once()
        await stop_beating(app, "w1")
        await Reaper(app, "w2").reap(lead=False)
        for _ in range(12):
            await w2.beat()
            await w2.run_once()
            clock.advance(0.01)  # the retry's backoff

    run(scenario())
    assert top.result(timeout=1)["after"] == "w2"
    [mid_id] = app.get_run(top.run_id).children
    assert RunRef(app.client, mid_id).result(timeout=1)["after"] == "w2"
    [leaf_id] = app.get_run(mid_id).children
    assert RunRef(app.client, leaf_id).result(timeout=1) == {"work": "w2"}


def test_followers_of_a_parent_that_ends_before_its_next_worker_are_let_go(
    app: Rstick,
) -> None:
    define_family(app, StickyStrategy.SOFT)
    parent = app.enqueue("Family", "SoftKid")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1", concurrency=1)
        await w1.start()
        await w1.run_once()
        await stop_beating(app, "w1")
        await Reaper(app, "x").reap(lead=False)  # the child now follows its parent
        [kid_id] = app.get_run(parent.run_id).children
        assert app.get_run(kid_id).worker is None
        app.cancel(parent.run_id, children=False)  # the parent ends before any pin
        w2 = Worker(app, worker_id="w2")
        await w2.start()
        for _ in range(3):
            await w2.run_once()

    run(scenario())
    [kid_id] = app.get_run(parent.run_id).children
    assert RunRef(app.client, kid_id).result(timeout=1) == {"work": "w2"}
