"""Real ``rstick worker`` processes for tests, benchmarks and the demo.

    with WorkerProcesses(server.url, "it-1", app="myapp.tasks:app") as workers:
        workers.start_many(2)            # w1 and w2, back once both registered
        ref = workers.client.enqueue("Thumbnail", {"url": "..."})
        workers.kill("w1")               # SIGKILL: a crash; "w2" takes its SOFT runs

Each process is started on this Python with the repository or project on its
PYTHONPATH, its output (and the command line first) in a log file of its own,
one per life: a worker id started again gets a new file; a skewed one runs with
libfaketime preloaded, so its pid is the process's too. No process outlives the
one that started it: Linux kills each when its starter dies (PR_SET_PDEATHSIG),
and ``close()`` stops what is left. Every wait is a
bounded poll; nothing here needs pytest.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rstick.app import Rstick
from rstick.embedded import die_with_this_process
from rstick.testing.process import WorkerProcess, wait_until

__all__ = ["WorkerProcess", "WorkerProcesses", "subprocess_env", "wait_until"]

LAUNCH = "from rstick_cli.main import cli; cli(prog_name='rstick')"  # `rstick`, on this Python
SKEWED = "rstick.testing.skewed"  # `rstick` under faketime: see that module
READY_TIMEOUT = 30.0  # a worker imports, connects and registers within this
STOP_TIMEOUT = 15.0  # a stopping worker drains within this, or is killed
DROPPED_ENV = ("RSTICK_REDIS_URL", "RSTICK_NAMESPACE")


def subprocess_env(
    pythonpath: Iterable[str | os.PathLike[str]] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for a process a test starts: this one's, without
    RSTICK_REDIS_URL and RSTICK_NAMESPACE (its command line says where to connect),
    with ``pythonpath`` first on its PYTHONPATH, unbuffered (a SIGKILLed worker's
    last lines still reach its log), and ``extra`` on top."""
    environ = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    path = [*map(str, pythonpath), *filter(None, [environ.get("PYTHONPATH")])]
    if path:
        environ["PYTHONPATH"] = os.pathsep.join(path)
    environ["PYTHONUNBUFFERED"] = "1"
    return {**environ, **(extra or {})}


def flag_args(flags: Mapping[str, object]) -> list[str]:
    """``rstick worker`` options from keywords: ``worker_ttl=3`` is ``--worker-ttl 3``,
    ``allow_eviction=True`` is ``--allow-eviction``, ``queue=["a", "b"]`` repeats
    ``--queue``; False and None leave the option out."""
    args: list[str] = []
    for name, value in flags.items():
        option = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(option)
        elif isinstance(value, list | tuple):
            for item in value:
                args += [option, str(item)]
        else:
            args += [option, str(value)]
    return args


