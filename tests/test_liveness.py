"""Who is alive, by Redis's clock: heartbeats, each worker's own ttl, grace after an
outage, a worker declared dead that rejoins, and two processes with one id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from drive import drain, run, sibling, started

from rstick import Context, Rstick, StickyStrategy, Worker
from rstick.errors import WorkerIdInUse
from rstick.membership import Membership
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock


def define(app: Rstick) -> asyncio.Event:
    """A task that runs until the returned event is set, and a quick one."""
    gate = asyncio.Event()

    @app.task
    async def held(ctx: Context) -> str:
        await gate.wait()
        return ctx.worker.id()

    @app.task
    def quick(ctx: Context) -> str:
        return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Pair:
        @app.step()
        def a(self, ctx: Context) -> str:
            return ctx.worker.id()

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> str:
            return ctx.worker.id()

    return gate


def events(app: Rstick, run_id: str, ev: str) -> list[dict[str, Any]]:
    return [e for e in app.client.history(run_id) if e["ev"] == ev]


def test_a_worker_is_judged_by_its_own_ttl_on_redis_time(app: Rstick, clock: FakeClock) -> None:
    define(app)
    patient = sibling(app, worker_ttl=60)

    async def scenario() -> None:
        async with started(app, "quick"), started(patient, "slow"):
            clock.advance(30)  # past the reaper's ttl (10 s), within slow's own (60 s)
            report = await Reaper(app, "quick").reap(lead=False)
            assert report.dead_workers == ["quick"]
            alive = {w.worker_id: w.alive for w in app.list_workers()}
            assert alive == {"slow": True}
            clock.advance(31)
            report = await Reaper(app, "x").reap(lead=False)
            assert report.dead_workers == ["slow"]

    run(scenario())


def test_a_heartbeat_moves_the_deadline_by_redis_time(app: Rstick, clock: FakeClock) -> None:
    define(app)

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            redis = app.client.redis
            assert redis.zscore(app.keys.workers, "w1") == clock.ms() + 10_000
            clock.advance(7)
            await w1.beat()
            assert redis.zscore(app.keys.workers, "w1") == clock.ms() + 10_000

    run(scenario())


def test_the_first_beat_after_an_outage_gives_every_worker_its_ttl_again(
    app: Rstick, clock: FakeClock
) -> None:
    define(app)
    patient = sibling(app, worker_ttl=60)

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, _), started(patient, "w3"):
            clock.advance(100)  # Redis was away: every deadline went by
            await w1.beat(grace=True)
            redis = app.client.redis
            deadlines = dict(redis.zrange(app.keys.workers, 0, -1, withscores=True))
            assert deadlines == {
                b"w1": clock.ms() + 10_000,
                b"w2": clock.ms() + 10_000,
                b"w3": clock.ms() + 60_000,  # its own ttl
            }
            assert not (await Reaper(app, "w1").reap(lead=False)).dead_workers

    run(scenario())


def test_grace_does_not_revive_a_worker_already_declared_dead(
    app: Rstick, clock: FakeClock
) -> None:
    define(app)

    @app.workflow(sticky=StickyStrategy.HARD)
    class Hard:
        @app.step()
        def a(self, ctx: Context) -> None: ...

    app.enqueue("Hard")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            w2.concurrency = 1
            assert await w2.fetch(None) == 1  # it holds a parked run: it is not forgotten
            clock.advance(11)
            await w1.beat()
            assert (await Reaper(app, "w1").reap(lead=False)).dead_workers == ["w2"]
            await w1.beat(grace=True)
            assert app.client.redis.zscore(app.keys.workers, "w2") < clock.ms()
            await w2.beat()
            assert w2.rejoin_reason == "reaped"

    run(scenario())


def test_a_rejoining_worker_never_loses_a_step_it_claimed_after_waking(
    app: Rstick, clock: FakeClock
) -> None:
    """The bug: a worker declared dead ran the restart reaper over its own pending
    list when it rejoined, and lost the steps it had claimed meanwhile, again and
    again, until a healthy run failed as PoisonMessage."""
    gate = define(app)
    first = app.enqueue("held")

    async def scenario() -> None:
        async with started(app, "w1", "w2", concurrency=20) as (w1, w2):
            assert await w1.fetch(None) == 1  # first: running on w1
            clock.advance(11)  # w1 paused past its ttl
            await w2.beat()
            report = await Reaper(app, "w2").reap(lead=False)
            assert report.dead_workers == ["w1"] and report.redispatched == 1
            # Awake again: it may not claim before it rejoined.
            later = [app.enqueue("held") for _ in range(5)]
            assert await w1.fetch(None) == 0 and not w1.live.is_set()
            await w1.beat()
            assert w1.rejoin_reason == "reaped"
            await w1.rejoin()
            assert w1.live.is_set()
            # Now it claims, among others, attempt 2 of the first run.
            assert await w1.fetch(None) == 6
            for _ in range(3):  # beats, passes and recoveries go by: nothing moves
                clock.advance(2)
                await w1.beat()
                await w2.beat()
                await Reaper(app, "w2").reap(lead=False)
                assert await w1.recover_stranded() == 0
            gate.set()
            await asyncio.wait(list(w1.running.values()))
            await w1.flush()
            await drain(w1, w2)
            for ref in later:
                assert events(app, ref.run_id, "lost") == []
                assert ref.result(timeout=1) == "w1"
            assert first.result(timeout=1) == "w1"
            assert [e["a"] for e in events(app, first.run_id, "lost")] == ["1"]
            assert [e["a"] for e in events(app, first.run_id, "succeeded")] == ["2"]

    run(scenario())


def test_a_worker_whose_record_redis_lost_registers_again(app: Rstick) -> None:
    define(app)

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            app.client.redis.flushall()  # a restart without persistence
            await w1.beat()
            assert w1.rejoin_reason == "unknown"
            await w1.rejoin()
            ref = app.enqueue("quick")  # the registry is back: other clients may enqueue
            assert await drain(w1) == 1
            assert ref.result(timeout=1) == "w1"

    run(scenario())


# -- one id, two processes --------------------------------------------------------


def test_a_second_process_waits_for_the_first_ones_heartbeat_to_lapse(
    app: Rstick, clock: FakeClock
) -> None:
    define(app)

    async def scenario() -> None:
        first = Worker(app, worker_id="w1")
        await first.start()
        second = Worker(app, worker_id="w1")
        joining = asyncio.create_task(second.start())
        await asyncio.sleep(0.05)
        assert not joining.done()  # the first one's deadline holds
        clock.advance(app.worker_ttl)  # it stopped beating (crashed)
        await asyncio.wait_for(joining, 5)
        holder = app.client.redis.hget(app.keys.worker("w1"), "instance")
        assert holder == second.instance.encode()
        await first.beat()  # the old process, should it wake: its id is taken
        assert first.stopping and first.exit_code == 1 and not first._hand_off

    run(scenario())


def test_a_second_process_gives_up_while_the_first_one_beats() -> None:
    import fakeredis

    server = fakeredis.FakeServer()
    app = Rstick(redis_url="redis://fake", namespace="dup", heartbeat=0.05, worker_ttl=0.2)
    app.client.use(
        sync=fakeredis.FakeRedis(server=server), aio=fakeredis.FakeAsyncRedis(server=server)
    )
    define(app)

    async def scenario() -> None:
        await Worker(app, worker_id="w1").start()
        with pytest.raises(WorkerIdInUse, match=r"worker id w1 is in use by pid \d+ on "):
            await Worker(app, worker_id="w1").start()

    run(scenario())


def test_grace_never_keeps_a_dead_worker_alive(app: Rstick, clock: FakeClock) -> None:
    """Only workers alive when the outage began gain grace: a worker that died
    before stays dead however often others grant grace."""
    define(app)

    async def scenario() -> None:
        async with started(app, "w1", "dead") as (w1, _):
            for _ in range(8):
                clock.advance(4)  # w1 beats with grace every 4 s; "dead" never again
                await w1.beat(grace=True)
            # It gained a ttl at most (the grace of beats while it could still have
            # been alive), never a new one at each grace.
            assert app.client.redis.zscore(app.keys.workers, "dead") < clock.ms()
            report = await Reaper(app, "w1").reap(lead=False)
            assert report.dead_workers == ["dead"]

    run(scenario())


def test_a_process_whose_id_was_taken_over_claims_nothing(app: Rstick, clock: FakeClock) -> None:
    define(app)

    async def scenario() -> None:
        old = Worker(app, worker_id="w1")
        await old.start()
        clock.advance(app.worker_ttl)  # paused past its ttl
        new = Worker(app, worker_id="w1")
        await new.start()
        app.enqueue("quick")
        assert await old.fetch(None) == 0 and not old.live.is_set()  # not its id any more
        assert await new.fetch(None) == 1

    run(scenario())


def test_a_restart_with_other_queues_takes_back_what_it_held_in_the_old_ones(
    app: Rstick, clock: FakeClock
) -> None:
    @app.task(queue="b")
    def job_b(ctx: Context) -> str:
        return ctx.worker.id()

    define(app)
    ref = app.enqueue("job_b")

    async def scenario() -> None:
        w1 = Worker(app, worker_id="w1", queues=["b"])
        await w1.start()
        assert await w1.fetch(None) == 1  # claimed; then the process dies with it
        await asyncio.wait(list(w1.running.values()))
        clock.advance(app.worker_ttl)
        again = Worker(app, worker_id="w1", queues=["default"])  # restarted, other queues
        await again.start()
        async with started(app, "w2", concurrency=1) as [w2]:
            w2.fetcher.streams.append(app.keys.queue("b"))
            await drain(w2)

    run(scenario())
    assert ref.result(timeout=1) == "w2"


def test_a_hard_step_a_paused_worker_runs_is_not_lost_and_completes_on_rejoin(
    app: Rstick, clock: FakeClock
) -> None:
    gate = asyncio.Event()

    @app.workflow(sticky=StickyStrategy.HARD)
    class Long:
        @app.step()
        async def a(self, ctx: Context) -> int:
            await gate.wait()
            return ctx.attempt

    ref = app.enqueue("Long")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            assert await w1.fetch(None) == 1
            clock.advance(app.worker_ttl + 1)  # w1 paused past its ttl, its step running
            await w2.beat()
            report = await Reaper(app, "w2").reap(lead=False)
            assert report.runs["parked"] == [ref.run_id] and report.redispatched == 0
            await w1.beat()
            await w1.rejoin()  # back: unparked, its step still its own
            gate.set()
            await asyncio.wait(list(w1.running.values()))
            await w1.flush()

    run(scenario())
    assert ref.result(timeout=1) == {"a": 1}
    assert not [e for e in app.client.history(ref.run_id) if e["ev"] == "lost"]


def test_an_entry_stranded_by_a_lost_reply_comes_back_at_the_same_attempt(app: Rstick) -> None:
    define(app)
    ref = app.enqueue("quick")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            await w1.fetcher.take(4, None, want_marks=False)  # its reply is "lost"
            assert await w1.recover_stranded() == 1
            await drain(w1)

    run(scenario())
    assert ref.result(timeout=1) == "w1"
    step = app.get_run(ref.run_id).step("quick")
    assert step.attempts == 1  # never started: no loss counted
    assert not [e for e in app.client.history(ref.run_id) if e["ev"] == "lost"]


def test_the_reaper_never_lists_itself_and_pages_through_the_dead(
    app: Rstick, clock: FakeClock
) -> None:
    define(app)

    async def scenario() -> None:
        async with started(app, "me"):
            for n in range(250):
                await app.client.aredis.zadd(app.keys.workers, {f"d{n:03}": n + 2})
            clock.advance(app.worker_ttl + 1)
            reaper = Reaper(app, "me")
            seen: list[str] = []
            for _ in range(3):
                seen += (await reaper.reap()).dead_workers
            assert "me" not in seen
            assert sorted(set(seen)) == [f"d{n:03}" for n in range(250)]

    run(scenario())


def test_a_worker_is_visible_only_once_its_workflows_are_registered(
    app: Rstick, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees the worker in ``rstick workers`` can enqueue its workflows."""

    @app.task
    def job(ctx: Context) -> None:
        pass

    seen: list[Any] = []

    join_args = Membership._join_args

    def checked(self: Membership) -> list[Any]:  # made right before each join.lua
        seen.append(app.client.redis.hget(app.keys.workflows, "job"))
        return join_args(self)

    monkeypatch.setattr(Membership, "_join_args", checked)
    run(Worker(app, worker_id="w1").join())
    assert seen and all(raw is not None for raw in seen)
    assert [w.worker_id for w in app.list_workers()] == ["w1"]


