"""The examples on a real Redis with real worker processes, and ``rstick demo``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from examples.sticky_files.start import run_example
from rstick.embedded import RedisServer, redis_available
from rstick.keys import Keys
from rstick.testing.processes import WorkerProcesses
from tests.integration.harness.clients import connections, named_url, peak_connections
from tests.integration.harness.procs import ROOT, rstick_command, subprocess_env

# -- the sticky file-processing example ----------------------------------------


def test_every_step_of_every_run_stays_on_one_worker(redis_url: str) -> None:
    report = run_example(redis_url, workers=5, runs=10)
    assert len(report.runs) == 10
    for run in report.runs:
        assert run.status == "succeeded", run.error
        assert run.sha256 == run.expected  # recomputed from the run's seed
        assert run.one_worker, run.workers
        assert not run.redownloaded
    # Five workers, two slots each: the runs spread, so sticking is not a given.
    assert len({run.workers["download"] for run in report.runs}) >= 2
    assert report.ok
    assert report.summary().startswith("10 runs, 30 steps, every run on one worker")


def test_killing_a_worker_moves_its_runs_and_they_download_again(redis_url: str) -> None:
    report = run_example(redis_url, workers=5, runs=10, kill_one=True, sleep=1.0)
    killed = report.killed
    assert killed is not None
    moved = [r for r in report.runs if not r.one_worker]
    assert moved, "the killed worker held a run between download and process"
    for run in report.runs:
        assert run.status == "succeeded", run.error
        assert run.sha256 == run.expected
    for run in moved:
        assert run.workers["download"] == killed
        assert run.workers["cleanup"] != killed
        if run.workers["process"] != killed:  # the file was on the lost worker's disk
            assert run.workers["process"] == run.workers["cleanup"]
            assert run.redownloaded
    assert report.ok


def test_the_starter_prints_where_each_step_ran(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "examples.sticky_files.start", "--workers", "2", "--runs", "3"],
        cwd=ROOT,
        env=dict(subprocess_env(), RSTICK_REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "checksum", "download", "process", "cleanup", "time"]
    assert len(lines) == 5
    assert all(" ok " in line for line in lines[1:4])
    assert lines[-1].startswith("3 runs, 9 steps, every run on one worker")


# -- the sticky child example ---------------------------------------------------


def shared_queue_adds(pubsub: Any) -> int:
    """XADDs the keyspace notifications reported (every one is already queued for us:
    Redis writes a notification while it runs the command)."""
    adds = 0
    for _ in range(10_000):
        message = pubsub.get_message(timeout=0.5)
        if message is None:
            return adds
        adds += message["type"] == "message" and message["data"] == b"xadd"
    raise AssertionError("endless notifications")


def test_sticky_children_run_on_the_parents_worker_with_one_slot(
    own_server: RedisServer, make_workers: Callable[[str, str], WorkerProcesses], namespace: str
) -> None:
    # A server of its own: the test turns on keyspace notifications to count what
    # enters the shared queue.
    observer = redis.Redis.from_url(own_server.url)
    observer.config_set("notify-keyspace-events", "Kt")
    pubsub = observer.pubsub()
    pubsub.subscribe(f"__keyspace@0__:{Keys(namespace).queue('default')}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # listening from now on
    workers = make_workers(own_server.url, namespace)
    workers.start_many(2, "examples.sticky_child:app", concurrency=1)
    client = workers.client

    refs = client.enqueue_many("Parent", [{"n": 3}, {"n": 5}])
    # Each worker has one slot, and each parent step blocks on its child: without the
    # slot it lends while it waits, the child could never start.
    results = [ref.result(timeout=30) for ref in refs]
    # Only the parents' first steps went through the shared queue: the children (and the
    # parents' second roots) went straight to their worker's own stream.
    assert shared_queue_adds(pubsub) == 2
    pubsub.close()
    observer.close()

    for ref, result, n in zip(refs, results, [3, 5], strict=True):
        parent = client.get_run(ref.run_id)
        for step, square in (("sync_child", n * n), ("async_child", (n + 1) ** 2)):
            out = result[step]
            assert out["worker"] == parent.step(step).worker
            assert out["child"]["square"]["square"] == square
            child = client.get_run(out["child_run"])
            assert child.status == "succeeded"
            assert child.parent == f"{ref.run_id}/{step}"
            assert child.worker == out["worker"]  # pinned to the parent's worker
            assert {s.worker for s in child.steps} == {out["worker"]}
            created = client.client.history(child.run_id)[0]
            assert (created["ev"], created["w"]) == ("created", out["worker"])


def test_ordinary_children_do_not_deadlock_one_worker_with_one_slot(
    redis_url: str, make_workers: Callable[[str, str], WorkerProcesses], namespace: str
) -> None:
    workers = make_workers(redis_url, namespace)
    workers.start_many(1, "examples.sticky_child:app", concurrency=1)
    client = workers.client

    # Not sticky: the children go through the shared queue, behind whatever is there.
    # The one slot of the one worker is busy with a parent step waiting on its child:
    # the waiting step lends its slot, so the child still runs.
    refs = client.enqueue_many("Parent", [{"n": 2, "sticky": False}, {"n": 4, "sticky": False}])
    for ref, n in zip(refs, [2, 4], strict=True):
        result = ref.result(timeout=30)
        for step, square in (("sync_child", n * n), ("async_child", (n + 1) ** 2)):
            assert result[step]["child"]["square"]["square"] == square
            child = client.get_run(result[step]["child_run"])
            assert child.parent == f"{ref.run_id}/{step}"
            assert child.status == "succeeded"


# -- the web app example ------------------------------------------------------------


def test_the_web_app_example_answers_many_requests_on_few_connections(
    redis_url: str, make_workers: Callable[[str, str], WorkerProcesses], namespace: str
) -> None:
    workers = make_workers(redis_url, namespace)
    workers.start_many(2, "examples.web_app:app", concurrency=10)
    url, name = named_url(redis_url, "web-example")
    with peak_connections(redis_url, name) as peak:
        out = subprocess.run(
            [sys.executable, "-m", "examples.web_app", "--requests", "1000"],
            cwd=ROOT,
            env=dict(subprocess_env(), RSTICK_REDIS_URL=url, RSTICK_NAMESPACE=namespace),
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split(", by workers ") for line in out.stdout.splitlines()]
    assert [head for head, _ in lines] == [
        "async server: 1000 requests answered",
        "threaded server (32 threads): 1000 requests answered",
    ]
    for _, names in lines:
        assert set(names.split(", ")) <= {"w1", "w2"}
    # One side at a time was open (`async with app` closed the first): a pool of 10
    # and a subscription.
    assert 2 <= peak[0] <= 11
    assert connections(redis_url, name) == 0


# -- rstick demo ------------------------------------------------------------------


def test_rstick_demo_runs_end_to_end(redis_url: str, tmp_path: Path) -> None:
    # From another folder and without the repository on PYTHONPATH, as a user runs it.
    env = dict(os.environ, RSTICK_REDIS_URL=redis_url, TMPDIR=str(tmp_path))
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [*rstick_command(), "demo", "--workers", "3", "--runs", "6"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "6/6 runs done" in lines  # progress, one plain line per change off a terminal
    assert lines[-1].startswith("6 runs, 18 steps, every run on one worker")
    assert sum(" ok " in line for line in lines) == 6
    # Its processes' files and its keys are gone.
    assert list(tmp_path.iterdir()) == []
    assert redis.Redis.from_url(redis_url).keys("{demo-*") == []


def test_demo_starts_an_embedded_redis_when_none_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rstick_cli import demo

    monkeypatch.setattr(demo, "redis_available", lambda url: False)
    with demo.demo_redis(None) as (url, where):
        assert "embedded" in where
        assert redis_available(url)
    assert not redis_available(url)  # stopped with the demo
