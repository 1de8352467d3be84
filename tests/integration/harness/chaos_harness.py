"""Real processes for the crash and chaos tests: a redis-server that can be
restarted, ``rstick worker`` processes of ``chaos_app`` (``rstick.testing``: killed,
paused and restarted under the same id, some with their wall clock skewed by
Debian's ``faketime``, some serving another app), and the step log of
``chaos_app``.

Redis itself comes from ``rstick.embedded``. Every wait here is a bounded poll
(``wait_until``); every process started is stopped by its owner's ``close()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rstick import Rstick
from rstick.embedded import RedisServer
from rstick.testing.processes import WorkerProcesses

from . import chaos_app

ROOT = Path(__file__).resolve().parents[3]
APP = "tests.integration.harness.chaos_app:app"


# -- Redis ---------------------------------------------------------------------

# Every acknowledged write is on disk before the reply: a crash loses nothing.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def durable_redis() -> RedisServer:
    """A started redis-server (``rstick.embedded``) that survives ``restart(crash=True)``."""
    return RedisServer(DURABLE).start()


def outage(server: RedisServer, down: float) -> None:
    """Crash Redis (SIGKILL), keep it down ``down`` seconds, start it on the same port."""
    server.kill()
    time.sleep(down)  # the outage itself, not a wait for a condition
    server.start()


# -- workers -------------------------------------------------------------------


class ChaosWorkers(WorkerProcesses):
    """``rstick worker`` processes of ``chaos_app`` on one Redis and namespace, with
    short heartbeats; their logs in ``logs``."""

    def __init__(
        self,
        url: str,
        namespace: str,
        logs: Path,
        *,
        heartbeat: float = 0.2,
        worker_ttl: float = 1.5,
        concurrency: int = 4,
        drain_timeout: float = 10.0,
    ) -> None:
        flags = {"heartbeat": heartbeat, "worker_ttl": worker_ttl, "drain_timeout": drain_timeout}
        super().__init__(
            url, namespace, app=APP, concurrency=concurrency, flags=flags, cwd=ROOT, logs=logs
        )
        self.heartbeat, self.worker_ttl = heartbeat, worker_ttl

    def client_app(self) -> Rstick:
        """An app for the test process: the workload's definitions on this Redis."""
        return Rstick(
            redis_url=self.url,
            namespace=self.namespace,
            heartbeat=self.heartbeat,
            worker_ttl=self.worker_ttl,
            workflows=dict(chaos_app.app.workflows),
        )


# -- the step log ----------------------------------------------------------------


@dataclass(frozen=True)
class StepLine:
    """One line of ``<dir>/<worker>.steps``: an execution began or ended."""

    event: str  # "start" or "done"
    run_id: str
    step: str
    worker: str
    attempt: int
    pid: int
    at: float  # time.monotonic() of the worker: one clock for the whole machine


def step_lines(folder: Path) -> list[StepLine]:
    out = []
    for path in sorted(folder.glob("*.steps")):
        for line in path.read_text().splitlines():
            event, run_id, step, worker, attempt, pid, at = line.split()
            out.append(StepLine(event, run_id, step, worker, int(attempt), int(pid), float(at)))
    return out


def held(folder: Path, run_id: str, step: str, attempt: int) -> str | None:
    """The worker holding ``step`` of the run at its gate, if it got there."""
    marker = folder / f"{run_id}.{step}.{attempt}.held"
    return marker.read_text() if marker.exists() else None


def release(folder: Path, run_id: str, step: str) -> None:
    (folder / f"{run_id}.{step}.release").touch()
