"""Crash safety with real ``rstick worker`` processes on a real redis-server.

Workers are SIGKILLed, SIGSTOPped, SIGTERMed and restarted; Redis is crashed.
A step is held at a gate (a file the test creates) so that the signal lands
while it runs. The workload is ``chaos_app``; the processes, ``chaos_harness``.
"""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the workers import tests.integration.harness.chaos_app too
    sys.path.insert(0, str(ROOT))

from rstick import Rstick, RunFailed, RunRef  # noqa: E402
from rstick.embedded import RedisServer  # noqa: E402
from rstick.keys import GROUP  # noqa: E402
from rstick.testing.processes import wait_until  # noqa: E402
from tests.integration.harness.chaos_harness import (  # noqa: E402
    ChaosWorkers,
    durable_redis,
    held,
    outage,
    release,
    step_lines,
)

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 30.0  # generous: the machine is shared; a healthy run takes a few seconds


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    redis_server = durable_redis()
    yield redis_server
    redis_server.close()


@dataclass
class Crash:
    """One test's namespace, workers and gate folder."""

    server: RedisServer
    workers: ChaosWorkers
    app: Rstick
    dir: Path

    def start(self, *ids: str, **opts: Any) -> None:
        for wid in ids:
            self.workers.start(wid, **opts)
        self.workers.wait_ready(*ids)

    def enqueue(self, workflow: str, **opts: Any) -> RunRef:
        return self.app.enqueue(workflow, {"dir": str(self.dir), **opts})

    def held_by(self, ref: RunRef, step: str, attempt: int = 1) -> str:
        """The worker whose step is now waiting at its gate."""
        return str(
            wait_until(
                lambda: held(self.dir, ref.run_id, step, attempt),
                RESULT_TIMEOUT,
                f"{ref.run_id}/{step} attempt {attempt} to reach its gate",
            )
        )

    def history(self, ref: RunRef) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in e.items() if k != "at"} for e in self.app.client.history(ref.run_id)
        ]

    def executions(self, ref: RunRef) -> list[tuple[str, str, str, int]]:
        """(event, step, worker, attempt) of every step execution of the run, per the step log."""
        return sorted(
            (line.event, line.step, line.worker, line.attempt)
            for line in step_lines(self.dir)
            if line.run_id == ref.run_id
        )


@pytest.fixture
def crash(server: RedisServer, tmp_path: Path) -> Iterator[Crash]:
    workers = ChaosWorkers(server.url, f"crash-{uuid.uuid4().hex[:8]}", tmp_path / "logs")
    app = workers.client_app()
    yield Crash(server, workers, app, tmp_path)
    codes = workers.close(graceful=False)  # what a test did not stop needs no drain
    app.close()
    # Shown by pytest only when the test failed.
    print(f"exit codes at teardown: {codes}")
    for life in workers.lives:
        print(f"--- {life.log.name} (pid {life.pid}, signals {life.signals})")
        print(life.output()[-6000:])


def events(history: list[dict[str, Any]], ev: str) -> list[dict[str, Any]]:
    return [e for e in history if e["ev"] == ev]


def index(history: list[dict[str, Any]], **match: str) -> int:
    """Position of the first event with these fields (fails the test if none)."""
    for n, e in enumerate(history):
        if all(e.get(k) == v for k, v in match.items()):
            return n
    raise AssertionError(f"no event {match} in {history}")


def other(ids: tuple[str, ...], worker: str) -> str:
    (rest,) = set(ids) - {worker}
    return rest


# -- SIGKILL -------------------------------------------------------------------


def test_soft_run_of_a_killed_worker_finishes_on_another(crash: Crash) -> None:
    ids = ("w1", "w2")
    crash.start(*ids)
    ref = crash.enqueue("Soft3", hold=["b:1"])
    victim = crash.held_by(ref, "b")
    crash.workers.kill(victim)
    heir = other(ids, victim)

    result = ref.result(timeout=RESULT_TIMEOUT)

    assert result == {
        "a": {"worker": victim, "attempt": 1, "reassigned": False},
        "b": {"worker": heir, "attempt": 2, "reassigned": True},
        "c": {"worker": heir, "attempt": 1, "reassigned": True},
    }
    history = crash.history(ref)
    assert events(history, "lost") == [
        {"ev": "lost", "s": "b", "w": victim, "a": "1", "reason": "worker lost"}
    ]
    assert index(history, ev="lost") < index(history, ev="reassigned", **{"from": victim})
    assert index(history, ev="reassigned") < index(history, ev="pinned", w=heir)
    assert index(history, ev="pinned", w=heir) < index(history, ev="started", s="b", w=heir)
    assert [e["w"] for e in events(history, "succeeded")] == [victim, heir, heir]
    # The dead worker is forgotten once the reaper moved what it held.
    wait_until(
        lambda: victim not in {w.worker_id for w in crash.app.list_workers()},
        RESULT_TIMEOUT,
        f"{victim} to be removed",
    )