# -- Redis standing still (CLIENT PAUSE, a long script) ----------------------------


@pytest.mark.parametrize("first", ["a beat", "the reaper"])
def test_when_redis_stood_still_past_the_ttl_nobody_is_taken_for_dead(
    app: Rstick, clock: FakeClock, first: str
) -> None:
    """Every worker's beat was held in Redis for longer than the ttl, with no error
    seen by anyone: whichever lands first once Redis goes on grants grace."""
    define(app)

    async def scenario() -> None:
        async with started(app, "w1", "w2", "w3") as [w1, w2, w3]:
            for _ in range(3):  # beating as they do: activity every heartbeat
                clock.advance(app.heartbeat)
                for w in (w1, w2, w3):
                    await w.beat()
                await Reaper(app, "w3").reap()
            clock.advance(app.worker_ttl + 5)  # the standstill: nothing landed
            if first == "a beat":
                await w1.beat()  # w2's beat lands after the reaper's pass
            assert (await Reaper(app, "w3").reap()).dead_workers == []
            for w in (w1, w2, w3):
                await w.beat()
            clock.advance(app.heartbeat)
            assert (await Reaper(app, "w3").reap()).dead_workers == []
            alive = {w.worker_id: w.alive for w in app.list_workers()}
            assert alive == {"w1": True, "w2": True, "w3": True}

    run(scenario())


