"""Helpers for tests with real ``rstick worker`` processes: start, signal, wait, read logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rstick import Rstick
from rstick.embedded import die_with_this_process

ROOT = Path(__file__).resolve().parents[3]  # `examples.*` and `tests.integration.*` import from it

POLL = 0.02  # seconds between looks while waiting for a condition
READY_TIMEOUT = 30.0  # a worker process imports, connects and registers within this


def wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = POLL) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def rstick_command() -> list[str]:
    """The installed ``rstick`` console script beside this Python, else the same CLI
    through ``python -c`` (an editable install made before the script existed)."""
    script = Path(sys.executable).with_name("rstick")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from rstick_cli.main import cli; cli(prog_name='rstick')"]


def subprocess_env() -> dict[str, str]:
    """The test's environment, with the repository importable and output unbuffered
    (a SIGKILLed worker's last lines still reach its log)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    for name in ("RSTICK_REDIS_URL", "RSTICK_NAMESPACE"):  # the command line says it all
        env.pop(name, None)
    return env


class WorkerProc:
    """One life of one ``rstick worker`` process."""

    def __init__(self, worker_id: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.worker_id = worker_id
        self.proc = proc
        self.log = log
        self.signalled = False  # by the test: its exit is expected, not a failure

    def __repr__(self) -> str:
        return f"WorkerProc({self.worker_id!r}, pid={self.pid}, rc={self.proc.poll()})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.signalled = True
        if self.alive:
            self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM: drain, hand SOFT runs back, deregister, exit 0."""
        self.signal(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL, and wait for it: a crash, the worker hands nothing back."""
        self.signal(signal.SIGKILL)
        return self.wait(10.0)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test if the process is still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.worker_id} (pid {self.pid}) still running after {timeout}s"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class WorkerProcs:
    """``rstick worker`` subprocesses of one test, on one Redis and namespace.

    A worker id may be started again after it stopped (a restart): every life is
    kept, its output appended to the same ``<logs>/<id>.log``.
    """

    def __init__(self, url: str, namespace: str, logs: Path) -> None:
        self.url = url
        self.namespace = namespace
        self.logs = logs
        self.lives: list[WorkerProc] = []
        self.client = Rstick(redis_url=url, namespace=namespace)

    def __getitem__(self, worker_id: str) -> WorkerProc:
        """The latest life of ``worker_id``."""
        for proc in reversed(self.lives):
            if proc.worker_id == worker_id:
                return proc
        raise KeyError(worker_id)

    def start(
        self,
        worker_id: str,
        app: str = "examples.sticky_dag:app",
        *,
        concurrency: int = 4,
        args: tuple[str, ...] = (),
    ) -> WorkerProc:
        """Start ``rstick worker APP --worker-id ID ...``; does not wait for it (see ``ready``)."""
        if any(p.worker_id == worker_id and p.alive for p in self.lives):
            raise ValueError(f"worker {worker_id} is already running")
        command = [
            *rstick_command(), "worker", app,
            "--worker-id", worker_id,
            "--concurrency", str(concurrency),
            "--redis", self.url,
            "--namespace", self.namespace,
            *args,
        ]  # fmt: skip
        log = self.logs / f"{worker_id}.log"
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_this_process(),
            )
        life = WorkerProc(worker_id, proc, log)
        self.lives.append(life)
        return life

    def start_many(self, count: int, app: str = "examples.sticky_dag:app", **kw: Any) -> None:
        """Start ``w1`` .. ``w<count>`` and wait until all are ready."""
        for n in range(1, count + 1):
            self.start(f"w{n}", app, **kw)
        self.ready()

    def registered(self) -> dict[str, int]:
        """Alive workers in Redis: id -> pid."""
        return {w.worker_id: w.pid for w in self.client.list_workers() if w.alive}

    def ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every process the test has not signalled has registered itself
        in Redis; fail at once, with its output, if one of them exited."""
        expected = [life for life in self.lives if not life.signalled]

        def all_registered() -> bool:
            for life in expected:
                if not life.alive:
                    raise AssertionError(
                        f"worker {life.worker_id} exited with {life.proc.returncode}:\n"
                        + life.output()[-3000:]
                    )
            found = self.registered()
            return all(found.get(life.worker_id) == life.pid for life in expected)

        wait_for(all_registered, timeout, "the workers to register")

    def running(self) -> list[WorkerProc]:
        return [life for life in self.lives if life.alive]

    def kill_all(self) -> None:
        for life in self.lives:
            life.signal(signal.SIGKILL)
        for life in self.lives:
            life.wait(10.0)

    def close(self) -> None:
        try:
            self.kill_all()
        finally:
            self.client.close()

    def report(self) -> list[tuple[str, str]]:
        """One (title, log) section per worker id, for a failing test's report."""
        seen: dict[str, str] = {}
        for life in self.lives:
            seen.setdefault(life.worker_id, life.output())
        return [(f"rstick worker {wid}", text[-6000:]) for wid, text in seen.items()]


def rstick_cli(url: str, namespace: str, *args: str, timeout: float = 30.0) -> Any:
    """Run ``rstick ARGS --json --redis URL --namespace NS``; its JSON output, parsed."""
    out = subprocess.run(
        [*rstick_command(), *args, "--json", "--redis", url, "--namespace", namespace],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"rstick {' '.join(args)} exited {out.returncode}:\n{out.stderr}"
    return json.loads(out.stdout)
