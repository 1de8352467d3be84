"""The Lua scripts, through the worker and directly: pinning, forwarding, DAG
release, fencing, leftovers of finished runs, dead letters."""

from __future__ import annotations

from typing import Any

import pytest
from drive import drain, outputs, run, run_until_idle, started, stop_beating

from rstick import Context, Rstick, RunCancelled, RunFailed, StepStatus, StickyStrategy, Worker
from rstick.keys import GROUP


def serves(w: Worker) -> str:
    """The code words a worker has, as the scripts take them (protocol.code_words)."""
    return w.fetcher.serves


async def take_raw(w: Worker) -> list[list[bytes]]:
    """Read and claim like ``w`` without running anything: the raw claim replies."""
    marks = [x for stream in w.streams for x in (stream, "")]
    replies: list[list[bytes]]
    replies, _, _ = await w.scripts.take(
        keys=[w.keys.workflows],
        args=[w.keys.prefix, w.id(), w.instance, serves(w), w.free, "", w.app.dead_maxlen, *marks],
    )
    return replies


async def take(w: Worker) -> list[tuple[str, ...]]:
    """``take_raw``, decoded to (kind, run, step, attempt or worker or reason)."""
    return [tuple(x.decode() for x in r[:4]) for r in await take_raw(w)]


def entries(redis: Any, stream: str) -> list[tuple[str, str, str, str]]:
    """(run, step, attempt, epoch) of every entry in ``stream``."""
    return [
        (f[b"r"].decode(), f[b"s"].decode(), f[b"a"].decode(), f[b"e"].decode())
        for _, f in redis.xrange(stream)
    ]


def pending(redis: Any, stream: str) -> int:
    if not redis.exists(stream):
        return 0
    n: int = redis.xpending(stream, GROUP)["pending"]
    return n


def complete_args(
    app: Rstick,
    worker: str,
    reply: list[bytes],
    attempt: Any,
    epoch: Any,
    output: bytes = b"\x2a",
    children: tuple[str, ...] = (),
) -> list[Any]:
    """ARGV of complete.lua: one "ok" outcome for the entry of a claim reply."""
    stream, entry_id, run_id, step = reply[6], reply[7], reply[1], reply[2]
    item = ["ok", stream, entry_id, run_id, step, attempt, epoch, output, 0]
    return [app.keys.prefix, worker, app.dead_maxlen, 1, *item, len(children), *children]


def define(app: Rstick, calls: list[tuple[str, str, str]]) -> None:
    """Dag: two roots and a join. ``calls`` records (run, step, worker) per execution."""

    def record(ctx: Context) -> str:
        calls.append((ctx.run_id, ctx.step, ctx.worker.id()))
        return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Dag:
        @app.step()
        def a(self, ctx: Context) -> str:
            return record(ctx)

        @app.step()
        async def b(self, ctx: Context) -> str:
            return record(ctx)

        @app.step(parents=["a", "b"])
        def c(self, ctx: Context) -> dict[str, Any]:
            record(ctx)
            return {"a": ctx.parent_output("a"), "b": ctx.parent_output("b")}

    @app.workflow()
    class Free:
        @app.step()
        def a(self, ctx: Context) -> dict[str, Any]:
            record(ctx)
            if ctx.input == "fail":
                raise RuntimeError("a failed")
            return {"from": "a"}

        @app.step()
        def b(self, ctx: Context) -> list[int]:
            record(ctx)
            return [1, 2]

        @app.step(parents=["a", "b"])
        def c(self, ctx: Context) -> dict[str, Any]:
            record(ctx)
            assert sorted(ctx.parents) == ["a", "b"]
            return {"a": ctx.parent_output("a"), "b": ctx.parent_output("b"), "in": ctx.input}

    @app.task
    def add(ctx: Context, x: int, y: int) -> int:
        calls.append((ctx.run_id, "add", ctx.worker.id()))
        return x + y


# -- pinning ----------------------------------------------------------------


def test_a_sticky_run_holds_its_other_roots_until_pinned(app: Rstick, redis: Any) -> None:
    define(app, [])
    ref = app.enqueue("Dag")
    assert entries(redis, app.keys.queue("default")) == [(ref.run_id, "a", "1", "0")]
    assert redis.hget(app.keys.run(ref.run_id), "held") == b"b"
    assert ref.get().step("b").status is StepStatus.QUEUED


