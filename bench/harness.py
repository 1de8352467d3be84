"""Worker processes, completion waits and Redis/process counters for the workloads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from rstick import Rstick, Run
from rstick.testing.processes import WorkerProcesses

from . import apps
from .workerproc import GO, READY, STATS_DIR, stats_path

if TYPE_CHECKING:
    from .workloads import Bench

ROOT = Path(__file__).resolve().parents[1]  # the repo: bench/harness.py
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def repeat(b: Bench, what: str, fn: Callable[[], Any]) -> list[Any]:
    out = []
    for i in range(b.reps):
        t = time.perf_counter()
        out.append(fn())
        say(f"  {what}: repetition {i + 1}/{b.reps} in {time.perf_counter() - t:.1f}s")
    return out


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class RedisCounters:
    """What Redis did between two points: commands by name, CPU seconds."""

    calls: dict[str, int]
    usec: dict[str, int]
    cpu: float

    @classmethod
    def take(cls, r: redis.Redis) -> RedisCounters:
        stats = r.info("commandstats")
        cpu = r.info("cpu")
        return cls(
            {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()},
            {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in stats.items()},
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        )

    def since(self, before: RedisCounters) -> RedisCounters:
        return RedisCounters(
            {
                k: v - before.calls.get(k, 0)
                for k, v in self.calls.items()
                if v - before.calls.get(k, 0)
            },
            {
                k: v - before.usec.get(k, 0)
                for k, v in self.usec.items()
                if self.calls[k] - before.calls.get(k, 0)
            },
            self.cpu - before.cpu,
        )


class BenchWorkers:
    """N worker processes (``bench.workerproc``: ``rstick worker`` with counters),
    started, released together by the go, and stopped; by pid."""

    def __init__(self, url: str, n: int = 1, *, app: str = apps.APP, concurrency: int = 10) -> None:
        self.url, self.n, self.app, self.concurrency = url, n, app, concurrency
        self.ids = [f"bench-w{i}" for i in range(n)]
        self.stats_dir = tempfile.mkdtemp(prefix="rstick-bench-")
        self.procs = WorkerProcesses(
            url,
            apps.NAMESPACE,
            app=app,
            concurrency=concurrency,
            env={STATS_DIR: self.stats_dir},
            cwd=ROOT,
            pythonpath=[ROOT],
            launcher=[sys.executable, "-m", "bench.workerproc"],
        )
        self.stop_seconds = 0.0

    def start(self, timeout: float = 60.0) -> None:
        """Start the processes and wait until each has imported everything."""
        r = redis.Redis.from_url(self.url)
        r.delete(READY)
        for wid in self.ids:
            self.procs.start(wid)
        deadline = time.monotonic() + timeout
        while r.llen(READY) < self.n:
            dead = [life for life in self.procs.lives if not life.alive]
            if dead or time.monotonic() > deadline:
                output = "".join(f"\n--- {life.worker_id}\n{life.tail()}" for life in dead)
                self.stop()
                raise RuntimeError(f"bench workers did not start{output}")
            time.sleep(0.02)
        r.close()

    def go(self) -> None:
        r = redis.Redis.from_url(self.url)
        pipe = r.pipeline(transaction=False)
        for wid in self.ids:
            pipe.rpush(GO + wid, "go")
        pipe.execute()
        r.close()

    def wait_registered(self, timeout: float = 30.0) -> None:
        """Until every worker has registered (and so created its consumer groups)."""
        self.procs.wait_ready(timeout=timeout)

    @property
    def pids(self) -> list[int]:
        return [life.pid for life in self.procs.lives]

    def cpu(self) -> float:
        return sum(proc_cpu(p) for p in self.pids)

    def stats(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Each worker's counters, written by it on SIGUSR1."""
        paths = [stats_path(self.stats_dir, wid) for wid in self.ids]
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        for wid in self.ids:
            self.procs.signal(wid, signal.SIGUSR1)
        out = []
        deadline = time.monotonic() + timeout
        for path in paths:
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no stats from {path}")
                time.sleep(0.01)
            with open(path) as f:
                out.append(json.load(f))
        return out

    def stop(self, timeout: float = 15.0) -> None:
        started = time.monotonic()
        try:
            codes = self.procs.close(timeout=timeout)
        finally:
            shutil.rmtree(self.stats_dir, ignore_errors=True)
        self.stop_seconds = time.monotonic() - started
        for wid, code in codes.items():
            if code == -signal.SIGKILL:
                print(f"  worker {wid} ignored SIGTERM for {timeout:.0f}s: killed", file=sys.stderr)

    def __enter__(self) -> BenchWorkers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DoneWatch:
    """Counts finished runs from the completion notices (PSUBSCRIBE), no polling."""

    def __init__(self, app: Rstick, url: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        self.prefix = app.keys.done("").encode()
        self.pubsub.psubscribe(app.keys.done("*"))
        self.pubsub.get_message(timeout=1.0)  # the psubscribe confirmation
        self.finished: dict[str, bytes] = {}

    def wait(self, run_ids: Iterable[str], timeout: float) -> None:
        wanted = set(run_ids) - self.finished.keys()
        deadline = time.monotonic() + timeout
        while wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(wanted)} runs did not finish in {timeout:.0f}s")
            msg = self.pubsub.get_message(timeout=min(left, 1.0))
            if msg is None:
                continue
            run_id = msg["channel"][len(self.prefix) :].decode()
            self.finished[run_id] = msg["data"]
            wanted.discard(run_id)

    def close(self) -> None:
        self.pubsub.close()
        self.r.close()


def read_runs(app: Rstick, run_ids: list[str]) -> list[Run]:
    r = app.client.redis
    runs = []
    for start in range(0, len(run_ids), 1000):
        chunk = run_ids[start : start + 1000]
        pipe = r.pipeline(transaction=False)
        for run_id in chunk:
            pipe.hgetall(app.keys.run(run_id))
        runs += [Run.from_hash(i, raw) for i, raw in zip(chunk, pipe.execute(), strict=True)]
    return runs


def check_runs(runs: list[Run], *, one_worker: bool = False) -> list[str]:
    """Problems found: runs that did not succeed, steps not run, runs that moved."""
    problems = []
    for run in runs:
        if run.status.value != "succeeded":
            problems.append(f"run {run.run_id} is {run.status.value}")
            continue
        workers = {s.worker for s in run.steps}
        if any(s.status.value != "succeeded" for s in run.steps):
            problems.append(f"run {run.run_id} has steps not succeeded")
        if one_worker and len(workers) != 1:
            problems.append(f"run {run.run_id} ran on {sorted(map(str, workers))}")
    return problems


def span(runs: list[Run]) -> float:
    """Seconds from the first step started to the last run finished (worker clocks, ms)."""
    first = min(r.started_at for r in runs if r.started_at is not None)
    last = max(r.finished_at for r in runs if r.finished_at is not None)
    return max(last - first, 0.001)