class WorkerProcesses:
    """``rstick worker`` processes on one Redis and namespace.

    ``app`` ("module:attribute") and ``concurrency`` are the defaults of ``start``;
    ``flags`` are worker options for every process (``{"worker_ttl": 3}``), ``env``
    adds to their environment, ``pythonpath`` goes before theirs, ``cwd`` is where
    they start (default: here); ``launcher`` replaces the command that runs
    ``rstick`` (it gets ``worker APP --worker-id ...``). Logs go to ``logs``, else to
    a temporary folder removed by ``close()``. ``client`` is an app on the same
    Redis and namespace, which knows the workflows the workers registered.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        app: str | None = None,
        concurrency: int = 4,
        flags: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        pythonpath: Iterable[str | os.PathLike[str]] = (),
        cwd: str | os.PathLike[str] | None = None,
        logs: Path | None = None,
        launcher: Sequence[str] | None = None,
    ) -> None:
        self.url, self.namespace = url, namespace
        self.app, self.concurrency = app, concurrency
        self.flags = dict(flags or {})
        self.env = dict(env or {})
        self.pythonpath = [str(p) for p in pythonpath]
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.launcher = list(launcher) if launcher else [sys.executable, "-c", LAUNCH]
        self._own_logs = logs is None
        self.logs = Path(tempfile.mkdtemp(prefix="rstick-workers-")) if logs is None else logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.lives: list[WorkerProcess] = []
        self._client: Rstick | None = None

    def __repr__(self) -> str:
        return f"WorkerProcesses({self.namespace!r}, running={self.running()})"

    @property
    def client(self) -> Rstick:
        if self._client is None:
            self._client = Rstick(redis_url=self.url, namespace=self.namespace)
        return self._client

    @property
    def current(self) -> dict[str, WorkerProcess]:
        """Worker id -> its latest life, for those the starter has not seen end."""
        latest = {life.worker_id: life for life in self.lives}
        return {wid: life for wid, life in latest.items() if life.ended_at is None}

    def __getitem__(self, worker_id: str) -> WorkerProcess:
        """The latest life of ``worker_id``, ended or not."""
        for life in reversed(self.lives):
            if life.worker_id == worker_id:
                return life
        raise KeyError(worker_id)

    # -- starting --------------------------------------------------------------

    def start(
        self,
        worker_id: str,
        app: str | None = None,
        *,
        concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
        skew: float | None = None,
        **flags: object,
    ) -> WorkerProcess:
        """Start ``rstick worker APP --worker-id ID ...`` and return at once (see
        ``wait_ready``). ``flags`` are its options (``worker_ttl=60`` is
        ``--worker-ttl 60``), over the pool's; ``env`` adds to its environment. With
        ``skew`` (seconds, say -11) it runs under Debian's ``faketime``, its wall clock
        that far off and its monotonic clock left alone."""
        if worker_id in self.current:
            raise RuntimeError(f"worker {worker_id} is already running")
        app = app or self.app
        if app is None:
            raise ValueError("no app to serve: give WorkerProcesses(app=...) or start(..., app)")
        launch, environ = self.launcher, self._environ(env)
        if skew:
            launch = [sys.executable, "-m", SKEWED]
            environ.update(faketime_env(f"{skew:+g}s"))
        command = [
            *launch, "worker", app,
            "--worker-id", worker_id,
            "--concurrency", str(concurrency or self.concurrency),
            "--redis", self.url,
            "--namespace", self.namespace,
            *flag_args({**self.flags, **flags}),
        ]  # fmt: skip
        n = sum(1 for life in self.lives if life.worker_id == worker_id) + 1
        log_path = self.logs / f"{worker_id}.{n}.log"
        with open(log_path, "wb") as log:
            log.write(f"$ {shlex.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_this_process(),  # none outlives its starter
            )
        life = WorkerProcess(worker_id, n, proc, log_path, app=app, skew=skew or 0.0)
        self.lives.append(life)
        return life

    def start_many(
        self,
        count: int,
        app: str | None = None,
        *,
        prefix: str = "w",
        concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
        skew: float | None = None,
        timeout: float = READY_TIMEOUT,
        **flags: object,
    ) -> list[WorkerProcess]:
        """Start ``w1`` .. ``w<count>`` (options as ``start``'s) and wait until all registered."""
        ids = [f"{prefix}{n}" for n in range(1, count + 1)]
        started = [
            self.start(i, app, concurrency=concurrency, env=env, skew=skew, **flags) for i in ids
        ]
        self.wait_ready(*ids, timeout=timeout)
        return started

    def registered(self) -> dict[str, int]:
        """The workers Redis holds alive: id -> pid."""
        return {w.worker_id: w.pid for w in self.client.list_workers() if w.alive}

    def wait_ready(self, *ids: str, timeout: float = READY_TIMEOUT) -> None:
        """Until each of these workers (default: every one running) has registered,
        this very process of it; RuntimeError with its output if one exited."""
        current = self.current
        wanted = [current[wid] for wid in ids] if ids else list(current.values())

        def ready() -> bool:
            for life in wanted:
                if not life.alive:
                    raise RuntimeError(
                        f"worker {life.worker_id} exited with {life.proc.returncode}:\n"
                        + life.tail()
                    )
            found = self.registered()
            return all(found.get(life.worker_id) == life.pid for life in wanted)

        names = sorted(life.worker_id for life in wanted)
        wait_until(ready, timeout, f"workers {names} to register")

    # -- signals, by worker id -----------------------------------------------------

    def signal(self, worker_id: str, sig: signal.Signals) -> WorkerProcess:
        life = self.current[worker_id]
        life.signal(sig)
        return life

    def kill(self, worker_id: str) -> WorkerProcess:
        """SIGKILL, and wait: the worker hands nothing back; the reaper must find it dead."""
        life = self.current[worker_id]
        life.kill()
        return life

    def terminate(self, worker_id: str, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), and wait; returns the exit code."""
        life = self.current[worker_id]
        life.terminate()
        return life.wait(timeout)

    def pause(self, worker_id: str) -> WorkerProcess:
        """SIGSTOP: every thread of the worker stops, its heartbeat too."""
        return self.signal(worker_id, signal.SIGSTOP)

    def resume(self, worker_id: str) -> WorkerProcess:
        return self.signal(worker_id, signal.SIGCONT)

    def forget(self, worker_id: str) -> WorkerProcess:
        """A worker whose end the caller saw by other means: it runs no more."""
        life = self.current[worker_id]
        life.ended(life.proc.wait(10.0))
        return life

    def exited(self) -> list[WorkerProcess]:
        """The workers that ended by themselves since the last call (one with too many
        hung steps stops so that its supervisor starts it again)."""
        gone = []
        for life in self.current.values():
            code = life.proc.poll()
            if code is not None:
                life.ended(code)
                gone.append(life)
        return gone

    def running(self) -> list[str]:
        """The ids of the workers the starter has not seen end, paused ones too."""
        return sorted(self.current)

    def log(self, worker_id: str) -> str:
        """Every life's output of this worker id, oldest first."""
        return "\n".join(life.output() for life in self.lives if life.worker_id == worker_id)

    def report(self, chars: int = 6000) -> list[tuple[str, str]]:
        """(title, the end of its output) for every life: for a failing test's report."""
        return [
            (f"rstick worker {life.worker_id} (life {life.n}, pid {life.pid})", life.tail(chars))
            for life in self.lives
        ]

    # -- stopping --------------------------------------------------------------

    def close(self, *, graceful: bool = True, timeout: float = STOP_TIMEOUT) -> dict[str, int]:
        """Stop every running worker: SIGTERM (after a SIGCONT, should one be paused),
        SIGKILL past ``timeout``; or, not ``graceful``, SIGKILL at once. Returns the
        exit codes by worker id (-9: killed)."""
        codes: dict[str, int] = {}
        try:
            running = list(self.current.values())
            for life in running:
                if life.alive:
                    life.signal(signal.SIGCONT)
                    life.signal(signal.SIGTERM if graceful else signal.SIGKILL)
            deadline = time.monotonic() + timeout
            for life in running:
                try:
                    code = life.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    life.signal(signal.SIGKILL)
                    life.proc.kill()
                    code = life.proc.wait(10.0)
                life.ended(code)
                codes[life.worker_id] = code
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._own_logs:
                shutil.rmtree(self.logs, ignore_errors=True)
        return codes

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _environ(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return subprocess_env(self.pythonpath, {**self.env, **(extra or {})})


LIBFAKETIME = ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1")


def faketime_env(offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock ``offset`` ("-11s")
    away, by Debian's libfaketime, its monotonic clock left alone. Preloaded, not
    through the ``faketime`` wrapper: that forks (signals would reach the wrapper),
    and leaves a named semaphore behind when it is killed, which a later wrapper
    whose pid matches then fails on (``sem_open: File exists``)."""
    lib = next((path for pattern in LIBFAKETIME for path in glob.glob(pattern)), None)
    if lib is None:
        raise RuntimeError("libfaketime not found (Debian: apt-get install faketime)")
    return {"LD_PRELOAD": lib, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