def test_hard_run_waits_for_its_worker_to_come_back(crash: Crash) -> None:
    ids = ("w1", "w2")
    crash.start(*ids)
    ref = crash.enqueue("HardLong", hold=["b:1"])  # parked for at most 60 s
    victim = crash.held_by(ref, "b")
    crash.workers.kill(victim)
    wait_until(lambda: events(crash.history(ref), "parked"), RESULT_TIMEOUT, "the run to park")
    assert crash.app.get_run(ref.run_id).parked_until is not None

    crash.start(victim)  # the same --worker-id comes back
    result = ref.result(timeout=RESULT_TIMEOUT)

    assert result == {
        "a": {"worker": victim, "attempt": 1, "reassigned": False},
        "b": {"worker": victim, "attempt": 2, "reassigned": False},
        "c": {"worker": victim, "attempt": 1, "reassigned": False},
    }
    history = crash.history(ref)
    assert index(history, ev="parked", w=victim) < index(history, ev="unparked", w=victim)
    assert {e["w"] for e in events(history, "started")} == {victim}
    assert not events(history, "reassigned")
    # Nothing of it ever ran on the other worker, not even an unaccepted attempt.
    assert {worker for _, _, worker, _ in crash.executions(ref)} == {victim}
    assert crash.app.get_run(ref.run_id).parked_until is None


def test_hard_run_fails_with_scheduling_timeout_when_its_worker_stays_away(
    crash: Crash,
) -> None:
    ids = ("w1", "w2")
    crash.start(*ids)
    ref = crash.enqueue("Hard3", hold=["b:1"])  # schedule_timeout: 3 s
    victim = crash.held_by(ref, "b")
    crash.workers.kill(victim)

    with pytest.raises(RunFailed) as failed:
        ref.result(timeout=RESULT_TIMEOUT)

    assert (failed.value.error_type, failed.value.step) == ("SchedulingTimeout", "b")
    history = crash.history(ref)
    (parked,) = events(history, "parked")
    assert parked["w"] == victim
    assert index(history, ev="parked") < index(history, ev="timed out", w=victim)
    run = crash.app.get_run(ref.run_id)
    assert run.finished_at is not None and run.finished_at * 1000 >= int(parked["until"])
    assert run.step("c").status == "waiting"  # never dispatched anywhere
    assert {e["w"] for e in events(history, "started")} == {victim}
    assert {worker for _, _, worker, _ in crash.executions(ref)} == {victim}


def test_job_of_a_killed_worker_runs_once_more_elsewhere(crash: Crash) -> None:
    ids = ("w1", "w2")
    crash.start(*ids)
    ref = crash.enqueue("job", hold=["job:1"])
    victim = crash.held_by(ref, "job")
    crash.workers.kill(victim)
    heir = other(ids, victim)

    assert ref.result(timeout=RESULT_TIMEOUT) == {
        "worker": heir,
        "attempt": 2,
        "reassigned": False,
    }
    history = crash.history(ref)
    assert [(e["w"], e["a"]) for e in events(history, "started")] == [(victim, "1"), (heir, "2")]
    assert len(events(history, "succeeded")) == 1
    assert crash.executions(ref) == sorted(
        [("start", "job", victim, 1), ("start", "job", heir, 2), ("done", "job", heir, 2)]
    )


# -- SIGSTOP: a zombie ---------------------------------------------------------


def test_paused_worker_is_fenced_off_and_rejoins(crash: Crash) -> None:
    ids = ("w1", "w2")
    crash.start(*ids)
    ref = crash.enqueue("Soft3", hold=["b:1"])
    zombie = crash.held_by(ref, "b")
    heir = other(ids, zombie)
    crash.workers.signal(zombie, signal.SIGSTOP)

    # While it sleeps, the reaper finds it dead and the run moves and finishes.
    result = ref.result(timeout=RESULT_TIMEOUT)
    assert result["b"] == {"worker": heir, "attempt": 2, "reassigned": True}
    assert result["c"] == {"worker": heir, "attempt": 1, "reassigned": True}

    release(crash.dir, ref.run_id, "b")  # the zombie's step finishes as soon as it wakes
    crash.workers.signal(zombie, signal.SIGCONT)
    wait_until(
        lambda: ("done", "b", zombie, 1) in crash.executions(ref),
        RESULT_TIMEOUT,
        "the zombie to finish its step",
    )
    wait_until(
        lambda: f"completion of {ref.run_id}/b refused" in crash.workers.log(zombie),
        RESULT_TIMEOUT,
        "the zombie's completion to be refused",
    )
    # Its late result changed nothing: one accepted result per step, b's is the heir's.
    assert ref.result(timeout=1)["b"]["worker"] == heir
    history = crash.history(ref)
    assert [(e["s"], e["w"]) for e in events(history, "succeeded")] == [
        ("a", zombie),
        ("b", heir),
        ("c", heir),
    ]
    assert "declared dead" in crash.workers.log(zombie)

    # It rejoined: with the other worker gone, it serves new work.
    crash.workers.wait_ready(zombie)
    crash.workers.kill(heir)
    after = crash.enqueue("job")
    assert after.result(timeout=RESULT_TIMEOUT)["worker"] == zombie


