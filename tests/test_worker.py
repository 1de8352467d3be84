"""The worker on fakeredis: retries with backoff, failures, how steps are called,
free slots, timeouts. Time is driven through the ``due`` script, never slept."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from drive import drain, outputs, run, run_until_idle, started

from rstick import (
    Context,
    Rstick,
    RunFailed,
    RunStatus,
    StepStatus,
    StickyStrategy,
    TaskInputError,
    Worker,
)
from rstick.keys import GROUP
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock

LATER = 10_000  # seconds: far enough ahead that every backoff here is due


async def skip_ahead(w: Worker, clock: FakeClock) -> int:
    """Move the clock far ahead, beat (as the worker's heartbeat thread would) and move
    every delayed entry now due; returns how many."""
    clock.advance(LATER)
    await w.beat()
    return await w.move_due()


def delayed(app: Rstick) -> list[tuple[str, float]]:
    raw = app.client.redis.zrange(app.keys.delayed, 0, -1, withscores=True)
    return [(m.decode(), score) for m, score in raw]


# -- retries ----------------------------------------------------------------


def test_a_step_is_retried_with_exponential_backoff(app: Rstick, clock: FakeClock) -> None:
    attempts: list[int] = []

    @app.task(retries=2, backoff=60)
    def flaky(ctx: Context) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")
        return "done"

    ref = app.enqueue("flaky")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            for attempt, backoff_ms in ((1, 60_000), (2, 120_000)):
                assert await w1.run_once() == 1
                [(member, due)] = delayed(app)
                assert member == f"{ref.run_id}|flaky|{attempt + 1}|0"
                assert due == clock.ms() + backoff_ms  # by Redis's clock
                step = ref.get().step("flaky")
                assert (step.status, step.attempts) == (StepStatus.RETRYING, attempt + 1)
                assert step.error is not None and step.error.message == f"try {attempt}"
                assert ref.status() is RunStatus.RUNNING
                assert await w1.run_once() == 0  # not due yet
                assert await skip_ahead(w1, clock) == 1
            assert await drain(w1) == 1

    run(scenario())
    assert attempts == [1, 2, 3]
    assert ref.result(timeout=1) == "done"
    assert delayed(app) == []
    events = [(e["ev"], e.get("a")) for e in app.client.history(ref.run_id)]
    assert events == [
        ("created", None),
        ("started", "1"),
        ("retry", "1"),
        ("started", "2"),
        ("retry", "2"),
        ("started", "3"),
        ("succeeded", "3"),
        ("finished", None),
    ]


def test_a_sticky_runs_retry_stays_on_its_worker(app: Rstick, clock: FakeClock) -> None:
    seen: list[tuple[str, int, str]] = []

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Sticky:
        @app.step(retries=2, backoff=60)
        def a(self, ctx: Context) -> None:
            seen.append(("a", ctx.attempt, ctx.worker.id()))
            if ctx.attempt == 1:
                raise RuntimeError("first try fails")

        @app.step(parents=["a"], retries=1, backoff=60)
        def b(self, ctx: Context) -> None:
            seen.append(("b", ctx.attempt, ctx.worker.id()))
            if ctx.attempt == 1:
                raise RuntimeError("first try fails")

    ref = app.enqueue("Sticky")
    redis = app.client.redis

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            assert await w1.run_once() == 1  # pins to w1; a fails
            for step in ("a", "b"):
                assert await skip_ahead(w1, clock) == 1
                assert redis.xlen(app.keys.queue("default")) == 0
                assert redis.xlen(app.keys.personal("w1")) == 1
                assert await w2.run_once() == 0
                assert await w1.run_once() == 1  # the retry succeeds...
                if step == "a":
                    assert await w1.run_once() == 1  # ...and b's first try fails

    run(scenario())
    assert seen == [("a", 1, "w1"), ("a", 2, "w1"), ("b", 1, "w1"), ("b", 2, "w1")]
    assert ref.status() is RunStatus.SUCCEEDED


def test_a_step_that_keeps_raising_fails_the_run_after_its_retries(
    app: Rstick, clock: FakeClock
) -> None:
    calls: list[int] = []

    @app.task(retries=1, backoff=60)
    def broken(ctx: Context) -> None:
        calls.append(ctx.attempt)
        raise KeyError("missing")

    ref = app.enqueue("broken")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await w1.run_once() == 1
            assert await skip_ahead(w1, clock) == 1
            assert await w1.run_once() == 1
            assert await skip_ahead(w1, clock) == 0

    run(scenario())
    assert calls == [1, 2]
    with pytest.raises(RunFailed) as info:
        ref.result(timeout=1)
    assert (info.value.step, info.value.error_type) == ("broken", "KeyError")
    assert info.value.error_message == "'missing'"
    r = ref.get()
    assert (r.status, r.error_step) == (RunStatus.FAILED, "broken")
    assert (r.step("broken").status, r.step("broken").attempts) == (StepStatus.FAILED, 2)
    assert delayed(app) == []


def test_a_non_serializable_output_fails_the_step_naming_the_path(app: Rstick) -> None:
    @app.workflow()
    class Bad:
        @app.step()
        def a(self, ctx: Context) -> dict[str, Any]:
            return {"x": [1, {2, 3}]}

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> None: ...

    ref = app.enqueue("Bad")

    run_until_idle(app, "w1")
    with pytest.raises(RunFailed) as info:
        ref.result(timeout=1)
    assert (info.value.step, info.value.error_type) == ("a", "SerializationError")
    assert info.value.error_message == "output['x'][1]: set is not serializable"
    assert ref.get().step("b").status is StepStatus.WAITING
    assert outputs(app, ref.run_id) == {}


def test_an_output_over_the_size_limit_fails_the_step_and_writes_no_output(app: Rstick) -> None:
    app.max_payload_bytes = 1000

    @app.workflow()
    class Big:
        @app.step()
        def a(self, ctx: Context) -> str:
            return "x" * ctx.input

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> None: ...

    small, big = app.enqueue("Big", 900), app.enqueue("Big", 2000)

    run_until_idle(app, "w1")
    assert small.result(timeout=1) == {"a": "x" * 900, "b": None}
    with pytest.raises(RunFailed) as info:
        big.result(timeout=1)
    assert (info.value.step, info.value.error_type) == ("a", "PayloadTooLarge")
    assert info.value.error_message == (
        "output is 2,003 bytes packed, over the limit of 1,000 (Rstick(max_payload_bytes=...))"
    )
    assert big.get().step("b").status is StepStatus.WAITING
    assert outputs(app, big.run_id) == {}


def test_a_step_raising_cancelled_error_fails_instead_of_hanging(app: Rstick) -> None:
    @app.task
    async def cancels(ctx: Context) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(30))
        inner.cancel()
        await inner  # raises CancelledError into the step

    ref = app.enqueue("cancels")

    run_until_idle(app, "w1")
    assert ref.status() is RunStatus.FAILED
    with pytest.raises(RunFailed, match="CancelledError"):
        ref.result(timeout=1)


# -- how steps are called -----------------------------------------------------


def test_def_steps_run_in_the_pool_and_async_steps_on_the_loop(app: Rstick) -> None:
    where: dict[str, str] = {}

    @app.workflow()
    class Mixed:
        @app.step()
        def sync_step(self, ctx: Context) -> None:
            where["sync"] = threading.current_thread().name

        @app.step()
        async def async_step(self, ctx: Context) -> None:
            asyncio.get_running_loop()  # raises outside a running loop
            where["async"] = threading.current_thread().name

    app.enqueue("Mixed")

    async def scenario() -> None:
        where["loop"] = threading.current_thread().name
        async with started(app, "w1") as [w1]:
            assert await drain(w1) == 2

    run(scenario())
    assert where["sync"].startswith("rstick-w1")
    assert where["async"] == where["loop"] != where["sync"]


def test_a_tasks_input_dict_is_spread_as_keyword_arguments(app: Rstick) -> None:
    @app.task
    def add(ctx: Context, x: int, y: int = 10) -> int:
        return x + y

    @app.task
    async def echo(ctx: Context, data: Any = "nothing") -> Any:
        return data

    refs = [
        app.enqueue("add", {"x": 1, "y": 2}),
        app.enqueue("add", {"x": 1}),
        app.enqueue("echo", {"data": [1, 2]}),
        app.enqueue("echo"),
    ]

    async def scenario() -> None:
        async with started(app, "w1", concurrency=10) as [w1]:
            assert await drain(w1) == 4

    run(scenario())
    assert [r.result(timeout=1) for r in refs] == [3, 11, [1, 2], "nothing"]


def define_strict(app: Rstick, calls: list[str]) -> None:
    @app.task(retries=3)
    def add(ctx: Context, x: int, y: int = 10) -> int:
        calls.append("add")
        return x + y

    @app.task(retries=3)
    def own_type_error(ctx: Context) -> None:
        calls.append("own_type_error")
        len(5)  # type: ignore[arg-type]  # the task's own TypeError: retried


@pytest.mark.parametrize(
    ("input", "message"),
    [
        (
            {"x": 1, "z": 2},
            "task 'add' cannot take this input: got an unexpected keyword argument 'z'",
        ),
        ({"y": 2}, "task 'add' cannot take this input: missing a required argument: 'x'"),
        (None, "task 'add' cannot take this input: missing a required argument: 'x'"),
        (
            {"x": 1, "ctx": 2},
            "task 'add' cannot take this input: multiple values for argument 'ctx'",
        ),
        ([1, 2], r"task 'add' takes a dict of keyword arguments \(or None\) as input, not list"),
        ("text", "as input, not str"),
        (5, "as input, not int"),
        ({1: "x"}, "as input, not a dict with non-str keys"),
    ],
)
def test_a_task_input_its_function_cannot_take_is_refused_at_enqueue(
    app: Rstick, state: Any, input: Any, message: str
) -> None:
    define_strict(app, [])
    app.enqueue("add", {"x": 1})
    before = state()
    with pytest.raises(TaskInputError, match=message):
        app.enqueue("add", input)
    with pytest.raises(TaskInputError, match=message):
        run(app.aenqueue("add", input))
    with pytest.raises(TaskInputError, match=message):
        app.enqueue_many("add", [{"x": 1}, input])
    assert state() == before
    assert isinstance(TaskInputError("x"), TypeError)


def test_a_task_input_that_does_not_bind_fails_at_once_on_the_worker(
    app: Rstick, other_app: Rstick, clock: FakeClock
) -> None:
    """A client without the code cannot check the signature: the worker binds
    before calling, and fails the step at once, without its retries."""
    calls: list[str] = []
    define_strict(app, calls)
    run_until_idle(app, "w1")  # registers the definitions
    unknown_kwarg = other_app.enqueue("add", {"x": 1, "z": 2})
    with pytest.raises(TaskInputError, match="not list"):  # checked without the code, too
        other_app.enqueue("add", [1, 2])
    own = app.enqueue("own_type_error")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            await drain(w1)
            assert await skip_ahead(w1, clock) == 1  # only own_type_error's retry
            await drain(w1)

    run(scenario())
    with pytest.raises(RunFailed) as info:
        unknown_kwarg.result(timeout=1)
    assert info.value.error_type == "TaskInputError"
    assert info.value.error_message == (
        "task 'add' cannot take this input: got an unexpected keyword argument 'z'"
    )
    step = unknown_kwarg.get().steps[0]
    assert (step.status, step.attempts) == (StepStatus.FAILED, 1)
    assert calls.count("add") == 0  # never called
    # The task's own TypeError takes its retries: ran twice, a third attempt due.
    assert calls.count("own_type_error") == 2
    assert own.get().steps[0].status is StepStatus.RETRYING


def test_the_context_describes_the_step(app: Rstick) -> None:
    seen: dict[str, Any] = {}

    @app.workflow()
    class Ctx:
        @app.step()
        def a(self, ctx: Context) -> int:
            return 7

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> None:
            seen.update(
                run_id=ctx.run_id,
                step=ctx.step,
                input=ctx.input,
                attempt=ctx.attempt,
                worker=ctx.worker.id(),
                reassigned=ctx.reassigned,
                parent=ctx.parent_output("a"),
            )
            with pytest.raises(KeyError, match="'b' is not a parent of step 'b'"):
                ctx.parent_output("b")

    ref = app.enqueue("Ctx", {"in": [1]})

    run_until_idle(app, "w1")
    assert ref.status() is RunStatus.SUCCEEDED
    assert seen == {
        "run_id": ref.run_id,
        "step": "b",
        "input": {"in": [1]},
        "attempt": 1,
        "worker": "w1",
        "reassigned": False,
        "parent": 7,
    }


# -- free slots -------------------------------------------------------------


def test_the_worker_never_claims_more_than_its_free_slots(app: Rstick) -> None:
    gate = threading.Event()  # holds the jobs so that no slot frees up meanwhile

    @app.task
    def job(ctx: Context, n: int) -> int:
        gate.wait(5)
        return n

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Pinned:
        @app.step()
        def only(self, ctx: Context) -> str:
            return ctx.worker.id()

    redis = app.client.redis
    queue, personal = app.keys.queue("default"), app.keys.personal("w1")
    refs = app.enqueue_many("job", [{"n": n} for n in range(25)])
    # Runs pinned to w1 at creation (as sticky children are): its personal stream.
    pinned = [app.client.enqueue("Pinned", pin="w1") for _ in range(3)]

    async def scenario() -> None:
        async with started(app, "w1", concurrency=10) as [w1]:
            try:
                assert await w1.fetch(None) == 10
                assert len(w1.running) == 10 and w1.free == 0
                # The personal stream first, then the shared queue up to the free slots.
                assert redis.xpending(personal, GROUP)["pending"] == 3
                assert redis.xpending(queue, GROUP)["pending"] == 7
                assert await w1.fetch(None) == 0  # full: it reads nothing
                assert redis.xpending(queue, GROUP)["pending"] == 7
            finally:
                gate.set()
            await asyncio.wait(list(w1.running.values()))
            await w1.flush()
            assert w1.steps_done == 10
            assert await drain(w1) == 18

    run(scenario())
    assert [r.result(timeout=1) for r in refs] == list(range(25))
    assert [r.result(timeout=1) for r in pinned] == [{"only": "w1"}] * 3


# -- timeouts ---------------------------------------------------------------


def test_a_step_past_its_timeout_raises_step_timeout(app: Rstick) -> None:
    release = threading.Event()

    @app.task(timeout=0.05)
    async def slow_async(ctx: Context) -> None:
        await asyncio.sleep(30)

    @app.task(timeout=0.05)
    def slow_sync(ctx: Context) -> None:
        release.wait(30)

    refs = {name: app.enqueue(name) for name in ("slow_async", "slow_sync")}

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            try:
                assert await drain(w1) == 2
            finally:
                release.set()  # the abandoned thread ends before the pool is shut down

    run(scenario())
    for name, ref in refs.items():
        with pytest.raises(RunFailed) as info:
            ref.result(timeout=1)
        assert info.value.error_type == "StepTimeout"
        assert info.value.error_message == f"step {name!r} timed out after 0.05s"


# -- what a lost connection or bad data leaves ----------------------------------


def test_an_entry_whose_reply_was_lost_is_recovered(app: Rstick) -> None:
    @app.task()
    def job(ctx: Context) -> int:
        return ctx.attempt

    ref = app.enqueue("job")
    redis, queue = app.client.redis, app.keys.queue("default")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            # Redis hands the entry to w1's read; the reply never reaches w1.
            redis.xreadgroup(GROUP, "w1", {queue: ">"}, count=10)
            assert await drain(w1) == 0  # a read takes only new entries: stranded
            assert await w1.recover_stranded() == 1
            assert await drain(w1) == 1
            assert await w1.recover_stranded() == 0  # nothing pending is left

    run(scenario())
    assert ref.result(timeout=1) == 1  # never started: the same attempt runs
    assert redis.xpending(queue, GROUP)["pending"] == 0


def test_recovery_leaves_the_steps_the_worker_runs_alone(app: Rstick) -> None:
    gate = asyncio.Event()

    @app.task()
    async def slow(ctx: Context) -> int:
        await gate.wait()
        return ctx.attempt

    ref = app.enqueue("slow")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await w1.fetch(None) == 1
            assert await w1.recover_stranded() == 0  # running here: not stranded
            gate.set()
            await drain(w1)

    run(scenario())
    assert ref.result(timeout=1) == 1
    assert "lost" not in [e["ev"] for e in app.client.history(ref.run_id)]


def test_a_corrupt_input_fails_the_step_and_is_dead_lettered(app: Rstick) -> None:
    @app.task()
    def job(ctx: Context) -> None:
        raise AssertionError("never called")

    ref = app.enqueue("job")
    app.client.redis.hset(app.keys.run(ref.run_id), "input", b"\xc1")  # not msgpack

    run_until_idle(app, "w1")
    with pytest.raises(RunFailed) as info:
        ref.result(timeout=1)
    assert info.value.error_type == "CorruptPayload"
    [letter] = app.client.dead_letters()
    assert (letter["reason"], letter["r"], letter["s"]) == ("corrupt payload", ref.run_id, "job")


def test_a_step_whose_worker_was_lost_keeps_its_retries(app: Rstick, clock: FakeClock) -> None:
    """Losses are bounded by max_deliveries; retries are for the step's own errors."""
    tries: list[int] = []

    @app.task(retries=1, backoff=1)
    def flaky(ctx: Context) -> int:
        tries.append(ctx.attempt)
        if len(tries) == 1:
            raise RuntimeError("its one error")
        return ctx.attempt

    ref = app.enqueue("flaky")

    async def scenario() -> None:
        async with started(app, "w1", "w2") as (w1, w2):
            marks = [x for stream in w1.streams for x in (stream, "")]
            await w1.scripts.take(  # w1 takes attempt 1 and dies with it
                keys=[app.keys.workflows],
                args=[app.keys.prefix, "w1", w1.instance, w1.fetcher.serves, 1, "", 10, *marks],
            )
            clock.advance(app.worker_ttl + 1)
            await w2.beat()
            await Reaper(app, "w2").reap(lead=False)
            assert await w2.run_once() == 1  # attempt 2: the step's first error
            assert await skip_ahead(w2, clock) == 1  # retried all the same
            await drain(w2)

    run(scenario())
    assert tries == [2, 3]
    assert ref.result(timeout=1) == 3


def test_a_completion_resent_after_a_lost_reply_is_applied_once(app: Rstick) -> None:
    @app.workflow()
    class Two:
        @app.step()
        def a(self, ctx: Context) -> int:
            return 1

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> int:
            return 2

    ref = app.enqueue("Two")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            await w1.fetch(None)
            await asyncio.wait(list(w1.running.values()))
            [sent] = w1.completer.outcomes
            await w1.flush()
            w1.completer.outcomes = [sent]  # the reply was lost: the worker sends it again
            args = [app.keys.prefix, "w1", app.dead_maxlen, 1, *sent.to_args()]
            assert await w1.scripts.complete(keys=[app.keys.workflows], args=args) == [
                b"applied before"
            ]
            w1.completer.outcomes = []
            await drain(w1)

    run(scenario())
    assert ref.result(timeout=1) == {"a": 1, "b": 2}
    assert [e["s"] for e in app.client.history(ref.run_id) if e["ev"] == "succeeded"] == [
        "a",
        "b",
    ]


def test_the_stop_log_line_counts_in_words(app: Rstick, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="rstick")
    worker = Worker(app, worker_id="w1", drain_timeout=30)
    worker.running["one"] = None  # type: ignore[assignment]  # only counted here
    worker.request_stop()
    assert "stopping: finishing 1 running step (at most 30s)" in caplog.messages


def test_backoff_names_the_url_and_a_refused_login_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from rstick import LoginFailed
    from rstick.backoff import Backoff

    backoff = Backoff("read", "redis://:pw?x@127.0.0.1:6390/0", first=0.0)
    run(backoff.wait(RedisConnectionError("refused")))
    assert caplog.messages == [
        "redis unavailable at redis://:***@127.0.0.1:6390/0 (ConnectionError: refused); "
        "read retrying in 0.0s"
    ]
    with pytest.raises(LoginFailed) as refused:
        run(backoff.wait(AuthenticationError("invalid username-password pair")))
    assert str(refused.value) == (
        "cannot log in to Redis at redis://:***@127.0.0.1:6390/0: wrong password"
    )


# -- names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker_id", "message"),
    [
        ("", "worker id '' must be a non-empty string"),
        ("w 1", "worker id 'w 1' contains whitespace"),
        ("w\x00", "contains a control character"),
        ("{w}", "contains '{'"),
        ("w" * 201, "over the limit of 200"),
    ],
)
def test_a_worker_id_the_layout_cannot_hold_is_refused(
    app: Rstick, worker_id: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Worker(app, worker_id=worker_id)


def test_a_queue_name_the_layout_cannot_hold_is_refused(app: Rstick) -> None:
    with pytest.raises(ValueError, match="queue name 'a b' contains whitespace"):
        Worker(app, worker_id="w1", queues=["default", "a b"])
