"""take.lua: the worker's read and claim, and its pick-up of what a blocking read
delivered (the read itself is simulated: fakeredis cannot block)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from rstick import Context, Rstick, StickyStrategy, Worker
from rstick.keys import GROUP
from rstick.testing.clock import FakeClock

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def tasks(app: Rstick) -> Rstick:
    @app.task
    def job(ctx: Context) -> str:
        return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Pair:
        @app.step()
        def a(self, ctx: Context) -> None:
            return None

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> None:
            return None

    return app


async def take(w: Worker, free: int, marks: list[Any] | None) -> Any:
    """take.lua as the worker calls it: (replies decoded to (kind, run, step), marks)."""
    args = w.fetcher.take_args(free, marks, True)
    replies, new_marks, live = await w.scripts.take(keys=[w.keys.workflows], args=args)
    assert live == 1
    return [tuple(x.decode() for x in r[:3]) for r in replies], new_marks


def blocking_read(redis: Any, w: Worker) -> list[str]:
    """What the worker's XREADGROUP ... COUNT 1 BLOCK delivers: one entry per stream."""
    got = redis.xreadgroup(GROUP, w.id(), dict.fromkeys(w.streams, ">"), count=1)
    return [entry_id.decode() for _, items in got for entry_id, _ in items]


def pending_ids(redis: Any, stream: str) -> list[str]:
    return [
        p["message_id"].decode()
        for p in redis.xpending_range(stream, GROUP, min="-", max="+", count=100)
    ]


def test_a_plain_take_returns_marks_only_while_slots_are_left(tasks: Rstick) -> None:
    async def scenario() -> None:
        w = Worker(tasks, worker_id="w1", concurrency=2)
        await w.start()
        refs = [tasks.enqueue("job") for _ in range(3)]
        replies, marks = await take(w, 2, None)
        assert [r[1] for r in replies] == [refs[0].run_id, refs[1].run_id]
        assert marks == []  # no slot left: the queue may hold more
        replies, marks = await take(w, 2, None)
        assert [r[1] for r in replies] == [refs[2].run_id]
        assert len(marks) == len(w.streams)  # every stream read to its end

    run(scenario())


def test_after_a_blocking_read_take_claims_what_it_delivered_and_nothing_else(
    tasks: Rstick, redis: Any
) -> None:
    async def scenario() -> None:
        w = Worker(tasks, worker_id="w1", concurrency=4)
        await w.start()
        running = tasks.enqueue("job")
        [(kind, run_id, _)], marks = await take(w, 4, None)
        assert (kind, run_id) == ("run", running.run_id) and marks
        first, second = tasks.enqueue("job"), tasks.enqueue("job")
        queue = tasks.keys.queue("default")
        [delivered] = blocking_read(redis, w)
        replies, new_marks = await take(w, 3, marks)
        assert replies == [("run", first.run_id, "job")]
        assert new_marks == []  # it read nothing else: the next take reads all
        assert tasks.get_run(first.run_id).steps[0].worker == "w1"
        # The step already running keeps its entry; the second job is still queued.
        assert len(pending_ids(redis, queue)) == 2 and delivered in pending_ids(redis, queue)
        assert tasks.get_run(second.run_id).status.value == "queued"
        replies, _ = await take(w, 2, None)
        assert replies == [("run", second.run_id, "job")]

    run(scenario())


def test_what_a_blocking_read_delivered_beyond_free_goes_back_to_its_stream(
    tasks: Rstick, redis: Any
) -> None:
    async def scenario() -> None:
        w = Worker(tasks, worker_id="w1", concurrency=1)
        await w.start()
        pinned = tasks.enqueue("Pair")
        [(_, run_id, step)], marks = await take(w, 1, None)
        assert (run_id, step) == (pinned.run_id, "a")
        assert marks == []
        _, marks = await take(w, 0, None)  # nothing read, but no slot: no marks
        assert marks == []
        # Marks as a worker with a free slot got them, then one entry per stream.
        w.concurrency = 2
        _, marks = await take(w, 1, None)
        assert len(marks) == 2
        queued = tasks.enqueue("job")
        # Step b of the pinned run reaches the personal stream (as complete.lua does).
        redis.hset(tasks.keys.run(pinned.run_id), mapping={"b.st": "queued", "b.a": "1"})
        redis.xadd(w.personal, {"r": pinned.run_id, "s": "b", "a": "1", "e": "0", "w": "Pair"})
        assert len(blocking_read(redis, w)) == 2
        replies, _ = await take(w, 1, marks)
        assert replies == [("run", pinned.run_id, "b")]  # the personal stream first
        queue = tasks.keys.queue("default")
        # Given back: the job's entry is in the queue again, new and not pending
        # (the one pending there is step a's, running).
        [(a_id, a_fields), (_, job_fields)] = redis.xrange(queue)
        assert (a_fields[b"s"], job_fields[b"r"].decode()) == (b"a", queued.run_id)
        assert pending_ids(redis, queue) == [a_id.decode()]
        replies, _ = await take(w, 1, None)
        assert replies == [("run", queued.run_id, "job")]

    run(scenario())


