"""A worker that lacks a workflow's code never takes, loses or dead-letters its runs:
they go to a worker that has the code, or wait for one (two services on one Redis, a
rolling deploy, a HARD worker back without the workflow)."""

from __future__ import annotations

from typing import Any

import pytest
from drive import drain, run, sibling, started

from rstick import Context, Rstick, RunFailed, StickyStrategy, Worker
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock


def define_billing(app: Rstick, sticky: StickyStrategy = StickyStrategy.NONE) -> None:
    @app.workflow(sticky=sticky, schedule_timeout=30)
    class Invoice:
        @app.step()
        def a(self, ctx: Context) -> str:
            return ctx.worker.id()

        @app.step(parents=["a"])
        def b(self, ctx: Context) -> str:
            return ctx.worker.id()


def define_mail(app: Rstick) -> None:
    @app.task
    def mail(ctx: Context) -> str:
        return ctx.worker.id()


@pytest.fixture
def billing(app: Rstick) -> Rstick:
    """The service with the code of Invoice (and mail)."""
    define_billing(app)
    define_mail(app)
    return app


@pytest.fixture
def mailer(app: Rstick) -> Rstick:
    """Another service on the same Redis, namespace and queue: it only has mail."""
    other = sibling(app)
    define_mail(other)
    return other


def waiting(app: Rstick, run_id: str) -> Any:
    return app.get_run(run_id).waiting


def test_a_run_reaching_a_worker_without_its_code_goes_to_one_that_has_it(
    billing: Rstick, mailer: Rstick
) -> None:
    refs = [billing.enqueue("Invoice") for _ in range(3)]

    async def scenario() -> None:
        async with started(billing, "bill") as [bill], started(mailer, "mail") as [mail]:
            mail.concurrency = 10
            assert await mail.run_once() == 3  # all forwarded to bill, none run, none lost
            assert billing.client.redis.xlen(billing.keys.personal("bill")) == 3
            await drain(bill, mail)

    run(scenario())
    for ref in refs:
        assert ref.result(timeout=1) == {"a": "bill", "b": "bill"}
        assert not [e for e in billing.client.history(ref.run_id) if e["ev"] == "lost"]
    assert billing.client.dead_letters() == []


def test_with_no_worker_that_has_the_code_the_run_waits_and_says_why(
    billing: Rstick, mailer: Rstick, clock: FakeClock
) -> None:
    ref = billing.enqueue("Invoice")

    async def scenario() -> None:
        async with started(mailer, "mail") as [mail]:
            assert await drain(mail) == 1
            assert waiting(billing, ref.run_id) == {
                "reason": "no_worker_with_code",
                "since": clock.now,
            }
            assert billing.get_run(ref.run_id).status.value == "queued"
            assert billing.client.dead_letters() == []
            # A worker with the code starts: it takes the run over.
            async with started(billing, "bill") as [bill]:
                await drain(bill, mail)

    run(scenario())
    assert ref.result(timeout=1) == {"a": "bill", "b": "bill"}
    assert waiting(billing, ref.run_id) is None
    evs = [e["ev"] for e in billing.client.history(ref.run_id)]
    assert evs.index("waiting") < evs.index("adopted") < evs.index("started")


def test_a_waiting_run_fails_only_once_its_schedule_timeout_passed_while_workers_served(
    billing: Rstick, mailer: Rstick, clock: FakeClock
) -> None:
    waited = billing.enqueue("Invoice")
    alone = billing.enqueue("Invoice")

    async def scenario() -> None:
        async with started(mailer, "mail") as [mail]:
            await drain(mail)
            clock.advance(29)
            await mail.beat()
            assert not (await Reaper(mailer, "mail").reap(lead=False)).runs
            clock.advance(1)
            await mail.beat()
            report = await Reaper(mailer, "mail").reap(lead=False)
            assert sorted(report.runs["timed out waiting for code"]) == sorted(
                [waited.run_id, alone.run_id]
            )

    run(scenario())
    with pytest.raises(RunFailed) as failed:
        waited.result(timeout=1)
    assert failed.value.error_type == "SchedulingTimeout"
    assert "no live worker has the code of workflow 'Invoice'" in failed.value.error_message


def test_with_no_worker_up_at_all_a_waiting_run_just_waits(
    billing: Rstick, mailer: Rstick, clock: FakeClock
) -> None:
    ref = billing.enqueue("Invoice")

    async def scenario() -> None:
        async with started(mailer, "mail") as [mail]:
            await drain(mail)
        clock.advance(3600)  # every worker gone: nobody serves the queue
        assert not (await Reaper(mailer, "x").reap(lead=False)).runs.get(
            "timed out waiting for code"
        )
        async with started(billing, "bill") as [bill]:
            await drain(bill)

    run(scenario())
    assert ref.result(timeout=1) == {"a": "bill", "b": "bill"}


