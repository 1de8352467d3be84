"""Cancel on fakeredis: a run and every unfinished descendant, each atomically;
steps shown as cancelled; late results ignored; no child escapes by being spawned
late; the walk is batched and visits each run once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from drive import drain, outputs, run, run_until_idle, started

from rstick import (
    Context,
    Rstick,
    RunCancelled,
    RunNotFound,
    RunRef,
    RunStatus,
    StepStatus,
    StickyStrategy,
    Worker,
)
from rstick import admin as client_module

GATE_WAIT = 10.0  # a gated step never waits longer, should its test have failed


class Gate:
    """Steps that block until the test opens the gate, and tell when they started."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started: list[str] = []
        self.changed = threading.Condition()

    def enter(self, ctx: Context) -> None:
        with self.changed:
            self.started.append(f"{ctx.run_id}/{ctx.step}")
            self.changed.notify_all()
        self.open.wait(GATE_WAIT)

    def wait_started(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.started) >= count, GATE_WAIT), (
                self.started
            )


def define(app: Rstick, gate: Gate) -> None:
    @app.workflow(sticky=StickyStrategy.SOFT)
    class Kid:
        @app.step()
        def work(self, ctx: Context) -> str:
            gate.enter(ctx)
            return "kid done"

    @app.workflow()
    class PlainKid:
        @app.step()
        def work(self, ctx: Context) -> str:
            gate.enter(ctx)
            return "plain kid done"

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Family:
        """Spawns two sticky children and a plain one, then waits at the gate."""

        @app.step()
        def spawn(self, ctx: Context) -> list[str]:
            kids = [
                ctx.spawn_workflow("Kid", sticky=True).run_id,
                ctx.spawn_workflow("Kid", sticky=True).run_id,
                ctx.spawn_workflow("PlainKid").run_id,
            ]
            gate.enter(ctx)
            return kids

        @app.step(parents=["spawn"])
        def after(self, ctx: Context) -> None: ...

    @app.workflow()
    class Elder:
        """A child that spawns a grandchild and finishes at once."""

        @app.step()
        def spawn(self, ctx: Context) -> str:
            return ctx.spawn_workflow("PlainKid").run_id

    @app.workflow()
    class Grandparent:
        @app.step()
        def spawn(self, ctx: Context) -> str:
            elder = ctx.spawn_workflow("Elder").run_id
            gate.enter(ctx)
            return elder


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open.set()  # a failed test leaves no thread waiting


async def settle(w: Worker) -> None:
    """Let every running step end and deliver the outcomes."""
    if w.running:
        await asyncio.wait(list(w.running.values()))
    await w.flush()


def children_of(app: Rstick, run_id: str) -> list[str]:
    return app.get_run(run_id).children


def test_cancel_reaches_every_unfinished_child_and_their_late_results_are_ignored(
    app: Rstick, gate: Gate
) -> None:
    define(app, gate)
    parent = app.enqueue("Family")

    async def scenario() -> Any:
        async with started(app, "w1", concurrency=8) as [w1]:
            assert await w1.fetch(None) == 1  # the parent's step starts, spawns, waits
            gate.wait_started(1)
            assert await w1.fetch(None) == 3  # its three children start, and wait
            gate.wait_started(4)
            kids = children_of(app, parent.run_id)
            assert {app.get_run(k).status for k in kids} == {RunStatus.RUNNING}
            done = app.cancel(parent.run_id)
            gate.open.set()
            await settle(w1)
            assert await drain(w1) == 0  # nothing left to run: "after" was never released
            return done, kids

    done, kids = run(scenario())
    assert done.run_id == parent.run_id and done.status is RunStatus.CANCELLED
    assert done.cancelled[0] == parent.run_id
    assert sorted(done.cancelled[1:]) == sorted(kids) and len(kids) == 3
    for run_id in [parent.run_id, *kids]:
        record = app.get_run(run_id)
        assert record.status is RunStatus.CANCELLED
        # Unfinished steps show as cancelled, not running on a worker or queued.
        assert {s.status for s in record.steps} == {StepStatus.CANCELLED}
        assert outputs(app, run_id) == {}  # no result kept
        with pytest.raises(RunCancelled):
            RunRef(app.client, run_id).result(timeout=1)
    events = {k: [e for e in app.client.history(k) if e["ev"] == "cancelled"] for k in kids}
    for kid in kids:
        assert events[kid][0]["reason"] == f"parent run {parent.run_id} was cancelled"
    assert app.client.history(parent.run_id)[-2]["reason"] == "cancelled by user"
    assert app.client.redis.smembers(app.keys.pinned("w1")) == set()


def test_keep_children_cancels_the_run_alone(app: Rstick, gate: Gate) -> None:
    define(app, gate)
    parent = app.enqueue("Family")

    async def scenario() -> Any:
        async with started(app, "w1", concurrency=8) as [w1]:
            await w1.fetch(None)
            gate.wait_started(1)
            await w1.fetch(None)
            gate.wait_started(4)
            done = app.cancel(parent.run_id, children=False)
            gate.open.set()
            await settle(w1)
            return done

    done = run(scenario())
    assert (done.status, done.cancelled) == (RunStatus.CANCELLED, (parent.run_id,))
    kids = children_of(app, parent.run_id)
    assert sorted(RunRef(app.client, k).result(timeout=1)["work"] for k in kids) == [
        "kid done",
        "kid done",
        "plain kid done",
    ]


