"""The workload of the crash and chaos tests, served by real ``rstick worker`` processes.

    rstick worker tests.integration.harness.chaos_app:app --worker-id w1 ...

Every step appends one line ``start <run> <step> <worker> <attempt> <pid> <mono>``
to ``<dir>/<worker>.steps`` before it works, and ``done ...`` after, so a test can
see every execution, including the ones whose result was never accepted. ``mono``
is ``time.monotonic()``: one clock for every process of the machine, which a
worker run under ``faketime`` shares too. The file survives the worker's SIGKILL
and a Redis restart (it is not in Redis).

What a step does comes from the run's input (all keys optional):

- ``dir``: where the step logs and its gates live (no ``dir``: no log, no gates);
- ``hold``: ``["b:1", ...]``: step ``b`` at attempt 1 writes ``<dir>/<run>.b.1.held``
  and waits (at most ``HOLD_LIMIT`` seconds) until ``<dir>/<run>.b.release`` exists;
- ``sleep``: seconds each step sleeps (a float), or ``{"step:attempt": seconds}``
  (a sync step of ``Hang`` told to sleep past its timeout hangs: see ``Hang``);
- ``flaky``: ``["b:1", ...]``: those attempts raise, to exercise retries;
- ``block``: ``{"b:1": seconds}``: that attempt of an async step blocks the event
  loop that long (a blocking wait, as a careless ``time.sleep`` would).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from rstick import Context, Rstick, StickyStrategy

app = Rstick()  # RSTICK_REDIS_URL / RSTICK_NAMESPACE, or the worker's --redis / --namespace

HOLD_LIMIT = 60.0  # a held step never waits longer than this, even if the test dies
HOLD_POLL = 0.02


def nap(seconds: float) -> None:
    """time.sleep, which fails with EINVAL under Debian's libfaketime 0.9.10 (its
    clock_nanosleep mishandles TIMER_ABSTIME), and a skewed worker runs these steps."""
    threading.Event().wait(seconds)


class Flaky(RuntimeError):
    """Raised on purpose by an attempt listed in ``flaky``."""


def _opts(ctx: Context) -> dict[str, Any]:
    return ctx.input if isinstance(ctx.input, dict) else {}


def _log(ctx: Context, event: str) -> None:
    folder = _opts(ctx).get("dir")
    if not folder:
        return
    wid = ctx.worker.id()
    mono = f"{time.monotonic():.3f}"
    line = f"{event} {ctx.run_id} {ctx.step} {wid} {ctx.attempt} {os.getpid()} {mono}\n"
    # One O_APPEND write per line: lines from threads and from earlier lives of
    # the same worker id never interleave.
    fd = os.open(Path(folder) / f"{wid}.steps", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _hold(ctx: Context) -> None:
    opts = _opts(ctx)
    if f"{ctx.step}:{ctx.attempt}" not in opts.get("hold", ()):
        return
    folder = Path(opts["dir"])
    (folder / f"{ctx.run_id}.{ctx.step}.{ctx.attempt}.held").write_text(ctx.worker.id())
    release = folder / f"{ctx.run_id}.{ctx.step}.release"
    deadline = time.monotonic() + HOLD_LIMIT
    while not release.exists() and time.monotonic() < deadline:
        nap(HOLD_POLL)


def _seconds(ctx: Context, option: str = "sleep") -> float:
    value = _opts(ctx).get(option, 0.0)
    if isinstance(value, dict):
        value = value.get(f"{ctx.step}:{ctx.attempt}", 0.0)
    return min(float(value), HOLD_LIMIT)


def _result(ctx: Context) -> dict[str, Any]:
    if f"{ctx.step}:{ctx.attempt}" in _opts(ctx).get("flaky", ()):
        raise Flaky(f"{ctx.step} fails on attempt {ctx.attempt} on purpose")
    return {"worker": ctx.worker.id(), "attempt": ctx.attempt, "reassigned": ctx.reassigned}


def work(ctx: Context) -> dict[str, Any]:
    """A sync step: log, maybe wait for the test's gate, sleep, log, answer."""
    _log(ctx, "start")
    _hold(ctx)
    nap(_seconds(ctx))
    out = _result(ctx)
    _log(ctx, "done")
    return out


async def awork(ctx: Context) -> dict[str, Any]:
    """The async twin of ``work``; a held async step waits in a thread."""
    _log(ctx, "start")
    await asyncio.to_thread(_hold, ctx)
    # The mistake of an async step doing blocking work: the event loop stops.
    nap(_seconds(ctx, "block"))
    await asyncio.sleep(_seconds(ctx))
    out = _result(ctx)
    _log(ctx, "done")
    return out