def test_first_claimer_pins_the_run_and_gets_its_held_roots(app: Rstick, redis: Any) -> None:
    define(app, [])
    ref = app.enqueue("Dag")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            assert await take(w1) == [("run", ref.run_id, "a", "1")]
            assert await take(w2) == []

    run(scenario())
    r = ref.get()
    assert r.worker == "w1"
    assert redis.smembers(app.keys.pinned("w1")) == {ref.run_id.encode()}
    assert redis.hget(app.keys.run(ref.run_id), "held") == b""
    assert entries(redis, app.keys.personal("w1")) == [(ref.run_id, "b", "1", "0")]
    assert entries(redis, app.keys.personal("w2")) == []
    assert (r.step("a").status, r.step("a").worker) == (StepStatus.RUNNING, "w1")
    assert [e["ev"] for e in app.client.history(ref.run_id)] == ["created", "pinned", "started"]


def test_every_step_of_a_sticky_run_runs_on_its_first_claimer(app: Rstick) -> None:
    calls: list[tuple[str, str, str]] = []
    define(app, calls)
    first, second = app.enqueue("Dag"), app.enqueue("Dag")

    async def scenario() -> None:
        async with started(app, "w1", "w2", concurrency=1) as (w1, w2):
            assert await w1.run_once() == 1  # first/a: pins first to w1
            assert await w2.run_once() == 1  # second/a: w1's queue is served first
            await drain(w2, w1)

    run(scenario())
    ran = {(r, s): w for r, s, w in calls}
    assert len(calls) == 6 == len(ran)
    assert {w for (r, _), w in ran.items() if r == first.run_id} == {"w1"}
    assert {w for (r, _), w in ran.items() if r == second.run_id} == {"w2"}
    assert first.result(timeout=1) == {"a": "w1", "b": "w1", "c": {"a": "w1", "b": "w1"}}
    assert second.result(timeout=1) == {"a": "w2", "b": "w2", "c": {"a": "w2", "b": "w2"}}


# -- forwarding -------------------------------------------------------------


def test_a_step_that_reached_the_wrong_worker_is_forwarded(app: Rstick, redis: Any) -> None:
    calls: list[tuple[str, str, str]] = []
    define(app, calls)
    ref = app.enqueue("Dag")
    queue = app.keys.queue("default")

    async def scenario() -> None:
        async with started(app, "w1", "w2", concurrency=1) as (w1, w2):
            assert await w1.run_once() == 1  # a: pins the run, b waits in w1's stream
            # A stray entry for b lands in the shared queue (say, a retry racing the pin).
            redis.xadd(queue, {"r": ref.run_id, "s": "b", "a": "1", "e": "0", "w": "Dag"})
            assert await take(w2) == [("fwd", ref.run_id, "b", "w1")]
            assert entries(redis, queue) == [] and pending(redis, queue) == 0
            assert entries(redis, app.keys.personal("w1")) == [(ref.run_id, "b", "1", "0")] * 2
            assert entries(redis, app.keys.personal("w2")) == []
            b = ref.get().step("b")
            assert (b.status, b.worker) == (StepStatus.QUEUED, None)
            await drain(w2, w1)
            assert w2.steps_done == 0

    run(scenario())
    assert [(s, w) for _, s, w in calls] == [("a", "w1"), ("b", "w1"), ("c", "w1")]
    assert ref.result(timeout=1)["c"] == {"a": "w1", "b": "w1"}
    assert entries(redis, app.keys.personal("w1")) == []  # the duplicate was dropped


# -- DAG release ------------------------------------------------------------


def test_a_join_runs_only_after_both_parents(app: Rstick, redis: Any) -> None:
    calls: list[tuple[str, str, str]] = []
    define(app, calls)
    ref = app.enqueue("Free", {"k": "v"})
    queue = app.keys.queue("default")
    assert entries(redis, queue) == [(ref.run_id, "a", "1", "0"), (ref.run_id, "b", "1", "0")]

    async def scenario() -> None:
        async with started(app, "w1", concurrency=1) as [w1]:
            assert await w1.run_once() == 1
            c = ref.get().step("c")
            assert ref.get().step("a").status is StepStatus.SUCCEEDED
            assert (c.status, c.attempts) == (StepStatus.WAITING, 0)
            assert entries(redis, queue) == [(ref.run_id, "b", "1", "0")]
            assert redis.hget(app.keys.run(ref.run_id), "c.p") == b"1"
            assert await w1.run_once() == 1
            assert ref.get().step("c").status is StepStatus.QUEUED
            assert entries(redis, queue) == [(ref.run_id, "c", "1", "0")]
            assert await drain(w1) == 1

    run(scenario())
    assert [s for _, s, _ in calls] == ["a", "b", "c"]
    assert ref.result(timeout=1) == {
        "a": {"from": "a"},
        "b": [1, 2],
        "c": {"a": {"from": "a"}, "b": [1, 2], "in": {"k": "v"}},
    }
    assert entries(redis, queue) == [] and pending(redis, queue) == 0