def test_a_soft_run_pinned_to_a_worker_back_without_its_code_moves(
    app: Rstick, clock: FakeClock
) -> None:
    define_billing(app, StickyStrategy.SOFT)
    define_mail(app)
    ref = app.enqueue("Invoice")
    old = sibling(app)  # the same worker id back with an old deploy: no Invoice
    define_mail(old)

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            w1.concurrency = 1
            assert await w1.fetch(None) == 1  # pinned to w1; a runs
            await w1.run_once()
        clock.advance(app.worker_ttl)
        async with started(old, "w1") as [back]:
            await drain(back)  # b reaches it: it cannot run it, the run moves
            run_ = app.get_run(ref.run_id)
            assert (run_.worker, run_.reassigned) == (None, True)
            async with started(app, "w2") as [w2]:
                await drain(w2, back)

    run(scenario())
    assert ref.result(timeout=1) == {"a": "w1", "b": "w2"}


def test_a_hard_run_pinned_to_a_worker_back_without_its_code_waits_for_it(
    app: Rstick, clock: FakeClock
) -> None:
    define_billing(app, StickyStrategy.HARD)
    define_mail(app)
    ref = app.enqueue("Invoice")
    old = sibling(app)
    define_mail(old)

    async def scenario() -> None:
        async with started(app, "w1") as [w1]:
            w1.concurrency = 1
            await w1.run_once()  # a, pinned to w1
        clock.advance(app.worker_ttl)
        async with started(old, "w1") as [back], started(app, "w2") as [w2]:
            await drain(back, w2)  # b waits: only w1 may run it, and w1 lacks the code
            assert waiting(app, ref.run_id)["reason"] == "no_worker_with_code"
            assert app.get_run(ref.run_id).step("b").status.value == "queued"
        clock.advance(app.worker_ttl)
        async with started(app, "w1") as [fixed]:  # w1 back with the code
            await drain(fixed)

    run(scenario())
    assert ref.result(timeout=1) == {"a": "w1", "b": "w1"}


def test_a_worker_with_the_code_on_other_queues_does_not_keep_a_run_waiting(
    app: Rstick, clock: FakeClock
) -> None:
    """Only a worker that reads the run's queue can take it: one with the code that
    reads other queues does not stop the SchedulingTimeout."""
    define_billing(app)
    define_mail(app)
    ref = app.enqueue("Invoice")
    mailer = sibling(app)
    define_mail(mailer)

    async def scenario() -> None:
        async with started(mailer, "mail") as [mail]:
            elsewhere = Worker(app, worker_id="bill-elsewhere", queues=["other"])
            await elsewhere.start()
            await drain(mail)
            assert waiting(app, ref.run_id)["reason"] == "no_worker_with_code"
            clock.advance(31)
            await mail.beat()
            await elsewhere.beat()
            report = await Reaper(mailer, "mail").reap(lead=False)
            assert report.runs["timed out waiting for code"] == [ref.run_id]

    run(scenario())
    with pytest.raises(RunFailed):
        ref.result(timeout=1)


def define_old_billing(app: Rstick, sticky: StickyStrategy = StickyStrategy.NONE) -> None:
    """Invoice as an older deploy has it: step a only (the new one added b)."""

    @app.workflow(sticky=sticky, schedule_timeout=30, name="Invoice")
    class OldInvoice:
        @app.step()
        def a(self, ctx: Context) -> str:
            return ctx.worker.id()


@pytest.mark.parametrize("sticky", [StickyStrategy.NONE, StickyStrategy.SOFT])
def test_a_worker_runs_only_runs_made_with_its_own_definition_of_the_workflow(
    app: Rstick, sticky: StickyStrategy
) -> None:
    """A rolling deploy that adds step b to Invoice: an old worker completing a would
    release the steps its own definition names (none), and the run would hang."""
    new, old = sibling(app), sibling(app)
    define_billing(new, sticky)
    define_old_billing(old, sticky)
    new_runs = [new.enqueue("Invoice") for _ in range(3)]
    old_runs = [old.enqueue("Invoice") for _ in range(3)]

    async def scenario() -> None:
        # The old worker alone first: it runs the old runs; the new ones wait, saying why.
        async with started(old, "old") as [w_old]:
            w_old.concurrency = 10
            await drain(w_old)
            for ref in new_runs:
                assert new.get_run(ref.run_id).status.value == "queued"
                assert waiting(new, ref.run_id)["reason"] == "no_worker_with_code"
            async with started(new, "new") as [w_new]:
                w_new.concurrency = 10
                await drain(w_new, w_old)

    run(scenario())
    for ref in old_runs:
        assert ref.result(timeout=1) == {"a": "old"}
    for ref in new_runs:
        assert ref.result(timeout=1) == {"a": "new", "b": "new"}
        history = new.client.history(ref.run_id)
        assert not [e for e in history if e["ev"] in ("lost", "failed")]
    assert new.client.dead_letters() == []


def test_a_run_no_live_worker_has_the_definition_of_times_out(
    billing: Rstick, app: Rstick, clock: FakeClock
) -> None:
    old = sibling(app)
    define_old_billing(old)
    ref = billing.enqueue("Invoice")

    async def scenario() -> None:
        async with started(old, "old") as [w_old]:
            await drain(w_old)
            clock.advance(30)
            await w_old.beat()
            report = await Reaper(old, "old").reap(lead=False)
            assert report.runs["timed out waiting for code"] == [ref.run_id]

    run(scenario())
    with pytest.raises(RunFailed) as failed:
        ref.result(timeout=1)
    assert failed.value.error_type == "SchedulingTimeout"
