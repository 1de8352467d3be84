"""huey beside rstick on one latency row, in the same run (``python -m bench huey``).

The workload: one idle worker; a step whose body first takes ``time.time()`` minus
the time the job was enqueued at, then does one Redis INCR; jobs enqueued one at a
time, 5 ms apart. rstick runs it as an ``async def`` step (``bench.apps``), huey
(3.5) as a task of its thread consumer, ``-k thread -w 10``. Both write each
latency to the same Redis list after the INCR, so the figure is read the same way.
huey is no dependency of rstick: without it the workload says so and gives no row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from . import apps
from .harness import ROOT, BenchWorkers, percentile, repeat, say
from .report import Row

if TYPE_CHECKING:
    from .workloads import Bench

WARM_UP = 20  # jobs each side runs before the measured ones
PACE = 0.005  # seconds between two enqueues
SETTLE = 30.0  # seconds the last latencies may take to arrive, at most
CONSUMER = [sys.executable, "-m", "huey.bin.huey_consumer"]
URL_ENV = "RSTICK_BENCH_HUEY_REDIS"  # where the huey consumer's Redis is


def huey_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("huey")
    except Exception:
        return None


def collect(r: redis.Redis, send: Callable[[float], Any], n: int) -> list[float]:
    """Send ``n`` jobs (after a warm-up), ``PACE`` apart; their sorted latencies."""
    r.delete(apps.PEER_LATENCIES)
    for _ in range(WARM_UP):
        send(time.time())
        time.sleep(PACE)
    wait_for(r, WARM_UP, "the warm-up jobs")
    r.delete(apps.PEER_LATENCIES)
    for _ in range(n):
        send(time.time())
        time.sleep(PACE)
    wait_for(r, n, f"{n} jobs")
    return sorted(float(x) for x in r.lrange(apps.PEER_LATENCIES, 0, -1))


def wait_for(r: redis.Redis, n: int, what: str) -> None:
    deadline = time.monotonic() + SETTLE
    while r.llen(apps.PEER_LATENCIES) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not all run within {SETTLE:.0f}s")
        time.sleep(0.01)


def rstick_side(b: Bench, n: int) -> list[float]:
    app = b.fresh_app()
    procs = BenchWorkers(b.url, n=1, concurrency=10)
    procs.start()
    try:
        procs.go()
        procs.wait_registered()
        return collect(b.r, lambda t: app.enqueue("stamp_incr", {"t": t}), n)
    finally:
        procs.stop()


def huey_side(b: Bench, n: int) -> list[float]:
    from . import huey_app

    b.r.flushall()
    _, task = huey_app.make(b.url)
    consumer = subprocess.Popen(
        [*CONSUMER, "bench.huey_app.huey", "-k", "thread", "-w", "10", "-q"],
        cwd=ROOT,
        env={**os.environ, URL_ENV: b.url, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        return collect(b.r, task, n)
    except RuntimeError as exc:
        if consumer.poll() is not None:
            err = consumer.stderr.read().decode(errors="replace") if consumer.stderr else ""
            raise RuntimeError(f"the huey consumer exited {consumer.returncode}: {err}") from exc
        raise
    finally:
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGINT)
        try:
            consumer.wait(10)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait(10)


def huey(b: Bench) -> list[Row]:
    """Enqueue-to-start p50/p99 of an async def step doing one INCR, beside huey."""
    version = huey_version()
    if version is None:
        say("  huey is not installed (pip install huey): no row")
        return []
    n = b.sizes.peer
    # Each repetition runs both, one after the other: they see the same machine.
    pairs = repeat(b, f"rstick and huey {version}", lambda: (rstick_side(b, n), huey_side(b, n)))
    ours, theirs = [p[0] for p in pairs], [p[1] for p in pairs]
    note = (
        f"{n} jobs one at a time, {PACE * 1000:.0f} ms apart, to an idle worker; "
        f"peer: huey {version}, thread consumer -k thread -w 10"
    )
    return [
        Row(
            "4 latency",
            f"enqueue-to-start p{q}, step + INCR",
            "ms",
            [percentile(s, q) * 1000 for s in ours],
            peer=[percentile(s, q) * 1000 for s in theirs],
            note=note if q == 50 else "",
        )
        for q in (50, 99)
    ]