def test_a_claim_whose_reply_was_lost_is_not_made_twice(tasks: Rstick, redis: Any) -> None:
    """redis-py may send the pipelined take again after a lost reply: the entry it
    had claimed stays pending, for recover_stranded, and is not started twice."""

    async def scenario() -> None:
        w = Worker(tasks, worker_id="w1", concurrency=4)
        await w.start()
        _, marks = await take(w, 4, None)
        ref = tasks.enqueue("job")
        [delivered] = blocking_read(redis, w)
        replies, _ = await take(w, 4, marks)
        assert replies == [("run", ref.run_id, "job")]
        replies, _ = await take(w, 4, marks)  # the same call again
        assert replies == []
        assert pending_ids(redis, tasks.keys.queue("default")) == [delivered]
        step = tasks.get_run(ref.run_id).steps[0]
        assert (step.status.value, step.worker, step.attempts) == ("running", "w1", 1)

    run(scenario())


def test_a_step_claimed_after_a_wait_starts_at_redis_time(
    tasks: Rstick, redis: Any, clock: FakeClock
) -> None:
    async def scenario() -> None:
        w = Worker(tasks, worker_id="w1", concurrency=4)
        await w.start()
        _, marks = await take(w, 4, None)
        ref = tasks.enqueue("job")
        clock.advance(0.5)  # the worker waited; its own clock is never asked
        blocking_read(redis, w)
        await take(w, 4, marks)
        started = redis.hget(tasks.keys.run(ref.run_id), "job.t0").decode()
        assert int(started) == clock.ms()

    run(scenario())


def test_the_worker_runs_what_a_take_after_a_blocking_read_hands_it(
    tasks: Rstick, redis: Any
) -> None:
    async def scenario() -> str:
        w = Worker(tasks, worker_id="w1", concurrency=4)
        await w.start()
        assert await w.fetch(None) == 0
        _, w.fetcher.marks = await take(w, 4, None)
        ref = tasks.enqueue("job")
        blocking_read(redis, w)

        async def pipelined(free: int, block_ms: int, marks: list[Any]) -> Any:
            args = w.fetcher.take_args(free, marks, True)
            replies, new_marks, live = await w.scripts.take(keys=[w.keys.workflows], args=args)
            return replies, new_marks, bool(live)

        w.fetcher.wait_for_entries = pipelined  # type: ignore[method-assign]
        assert await w.fetch(1000) == 1
        await asyncio.wait(list(w.running.values()))
        await w.flush()
        assert w.fetcher.marks is None  # the next fetch takes (and marks) before it blocks again
        w.threads.shutdown()
        return ref.run_id

    run_id = run(scenario())
    assert tasks.get_run(run_id).status.value == "succeeded"
    assert tasks.get_run(run_id).steps[0].worker == "w1"


def test_a_root_pinned_to_the_worker_by_its_own_take_is_claimed_by_the_next_read(
    app: Rstick, redis: Any
) -> None:
    """A take that pins a sticky run sends its other roots to the worker's own stream
    in the same script; the marks it returns must let the blocking read that follows
    deliver them and the take behind it claim them, at once."""

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Fork:
        @app.step()
        def a(self, ctx: Context) -> None: ...

        @app.step()
        def b(self, ctx: Context) -> None: ...

    async def scenario() -> None:
        w = Worker(app, worker_id="w1", concurrency=4)
        await w.start()
        ref = app.enqueue("Fork")
        replies, marks = await take(w, 4, None)
        # The queue was read before the personal stream got b: a is claimed, b waits.
        assert replies == [("run", ref.run_id, "a")] and marks
        assert [f[b"s"] for _, f in redis.xrange(w.personal)] == [b"b"]
        assert blocking_read(redis, w)  # b: not delivered by the take, so the read does
        replies, _ = await take(w, 3, marks)
        assert replies == [("run", ref.run_id, "b")]

    run(scenario())


def test_a_worker_whose_heartbeat_lapsed_claims_nothing_until_it_beats(
    tasks: Rstick, redis: Any, clock: FakeClock
) -> None:
    async def scenario() -> None:
        w = Worker(tasks, worker_id="w1", concurrency=4)
        await w.start()
        _, marks = await take(w, 4, None)
        ref = tasks.enqueue("job")
        clock.advance(tasks.worker_ttl + 1)  # paused: the reaper may be settling w1 now
        args = w.fetcher.take_args(4, None, True)
        replies, _, live = await w.scripts.take(keys=[w.keys.workflows], args=args)
        assert (replies, live) == ([], 0)
        # What a blocking read delivered meanwhile goes back, undelivered, and unclaimed.
        [delivered] = blocking_read(redis, w)
        args = w.fetcher.take_args(4, marks, True)
        replies, _, live = await w.scripts.take(keys=[w.keys.workflows], args=args)
        assert (replies, live) == ([], 0)
        queue = tasks.keys.queue("default")
        assert pending_ids(redis, queue) == [] and delivered not in pending_ids(redis, queue)
        assert tasks.get_run(ref.run_id).steps[0].status.value == "queued"
        assert await w.fetch(None) == 0 and not w.live.is_set()
        await w.beat()
        assert w.live.is_set()
        replies, _ = await take(w, 4, None)
        assert replies == [("run", ref.run_id, "job")]

    run(scenario())