@app.step()
def a(self: object, ctx: Context) -> dict[str, Any]:
    return work(ctx)


@app.step(parents=["a"], retries=2, backoff=0.2)
async def b(self: object, ctx: Context) -> dict[str, Any]:
    return await awork(ctx)


@app.step(parents=["b"])
def c(self: object, ctx: Context) -> dict[str, Any]:
    return work(ctx)


def three_steps(name: str, sticky: StickyStrategy | None, schedule_timeout: float = 300.0) -> type:
    """a -> b -> c (b async, so both kinds of step live in every run) under ``sticky``."""
    cls = type(name, (), {"a": a, "b": b, "c": c})
    return app.workflow(sticky=sticky, schedule_timeout=schedule_timeout, name=name)(cls)


# HARD runs wait HARD_TIMEOUT seconds for their worker; HardLong waits long
# enough for a test to restart it.
HARD_TIMEOUT = 3.0
Soft3 = three_steps("Soft3", StickyStrategy.SOFT)
Hard3 = three_steps("Hard3", StickyStrategy.HARD, HARD_TIMEOUT)
HardLong = three_steps("HardLong", StickyStrategy.HARD, 60.0)
Plain3 = three_steps("Plain3", None)


@app.task
def job(ctx: Context, **_: Any) -> dict[str, Any]:
    return work(ctx)


def slow(ctx: Context, **_: Any) -> dict[str, Any]:
    """Times out (StepTimeout) on the attempts its ``sleep`` makes longer than 0.3 s."""
    return work(ctx)


async def aslow(ctx: Context, **_: Any) -> dict[str, Any]:
    return await awork(ctx)


app.task(slow, timeout=0.3, retries=1, backoff=0.1)
app.task(aslow, timeout=0.3, retries=1, backoff=0.1)

# Brief3 waits at most BRIEF_TIMEOUT seconds for a worker with its code (a worker
# of lacking_app has none).
BRIEF_TIMEOUT = 1.0
Brief3 = three_steps("Brief3", StickyStrategy.SOFT, BRIEF_TIMEOUT)

# Steps that misbehave past their timeout, for the hung-step tests. None of them
# runs longer than ``seconds`` (at most a minute), even if the test dies.
HUNG_TIMEOUT = 0.2


@app.task(timeout=HUNG_TIMEOUT)
def hang(ctx: Context, seconds: float = 60.0, **_: Any) -> None:
    """A sync step that ignores its timeout: a thread cannot be stopped."""
    _log(ctx, "start")
    nap(min(seconds, HOLD_LIMIT))
    _log(ctx, "done")


@app.task(timeout=HUNG_TIMEOUT)
async def deaf(ctx: Context, seconds: float = 60.0, **_: Any) -> None:
    """An async step that swallows every cancellation."""
    _log(ctx, "start")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(seconds, HOLD_LIMIT)
    while loop.time() < deadline:
        try:
            await asyncio.sleep(deadline - loop.time())
        except asyncio.CancelledError:
            continue
    _log(ctx, "done")


# Hung steps: HANG_ROOTS parallel sync roots, each with a timeout, then one join.
# A root whose ``sleep`` for its attempt is far past HANG_TIMEOUT hangs: the worker
# abandons its thread (StepTimeout, a retry) and must keep its slots meanwhile.
# The run is SOFT, so all its roots hang on one worker at once: with as many roots
# as that worker has slots, a retry can start beside the hung threads only if they
# took none of its capacity.
HANG_ROOTS = ("h1", "h2", "h3", "h4")
HANG_TIMEOUT = 0.3
HANG_RETRIES = 1


def _hang_root(name: str) -> Any:
    def root(self: object, ctx: Context) -> dict[str, Any]:
        return work(ctx)

    return app.step(timeout=HANG_TIMEOUT, retries=HANG_RETRIES, backoff=0.05, name=name)(root)


def _hang_end(self: object, ctx: Context) -> dict[str, Any]:
    return work(ctx)


_hang_steps = {name: _hang_root(name) for name in HANG_ROOTS}
_hang_steps["end"] = app.step(parents=list(HANG_ROOTS), name="end")(_hang_end)
Hang: type = app.workflow(sticky=StickyStrategy.SOFT, name="Hang")(type("Hang", (), _hang_steps))