# -- SIGTERM: a graceful stop ---------------------------------------------------


def test_graceful_stop_hands_soft_runs_back_at_once(crash: Crash) -> None:
    # A worker_ttl of a minute: only the hand-off can move the run within the test.
    crash.start("w1", concurrency=1, worker_ttl=60)
    ref = crash.enqueue("Soft3", hold=["a:1"])
    assert crash.held_by(ref, "a") == "w1"
    crash.start("w2", worker_ttl=60)

    life = crash.workers.signal("w1", signal.SIGTERM)
    wait_until(lambda: "stopping" in life.output(), RESULT_TIMEOUT, "w1 to start stopping")
    release(crash.dir, ref.run_id, "a")  # w1 finishes its running step, then hands off
    assert life.proc.wait(15) == 0  # it has nothing left to run: a drain takes a second

    # w1 left with the run between steps: a done, b waiting in w1's stream.
    result = ref.result(timeout=RESULT_TIMEOUT)
    assert result == {
        "a": {"worker": "w1", "attempt": 1, "reassigned": False},
        "b": {"worker": "w2", "attempt": 1, "reassigned": True},
        "c": {"worker": "w2", "attempt": 1, "reassigned": True},
    }
    history = crash.history(ref)
    assert not events(history, "lost")  # nothing was in flight when it handed off
    order = [
        index(history, ev="succeeded", s="a", w="w1"),
        index(history, ev="reassigned", **{"from": "w1"}),
        index(history, ev="pinned", w="w2"),
        index(history, ev="started", s="b", w="w2"),
    ]
    assert order == sorted(order)
    assert "w1" not in {w.worker_id for w in crash.app.list_workers()}
    assert not crash.app.client.redis.exists(crash.app.keys.personal("w1"))


# -- Redis goes away -------------------------------------------------------------


def test_workers_reconnect_after_redis_restarts(crash: Crash) -> None:
    ids = ("w1", "w2", "w3")
    crash.start(*ids)
    kinds = ["Soft3", "HardLong", "Plain3", "job"]
    refs = [crash.enqueue(kinds[n % 4], sleep=0.3) for n in range(40)]
    redis = crash.app.client.redis

    def steps_done() -> int:
        return sum(
            s.status == "succeeded" for ref in refs for s in crash.app.get_run(ref.run_id).steps
        )

    wait_until(lambda: steps_done() >= 10, RESULT_TIMEOUT, "some steps to finish")
    assert steps_done() < 40 * 3  # the outage hits the middle of the work
    outage(crash.server, down=1.0)

    def unfinished() -> set[str]:
        return {r.run_id for r in refs if not crash.app.get_run(r.run_id).status.finished}

    wait_until(lambda: not unfinished(), 30, "every run to finish after the restart")
    for ref in refs:
        succeeded = [e["s"] for e in events(crash.history(ref), "succeeded")]
        assert len(succeeded) == len(set(succeeded))  # no step accepted twice
    failed = [crash.app.get_run(r.run_id) for r in refs]
    failed = [run for run in failed if run.status != "succeeded"]
    assert not failed, [(run.run_id, run.workflow, run.status) for run in failed]
    for wid in ids:
        assert crash.workers.current[wid].proc.poll() is None, f"{wid} exited"
        assert "redis unavailable" in crash.workers.log(wid)
        assert "was declared dead" not in crash.workers.log(wid)
    crash.workers.wait_ready(*ids)
    assert redis.xpending(crash.app.keys.queue("default"), GROUP)["pending"] == 0


