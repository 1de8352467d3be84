"""Event triggers on fakeredis: ``emit`` starts one run of every listener, across apps."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from drive import run, run_until_idle, sibling

from rstick import (
    AsyncRunRef,
    Context,
    Rstick,
    RunRef,
    StickyStrategy,
    TaskInputError,
    Worker,
)


def define(app: Rstick) -> None:
    @app.workflow(on_events=["user:create"], sticky=StickyStrategy.SOFT)
    class Welcome:
        @app.step()
        def greet(self, ctx: Context) -> Any:
            return {"hello": ctx.input}

    @app.task(on_events=["user:create", "user:delete"])
    def audit(ctx: Context, id: int) -> str:
        return f"audit {id}"

    @app.workflow(on_events=["order:paid"])
    class Ship:
        @app.step()
        def ship(self, ctx: Context) -> None:
            return None


def workflows_of(app: Rstick, refs: list[RunRef] | list[AsyncRunRef]) -> list[str]:
    return sorted(app.get_run(r.run_id).workflow for r in refs)


def all_runs(app: Rstick) -> list[str]:
    return sorted(r.workflow for r in app.client.list_runs(limit=100))


async def drain(worker: Worker, rounds: int = 10) -> None:
    """Start the worker and run until nothing is left (bounded)."""
    await worker.start()
    for _ in range(rounds):
        if not await worker.run_once():
            return
    raise AssertionError("worker still busy after bounded rounds")


def test_emit_starts_one_run_of_every_listener(app: Rstick) -> None:
    define(app)
    refs = app.emit("user:create", {"id": 7})
    assert all(isinstance(r, RunRef) for r in refs)
    assert workflows_of(app, refs) == ["Welcome", "audit"]
    assert all_runs(app) == ["Welcome", "audit"]  # nothing for order:paid

    run(drain(worker := Worker(app, worker_id="w1")))
    assert worker.steps_done == 2
    results = {app.get_run(r.run_id).workflow: r.result(timeout=1) for r in refs}
    assert results == {"Welcome": {"greet": {"hello": {"id": 7}}}, "audit": "audit 7"}


def test_emit_reaches_workflows_registered_by_a_worker_of_another_app(app: Rstick) -> None:
    define(app)
    other = sibling(app)

    @other.workflow(on_events=["user:create"])
    class Remote:
        @other.step()
        def crm(self, ctx: Context) -> Any:
            return ctx.input

    run_until_idle(other, "crm-1")  # its start registers Remote and its event
    assert "Remote" not in app.workflows

    refs = app.emit("user:create", {"id": 1})
    assert workflows_of(app, refs) == ["Remote", "Welcome", "audit"]

    # A client-only app, knowing no workflow at all, reaches every registered listener.
    client = sibling(app)
    assert workflows_of(app, client.emit("user:create", {"id": 2})) == ["Remote"]

    # A new event loop: an asyncio client of its own (redis-py before 8 binds one to its loop).
    server = app.client.redis.connection_pool.connection_kwargs["server"]
    other.client.use(aio=fakeredis.FakeAsyncRedis(server=server))
    run_until_idle(other, "crm-1")
    assert [
        app.get_run(r.run_id).status.value
        for r in refs
        if app.get_run(r.run_id).workflow == "Remote"
    ] == ["succeeded"]


def test_an_event_nobody_listens_to_starts_nothing(app: Rstick) -> None:
    define(app)
    assert app.emit("user:renamed", {"id": 1}) == []
    assert run(app.aemit("user:renamed")) == []
    assert all_runs(app) == []


def test_emit_with_a_key_starts_the_runs_once(app: Rstick) -> None:
    define(app)
    first = app.emit("user:create", {"id": 1}, key="signup-1")
    again = app.emit("user:create", {"id": 1}, key="signup-1")
    assert [r.run_id for r in again] == [r.run_id for r in first]
    assert all_runs(app) == ["Welcome", "audit"]

    other_key = app.emit("user:create", {"id": 2}, key="signup-2")
    assert {r.run_id for r in other_key}.isdisjoint(r.run_id for r in first)
    # The same key on another event is another emission.
    deleted = app.emit("user:delete", {"id": 1}, key="signup-1")
    assert deleted[0].run_id not in {r.run_id for r in first}
    assert all_runs(app) == ["Welcome", "Welcome", "audit", "audit", "audit"]

    async_again = run(app.aemit("user:create", {"id": 1}, key="signup-1"))
    assert [r.run_id for r in async_again] == [r.run_id for r in first]
    assert len(all_runs(app)) == 5


def test_aemit_starts_the_runs_and_returns_async_refs(app: Rstick) -> None:
    define(app)

    async def scenario() -> list[Any]:
        refs = await app.aemit("user:create", {"id": 3})
        assert all(isinstance(r, AsyncRunRef) for r in refs)
        await drain(Worker(app, worker_id="w1"))
        return [await r.result(timeout=1) for r in refs]

    results = run(scenario())
    assert sorted(map(str, results)) == ["audit 3", "{'greet': {'hello': {'id': 3}}}"]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "event name None must be a non-empty string"),
        (b"user:create", "event name b'user:create' must be a non-empty string"),
        ("", "event name '' must be a non-empty string"),
        ("user create", "contains whitespace"),
        ("user:\x00", "contains a control character"),
    ],
)
def test_emit_refuses_an_event_name_instead_of_starting_nothing(
    app: Rstick, event: Any, message: str
) -> None:
    define(app)
    before = app.client.redis.keys("*")
    with pytest.raises(ValueError, match=message):
        app.emit(event, {"id": 1})
    with pytest.raises(ValueError, match=message):
        run(app.aemit(event, {"id": 1}))
    assert app.client.redis.keys("*") == before


def test_emit_refused_by_one_listener_starts_none(app: Rstick, state: Any) -> None:
    """audit is a task: its input must be keyword arguments. Welcome, which takes
    anything, must not start either when audit refuses the data."""
    define(app)
    app.emit("user:create", {"id": 1})  # registers the definitions
    before = state()
    with pytest.raises(TaskInputError, match="task 'audit' takes a dict of keyword arguments"):
        app.emit("user:create", [1, 2])
    with pytest.raises(TaskInputError, match="task 'audit' cannot take this input"):
        run(app.aemit("user:create", {"id": 1, "extra": 2}))
    assert state() == before