def test_complete_releases_children_directly(app: Rstick, redis: Any) -> None:
    define(app, [])
    ref = app.enqueue("Free")
    queue = app.keys.queue("default")

    async def scenario() -> list[Any]:
        async with started(app, "w1") as [w1]:
            claimed = await take_raw(w1)
            assert [r[2] for r in claimed] == [b"a", b"b"]
            replies = []
            for reply, output in zip(claimed, (b"\x01", b"\x02"), strict=True):
                replies += await w1.scripts.complete(
                    keys=[app.keys.workflows],
                    args=complete_args(app, "w1", reply, 1, 0, output, children=("c",)),
                )
                if reply[2] == b"a":
                    # c still waits for b, whose entry is claimed, not completed.
                    assert entries(redis, queue) == [(ref.run_id, "b", "1", "0")]
            return replies

    assert run(scenario()) == [b"ok", b"ok"]
    assert entries(redis, queue) == [(ref.run_id, "c", "1", "0")]
    assert outputs(app, ref.run_id) == {b"a": b"\x01", b"b": b"\x02"}


# -- fencing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker", "attempt", "epoch", "why"),
    [
        ("w1", 2, 0, "refused: attempt 2 on w1 is stale (step is running, attempt 1 on w1)"),
        ("w1", 0, 0, "refused: attempt 0 on w1 is stale"),
        ("w2", 1, 0, "refused: attempt 1 on w2 is stale (step is running, attempt 1 on w1)"),
        ("w1", 1, 1, "refused: stale epoch 1 (run is at 0)"),
    ],
)
def test_a_stale_completion_is_refused_and_changes_nothing(
    app: Rstick, state: Any, worker: str, attempt: int, epoch: int, why: str
) -> None:
    define(app, [])
    ref = app.enqueue("add", {"x": 1, "y": 2})

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, _):
            [reply] = await take_raw(w1)
            before = state()
            [res] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, worker, reply, attempt, epoch)
            )
            assert res.decode().startswith(why)
            # Everything untouched: run, outputs, history, delayed set, and the entry,
            # still pending for w1, whose step is still running there at its attempt.
            assert state() == before
            [res] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, "w1", reply, 1, 0)
            )
            assert res == b"ok"

    run(scenario())
    assert ref.result(timeout=1) == 42


def holders(redis: Any, stream: str) -> list[tuple[str, str]]:
    """(entry id, consumer) of every entry pending in ``stream``."""
    return [
        (e["message_id"].decode(), e["consumer"].decode())
        for e in redis.xpending_range(stream, GROUP, min="-", max="+", count=100)
    ]


def test_a_refused_completion_leaves_the_holders_entry_pending(app: Rstick, redis: Any) -> None:
    define(app, [])
    ref = app.enqueue("add", {"x": 1, "y": 2})
    queue = app.keys.queue("default")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, _):
            [reply] = await take_raw(w1)
            [res] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, "w2", reply, 1, 0)
            )
            assert res.startswith(b"refused")
            # w1 still holds the entry: should w1 die now, the reaper finds it here.
            assert holders(redis, queue) == [(reply[7].decode(), "w1")]
            assert entries(redis, queue) == [(ref.run_id, "add", "1", "0")]
            [res] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, "w1", reply, 1, 0)
            )
            assert res == b"ok"

    run(scenario())
    assert entries(redis, queue) == [] and pending(redis, queue) == 0
    assert ref.result(timeout=1) == 42  # complete_args' output


