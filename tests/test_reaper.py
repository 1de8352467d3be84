"""The reaper on fakeredis: SOFT reassignment, HARD parking, restart, poison, hand-off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgpack
import pytest
from drive import stop_beating
from redis.exceptions import OutOfMemoryError

from rstick import Context, Rstick, RunFailed, StickyStrategy, Worker
from rstick.keys import GROUP
from rstick.protocol import Claim, Outcome
from rstick.reap_report import ReapReport
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def define(app: Rstick, sticky: StickyStrategy, schedule_timeout: float = 300.0) -> None:
    @app.workflow(sticky=sticky, schedule_timeout=schedule_timeout, name="Flow")
    class Flow:
        @app.step()
        def a(self, ctx: Context) -> dict[str, Any]:
            return {"worker": ctx.worker.id(), "reassigned": ctx.reassigned}

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> dict[str, Any]:
            return {"worker": ctx.worker.id(), "reassigned": ctx.reassigned}

    @app.task
    def job(ctx: Context) -> str:
        return ctx.worker.id()


async def take_without_running(worker: Worker) -> list[str]:
    """Read and claim like a worker that dies right after: nothing is completed."""
    marks = [x for stream in worker.streams for x in (stream, "")]
    replies, _, _ = await worker.scripts.take(
        keys=[worker.keys.workflows],
        args=[
            worker.keys.prefix,
            worker.id(),
            worker.instance,
            worker.fetcher.serves,
            worker.free,
            "",
            10,
            *marks,
        ],
    )
    return [r[0].decode() for r in replies]


async def kill(worker: Worker) -> None:
    """The worker stops beating: its heartbeat is now far in the past."""
    await stop_beating(worker.app, worker.id())


async def w1_dies_holding_its_run(app: Rstick) -> Worker:
    """Workers w1 and w2; w1 takes the run's first step and dies before running it.
    Returns w2."""
    w1, w2 = Worker(app, worker_id="w1"), Worker(app, worker_id="w2")
    await w1.start()
    await w2.start()
    await take_without_running(w1)
    await kill(w1)
    return w2


async def drain(*workers: Worker, rounds: int = 20) -> None:
    for _ in range(rounds):
        if not sum([await w.run_once() for w in workers]):
            return
    raise AssertionError("workers still busy after bounded rounds")


def test_soft_run_moves_to_another_worker_when_its_worker_dies(app: Rstick) -> None:
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("Flow")

    async def scenario() -> Any:
        w1, w2 = Worker(app, worker_id="w1"), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        assert await take_without_running(w1) == ["run"]
        assert app.get_run(ref.run_id).worker == "w1"
        await kill(w1)
        report = await Reaper(app, "w2").reap()
        assert report.dead_workers == ["w1"]
        assert report.runs["reassigned"] == [ref.run_id]
        assert report.removed_workers == ["w1"]
        await drain(w2)

    run(scenario())
    result = ref.result(timeout=1)
    assert result["a"] == {"worker": "w2", "reassigned": True}
    assert result["b"] == {"worker": "w2", "reassigned": True}
    r = app.get_run(ref.run_id)
    assert (r.worker, r.epoch, r.step("a").attempts) == ("w2", 1, 2)
    events = [e["ev"] for e in app.client.history(ref.run_id)]
    assert "lost" in events and "reassigned" in events
    redis = app.client.redis
    assert not redis.exists(app.keys.personal("w1"), app.keys.pinned("w1"))
    assert redis.zscore(app.keys.workers, "w1") is None
    # A tombstone: should w1 wake up, its heartbeat learns it was declared dead.
    assert redis.hget(app.keys.worker("w1"), "reaped") == b"1"
    assert 0 < redis.ttl(app.keys.worker("w1")) <= 7 * 86400


def test_reaper_leaves_live_workers_alone(app: Rstick) -> None:
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        await take_without_running(w1)
        report = await Reaper(app, "x").reap(lead=False)
        assert not report
        # The scripts check the heartbeat themselves: a stale caller changes nothing.
        report = await Reaper(app, "x").reap_worker("w1", "dead")
        assert not report.runs

    run(scenario())
    assert app.get_run(ref.run_id).worker == "w1"


def test_hard_run_is_parked_and_resumed_by_its_worker(app: Rstick) -> None:
    define(app, StickyStrategy.HARD)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w2 = await w1_dies_holding_its_run(app)
        report = await Reaper(app, "w2").reap()
        assert report.runs["parked"] == [ref.run_id]
        assert app.get_run(ref.run_id).parked_until is not None
        assert report.removed_workers == []  # it still holds a parked run
        await drain(w2)  # nothing of a HARD run runs elsewhere
        assert app.get_run(ref.run_id).step("a").worker == "w1"
        again = await Reaper(app, "w2").reap()
        assert again.runs["still parked"] == [ref.run_id]
        back = Worker(app, worker_id="w1")  # the same id comes back
        await back.start()
        assert app.get_run(ref.run_id).parked_until is None
        await drain(back, w2)

    run(scenario())
    result = ref.result(timeout=1)
    assert result["a"]["worker"] == result["b"]["worker"] == "w1"
    assert app.get_run(ref.run_id).step("a").attempts == 2


def test_a_dead_worker_whose_runs_stay_parked_is_logged_once(
    app: Rstick, caplog: pytest.LogCaptureFixture
) -> None:
    """Found again at every pass (it cannot be forgotten while its HARD runs wait):
    no news, so no line every heartbeat."""
    define(app, StickyStrategy.HARD)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        await w1_dies_holding_its_run(app)
        caplog.set_level(logging.INFO, logger="rstick.reaper")
        reaper = Reaper(app, "w2")
        for _ in range(5):
            report = await reaper.reap()
            assert report.dead_workers == ["w1"]  # rstick reap --json still says so
        assert app.get_run(ref.run_id).parked_until is not None

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "rstick.reaper"]
    assert [x for x in lines if x.startswith("reaped: ")] == [
        "reaped: 1 dead worker, 1 run parked, 0 entries dispatched again, "
        "0 stale entries deleted, 0 workers removed"
    ]
    assert [x for x in lines if "still parked" in x] == []


def test_a_parked_run_is_unparked_by_its_workers_completion(app: Rstick) -> None:
    """A HARD run parked while its worker was only paused: that worker's completion
    of the step it was running proves it back, and the run goes on with it."""
    define(app, StickyStrategy.HARD)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        replies, _, _ = await w1.scripts.take(
            keys=[w1.keys.workflows],
            args=[w1.keys.prefix, "w1", w1.instance, w1.fetcher.serves, 1, "", 10,
                  *[x for s in w1.streams for x in (s, "")]],
        )  # fmt: skip
        claim = Claim.from_reply(replies[0])
        await kill(w1)
        report = await Reaper(app, "x").reap(lead=False)
        assert report.runs["parked"] == [ref.run_id]
        done = Outcome("ok", claim.stream, claim.entry_id, ref.run_id, "a", claim.attempt,
                       claim.epoch, msgpack.packb(1), 0, ("b",))  # fmt: skip
        replies = await w1.scripts.complete(
            keys=[w1.keys.workflows], args=[w1.keys.prefix, "w1", 100, 1, *done.to_args()]
        )
        assert replies == [b"ok"]

    run(scenario())
    r = app.get_run(ref.run_id)
    assert r.parked_until is None
    assert (r.worker, r.step("a").status, r.step("b").status) == ("w1", "succeeded", "queued")
    unparked = [e for e in app.client.history(ref.run_id) if e["ev"] == "unparked"]
    assert unparked == [{**unparked[0], "w": "w1", "reason": "its worker completed a step"}]


def test_hard_run_fails_with_scheduling_timeout_past_its_deadline(app: Rstick) -> None:
    define(app, StickyStrategy.HARD, schedule_timeout=0.0)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        await take_without_running(w1)
        await kill(w1)
        first = await Reaper(app, "x").reap(lead=False)
        assert first.runs["parked"] == [ref.run_id]
        second = await Reaper(app, "x").reap(lead=False)
        assert second.runs["timed out"] == [ref.run_id]
        assert second.removed_workers == ["w1"]

    run(scenario())
    with pytest.raises(RunFailed) as failed:
        ref.result(timeout=1)
    assert failed.value.error_type == "SchedulingTimeout"
    assert failed.value.step == "a"


def test_plain_job_of_a_dead_worker_is_dispatched_again(app: Rstick) -> None:
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("job")

    async def scenario() -> None:
        w2 = await w1_dies_holding_its_run(app)
        report = await Reaper(app, "w2").reap()
        assert report.redispatched == 1
        await drain(w2)

    run(scenario())
    assert ref.result(timeout=1) == "w2"
    assert app.get_run(ref.run_id).step("job").attempts == 2
    pending = app.client.redis.xpending(app.keys.queue("default"), GROUP)
    assert pending["pending"] == 0


def test_restart_under_the_same_id_reruns_what_it_held(app: Rstick, clock: FakeClock) -> None:
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1")
        await w1.start()
        await take_without_running(w1)
        # Crashed, and restarted before anyone noticed: the new process waits for the
        # old one's heartbeat to lapse (see test_worker_ids), then takes over.
        clock.advance(app.worker_ttl)
        again = Worker(app, worker_id="w1")
        await again.start()
        await drain(again)

    run(scenario())
    assert ref.result(timeout=1)["b"]["worker"] == "w1"
    assert app.get_run(ref.run_id).step("a").attempts == 2


def test_step_that_keeps_killing_its_worker_is_dead_lettered(app: Rstick) -> None:
    app.max_deliveries = 2
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("job")

    async def scenario() -> None:
        for n in range(2):
            w = Worker(app, worker_id=f"crash{n}")
            await w.start()
            assert await take_without_running(w) == ["run"]
            await kill(w)
            await Reaper(app, "x").reap(lead=False)

    run(scenario())
    with pytest.raises(RunFailed) as failed:
        ref.result(timeout=1)
    assert failed.value.error_type == "PoisonMessage"
    dead = app.client.redis.xrange(app.keys.dead)
    assert len(dead) == 1 and b"lost its worker 2 times" in dead[0][1][b"reason"]


def test_graceful_hand_off_returns_soft_runs_at_once(app: Rstick) -> None:
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1, w2 = Worker(app, worker_id="w1"), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        # w1 runs step a, then stops before reading step b from its stream.
        w1.concurrency = 1
        await w1.fetch(None)
        await asyncio.wait(list(w1.running.values()))
        await w1.flush()
        await w1.hand_off()
        assert app.client.redis.zscore(app.keys.workers, "w1") is None
        await drain(w2)

    run(scenario())
    result = ref.result(timeout=1)
    assert result["a"]["worker"] == "w1"
    assert result["b"] == {"worker": "w2", "reassigned": True}


def test_zombie_completion_is_refused_after_reassignment(app: Rstick) -> None:
    define(app, StickyStrategy.SOFT)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1, w2 = Worker(app, worker_id="w1"), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        w1.concurrency = 1
        await w1.fetch(None)
        await asyncio.wait(list(w1.running.values()))  # done, but not yet completed
        await kill(w1)
        await Reaper(app, "w2").reap()
        await w1.flush()  # the zombie's late completion
        assert app.get_run(ref.run_id).step("a").status == "queued"
        await w1.beat()  # it learns it was declared dead, and must rejoin before claiming
        assert w1.rejoin_reason == "reaped" and not w1.live.is_set()
        await drain(w2)

    run(scenario())
    assert ref.result(timeout=1)["a"]["worker"] == "w2"


def test_a_report_counts_in_words_that_agree_with_the_number() -> None:
    one = ReapReport(["w1"], {"moved": ["r1"]}, redispatched=1, deleted=1, removed_workers=["w1"])
    assert one.summary() == (
        "1 dead worker, 1 run moved, 1 entry dispatched again, 1 stale entry deleted, "
        "1 worker removed"
    )
    two = ReapReport(["w1", "w2"], {"parked": ["r1", "r2"]}, 2, 0, [])
    assert two.summary() == (
        "2 dead workers, 2 runs parked, 2 entries dispatched again, 0 stale entries deleted, "
        "0 workers removed"
    )


def test_a_rejoin_cut_short_by_an_outage_is_done_again_whole(
    app: Rstick, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker declared dead during a pause wakes while Redis refuses writes: its
    rejoin fails half-way (after join.lua, before its HARD runs are unparked). The
    next try must do it all again, or the run stays parked while its worker runs it
    and is failed at once, with an expired deadline, should that worker die later."""
    define(app, StickyStrategy.HARD)
    ref = app.enqueue("Flow")

    async def scenario() -> None:
        w1, w2 = Worker(app, worker_id="w1"), Worker(app, worker_id="w2")
        await w1.start()
        await w2.start()
        await take_without_running(w1)
        await kill(w1)  # a pause past its ttl
        assert (await Reaper(app, "w2").reap()).runs["parked"] == [ref.run_id]
        await w1.beat()  # it wakes and learns it was declared dead
        assert w1.rejoin_reason == "reaped"

        resume = w1.reaper.resume
        calls = 0

        async def resume_after_an_outage(worker: str) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
            return await resume(worker)

        monkeypatch.setattr(w1.reaper, "resume", resume_after_an_outage)
        with pytest.raises(OutOfMemoryError):
            await w1.rejoin()
        assert w1.rejoin_reason == "reaped"  # the fetch loop rejoins again before it claims
        await w1.rejoin()
        assert w1.rejoin_reason is None and w1.live.is_set()
        assert app.get_run(ref.run_id).parked_until is None
        await drain(w1, w2)

    run(scenario())
    result = ref.result(timeout=1)
    assert result["a"]["worker"] == result["b"]["worker"] == "w1"
