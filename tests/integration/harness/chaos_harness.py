"""Real processes for the crash and chaos tests: a redis-server that can be
restarted, ``rstick worker`` subprocesses that can be killed, paused and
restarted under the same id (some with their wall clock skewed by Debian's
``faketime``, some serving another app), and the step log of ``chaos_app``.

Redis itself comes from ``rstick.embedded``. Every wait here is a bounded poll
(``wait_until``); every process started is stopped by its owner's ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
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
from rstick.embedded import RedisServer, die_with_this_process

from . import chaos_app

ROOT = Path(__file__).resolve().parents[3]
APP = "tests.integration.harness.chaos_app:app"
LAUNCH = "from rstick_cli.main import cli; cli(prog_name='rstick')"  # `rstick`, on this Python
SKEWED_LAUNCH = "tests.integration.harness.skewed_worker"  # `rstick` under faketime
POLL = 0.05
LOG_TIME = "%Y-%m-%d %H:%M:%S.%f"  # the worker's log lines begin with it (23 characters)
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
    """A started redis-server (``rstick.embedded``) that survives ``restart(crash=True)``."""
    return RedisServer(DURABLE).start()


def outage(server: RedisServer, down: float) -> None:
    """Crash Redis (SIGKILL), keep it down ``down`` seconds, start it on the same port."""
    server.kill()
    time.sleep(down)  # the outage itself, not a wait for a condition
    server.start()


# -- workers -------------------------------------------------------------------


@dataclass
class Life:
    """One process of a worker id: from its spawn to its death.

    ``proc`` is the process the test started; ``pid`` the worker's own, which
    differs under ``faketime`` (it forks the worker and waits for it). ``skew`` is
    how far the worker's wall clock is off (its log's times are corrected by it).
    """

    worker_id: str
    n: int
    proc: subprocess.Popen[bytes]
    log: Path
    spawned_at: float
    app: str = APP
    skew: float = 0.0
    worker_pid: int | None = None
    killed_at: float | None = None
    exited: int | None = None  # its exit code, when it ended by itself
    signals: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.worker_pid or self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def times(self, needle: str) -> list[float]:
        """When (by the test's clock) the log lines containing ``needle`` were written."""
        found = (self.line_time(line) for line in self.text().splitlines() if needle in line)
        return [at for at in found if at is not None]

    def line_time(self, line: str) -> float | None:
        """When (by the test's clock) one line of its log was written; None for a line
        without a time (a traceback's)."""
        try:
            return datetime.strptime(line[:23], LOG_TIME).timestamp() - self.skew
        except ValueError:
            return None

    @property
    def ready_at(self) -> float | None:
        """When it logged "started": after registering and taking back its runs."""
        started = self.times(f"worker {self.worker_id} started:")
        return started[0] if started else None

    @property
    def stopping_at(self) -> float | None:
        """When it began to stop by itself (hung steps, a signal): from then on it
        hands its runs over, as the reaper would."""
        stopping = self.times("stopping: finishing")
        return stopping[0] if stopping else None


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
        skew: float | None = None,
        **opts: Any,
    ) -> Life:
        """``rstick worker APP`` under ``worker_id``; ``opts`` are its flags
        (``worker_ttl=60`` is ``--worker-ttl 60``), ``env`` adds to its environment;
        with ``skew`` (seconds, say -11), under ``faketime``, its wall clock that far
        off (the monotonic clock left alone)."""
        if worker_id in self.current:
            raise RuntimeError(f"worker {worker_id} is already running")
        settings = {
            "heartbeat": self.heartbeat,
            "worker-ttl": self.worker_ttl,
            "drain-timeout": self.drain_timeout,
            **{k.replace("_", "-"): v for k, v in opts.items()},
        }
        launch = [sys.executable, "-c", LAUNCH]
        environ = None if env is None else {**os.environ, **env}
        if skew:
            faketime = shutil.which("faketime")
            if faketime is None:
                raise RuntimeError("faketime is not installed (Debian: apt-get install faketime)")
            launch = [faketime, "-f", f"{skew:+g}s", sys.executable, "-m", SKEWED_LAUNCH]
            environ = {**(environ or os.environ), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        cmd = [
            *launch,
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
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_this_process(),  # none outlives the test run
            )
        life = Life(worker_id, n, proc, log_path, time.time(), app=app, skew=skew or 0.0)
        if skew:
            try:
                life.worker_pid = wait_until(
                    lambda: _child(proc), 10, "faketime to start the worker"
                )
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}:\n{life.text()[-3000:]}") from None
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
        if life.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # under faketime: the worker is gone
                os.kill(life.pid, sig)
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

    def forget(self, worker_id: str) -> Life:
        """A worker whose process the caller saw end: it runs no more."""
        life = self.current.pop(worker_id)
        life.killed_at = life.killed_at or time.time()
        return life

    def pause(self, worker_id: str) -> Life:
        """SIGSTOP: every thread of the worker stops, its heartbeat too."""
        return self.signal(worker_id, signal.SIGSTOP)

    def resume(self, worker_id: str) -> Life:
        return self.signal(worker_id, signal.SIGCONT)

    def exited(self) -> list[Life]:
        """The workers that ended by themselves since the last call (none should,
        but one with too many hung steps stops so that its supervisor starts it again);
        they are running no more."""
        gone = []
        for wid, life in list(self.current.items()):
            code = life.proc.poll()
            if code is not None:
                life.exited = code
                life.killed_at = time.time()
                del self.current[wid]
                gone.append(life)
        return gone

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
                with contextlib.suppress(ProcessLookupError):
                    os.kill(life.pid, signal.SIGCONT)
                    os.kill(life.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for wid in list(self.current):
            life = self.current.pop(wid)
            try:
                codes[wid] = life.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(life.pid, signal.SIGKILL)
                life.proc.kill()
                codes[wid] = life.proc.wait(5)
            life.killed_at = life.killed_at or time.time()
        return codes


def _child(proc: subprocess.Popen[bytes]) -> int | None:
    """The pid of the one child of ``proc`` (the worker ``faketime`` forked), once it exists."""
    if proc.poll() is not None:
        raise RuntimeError(f"faketime exited with {proc.returncode} before starting the worker")
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(children[0]) if children else None


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