def test_a_zombies_refused_completion_forgets_its_own_entry_not_the_new_holders(
    app: Rstick, redis: Any
) -> None:
    """A SOFT run reassigned after a false death: the reaper moved the run on
    (reap_run) but had not yet settled the entries w1 held (reap_entries), and w1,
    back from its pause, completes. Refused; its stale entry is forgotten, else it
    would stay in w1's pending list for ever; w2's entry of the new attempt stays."""
    define(app, [])
    ref = app.enqueue("Dag")
    queue = app.keys.queue("default")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            [old] = await take_raw(w1)
            assert old[:5] == [b"run", ref.run_id.encode(), b"a", b"1", b"0"]
            await stop_beating(app, "w1")  # w1 misses its heartbeats
            reaped = await w2.scripts.reap_run(
                keys=[app.keys.workflows],
                args=[app.keys.prefix, "w1", ref.run_id, "dead", 3, b"", b"", 10],
            )
            assert reaped == b"reassigned"
            [new] = await take_raw(w2)
            assert new[:5] == [b"run", ref.run_id.encode(), b"a", b"2", b"1"]
            assert holders(redis, queue) == [(old[7].decode(), "w1"), (new[7].decode(), "w2")]

            [res] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, "w1", old, 1, 0)
            )
            assert res == b"refused: stale epoch 0 (run is at 1)"
            assert holders(redis, queue) == [(new[7].decode(), "w2")]
            assert entries(redis, queue) == [(ref.run_id, "a", "2", "1")]

            [res] = await w2.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, "w2", new, 2, 1)
            )
            assert res == b"ok"

    run(scenario())
    assert entries(redis, queue) == [] and pending(redis, queue) == 0
    assert ref.get().step("a").worker == "w2"


@pytest.mark.parametrize("where", ["no stream", "no group", "undelivered"])
def test_a_refusal_naming_an_entry_nobody_holds_leaves_it_and_the_batch_goes_on(
    app: Rstick, redis: Any, where: str
) -> None:
    define(app, [])
    ref = app.enqueue("add", {"x": 1, "y": 2})
    queue = app.keys.queue("default")
    stream = app.keys.personal("gone")  # e.g. a worker the reaper removed, stream and all

    async def scenario() -> list[bytes]:
        async with started(app, "w1") as [w1]:
            [reply] = await take_raw(w1)
            ghost = list(reply)
            ghost[6], ghost[7] = stream.encode(), b"1-1"
            if where == "no group":
                redis.xadd(stream, {"r": ref.run_id, "s": "add", "a": "1", "e": "0"}, id="1-1")
            elif where == "undelivered":
                ghost[6] = queue.encode()
                ghost[7] = redis.xadd(queue, {"r": ref.run_id, "s": "add", "a": "1", "e": "0"})
            refused = complete_args(app, "w1", ghost, 7, 0)
            ok = complete_args(app, "w1", reply, 1, 0)
            replies: list[bytes] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=[*ok[:3], 2, *refused[4:], *ok[4:]]
            )
            return replies

    refusal, done = run(scenario())
    assert refusal.startswith(b"refused: attempt 7 on w1 is stale") and done == b"ok"
    assert ref.result(timeout=1) == 42  # complete_args' output
    assert pending(redis, queue) == 0
    if where == "no group":
        assert len(redis.xrange(stream)) == 1
    elif where == "undelivered":
        assert entries(redis, queue) == [(ref.run_id, "add", "1", "0")]
    else:
        assert not redis.exists(stream)


def test_completion_of_a_cancelled_run_is_ignored(app: Rstick) -> None:
    define(app, [])
    ref = app.enqueue("add", {"x": 1, "y": 2})

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            [reply] = await take_raw(w1)
            assert app.cancel(ref.run_id).status == "cancelled"
            [res] = await w1.scripts.complete(
                keys=[app.keys.workflows], args=complete_args(app, "w1", reply, 1, 0)
            )
            assert res == b"ignored: run is cancelled"

    run(scenario())
    # Cancelled with its run, and so it stays: its late result changes nothing.
    assert ref.get().step("add").status is StepStatus.CANCELLED
    assert outputs(app, ref.run_id) == {}
    with pytest.raises(RunCancelled):
        ref.result(timeout=1)


# -- leftovers of finished runs ----------------------------------------------


