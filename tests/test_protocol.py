"""The contract between Python and the scripts (rstick/protocol.py), checked through
the real scripts: every reply parses, every argument list is taken, and nothing but
the fields the schema names ever appears in a run's hash or on a stream. A field
renamed on one side only fails here."""

from __future__ import annotations

import asyncio
from typing import Any

from drive import drain, run, sibling, started, stop_beating

from rstick import Context, Rstick, StickyStrategy
from rstick.orphans import ORPHAN_SWEEP_SECONDS
from rstick.protocol import CHILD_LINK, ENTRY_FIELDS, Claim, Outcome, RunField, StepField
from rstick.reap_report import ReapReport
from rstick.reaper import Reaper
from rstick.testing.clock import FakeClock


def define(app: Rstick) -> None:
    @app.task(retries=1, backoff=1)
    def job(ctx: Context, fail: bool = False) -> str:
        if fail:
            raise ValueError("asked to")
        return ctx.worker.id()

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Soft:
        @app.step()
        def a(self, ctx: Context) -> str:
            return ctx.spawn_workflow("Kid", None, sticky=True).run_id

        @app.step()
        def b(self, ctx: Context) -> None: ...

        @app.step(parents=["a", "b"], schedule_timeout=5)
        def c(self, ctx: Context) -> None: ...

    @app.workflow(sticky=StickyStrategy.SOFT)
    class Kid:
        @app.step()
        def k(self, ctx: Context) -> None: ...

    @app.workflow(sticky=StickyStrategy.HARD, schedule_timeout=1)
    class Hard:
        @app.step()
        def h(self, ctx: Context) -> None: ...


def check_layout(app: Rstick) -> int:
    """Every field of every run hash is one the schema names; every entry carries
    exactly the entry fields. Returns how many run hashes were looked at."""
    r = app.client.redis
    run_fields = {f.value for f in RunField}
    step_fields = {f.value for f in StepField}
    runs = 0
    for key in r.scan_iter(match=f"{app.keys.prefix}:run:*"):
        runs += 1
        raw = r.hgetall(key)
        steps = set(raw.get(RunField.STEPS.encode(), b"").decode().split())
        for name in (k.decode() for k in raw):
            if name in run_fields or name.startswith(CHILD_LINK):
                continue
            step, _, suffix = name.rpartition(".")
            assert step in steps and suffix in step_fields, f"{key!r}: unknown field {name!r}"
    for pattern in (":q:*", ":w:*", ":wait:*"):
        for key in r.scan_iter(match=f"{app.keys.prefix}{pattern}"):
            for _, fields in r.xrange(key):
                assert tuple(k.decode() for k in fields) == ENTRY_FIELDS, (key, fields)
    return runs


def test_every_script_path_writes_only_what_the_schema_names(app: Rstick, clock: FakeClock) -> None:
    define(app)
    lacking = sibling(app)  # a worker without most of the code

    @lacking.task
    def other(ctx: Context) -> None: ...

    app.enqueue("job")
    app.enqueue("job", {"fail": True})
    app.enqueue("job", delay=5)
    app.enqueue("Soft")
    app.enqueue("Hard")

    async def scenario() -> None:
        async with started(lacking, "lacking") as [w0]:
            await drain(w0)  # forwards nothing (no worker has the code): they wait
        async with started(app, "w1", "w2") as (w1, w2):
            await w1.beat()
            await drain(w1)  # takes over the waiting entries, runs, retries...
            app.enqueue("Soft")
            w1.concurrency = 1
            await w1.run_once()  # Soft's a: pinned to w1, its sticky child too
            app.enqueue("Hard")
            w1.concurrency = 3
            await w1.fetch(None)  # claimed, never completed: w1 dies with them
            await stop_beating(app, "w1")
            report = await Reaper(app, "w2").reap(lead=False)  # reassign, park, follow
            assert report.runs
            clock.advance(2)
            await w2.beat()
            await Reaper(app, "w2").reap(lead=False)  # the HARD run times out
            clock.advance(10)
            await drain(w2)
            app.cancel(app.enqueue("Soft").run_id)
            gone = app.enqueue("job")
            redis = app.client.redis
            [(entry_id, _)] = [
                e
                for e in redis.xrange(app.keys.queue("default"))
                if e[1][b"r"] == gone.run_id.encode()
            ]
            redis.xdel(app.keys.queue("default"), entry_id)
            reaper = Reaper(app, "w2")
            for _ in range(2):
                clock.advance(ORPHAN_SWEEP_SECONDS + 1)
                await reaper.orphans.sweep(ReapReport())

    run(scenario())
    assert check_layout(app) >= 8
    events = {
        e["ev"]
        for key in app.client.redis.scan_iter(match=f"{app.keys.prefix}:hist:*")
        for e in app.client.history(key.decode().rsplit(":", 1)[1])
    }
    # The paths the scenario was meant to walk, each of which writes its own fields.
    assert {"waiting", "adopted", "retry", "failed", "lost", "reassigned", "parked"} <= events
    assert {"timed out", "cancelled", "orphaned", "pinned", "succeeded"} <= events


def test_every_take_reply_parses_as_a_claim(app: Rstick, clock: FakeClock) -> None:
    define(app)
    kinds: set[str] = set()
    app.enqueue("job")
    app.enqueue("Soft")
    queue = app.keys.queue("default")
    app.client.redis.xadd(queue, {"junk": "1"})  # dead
    app.client.redis.xadd(queue, {"r": "x", "s": "y", "a": "1", "e": "0", "w": "job"})  # drop

    async def scenario() -> None:
        async with started(app, "w1", "w2", concurrency=10) as (w1, w2):
            for w in (w1, w2):
                claims, live = await w.fetcher.fetch(10, None)
                assert live
                for claim in claims:
                    assert isinstance(claim, Claim)
                    kinds.add(claim.kind)
                    if claim.kind == "run":
                        assert (claim.attempt, claim.epoch, claim.lost) >= (1, 0, 0)
                        assert claim.stream and claim.entry_id and claim.workflow
                    else:
                        assert claim.detail

    run(scenario())
    assert {"run", "dead", "drop"} <= kinds


def test_complete_takes_every_kind_of_outcome(app: Rstick) -> None:
    define(app)
    refs = [app.enqueue("job") for _ in range(4)]

    async def scenario() -> list[Any]:
        async with started(app, "w1", concurrency=4) as [w1]:
            claims, _ = await w1.fetcher.fetch(4, None)
            outcomes = [
                Outcome(
                    kind,
                    c.stream,
                    c.entry_id,
                    c.run_id,
                    c.step,
                    c.attempt,
                    c.epoch,
                    b"\xc0",
                    1000,
                    (),
                )
                for kind, c in zip(("ok", "retry", "fail", "dead"), claims, strict=True)
            ]
            args: list[Any] = [app.keys.prefix, "w1", app.dead_maxlen, len(outcomes)]
            for outcome in outcomes:
                args += outcome.to_args()
            replies: list[Any] = await w1.scripts.complete(keys=[app.keys.workflows], args=args)
            return replies

    assert asyncio.run(scenario()) == [b"ok"] * 4
    statuses = [app.get_run(r.run_id).steps[0].status.value for r in refs]
    assert sorted(statuses) == ["failed", "failed", "retrying", "succeeded"]