async def dead_within_a_ttl(app: Rstick, clock: FakeClock, judge: Worker) -> list[str]:
    """The workers ``judge``'s reaper finds dead over a ttl and two heartbeats, while
    it beats every heartbeat (activity: Redis goes on)."""
    dead: list[str] = []
    for _ in range(int(app.worker_ttl / app.heartbeat) + 2):
        clock.advance(app.heartbeat)
        await judge.beat()
        dead += (await Reaper(app, judge.id()).reap()).dead_workers
    return dead


def test_a_worker_that_stops_beating_while_others_beat_is_dead_after_its_ttl(
    app: Rstick, clock: FakeClock
) -> None:
    """Activity elsewhere means Redis went on: no grace for a worker that stopped."""
    define(app)

    async def scenario() -> None:
        async with started(app, "w1", "w2") as [w1, w2]:
            await w1.beat()
            assert await dead_within_a_ttl(app, clock, w2) == ["w1"]  # w1 beats no more

    run(scenario())


def test_a_worker_that_died_during_a_standstill_is_dead_a_ttl_after_it(
    app: Rstick, clock: FakeClock
) -> None:
    define(app)

    async def scenario() -> None:
        async with started(app, "w1", "w2") as [w1, w2]:
            await w1.beat()
            await w2.beat()
            clock.advance(app.worker_ttl + 5)  # the standstill; w1 dies in it
            assert (await Reaper(app, "w2").reap()).dead_workers == []  # grace for all
            assert await dead_within_a_ttl(app, clock, w2) == ["w1"]

    run(scenario())


