"""The client on fakeredis: enqueue (refusals write nothing), idempotence, delays,
definitions registered by another process, and waiting on results."""

from __future__ import annotations

from typing import Any

import pytest
from drive import drain, run, run_until_idle, started

from rstick import (
    Context,
    PayloadTooLarge,
    ResultTimeout,
    Rstick,
    RunFailed,
    RunNotFound,
    RunRef,
    RunStatus,
    SerializationError,
    StickyStrategy,
    UnknownWorkflow,
    Worker,
)
from rstick.testing.clock import FakeClock


def define(app: Rstick) -> None:
    @app.workflow(sticky=StickyStrategy.SOFT)
    class Flow:
        @app.step()
        def a(self, ctx: Context) -> dict[str, Any]:
            return {"input": ctx.input, "worker": ctx.worker.id()}

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> Any:
            if isinstance(ctx.input, dict) and ctx.input.get("fail"):
                raise ValueError(f"boom {ctx.input['fail']}")
            return ctx.parent_output("a")["input"]

    @app.task
    def add(ctx: Context, x: int, y: int) -> int:
        return x + y


def queue_len(app: Rstick, queue: str = "default") -> int:
    n: int = app.client.redis.xlen(app.keys.queue(queue))
    return n


# -- refusals ---------------------------------------------------------------


def test_unknown_workflow_raises_and_writes_nothing(app: Rstick, state: Any) -> None:
    define(app)
    app.enqueue("add", {"x": 1, "y": 2})  # some state to compare against
    before = state()
    with pytest.raises(UnknownWorkflow) as info:
        app.enqueue("Nope", {"x": 1})
    assert str(info.value) == "unknown workflow 'Nope'"
    assert info.value.name == "Nope"
    with pytest.raises(UnknownWorkflow, match="unknown workflow 'Nope'"):
        app.enqueue_many("Nope", [{}, {}])
    with pytest.raises(UnknownWorkflow, match="unknown workflow 'Nope'"):
        run(app.aenqueue("Nope"))
    assert state() == before


def test_unknown_workflow_from_a_process_without_definitions(other_app: Rstick, state: Any) -> None:
    before = state()
    with pytest.raises(UnknownWorkflow, match=r"^unknown workflow 'Flow'$"):
        other_app.enqueue("Flow")
    assert state() == before == {}


def test_definition_removed_from_redis_is_refused_by_the_script(
    app: Rstick, other_app: Rstick, state: Any
) -> None:
    define(app)
    app.enqueue("add", {"x": 0, "y": 0})  # registers the definition in Redis
    other_app.enqueue("add", {"x": 1, "y": 1})  # caches it
    app.client.redis.hdel(app.keys.workflows, "add")
    before = state()
    with pytest.raises(UnknownWorkflow, match="unknown workflow 'add'"):
        other_app.enqueue("add", {"x": 2, "y": 2})
    assert state() == before
    # Once a worker registers it again, the same client enqueues it again.
    run(Worker(app, worker_id="w1").start())
    assert other_app.enqueue("add", {"x": 2, "y": 2}).status() is RunStatus.QUEUED


def test_non_serializable_input_is_refused_with_its_path_and_writes_nothing(
    app: Rstick, state: Any
) -> None:
    define(app)
    app.enqueue("add", {"x": 1, "y": 2})
    before = state()
    with pytest.raises(SerializationError, match=r"^input\['a'\]\[2\]: set is not serializable$"):
        app.enqueue("Flow", {"a": [1, 2, {3}]})
    with pytest.raises(SerializationError, match=r"input\['x'\]: object is not serializable"):
        app.enqueue_many("add", [{"x": 1, "y": 2}, {"x": object(), "y": 2}])
    with pytest.raises(SerializationError, match="input: set is not serializable"):
        run(app.aenqueue("Flow", {1, 2}))
    assert state() == before


def test_an_input_over_the_size_limit_is_refused_and_writes_nothing(
    app: Rstick, state: Any
) -> None:
    assert app.max_payload_bytes == 4 * 1024 * 1024  # the default
    app.max_payload_bytes = 1000
    define(app)

    @app.task(on_events=["big"])
    def listener(ctx: Context, blob: bytes) -> int:
        return len(blob)

    app.enqueue("add", {"x": 1, "y": 2})
    app.enqueue("listener", {"blob": b"x" * 900})  # under the limit: taken
    before = state()
    big = {"x": 1, "y": "y" * 1000}
    message = r"^input is 1,009 bytes packed, over the limit of 1,000 \(Rstick\(max_payload_bytes"
    with pytest.raises(PayloadTooLarge, match=message):
        app.enqueue("add", big)
    with pytest.raises(PayloadTooLarge, match=message):
        app.enqueue_many("add", [{"x": 1, "y": 2}, big])
    with pytest.raises(PayloadTooLarge, match=message):
        run(app.aenqueue("add", big))
    with pytest.raises(PayloadTooLarge, match="over the limit of 1,000"):
        app.emit("big", {"blob": b"x" * 1000})
    with pytest.raises(PayloadTooLarge, match="over the limit of 1,000"):
        run(app.aemit("big", {"blob": b"x" * 1000}))
    assert state() == before