def test_a_finished_runs_leftover_entries_are_dropped(app: Rstick, redis: Any) -> None:
    calls: list[tuple[str, str, str]] = []
    define(app, calls)
    failed = app.enqueue("Free", "fail")  # a fails the run while b still waits in the queue
    cancelled = app.enqueue("add", {"x": 1, "y": 1})
    app.cancel(cancelled.run_id)
    queue = app.keys.queue("default")

    async def scenario() -> None:
        async with started(app, "w1", concurrency=1) as [w1]:
            assert await w1.run_once() == 1  # Free/a fails
            assert await take(w1) == [("drop", failed.run_id, "b", "run is failed")]
            assert await take(w1) == [("drop", cancelled.run_id, "add", "run is cancelled")]
            assert await drain(w1) == 0

    run(scenario())
    assert [s for _, s, _ in calls] == ["a"]
    assert entries(redis, queue) == [] and pending(redis, queue) == 0
    with pytest.raises(RunFailed, match="RuntimeError: a failed"):
        failed.result(timeout=1)
    assert failed.get().step("b").status is StepStatus.QUEUED  # never started


def test_entries_of_a_stale_attempt_or_unknown_run_are_dropped(app: Rstick, redis: Any) -> None:
    define(app, [])
    ref = app.enqueue("add", {"x": 1, "y": 1})
    queue = app.keys.queue("default")
    redis.xadd(queue, {"r": ref.run_id, "s": "add", "a": "7", "e": "0", "w": "add"})
    redis.xadd(queue, {"r": ref.run_id, "s": "add", "a": "1", "e": "3", "w": "add"})
    redis.xadd(queue, {"r": "nope", "s": "add", "a": "1", "e": "0", "w": "add"})
    redis.xadd(queue, {"r": ref.run_id, "s": "zzz", "a": "1", "e": "0", "w": "add"})

    async def scenario() -> list[tuple[str, ...]]:
        async with started(app, "w1", concurrency=10) as [w1]:
            return await take(w1)

    assert run(scenario()) == [
        ("run", ref.run_id, "add", "1"),
        ("drop", ref.run_id, "add", "stale attempt 7 (step is at 1)"),
        ("drop", ref.run_id, "add", "stale epoch 3 (run is at 0)"),
        ("drop", "nope", "add", "no such run"),
        ("drop", ref.run_id, "zzz", "no such step"),
    ]
    assert len(entries(redis, queue)) == 1 and pending(redis, queue) == 1  # the claimed one


# -- dead letters -----------------------------------------------------------


def test_malformed_entries_are_dead_lettered_and_the_worker_goes_on(
    app: Rstick, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, str, str]] = []
    define(app, calls)
    queue = app.keys.queue("default")
    junk = redis.xadd(queue, {"junk": "yes"}).decode()
    no_wf = redis.xadd(queue, {"r": "x", "s": "y", "a": "1", "e": "0"}).decode()  # no workflow
    redis.xadd(queue, {"r": "x", "s": "y", "a": "1", "e": "0", "w": "Ghost"})
    ref = app.enqueue("add", {"x": 2, "y": 2})

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await drain(w1) == 4

    run(scenario())
    assert ref.result(timeout=1) == 4
    assert entries(redis, queue) == [] and pending(redis, queue) == 0
    letters = list(reversed(app.client.dead_letters()))
    malformed = "malformed entry: needs fields r, s, a, e, w"
    # The Ghost entry is well formed but names no run: there is nothing to lose, it is
    # dropped like any stale entry (a valid run of a workflow the worker lacks waits:
    # tests/test_missing_code.py).
    assert [d["reason"] for d in letters] == [malformed, malformed]
    assert all(d["stream"] == queue and d["worker"] == "w1" for d in letters)
    assert letters[0]["junk"] == "yes"
    # The log says which entry went, and of which run and step when it names them.
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dead-")]
    assert logged == [
        f"dead-lettered entry {junk} of {queue}: {malformed}",
        f"dead-lettered entry {no_wf} of {queue} (run x, step y): {malformed}",
    ]


def test_an_entry_with_binary_fields_does_not_stop_the_worker(app: Rstick, redis: Any) -> None:
    define(app, [])
    queue = app.keys.queue("default")
    redis.xadd(queue, {"r": b"\xff\xfe", "s": "add", "a": "1", "e": "0", "w": "add"})
    ref = app.enqueue("add", {"x": 2, "y": 3})

    run_until_idle(app, "w1")
    assert ref.result(timeout=1) == 5