def test_a_finished_childs_unfinished_children_are_cancelled_too(app: Rstick, gate: Gate) -> None:
    define(app, gate)
    root = app.enqueue("Grandparent")

    async def scenario() -> Any:
        async with started(app, "w1", concurrency=8) as [w1]:
            await w1.fetch(None)  # Grandparent spawns Elder, and waits
            gate.wait_started(1)
            w2 = Worker(app, worker_id="w2")
            await w2.start()
            assert await w2.run_once() == 1  # Elder spawns a grandchild and succeeds
            [elder] = children_of(app, root.run_id)
            assert app.get_run(elder).status is RunStatus.SUCCEEDED
            [grandchild] = children_of(app, elder)
            assert app.get_run(grandchild).status is RunStatus.QUEUED
            done = app.cancel(root.run_id)
            gate.open.set()
            await settle(w1)
            assert await drain(w1) == 1  # the grandchild's entry, dropped
            return done, elder, grandchild

    done, elder, grandchild = run(scenario())
    assert done.cancelled == (root.run_id, grandchild)
    assert app.get_run(elder).status is RunStatus.SUCCEEDED
    assert app.get_run(grandchild).status is RunStatus.CANCELLED
    assert app.get_run(grandchild).steps[0].status is StepStatus.CANCELLED


def test_a_step_of_a_cancelled_run_cannot_spawn_a_child(app: Rstick, gate: Gate) -> None:
    define(app, gate)
    parent = app.enqueue("Family")
    app.cancel(parent.run_id)
    w1 = Worker(app, worker_id="w1")
    run(w1.start())
    before = {k: app.client.redis.dump(k) for k in app.client.redis.keys("*")}
    # The parent's step, still running somewhere when its run was cancelled:
    ctx = Context(parent.run_id, "spawn", None, 1, w1)
    for sticky in (True, False):
        with pytest.raises(RunCancelled, match=f"run {parent.run_id} was cancelled"):
            ctx.spawn_workflow("Kid", sticky=sticky)
        with pytest.raises(RunCancelled):
            run(ctx.aspawn_workflow("Kid", sticky=sticky))
    assert {k: app.client.redis.dump(k) for k in app.client.redis.keys("*")} == before


def test_cancel_drops_delayed_entries_and_keeps_finished_steps(app: Rstick) -> None:
    @app.workflow()
    class Flaky:
        @app.step()
        def ok(self, ctx: Context) -> int:
            return 1

        @app.step(retries=3, backoff=60)
        def flaky(self, ctx: Context) -> None:
            raise RuntimeError("not yet")

        @app.step(parents=["ok", "flaky"])
        def last(self, ctx: Context) -> None: ...

    flaky = app.enqueue("Flaky")
    later = app.enqueue("Flaky", delay=3600)
    run_until_idle(app, "w1")
    assert app.client.redis.zcard(app.keys.delayed) == 3  # a retry, two delayed roots
    assert app.cancel(flaky.run_id).cancelled == (flaky.run_id,)
    assert app.cancel(later.run_id).cancelled == (later.run_id,)
    assert app.client.redis.zcard(app.keys.delayed) == 0
    steps = {s.name: s.status for s in flaky.get().steps}
    assert steps == {
        "ok": StepStatus.SUCCEEDED,
        "flaky": StepStatus.CANCELLED,  # was retrying
        "last": StepStatus.CANCELLED,  # was waiting
    }
    assert {s.status for s in later.get().steps} == {StepStatus.CANCELLED}


def test_an_unknown_run_or_one_already_ended(app: Rstick) -> None:
    @app.task
    def job(ctx: Context) -> int:
        return 1

    with pytest.raises(RunNotFound):
        app.cancel("nope")
    ref = app.enqueue("job")
    run_until_idle(app, "w1")
    done = app.cancel(ref.run_id)
    assert (done.status, done.cancelled) == (RunStatus.SUCCEEDED, ())
    assert ref.result(timeout=1) == 1
    again = app.enqueue("job")
    assert app.cancel(again.run_id).cancelled == (again.run_id,)
    assert app.cancel(again.run_id).to_json() == {
        "run_id": again.run_id,
        "status": "cancelled",
        "cancelled": [],
    }


def test_a_wide_tree_is_cancelled_in_batches_and_a_cycle_ends(
    app: Rstick, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def job(ctx: Context) -> int:
        return 1

    monkeypatch.setattr(client_module, "CANCEL_BATCH", 2)
    client = app.client
    root = app.enqueue("job").run_id
    kids = [client.enqueue("job", parent=(root, "job")).run_id for _ in range(5)]
    grandkids = [client.enqueue("job", parent=(kids[0], "job")).run_id for _ in range(3)]
    # A link back to the root (no rstick path makes one): the walk still ends.
    client.redis.hset(app.keys.run(grandkids[0]), f"c|{root}", "job")
    done = app.cancel(root)
    assert done.cancelled[0] == root
    assert sorted(done.cancelled) == sorted([root, *kids, *grandkids])
    assert len(done.cancelled) == len(set(done.cancelled))
