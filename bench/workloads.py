"""The six workloads. Each returns rows of figures (one sample per repetition)."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from rstick import Rstick
from rstick.codec import unpack

from . import apps, raw
from .harness import (
    BenchWorkers,
    DoneWatch,
    RedisCounters,
    check_runs,
    percentile,
    proc_rss_kb,
    read_runs,
    repeat,
    say,
    span,
)
from .peer import huey
from .report import Row


@dataclass(frozen=True)
class Sizes:
    enqueue_one: int = 5_000
    enqueue_bulk: int = 50_000
    bulk_batch: int = 1_000
    drain: int = 10_000
    sticky: int = 2_000
    latency: int = 1_000
    peer: int = 500  # jobs per side of the huey row
    growth_probe: int = 5_000
    growth_waiting: tuple[int, int] = (100, 100_000)
    memory_jobs: int = 1_000_000
    commands: int = 5_000


QUICK = Sizes(
    enqueue_one=1_000,
    enqueue_bulk=10_000,
    drain=2_000,
    sticky=400,
    latency=200,
    peer=100,
    growth_probe=1_000,
    growth_waiting=(100, 10_000),
    memory_jobs=20_000,
    commands=1_000,
)


class BenchError(RuntimeError):
    """A workload's result failed its own check (a run did not succeed, ...)."""


@dataclass
class Measure:
    """One repetition of runs drained by worker processes."""

    runs: int
    steps: int
    seconds: float
    wall: float  # from the go to the last completion notice: includes worker start-up
    worker_cpu: float
    redis: RedisCounters
    trips: collections.Counter[str]
    steps_done: int
    per_worker: list[int] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