def test_entry_delivered_as_the_connection_drops_still_runs(crash: Crash) -> None:
    # What a Redis restart at the wrong moment does, step by step: Redis hands an
    # entry to the worker's read, and the reply is lost with the connection.
    crash.start("w1", worker_ttl=60)  # its pause below is no death
    redis, queue = crash.app.client.redis, crash.app.keys.queue("default")
    # A reply can only be lost if a read is on its way: "registered" comes before
    # the fetch loop's first read, and a worker stopped before it has no read to
    # lose (it would find the entry only at its next recovery, a ttl later).
    wait_until(
        lambda: any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in redis.client_list()),
        RESULT_TIMEOUT,
        "w1 to block in its read",
    )
    crash.workers.signal("w1", signal.SIGSTOP)
    assert redis.client_kill_filter(_type="normal", skipme=True) >= 1  # w1's connections
    ref = crash.enqueue("job")
    delivered = redis.xreadgroup(GROUP, "w1", {queue: ">"}, count=10)
    assert len(delivered[0][1]) == 1  # pending on w1, which never saw it
    crash.workers.signal("w1", signal.SIGCONT)
    wait_until(
        lambda: "redis unavailable" in crash.workers.log("w1"),
        RESULT_TIMEOUT,
        "w1 to notice its connection dropped",
    )

    assert ref.result(timeout=15)["worker"] == "w1"
    assert len(events(crash.history(ref), "succeeded")) == 1


# -- bad input ------------------------------------------------------------------


def test_garbage_entries_are_dead_lettered_and_the_worker_goes_on(crash: Crash) -> None:
    crash.start("w1")
    redis, keys = crash.app.client.redis, crash.app.keys
    queue = keys.queue("default")
    redis.xadd(queue, {"hello": "world"})
    redis.xadd(queue, {"r": "x", "s": "a", "a": "1", "e": "0"})  # no workflow
    # Well formed, but naming no run: nothing to lose, dropped like a stale entry.
    redis.xadd(queue, {"r": "x", "s": "a", "a": "1", "e": "0", "w": "NoSuchWorkflow"})

    wait_until(lambda: len(crash.app.client.dead_letters()) == 2, RESULT_TIMEOUT, "dead letters")
    letters = crash.app.client.dead_letters()
    assert {letter["reason"] for letter in letters} == {
        "malformed entry: needs fields r, s, a, e, w"
    }
    malformed = next(letter for letter in letters if "hello" in letter)
    assert (malformed["hello"], malformed["stream"]) == ("world", queue)

    assert crash.enqueue("job").result(timeout=RESULT_TIMEOUT)["worker"] == "w1"
    assert crash.workers.current["w1"].proc.poll() is None
    assert redis.xpending(queue, GROUP)["pending"] == 0
    assert redis.xlen(queue) == 0
    assert len(crash.app.client.dead_letters()) == 2


def test_corrupt_payload_is_dead_lettered_and_the_worker_goes_on(crash: Crash) -> None:
    crash.start("w1")
    ref = crash.app.enqueue("job", {"x": 1}, delay=1.0)  # not due for a second:
    crash.app.client.redis.hset(crash.app.keys.run(ref.run_id), "input", b"\xc1")  # corrupt it

    wait_until(
        lambda: any(d.get("r") == ref.run_id for d in crash.app.client.dead_letters()),
        10,
        "the corrupt entry to be dead-lettered",
    )
    with pytest.raises(RunFailed):
        ref.result(timeout=RESULT_TIMEOUT)
    assert crash.enqueue("job").result(timeout=RESULT_TIMEOUT)["worker"] == "w1"


# -- step timeouts ---------------------------------------------------------------


def test_step_timeout_fails_the_attempt_and_retries(crash: Crash) -> None:
    crash.start("w1")
    # timeout=0.3, retries=1: the first attempt overruns, the second is quick.
    sync_ref = crash.enqueue("slow", sleep={"slow:1": 1.5})
    async_ref = crash.enqueue("aslow", sleep={"aslow:1": 1.5, "aslow:2": 1.5})

    assert sync_ref.result(timeout=RESULT_TIMEOUT) == {
        "worker": "w1",
        "attempt": 2,
        "reassigned": False,
    }
    step = crash.app.get_run(sync_ref.run_id).step("slow")
    assert step.error is not None and step.error.type == "StepTimeout"
    history = crash.history(sync_ref)
    assert [e["a"] for e in events(history, "retry")] == ["1"]
    assert [e["a"] for e in events(history, "succeeded")] == ["2"]

    with pytest.raises(RunFailed) as failed:
        async_ref.result(timeout=RESULT_TIMEOUT)
    assert (failed.value.error_type, failed.value.step) == ("StepTimeout", "aslow")
    history = crash.history(async_ref)
    assert [e["a"] for e in events(history, "retry")] == ["1"]
    assert [e["a"] for e in events(history, "failed")] == ["2"]
    # The async attempts were cancelled: they started and never finished.
    assert crash.executions(async_ref) == [
        ("start", "aslow", "w1", 1),
        ("start", "aslow", "w1", 2),
    ]
