"""What would grow without bound: orphaned runs, dead letters, the runs index, and
finished runs' keys (per-workflow retention)."""

from __future__ import annotations

from typing import Any

import pytest
from drive import drain, run, started

from rstick import Context, Rstick, RunFailed, StickyStrategy
from rstick.orphans import ORPHAN_SWEEP_SECONDS
from rstick.reap_report import ReapReport
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock


def define(app: Rstick) -> None:
    @app.task
    def job(ctx: Context) -> str:
        return ctx.worker.id()

    @app.task(retention=0)
    def fire_and_forget(ctx: Context) -> None:
        return None

    @app.workflow(sticky=StickyStrategy.HARD)
    class Hard:
        @app.step()
        def a(self, ctx: Context) -> None: ...


async def sweep(app: Rstick, reaper: Reaper) -> ReapReport:
    report = ReapReport()
    await reaper.orphans.sweep(report)
    return report


def test_a_run_nothing_can_move_on_is_failed_as_an_orphan(
    app: Rstick, clock: FakeClock, redis: Any
) -> None:
    define(app)
    orphan = app.enqueue("job")
    waiting = app.enqueue("job")
    delayed = app.enqueue("job", delay=3 * ORPHAN_SWEEP_SECONDS)
    queue = app.keys.queue("default")
    [(entry_id, _), _] = redis.xrange(queue)
    redis.xdel(queue, entry_id)  # deleted by hand: nothing will ever run it

    async def scenario() -> None:
        reaper = Reaper(app, "x")
        clock.advance(ORPHAN_SWEEP_SECONDS + 1)
        assert not await sweep(app, reaper)  # first seen: only suspected
        clock.advance(ORPHAN_SWEEP_SECONDS)
        report = await sweep(app, reaper)
        assert report.runs["failed as orphans"] == [orphan.run_id]

    run(scenario())
    with pytest.raises(RunFailed) as failed:
        orphan.result(timeout=1)
    assert failed.value.error_type == "Orphaned"
    assert [e["ev"] for e in app.client.history(orphan.run_id)] == [
        "created",
        "orphaned",
        "finished",
    ]
    for ref in (waiting, delayed):
        assert ref.status().value == "queued"


def test_a_run_whose_history_moved_between_sweeps_is_no_orphan(
    app: Rstick, clock: FakeClock, redis: Any
) -> None:
    define(app)
    ref = app.enqueue("job")
    queue = app.keys.queue("default")
    [(entry_id, _)] = redis.xrange(queue)
    redis.xdel(queue, entry_id)

    async def scenario() -> None:
        reaper = Reaper(app, "x")
        clock.advance(ORPHAN_SWEEP_SECONDS + 1)
        await sweep(app, reaper)
        redis.xadd(app.keys.hist(ref.run_id), {"ev": "something"})  # it moved meanwhile
        assert not await sweep(app, reaper)

    run(scenario())
    assert ref.status().value == "queued"


def test_a_parked_run_is_no_orphan(app: Rstick, clock: FakeClock) -> None:
    define(app)
    ref = app.enqueue("Hard")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            w1.concurrency = 1
            await w1.fetch(None)  # pinned, running on w1, which dies
        clock.advance(app.worker_ttl + 1)
        reaper = Reaper(app, "x")
        assert (await reaper.reap(lead=False)).runs["parked"] == [ref.run_id]
        for _ in range(2):
            clock.advance(ORPHAN_SWEEP_SECONDS + 1)
            assert not (await sweep(app, reaper)).runs.get("failed as orphans")

    run(scenario())


def test_dead_letters_are_capped(app: Rstick, redis: Any) -> None:
    app.dead_maxlen = 10
    define(app)
    queue = app.keys.queue("default")
    for n in range(500):
        redis.xadd(queue, {"junk": n})

    async def scenario() -> None:
        async with started(app, "w1", concurrency=100) as [w1]:
            await drain(w1)

    run(scenario())
    # XADD MAXLEN ~ trims whole blocks: about the cap, never the 500.
    assert 10 <= redis.xlen(app.keys.dead) < 200


def test_finished_runs_expire_by_their_workflows_retention(
    app: Rstick, clock: FakeClock, redis: Any
) -> None:
    define(app)
    kept = app.enqueue("job")
    gone = app.enqueue("fire_and_forget")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            await drain(w1)

    run(scenario())
    assert redis.exists(app.keys.run(kept.run_id))
    assert not redis.exists(app.keys.run(gone.run_id), app.keys.hist(gone.run_id))
    assert redis.ttl(app.keys.run(kept.run_id)) == int(app.retention)


def test_the_runs_index_is_trimmed_by_each_workflows_retention(
    app: Rstick, clock: FakeClock, redis: Any
) -> None:
    define(app)
    app.enqueue("job")
    app.enqueue("fire_and_forget")

    async def scenario() -> None:
        async with started(app, "w1"):
            pass
        clock.advance(1)
        await Reaper(app, "x").trim_runs()

    run(scenario())
    assert redis.zcard(app.keys.runs("job")) == 1
    assert redis.zcard(app.keys.runs("fire_and_forget")) == 0


def test_a_child_of_an_expired_parent_does_not_bring_its_hash_back(app: Rstick, redis: Any) -> None:
    define(app)
    app.client.enqueue("job", parent=("gone-parent", "a"))
    assert not redis.exists(app.keys.run("gone-parent"))