# -- steps claimed just before a pause past the ttl --------------------------------


class StandInHeartbeat:
    """A heartbeat thread's state as the worker reads it: when it last beat."""

    def __init__(self, last_ok: float) -> None:
        self.last_ok = last_ok
        self.interval = 2.0
        self.grace_pending = False

    def recent(self, now: float) -> bool:
        return now - self.last_ok < 2 * self.interval

    def outage(self) -> None:
        pass

    def stop(self, timeout: float | None = None) -> None:
        pass


@pytest.mark.parametrize("verdict", ["reaped", "reaped, rejoined at once", "ok"])
def test_steps_claimed_before_a_pause_past_the_ttl_start_only_if_a_beat_finds_it_alive(
    app: Rstick, clock: FakeClock, verdict: str
) -> None:
    """The take's reply came, then the process stood still past its ttl before it
    started the steps: they ran on another worker meanwhile."""
    ran: list[str] = []

    @app.task
    def note(ctx: Context) -> str:
        ran.append(ctx.worker.id())
        return ctx.worker.id()

    ref = app.enqueue("note")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            stand_in = StandInHeartbeat(last_ok=time.monotonic() - 3 * app.worker_ttl)
            w1.membership.heartbeat = stand_in  # type: ignore[assignment]
            await w1.fetch(None)  # claimed, but held: the worker stood still too long
            await asyncio.sleep(0.1)
            assert not w1.running and ran == []
            assert await w1.recover_stranded() == 0  # held, not stranded: not sent again
            if verdict.startswith("reaped"):  # the reaper took it for dead meanwhile
                clock.advance(app.worker_ttl + 1)
                await w2.beat()
                assert (await Reaper(app, "w2").reap(lead=False)).dead_workers == ["w1"]
            if verdict == "reaped, rejoined at once":  # before the held steps look again
                w1.membership.on_beat("reaped")
                await w1.rejoin()
                # Its join was a good beat: what it claims from now on starts at once.
                assert w1.membership.paused_past_ttl() is None
                w1.membership.on_beat("ok")
            else:
                stand_in.last_ok = time.monotonic()  # the first beat after waking
                w1.membership.on_beat(verdict)
            for _ in range(20):
                await asyncio.sleep(0.05)
                if not w1._confirming:
                    break
            if w1.running:
                await asyncio.wait(list(w1.running.values()))
            await w1.flush()
            w1.membership.heartbeat = None
            if verdict == "reaped":
                await w1.rejoin()
            await drain(w1, w2)

    run(scenario())
    assert len(ran) == 1  # once, on one worker
    assert ref.result(timeout=1) == ran[0]
    succeeded = [e["a"] for e in events(app, ref.run_id, "succeeded")]
    # Reaped: attempt 1, held on w1, never ran; attempt 2 ran (on whichever).
    assert succeeded == (["1"] if verdict == "ok" else ["2"])