def test_an_input_the_worker_could_not_read_is_refused(app: Rstick, state: Any) -> None:
    define(app)
    with pytest.raises(SerializationError, match=r"input\['x'\]"):
        app.enqueue("add", {"x": {(1, 2): 3}, "y": 0})
    assert state() == {}


def test_a_refused_first_enqueue_does_not_register_the_definition(app: Rstick, state: Any) -> None:
    define(app)
    with pytest.raises(SerializationError):
        app.enqueue("Flow", {"a": {1}})
    assert state() == {}


# -- enqueue ----------------------------------------------------------------


def test_enqueue_creates_the_run_and_one_entry(app: Rstick, redis: Any) -> None:
    define(app)
    ref = app.enqueue("Flow", {"user": 42})
    assert ref.status() is RunStatus.QUEUED
    r = ref.get()
    assert (r.workflow, r.sticky, r.worker, r.epoch) == ("Flow", StickyStrategy.SOFT, None, 0)
    assert [(s.name, s.status.value, s.attempts) for s in r.steps] == [
        ("a", "queued", 1),
        ("b", "waiting", 0),
    ]
    [(_, fields)] = redis.xrange(app.keys.queue("default"))
    assert fields == {b"r": ref.run_id.encode(), b"s": b"a", b"a": b"1", b"e": b"0", b"w": b"Flow"}
    assert redis.zscore(app.keys.runs("Flow"), ref.run_id) is not None
    assert [e["ev"] for e in app.client.history(ref.run_id)] == ["created"]


def test_enqueue_with_the_same_run_id_is_idempotent(app: Rstick, redis: Any) -> None:
    define(app)
    first = app.enqueue("add", {"x": 1, "y": 2}, run_id="order-17")
    again = app.enqueue("add", {"x": 100, "y": 200}, run_id="order-17")
    assert first.run_id == again.run_id == "order-17"
    assert queue_len(app) == 1
    assert redis.zcard(app.keys.runs("add")) == 1
    assert len(app.client.history("order-17")) == 1

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await drain(w1) == 1

    run(scenario())
    assert again.result(timeout=1) == 3  # the first input won


def test_enqueue_many_in_one_go(app: Rstick) -> None:
    define(app)
    refs = app.enqueue_many("add", [{"x": i, "y": i} for i in range(5)])
    assert len({r.run_id for r in refs}) == 5
    assert queue_len(app) == 5
    assert app.enqueue_many("add", []) == []

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await drain(w1) == 5

    run(scenario())
    assert [r.result(timeout=1) for r in refs] == [0, 2, 4, 6, 8]


def test_delay_goes_to_the_delayed_set(app: Rstick, redis: Any, clock: FakeClock) -> None:
    define(app)
    ref = app.enqueue("add", {"x": 2, "y": 3}, delay=60)
    assert queue_len(app) == 0
    [(member, due)] = redis.zrange(app.keys.delayed, 0, -1, withscores=True)
    assert member == f"{ref.run_id}|add|1|0".encode()
    assert due == clock.ms() + 60_000  # by Redis's clock

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await drain(w1) == 0  # not due yet
            assert ref.status() is RunStatus.QUEUED
            clock.advance(59.999)
            assert await w1.move_due() == 0
            clock.advance(0.001)
            assert await w1.move_due() == 1
            assert redis.zcard(app.keys.delayed) == 0
            assert await drain(w1) == 1

    run(scenario())
    assert ref.result(timeout=1) == 5


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        (float("inf"), "delay must be a finite number of seconds, not inf"),
        (float("nan"), "delay must be a finite number of seconds, not nan"),
        (1e30, "delay must be at most 31536000 seconds"),
        ("5", "delay must be a number of seconds, not str '5'"),
        (-5, "delay must be at least 0 seconds, not -5"),
        (True, "delay must be a number of seconds, not bool True"),
    ],
)
def test_a_delay_out_of_bounds_is_refused_and_writes_nothing(
    app: Rstick, state: Any, delay: Any, message: str
) -> None:
    define(app)
    app.enqueue("add", {"x": 1, "y": 1})  # registers the definition
    before = state()
    with pytest.raises(ValueError, match=message):
        app.enqueue("add", {"x": 2, "y": 3}, delay=delay)
    with pytest.raises(ValueError, match=message):
        run(app.aenqueue("add", {"x": 2, "y": 3}, delay=delay))
    assert state() == before


