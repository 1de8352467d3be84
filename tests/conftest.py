"""Shared fixtures: an app on a fresh fakeredis server per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from rstick import Rstick
from rstick.testing.clock import FakeClock
from rstick.testing.local import on_fake_server

_namespaces = itertools.count()


def _on(server: Any, namespace: str) -> Rstick:
    """An app whose sync and async clients both talk to ``server``."""
    return on_fake_server(Rstick(redis_url="redis://fake", namespace=namespace), server)


@pytest.fixture(autouse=True)
def clock(rstick_clock: FakeClock) -> FakeClock:
    """fakeredis's clock, which moves only when the test says: the pytest plugin's
    ``rstick_clock`` (rstick/testing/clock.py)."""
    return rstick_clock


@pytest.fixture
def fake_server() -> Any:
    """A fresh fake Redis server: nothing is shared between tests."""
    return fakeredis.FakeServer()


@pytest.fixture
def app(fake_server: Any) -> Iterator[Rstick]:
    """An app whose sync and async clients share one fresh fake server."""
    app = _on(fake_server, f"t{next(_namespaces)}")
    yield app


@pytest.fixture
def other_app(app: Rstick, fake_server: Any) -> Rstick:
    """Another process's app: same server and namespace, no local workflows."""
    return _on(fake_server, str(app.namespace))


@pytest.fixture
def redis(app: Rstick) -> Any:
    """A plain sync client on the app's fake server, to look at raw state."""
    return app.client.redis


def snapshot(r: Any) -> dict[bytes, Any]:
    """Everything on the server, comparable: each key's type and contents,
    streams with their consumer groups' pending counts and last delivered ids."""
    out: dict[bytes, Any] = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if kind == b"hash":
            value: Any = r.hgetall(key)
        elif kind == b"stream":
            groups = [
                (g["name"], g["pending"], g["last-delivered-id"]) for g in r.xinfo_groups(key)
            ]
            value = (r.xrange(key), groups)
        elif kind == b"zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = r.smembers(key)
        elif kind == b"list":
            value = r.lrange(key, 0, -1)
        else:
            value = r.get(key)
        out[key] = (kind, value)
    return out


@pytest.fixture
def state(redis: Any) -> Any:
    """``state()`` is a snapshot of the whole fake server (see ``snapshot``)."""
    return lambda: snapshot(redis)
