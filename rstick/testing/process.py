"""One life of one ``rstick worker`` process (``WorkerProcesses`` starts them), and
the bounded poll every wait of the harness uses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")

POLL = 0.05  # seconds between looks while waiting for a condition
LOG_TIME = "%Y-%m-%d %H:%M:%S.%f"  # the worker's log lines begin with it (23 characters)
STOPPING = {signal.SIGTERM.name, signal.SIGKILL.name, signal.SIGINT.name}


def wait_until(check: Callable[[], T | None], timeout: float, what: str, poll: float = POLL) -> T:
    """Poll ``check`` until it returns something truthy (returned); TimeoutError
    naming ``what`` after ``timeout`` seconds. Redis being away counts as not yet."""
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
        time.sleep(poll)


class WorkerProcess:
    """One life of one worker id: a process, from its start to its end.

    ``pid`` is the worker's own (under ``faketime`` it is a child of ``proc``, the
    process started here). ``skew`` is how far its wall clock is off; the times
    read from its log are corrected by it. ``ended_at`` (wall time) and
    ``exit_code`` are set once the starter saw it end (``wait``, ``kill``,
    ``WorkerProcesses.exited``...).
    """

    def __init__(
        self,
        worker_id: str,
        n: int,
        proc: subprocess.Popen[bytes],
        log: Path,
        *,
        app: str,
        skew: float = 0.0,
    ) -> None:
        self.worker_id = worker_id
        self.n = n  # its life number: 1 for the first process of the id
        self.proc = proc
        self.log = log
        self.app = app
        self.skew = skew
        self.spawned_at = time.time()
        self.signals: list[str] = []
        self.ended_at: float | None = None
        self.exit_code: int | None = None

    def __repr__(self) -> str:
        return (
            f"WorkerProcess({self.worker_id!r}, n={self.n}, pid={self.pid}, rc={self.proc.poll()})"
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def stopped_by_test(self) -> bool:
        """Whether it was sent a signal that ends it."""
        return bool(STOPPING.intersection(self.signals))

    # -- signals -------------------------------------------------------------

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the worker's own pid, if it still runs."""
        self.signals.append(sig.name)
        if self.alive:
            with contextlib.suppress(ProcessLookupError):  # it is just ending
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM: drain, hand SOFT runs back, deregister, exit 0 (see ``wait``)."""
        self.signal(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL, and wait for it: a crash, the worker hands nothing back."""
        self.signal(signal.SIGKILL)
        return self.wait(10.0)

    def pause(self) -> None:
        """SIGSTOP: every thread stops, its heartbeat too."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def wait(self, timeout: float) -> int:
        """Its exit code; TimeoutError if it still runs after ``timeout`` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"worker {self.worker_id} (pid {self.pid}) still running after {timeout}s"
            ) from None
        self.ended(code)
        return code

    def ended(self, code: int) -> None:
        """Note that the starter saw it end, with ``code``."""
        self.exit_code = code
        if self.ended_at is None:
            self.ended_at = time.time()

    # -- its log -------------------------------------------------------------

    def output(self) -> str:
        """Everything it wrote, after the command line that started it."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def line_time(self, line: str) -> float | None:
        """When (by the starter's clock) a line of its log was written; None for a line
        without a time (the command line, a traceback's)."""
        try:
            return datetime.strptime(line[:23], LOG_TIME).timestamp() - self.skew
        except ValueError:
            return None

    def times(self, needle: str) -> list[float]:
        """When (by the starter's clock) the lines containing ``needle`` were written."""
        found = (self.line_time(line) for line in self.output().splitlines() if needle in line)
        return [at for at in found if at is not None]

    @property
    def ready_at(self) -> float | None:
        """When it logged "started": registered, and what it held before taken back."""
        started = self.times(f"worker {self.worker_id} started:")
        return started[0] if started else None

    @property
    def stopping_at(self) -> float | None:
        """When it began to stop (a signal, hung steps): from then on it hands its
        runs over, as the reaper would."""
        stopping = self.times("stopping: finishing")
        return stopping[0] if stopping else None