def test_a_delay_of_a_year_is_taken(app: Rstick, redis: Any, clock: FakeClock) -> None:
    define(app)
    ref = app.enqueue("add", {"x": 2, "y": 3}, delay=365 * 24 * 3600)
    [(member, due)] = redis.zrange(app.keys.delayed, 0, -1, withscores=True)
    assert member.startswith(ref.run_id.encode())
    assert due == clock.ms() + 365 * 24 * 3600 * 1000


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (0, "timeout must be above 0 seconds, not 0"),
        (-1, "timeout must be above 0 seconds"),
        (float("nan"), "timeout must be a finite number of seconds, not nan"),
        (float("inf"), "timeout must be a finite number of seconds, not inf"),
        ("1", "timeout must be a number of seconds, not str '1'"),
    ],
)
def test_a_result_timeout_out_of_bounds_is_refused(app: Rstick, timeout: Any, message: str) -> None:
    define(app)
    ref = app.enqueue("add", {"x": 2, "y": 3})
    with pytest.raises(ValueError, match=message):
        ref.result(timeout=timeout)

    async def wait_async() -> None:
        aref = await app.aenqueue("add", {"x": 2, "y": 3})
        await aref.result(timeout=timeout)

    with pytest.raises(ValueError, match=message):
        run(wait_async())


def test_definitions_registered_by_a_worker_serve_another_process(
    app: Rstick, other_app: Rstick
) -> None:
    define(app)
    assert other_app.workflows == {}

    async def scenario() -> tuple[Any, Any]:
        async with started(app, "w1") as [w1]:  # start() registers the definitions
            flow = other_app.enqueue("Flow", {"user": 1})
            job = other_app.enqueue("add", {"x": 20, "y": 22})
            assert await drain(w1) == 3
            return flow, job

    flow, job = run(scenario())
    assert flow.result(timeout=1) == {"a": {"input": {"user": 1}, "worker": "w1"}, "b": {"user": 1}}
    assert job.result(timeout=1) == 42
    assert other_app.get_run(flow.run_id).sticky is StickyStrategy.SOFT


def test_a_client_registers_its_definitions_again_after_redis_lost_everything(
    app: Rstick,
) -> None:
    define(app)
    app.enqueue("add", {"x": 1, "y": 2})  # registered: the client will not send them again
    app.enqueue_many("Flow", [{}])
    sends = {
        "add": lambda: [app.enqueue("add", {"x": 1, "y": 2})],
        "Flow": lambda: app.enqueue_many("Flow", [{}, {}]),
    }
    for name, send in sends.items():
        # A restart without persistence: the data and the scripts are gone.
        app.client.redis.flushall()
        app.client.redis.script_flush()
        assert {ref.status() for ref in send()} == {RunStatus.QUEUED}
        assert app.client.redis.hkeys(app.keys.workflows) == [name.encode()]


def test_enqueue_registers_local_definitions_before_any_worker(
    app: Rstick, other_app: Rstick
) -> None:
    define(app)
    app.enqueue("add", {"x": 1, "y": 1})
    ref = other_app.enqueue("add", {"x": 1, "y": 2})
    assert ref.status() is RunStatus.QUEUED
    assert "Flow" not in other_app.workflows


# -- results ----------------------------------------------------------------


def test_result_of_a_workflow_and_of_a_task(app: Rstick) -> None:
    define(app)
    flow = app.enqueue("Flow", [1, "two"])
    job = app.enqueue("add", {"x": 1, "y": 2})

    async def scenario() -> Any:
        async with started(app, "w1") as [w1]:
            aref = await app.aenqueue("add", {"x": 5, "y": 5})
            await drain(w1)
            return await aref.result(timeout=1)

    assert run(scenario()) == 10
    assert flow.result(timeout=1) == {"a": {"input": [1, "two"], "worker": "w1"}, "b": [1, "two"]}
    assert job.result(timeout=1) == 3
    assert flow.status() is RunStatus.SUCCEEDED


def test_result_of_a_failed_run_raises_run_failed(app: Rstick) -> None:
    define(app)
    ref = app.enqueue("Flow", {"fail": 42})

    run_until_idle(app, "w1")
    with pytest.raises(RunFailed) as info:
        ref.result(timeout=1)
    err = info.value
    assert (err.run_id, err.step, err.error_type, err.error_message) == (
        ref.run_id,
        "b",
        "ValueError",
        "boom 42",
    )
    assert err.traceback.startswith("Traceback (most recent call last)")
    assert "raise ValueError" in err.traceback and "ValueError: boom 42" in err.traceback
    assert str(err) == f"run {ref.run_id} failed in step 'b': ValueError: boom 42"
    assert ref.status() is RunStatus.FAILED


def test_result_times_out_when_nothing_runs_the_run(app: Rstick) -> None:
    define(app)
    ref = app.enqueue("add", {"x": 1, "y": 2})
    with pytest.raises(ResultTimeout, match=f"run {ref.run_id} did not finish in 0.05s"):
        ref.result(timeout=0.05)
    assert ref.status() is RunStatus.QUEUED

    async def wait_async() -> None:
        aref = await app.aenqueue("add", {"x": 1, "y": 2})
        await aref.result(timeout=0.05)

    with pytest.raises(TimeoutError):  # ResultTimeout is a TimeoutError too
        run(wait_async())


def test_result_of_an_unknown_run(app: Rstick) -> None:
    with pytest.raises(RunNotFound, match="run 'missing' not found"):
        RunRef(app.client, "missing").result(timeout=0.01)
    with pytest.raises(RunNotFound):
        app.get_run("missing")