class Bench:
    def __init__(self, url: str, sizes: Sizes, reps: int) -> None:
        self.url, self.sizes, self.reps = url, sizes, reps
        self.r = redis.Redis.from_url(url)
        self.details: dict[str, Any] = {}
        self._app: Rstick | None = None

    def fresh_app(self, retention: float = 86400.0) -> Rstick:
        """An empty database and a new app (its client caches what it registered)."""
        if self._app is not None:
            self._app.close()
        self.r.flushall()
        self._app = apps.build(self.url, retention)
        return self._app

    def enqueue_all(self, app: Rstick, workflow: str, n: int) -> list[str]:
        ids: list[str] = []
        batch = self.sizes.bulk_batch
        for start in range(0, n, batch):
            refs = app.enqueue_many(workflow, [None] * min(batch, n - start))
            ids += [ref.run_id for ref in refs]
        return ids

    def drain(
        self,
        workflow: str,
        n: int,
        workers: int = 1,
        *,
        waiting: int = 0,
        one_worker: bool = False,
        slowlog: bool = False,
    ) -> Measure:
        """Enqueue ``n`` runs (and ``waiting`` more behind them), release the workers
        together, and time the ``n`` runs from their first step to their end."""
        t_enqueue = time.perf_counter()
        app = self.fresh_app()
        run_ids = self.enqueue_all(app, workflow, n)
        if waiting:
            self.enqueue_all(app, workflow, waiting)
        t_start = time.perf_counter()
        procs = BenchWorkers(self.url, n=workers)
        procs.start()
        watch = DoneWatch(app, self.url)
        try:
            if slowlog:
                self.r.config_set("slowlog-max-len", 1_000_000)
                self.r.config_set("slowlog-log-slower-than", 0)
                self.r.slowlog_reset()
            before, cpu0 = RedisCounters.take(self.r), procs.cpu()
            t0 = time.perf_counter()
            procs.go()
            watch.wait(run_ids, timeout=60 + n / 50)
            stats = procs.stats()
            cpu1, after = procs.cpu(), RedisCounters.take(self.r)
            wall = time.perf_counter() - t0
            if slowlog:
                self.r.config_set("slowlog-log-slower-than", 10_000)
                self.details.setdefault("slowlog", {}).setdefault(workflow, []).append(
                    slowlog_by_script(self.r.slowlog_get(1_000_000))
                )
                self.r.slowlog_reset()
                self.r.config_set("slowlog-max-len", 128)
        finally:
            watch.close()
            procs.stop()
        phases = {
            "enqueue": t_start - t_enqueue,
            "start workers": t0 - t_start,
            "go to done": wall,
            "stop workers": procs.stop_seconds,
        }
        if sum(phases.values()) > 10 + n / 1000:
            say("  slow repetition: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
        runs = read_runs(app, run_ids)
        problems = check_runs(runs, one_worker=one_worker)
        if problems:
            raise BenchError(f"{len(problems)} problems, e.g. {problems[:3]}")
        trips: collections.Counter[str] = collections.Counter()
        for s in stats:
            trips.update(s["round_trips"])
        per_worker = collections.Counter(r.steps[0].worker for r in runs)
        return Measure(
            runs=len(runs),
            steps=sum(len(r.steps) for r in runs),
            seconds=span(runs),
            wall=wall,
            phases=phases,
            worker_cpu=cpu1 - cpu0,
            redis=after.since(before),
            trips=trips,
            steps_done=sum(s["steps_done"] or 0 for s in stats),
            per_worker=sorted(per_worker.values(), reverse=True),
        )


def slowlog_by_script(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Redis time per top-level command (EVALSHA by script name), from the slow log."""
    from .workerproc import script_names

    names = script_names()
    acc: dict[str, list[int]] = collections.defaultdict(list)
    for e in entries:
        cmd = e["command"].split()
        if not cmd:
            continue
        label = cmd[0].decode().upper() if isinstance(cmd[0], bytes) else str(cmd[0]).upper()
        if label == "EVALSHA" and len(cmd) > 1:
            sha = cmd[1].decode() if isinstance(cmd[1], bytes) else str(cmd[1])
            label = f"EVALSHA {names.get(sha, sha[:8])}"
        acc[label].append(int(e["duration"]))
    return {
        k: {"calls": len(v), "usec_total": sum(v), "usec_per_call": sum(v) / len(v)}
        for k, v in sorted(acc.items(), key=lambda kv: -sum(kv[1]))
    }


# -- 1. enqueue ------------------------------------------------------------


def enqueue(b: Bench) -> list[Row]:
    """Jobs/s enqueued one at a time and in bulk (enqueue_many), beside XADD."""
    s = b.sizes

    def one() -> float:
        app = b.fresh_app()
        app.enqueue("noop")  # loads the script, opens the connection
        t = time.perf_counter()
        for _ in range(s.enqueue_one):
            app.enqueue("noop")
        return s.enqueue_one / (time.perf_counter() - t)

    def bulk() -> float:
        app = b.fresh_app()
        app.enqueue("noop")
        t = time.perf_counter()
        for start in range(0, s.enqueue_bulk, s.bulk_batch):
            app.enqueue_many("noop", [None] * min(s.bulk_batch, s.enqueue_bulk - start))
        return s.enqueue_bulk / (time.perf_counter() - t)

    return [
        Row(
            "1 enqueue",
            "one at a time (app.enqueue)",
            "jobs/s",
            repeat(b, "enqueue one", one),
            repeat(b, "raw XADD", lambda: raw.enqueue_one(b.r, s.enqueue_one)),
            f"{s.enqueue_one} jobs; raw: XADD one at a time",
        ),
        Row(
            "1 enqueue",
            f"bulk (enqueue_many x{s.bulk_batch})",
            "jobs/s",
            repeat(b, "enqueue bulk", bulk),
            repeat(
                b, "raw XADD pipelined", lambda: raw.enqueue_bulk(b.r, s.enqueue_bulk, s.bulk_batch)
            ),
            f"{s.enqueue_bulk} jobs; raw: XADD pipelined in batches of {s.bulk_batch}",
        ),
    ]


# -- 2. drain --------------------------------------------------------------


def drain(b: Bench) -> list[Row]:
    """Jobs/s of one worker draining no-op jobs, beside a raw consumer."""
    n = b.sizes.drain
    ms = repeat(b, "drain", lambda: b.drain("noop", n))
    b.details["drain"] = [measure_json(m) for m in ms]
    raws = repeat(b, "raw drain", lambda: raw.drain(b.r, n)[0])
    through = repeat(b, "raw through", lambda: raw.through(b.r, n))
    return [
        Row(
            "2 drain",
            "no-op jobs, 1 worker, concurrency 10",
            "jobs/s",
            [m.runs_per_s for m in ms],
            raws,
            f"{n} queued, all verified succeeded; raw: XREADGROUP COUNT 10 + XACK/XDEL, "
            "one pipelined round trip per 10, same messages",
        ),
        Row("2 drain", "worker CPU per job", "us", [m.worker_cpu / m.steps * 1e6 for m in ms]),
        Row("2 drain", "Redis CPU per job", "us", [m.redis.cpu / m.steps * 1e6 for m in ms]),
        Row(
            "2 drain",
            "raw XADD+XREADGROUP+XACK loop",
            "msgs/s",
            [],
            through,
            "the issue's reference shape: one pipeline per 10 adds, read and ack",
        ),
    ]


# -- 3. sticky -------------------------------------------------------------


def sticky(b: Bench) -> list[Row]:
    """Runs/s of a->b->c SOFT chains on 1 and 4 worker processes."""
    n = b.sizes.sticky
    rows = []
    raws = repeat(b, "raw chain", lambda: raw.chain(b.r, n))
    for workers in (1, 4):
        ms = repeat(
            b, f"sticky x{workers}", lambda w=workers: b.drain("Chain", n, w, one_worker=True)
        )
        b.details[f"sticky_{workers}"] = [measure_json(m) for m in ms]
        split = "/".join(str(x) for x in ms[-1].per_worker)
        rows += [
            Row(
                "3 sticky",
                f"a->b->c SOFT, {workers} worker(s)",
                "runs/s",
                [m.runs_per_s for m in ms],
                raws if workers == 1 else [],
                f"{n} runs, each verified on one worker (last split {split}); "
                "raw: 3 stream hops per chain, batches of 10"
                if workers == 1
                else f"{n} runs, each verified on one worker (last split {split})",
            ),
            Row(
                "3 sticky",
                f"  steps, {workers} worker(s)",
                "steps/s",
                [m.steps_per_s for m in ms],
                [3 * x for x in raws] if workers == 1 else [],
            ),
        ]
        if workers == 1:
            rows.append(
                Row(
                    "3 sticky",
                    "  worker CPU per step",
                    "us",
                    [m.worker_cpu / m.steps * 1e6 for m in ms],
                )
            )
            rows.append(
                Row(
                    "3 sticky",
                    "  Redis CPU per step",
                    "us",
                    [m.redis.cpu / m.steps * 1e6 for m in ms],
                )
            )
    return rows


# -- 4. latency ------------------------------------------------------------


@dataclass
class Latencies:
    """One repetition: sorted enqueue-to-start seconds, and the worker's round trips."""

    seconds: list[float]
    trips: collections.Counter[str]
    jobs: int


def _latencies(b: Bench, task: str, n: int) -> Latencies:
    app = b.fresh_app()
    procs = BenchWorkers(b.url, n=1)
    procs.start()
    watch = DoneWatch(app, b.url)
    sent: dict[str, float] = {}
    try:
        procs.go()
        procs.wait_registered()
        before: dict[str, int] = {}
        for i in range(n + 10):
            if i == 10:  # the first ones warm up both sides
                before = procs.stats()[0]["round_trips"]
            time.sleep(0.002)  # pacing: the worker is back in its blocking read
            t = time.time()
            ref = app.enqueue(task)
            if i >= 10:
                sent[ref.run_id] = t
            watch.wait([ref.run_id], timeout=10)
        trips = collections.Counter(procs.stats()[0]["round_trips"])
        trips.subtract(before)
    finally:
        watch.close()
        procs.stop()
    pipe = app.client.redis.pipeline(transaction=False)
    for run_id in sent:
        pipe.hget(app.keys.run(run_id), f"{task}.o")
    started = [unpack(x) for x in pipe.execute()]
    return Latencies(sorted(s - t for s, t in zip(started, sent.values(), strict=True)), +trips, n)


def latency(b: Bench) -> list[Row]:
    """Enqueue-to-start p50/p99 on an idle worker; its round trips per job."""
    n = b.sizes.latency
    rows = []
    raws = repeat(b, "raw latency", lambda: sorted(raw.latency(b.url, n)))
    for task, label in (("stamp", "async def step"), ("stamp_sync", "def step (thread pool)")):
        reps: list[Latencies] = repeat(b, f"latency {task}", lambda t=task: _latencies(b, t, n))
        samples = [r.seconds for r in reps]
        b.details[f"latency_{task}"] = [
            {
                "p50": percentile(s, 50),
                "p90": percentile(s, 90),
                "p99": percentile(s, 99),
                "max": s[-1],
                "round_trips_per_job": {k: v / r.jobs for k, v in r.trips.most_common()},
            }
            for s, r in zip(samples, reps, strict=True)
        ]
        for q in (50, 99):
            rows.append(
                Row(
                    "4 latency",
                    f"enqueue-to-start p{q}, {label}",
                    "ms",
                    [percentile(s, q) * 1000 for s in samples],
                    [percentile(s, q) * 1000 for s in raws] if task == "stamp" else [],
                    f"{n} jobs one at a time to an idle worker; raw: XADD to a consumer "
                    "blocked in XREADGROUP"
                    if (q, task) == (50, "stamp")
                    else "",
                )
            )
        if task == "stamp":
            last = reps[-1]
            rows.append(
                Row(
                    "4 latency",
                    "  worker round trips per job, idle worker",
                    "trips",
                    [sum(r.trips.values()) / r.jobs for r in reps],
                    note="unbatched: "
                    + ", ".join(f"{k} {v / last.jobs:.2f}" for k, v in last.trips.most_common(5)),
                )
            )
    return rows


# -- 5. cost growth ----------------------------------------------------------


def growth(b: Bench) -> list[Row]:
    """Wall time per job with 100 and 100,000 runs waiting."""
    s = b.sizes
    rows = []
    for waiting in s.growth_waiting:
        ms = repeat(
            b,
            f"per-step cost, {waiting} waiting",
            lambda w=waiting: b.drain("noop", s.growth_probe, waiting=w),
        )
        raws = repeat(
            b,
            f"raw, {waiting} waiting",
            lambda w=waiting: raw.drain(b.r, s.growth_probe, waiting=w)[0],
        )
        rows += [
            Row(
                "5 growth",
                f"wall time per job, {waiting:,} waiting",
                "us",
                [m.seconds / m.runs * 1e6 for m in ms],
                [1e6 / x for x in raws],
                f"{s.growth_probe} jobs timed ahead of the waiting ones",
            ),
            Row(
                "5 growth",
                f"  Redis CPU per job, {waiting:,} waiting",
                "us",
                [m.redis.cpu / max(m.steps_done, 1) * 1e6 for m in ms],
            ),
        ]
    return rows


def memory(b: Bench) -> list[Row]:
    """A worker's RSS over many jobs (--memory-jobs: a million by default).

    One worker fed jobs until ``memory_jobs`` are done; its RSS at checkpoints."""
    total = b.sizes.memory_jobs
    checkpoints = sorted(
        {c for c in (1_000, 10_000, 100_000, 250_000, 500_000, 750_000) if c < total}
        | {total, total // 10, total // 2}
    )
    app = b.fresh_app(retention=1)
    queue = app.keys.queue("default")
    enqueued, chunk, backlog = 0, 2_000, 20_000
    procs = BenchWorkers(b.url, n=1, app=apps.SHORT_LIVED)
    procs.start()
    points = []
    try:
        procs.go()
        procs.wait_registered()
        pid = procs.pids[0]
        t0 = time.perf_counter()
        last = (0, t0)
        deadline = time.monotonic() + 120 + total / 100
        while checkpoints:
            done = enqueued - int(b.r.xlen(queue))
            if done >= checkpoints[0]:
                now = time.perf_counter()
                rate = (done - last[0]) / max(now - last[1], 1e-9)
                points.append(
                    {
                        "jobs": done,
                        "rss_kb": proc_rss_kb(pid),
                        "redis_used_kb": int(b.r.info("memory")["used_memory"]) // 1024,
                        "rate": rate,
                        "elapsed_s": now - t0,
                    }
                )
                say(
                    f"  memory: {done:,} jobs, worker RSS {points[-1]['rss_kb']:,} kB, "
                    f"Redis {points[-1]['redis_used_kb']:,} kB, {rate:,.0f} jobs/s"
                )
                last = (done, now)
                while checkpoints and checkpoints[0] <= done:
                    checkpoints.pop(0)
                continue
            if enqueued < total and enqueued - done < backlog:
                n = min(chunk, total - enqueued)
                app.enqueue_many("noop", [None] * n)
                enqueued += n
            else:
                time.sleep(0.005)  # pacing the feeder; the worker drains meanwhile
            if time.monotonic() > deadline:
                raise BenchError(f"memory: only {done} of {total} jobs done in time")
    finally:
        procs.stop()
    b.details["memory"] = points
    first = next((p for p in points if p["jobs"] >= 10_000), points[0])
    return [
        Row(
            "5 memory",
            f"worker RSS after {p['jobs']:,} jobs",
            "MB",
            [p["rss_kb"] / 1024],
            note=(
                f"Redis used_memory {p['redis_used_kb'] / 1024:.0f} MB; "
                f"{p['rate']:,.0f} jobs/s since the last checkpoint; retention 1 s"
            ),
        )
        for p in points
    ] + [
        Row(
            "5 memory",
            f"RSS growth {first['jobs']:,} -> {points[-1]['jobs']:,} jobs",
            "MB",
            [(points[-1]["rss_kb"] - first["rss_kb"]) / 1024],
        )
    ]


# -- 6. commands per step -----------------------------------------------------


def commands(b: Bench) -> list[Row]:
    """Redis commands (scripts' too) and round trips per job and sticky step."""
    n = b.sizes.commands
    rows = []
    for label, wf, count in (("no-op job", "noop", n), ("sticky step", "Chain", n // 3)):
        ms = repeat(b, f"commands {wf}", lambda w=wf, c=count: b.drain(w, c, slowlog=True))
        b.details[f"commands_{wf}"] = [measure_json(m) for m in ms]
        rows += [
            Row(
                "6 commands",
                f"Redis commands per {label}",
                "cmds",
                [sum(m.redis.calls.values()) / m.steps for m in ms],
                note="INFO commandstats: top-level commands and those run inside scripts",
            ),
            Row(
                "6 commands",
                f"  EVALSHA per {label}",
                "calls",
                [m.redis.calls.get("evalsha", 0) / m.steps for m in ms],
            ),
            Row(
                "6 commands",
                f"  round trips per {label} (worker)",
                "trips",
                [sum(m.trips.values()) / m.steps for m in ms],
                note="counted in the worker: one per command sent alone, one per pipeline; "
                + ", ".join(f"{k} {v / ms[-1].steps:.3f}" for k, v in ms[-1].trips.most_common(4)),
            ),
            Row(
                "6 commands",
                f"  Redis usec per EVALSHA ({label}s)",
                "us",
                [
                    m.redis.usec.get("evalsha", 0) / max(m.redis.calls.get("evalsha", 0), 1)
                    for m in ms
                ],
            ),
        ]
        logs = b.details["slowlog"][wf][-len(ms) :]
        for script in ("EVALSHA take", "EVALSHA fetch", "EVALSHA claim", "EVALSHA complete"):
            per_call = [x[script]["usec_per_call"] for x in logs if script in x]
            if per_call:
                calls = logs[-1].get(script, {}).get("calls", 0)
                rows.append(
                    Row(
                        "6 commands",
                        f"    {script.split()[1]} script",
                        "us/call",
                        per_call,
                        note=f"SLOWLOG at 0 us: {calls / ms[-1].steps:.3f} calls per step",
                    )
                )
    raw_rows = []
    for _ in range(b.reps):
        raw.reset(b.r)
        raw.fill(b.r, n)
        before = RedisCounters.take(b.r)
        _, trips = raw.consume(b.r, n, 10, produce=False)
        d = RedisCounters.take(b.r).since(before)
        raw_rows.append((sum(d.calls.values()) / n, trips / n))
    rows.append(
        Row(
            "6 commands",
            "raw drain: commands, round trips per msg",
            "cmds",
            [],
            [x[0] for x in raw_rows],
            note=f"round trips per msg {raw_rows[-1][1]:.3f} (batches of 10)",
        )
    )
    return rows


def measure_json(m: Measure) -> dict[str, Any]:
    return {
        "runs": m.runs,
        "steps": m.steps,
        "seconds": m.seconds,
        "wall_seconds_from_go": m.wall,
        "runs_per_s": m.runs_per_s,
        "steps_per_s": m.steps_per_s,
        "worker_cpu_us_per_step": m.worker_cpu / m.steps * 1e6,
        "redis_cpu_us_per_step": m.redis.cpu / m.steps * 1e6,
        "redis_calls_per_step": {
            k: v / m.steps for k, v in sorted(m.redis.calls.items(), key=lambda kv: -kv[1])
        },
        "redis_usec_per_call": {k: m.redis.usec[k] / v for k, v in m.redis.calls.items()},
        "round_trips_per_step": {k: v / m.steps for k, v in m.trips.most_common()},
        "steps_done_by_workers": m.steps_done,
        "runs_per_worker": m.per_worker,
        "phase_seconds": m.phases,
    }


WORKLOADS: dict[str, Callable[[Bench], list[Row]]] = {
    "enqueue": enqueue,
    "drain": drain,
    "sticky": sticky,
    "latency": latency,
    "huey": huey,
    "growth": growth,
    "memory": memory,
    "commands": commands,
}
