"""Steps that ignore their timeout: the worker keeps its capacity, counts them, and
stops past its limit; whatever a step raises, it fails once and its retries apply."""

from __future__ import annotations

import asyncio
import threading

import pytest
from drive import run, started

from rstick import Context, Rstick, RunFailed
from rstick.threads import StepThreads


def test_a_step_thread_that_hangs_never_takes_capacity() -> None:
    threads = StepThreads("t")
    release = threading.Event()
    hung = [threads.submit(release.wait) for _ in range(3)]
    quick = [threads.submit(lambda n=n: n) for n in range(5)]
    assert [f.result(timeout=5) for f in quick] == list(range(5))
    assert not any(f.done() for f in hung)
    release.set()
    assert all(f.result(timeout=5) for f in hung)
    assert threads.started <= 8
    threads.shutdown()


def test_a_step_thread_reports_what_the_step_raised_system_exit_included() -> None:
    threads = StepThreads("t")

    def leave() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        threads.submit(leave).result(timeout=5)
    assert threads.submit(lambda: "still serving").result(timeout=5) == "still serving"
    threads.shutdown()


def test_sync_steps_past_their_timeout_keep_the_worker_at_full_capacity(app: Rstick) -> None:
    release = threading.Event()
    ran: list[int] = []

    @app.task(timeout=0.05)
    def stuck(ctx: Context) -> None:
        release.wait(30)  # ignores its timeout: a thread cannot be stopped

    @app.task
    def quick(ctx: Context, n: int) -> int:
        ran.append(n)
        return n

    stuck_refs = [app.enqueue("stuck") for _ in range(6)]  # more than a fixed pool's spares
    quick_refs = [app.enqueue("quick", {"n": n}) for n in range(4)]

    async def scenario() -> None:
        async with started(app, "w1", concurrency=2) as [w1]:
            w1.steps.max_hung = 10
            for _ in range(6):
                await w1.run_once()
            assert len(w1.hung) == 6 and w1.free == 2 and not w1.stopping
            release.set()
            await asyncio.sleep(0.2)
            assert not w1.hung  # they ended at last

    try:
        run(scenario())
    finally:
        release.set()
    assert sorted(ran) == [0, 1, 2, 3]
    assert [r.result(timeout=1) for r in quick_refs] == [0, 1, 2, 3]
    for ref in stuck_refs:
        with pytest.raises(RunFailed) as failed:
            ref.result(timeout=1)
        assert failed.value.error_type == "StepTimeout"


def test_past_max_hung_the_worker_stops_so_that_its_supervisor_restarts_it(
    app: Rstick,
) -> None:
    release = threading.Event()

    @app.task(timeout=0.05)
    def stuck(ctx: Context) -> None:
        release.wait(30)

    for _ in range(3):
        app.enqueue("stuck")

    async def scenario() -> None:
        async with started(app, "w1", concurrency=4) as [w1]:
            w1.steps.max_hung = 2
            await w1.run_once()
            assert len(w1.hung) == 3
            assert w1.stopping and w1.exit_code == 1

    try:
        run(scenario())
    finally:
        release.set()


def test_an_async_step_that_swallows_its_cancel_is_abandoned_after_a_grace(
    app: Rstick, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rstick.steps.CANCEL_GRACE", 0.05)
    done = asyncio.Event()

    @app.task(timeout=0.05)
    async def stubborn(ctx: Context) -> None:
        for _ in range(100):
            if done.is_set():
                return
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # swallowed

    ref = app.enqueue("stubborn")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            await w1.run_once()
            assert len(w1.hung) == 1 and w1.free == w1.concurrency
            done.set()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

    run(scenario())
    with pytest.raises(RunFailed) as failed:
        ref.result(timeout=1)
    assert failed.value.error_type == "StepTimeout"


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@pytest.mark.parametrize(
    "exc",
    [Unprintable(), SystemExit(2), KeyboardInterrupt(), GeneratorExit()],
    ids=["bad __str__", "SystemExit", "KeyboardInterrupt", "GeneratorExit"],
)
@pytest.mark.parametrize("kind", ["def", "async def"])
def test_whatever_a_step_raises_it_fails_once_and_its_retries_apply(
    app: Rstick, exc: BaseException, kind: str
) -> None:
    calls: list[int] = []

    if kind == "def":

        @app.task(retries=0)
        def weird(ctx: Context) -> None:
            calls.append(ctx.attempt)
            raise exc

    else:

        @app.task(retries=0, name="weird")
        async def weird_async(ctx: Context) -> None:
            calls.append(ctx.attempt)
            raise exc

    ref = app.enqueue("weird")

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            assert await w1.run_once() == 1
            assert await w1.run_once() == 0
            assert await w1.recover_stranded() == 0  # nothing left pending

    run(scenario())
    assert calls == [1]
    with pytest.raises(RunFailed) as failed:
        ref.result(timeout=1)
    assert failed.value.error_type == type(exc).__qualname__
    if isinstance(exc, Unprintable):
        assert failed.value.error_message == "<str() of Unprintable raised RuntimeError>"
    assert app.client.history(ref.run_id)[-2]["ev"] == "failed"
