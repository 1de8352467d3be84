"""Real processes for the crash and chaos tests: a redis-server that can be
restarted, ``rstick worker`` subprocesses that can be killed, paused and
restarted under the same id, and the step log of ``chaos_app``.

Redis itself comes from ``rstick.server``. Every wait here is a bounded poll
(``wait_until``); every process started is stopped by its owner's ``close()``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import redis

from rstick import Rstick
from rstick.server import RedisServer, die_with_this_process

from . import chaos_app

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.chaos_app:app"
LAUNCH = "from rstick_cli.main import cli; cli(prog_name='rstick')"  # `rstick`, on this Python
POLL = 0.05
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; Redis being away counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except redis.ConnectionError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout}s waiting for {what}")
        time.sleep(POLL)


# -- Redis ---------------------------------------------------------------------

# Every acknowledged write is on disk before the reply: a crash loses nothing.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def durable_redis() -> RedisServer:
    """A started redis-server (``rstick.server``) that survives ``restart(crash=True)``."""
    return RedisServer(DURABLE).start()


def outage(server: RedisServer, down: float) -> None:
    """Crash Redis (SIGKILL), keep it down ``down`` seconds, start it on the same port."""
    server.kill()
    time.sleep(down)  # the outage itself, not a wait for a condition
    server.start()


# -- workers -------------------------------------------------------------------


@dataclass
class Life:
    """One process of a worker id: from its spawn to its death."""

    worker_id: str
    n: int
    proc: subprocess.Popen[bytes]
    log: Path
    spawned_at: float
    killed_at: float | None = None
    signals: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def ready_at(self) -> float | None:
        """When it logged "started": after registering and taking back its runs."""
        for line in self.text().splitlines():
            if f"worker {self.worker_id} started:" in line:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        return None


class Workers:
    """``rstick worker`` subprocesses on one Redis and namespace, with their logs."""

    def __init__(
        self,
        url: str,
        namespace: str,
        folder: Path,
        *,
        heartbeat: float = 0.2,
        worker_ttl: float = 1.5,
        concurrency: int = 4,
        drain_timeout: float = 10.0,
    ) -> None:
        self.url, self.namespace, self.folder = url, namespace, folder
        self.heartbeat, self.worker_ttl = heartbeat, worker_ttl
        self.concurrency, self.drain_timeout = concurrency, drain_timeout
        self.lives: list[Life] = []
        self.current: dict[str, Life] = {}  # worker id -> its running process
        folder.mkdir(parents=True, exist_ok=True)

    def client_app(self) -> Rstick:
        """An app for the test process: the workload's definitions on this Redis."""
        return Rstick(
            redis_url=self.url,
            namespace=self.namespace,
            heartbeat=self.heartbeat,
            worker_ttl=self.worker_ttl,
            workflows=dict(chaos_app.app.workflows),
        )

    def start(
        self,
        worker_id: str,
        *,
        concurrency: int | None = None,
        app: str = APP,
        env: Mapping[str, str] | None = None,
        **opts: Any,
    ) -> Life:
        """``rstick worker APP`` under ``worker_id``; ``opts`` are its flags
        (``worker_ttl=60`` is ``--worker-ttl 60``), ``env`` adds to its environment."""
        if worker_id in self.current:
            raise RuntimeError(f"worker {worker_id} is already running")
        settings = {
            "heartbeat": self.heartbeat,
            "worker-ttl": self.worker_ttl,
            "drain-timeout": self.drain_timeout,
            **{k.replace("_", "-"): v for k, v in opts.items()},
        }
        cmd = [
            sys.executable,
            "-c",
            LAUNCH,
            "worker",
            app,
            "--worker-id", worker_id,
            "--concurrency", str(concurrency or self.concurrency),
            "--redis", self.url,
            "--namespace", self.namespace,
        ]  # fmt: skip
        for name, value in settings.items():
            cmd += [f"--{name}", str(value)]
        n = sum(1 for life in self.lives if life.worker_id == worker_id) + 1
        log_path = self.folder / f"{worker_id}.{n}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=die_with_this_process(),  # none outlives the test run
            )
        life = Life(worker_id, n, proc, log_path, time.time())
        self.lives.append(life)
        self.current[worker_id] = life
        return life

    def wait_ready(self, app: Rstick, *ids: str, timeout: float = 30.0) -> None:
        """Until each of these workers (this very process of it) has registered."""
        wanted = {self.current[i].pid: i for i in ids or list(self.current)}

        def ready() -> bool:
            for wid in wanted.values():
                if self.current[wid].proc.poll() is not None:
                    raise RuntimeError(f"worker {wid} exited:\n{self.current[wid].text()[-3000:]}")
            seen = {(w.worker_id, w.pid) for w in app.list_workers() if w.alive}
            return all((wid, pid) in seen for pid, wid in wanted.items())

        wait_until(ready, timeout, f"workers {sorted(wanted.values())} to register")

    def signal(self, worker_id: str, sig: signal.Signals) -> Life:
        life = self.current[worker_id]
        life.proc.send_signal(sig)
        life.signals.append(sig.name)
        return life

    def kill(self, worker_id: str) -> Life:
        """SIGKILL: the worker hands nothing back; the reaper must find it dead."""
        life = self.signal(worker_id, signal.SIGKILL)
        life.proc.wait(10)
        life.killed_at = time.time()
        del self.current[worker_id]
        return life

    def terminate(self, worker_id: str, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop); returns the exit code."""
        life = self.signal(worker_id, signal.SIGTERM)
        code = life.proc.wait(timeout)
        life.killed_at = time.time()
        del self.current[worker_id]
        return code

    def running(self) -> list[str]:
        return sorted(self.current)

    def log(self, worker_id: str) -> str:
        """Every life's log of this worker id, oldest first."""
        return "\n".join(life.text() for life in self.lives if life.worker_id == worker_id)

    def close(self, *, graceful: bool = True, timeout: float = 15.0) -> dict[str, int]:
        """Stop every running worker: SIGTERM (after a SIGCONT, should one be paused),
        SIGKILL past ``timeout``; or SIGKILL at once. Returns the exit codes."""
        codes: dict[str, int] = {}
        for wid in list(self.current):
            life = self.current[wid]
            if life.proc.poll() is None:
                life.proc.send_signal(signal.SIGCONT)
                life.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for wid in list(self.current):
            life = self.current.pop(wid)
            try:
                codes[wid] = life.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                life.proc.kill()
                codes[wid] = life.proc.wait(5)
            life.killed_at = life.killed_at or time.time()
        return codes


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


def step_lines(folder: Path) -> list[StepLine]:
    out = []
    for path in sorted(folder.glob("*.steps")):
        for line in path.read_text().splitlines():
            event, run_id, step, worker, attempt, pid = line.split()
            out.append(StepLine(event, run_id, step, worker, int(attempt), int(pid)))
    return out


def held(folder: Path, run_id: str, step: str, attempt: int) -> str | None:
    """The worker holding ``step`` of the run at its gate, if it got there."""
    marker = folder / f"{run_id}.{step}.{attempt}.held"
    return marker.read_text() if marker.exists() else None


def release(folder: Path, run_id: str, step: str) -> None:
    (folder / f"{run_id}.{step}.release").touch()
