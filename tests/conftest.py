"""Shared fixtures: an app on a fresh fakeredis server per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import fakeredis
import pytest

from rstick import Rstick

_namespaces = itertools.count()


@pytest.fixture
def app() -> Iterator[Rstick]:
    """An app whose sync and async clients share one fresh fake server."""
    server = fakeredis.FakeServer()
    app = Rstick(redis_url="redis://fake", namespace=f"t{next(_namespaces)}")
    app.client.use(
        sync=fakeredis.FakeRedis(server=server),
        aio=fakeredis.FakeAsyncRedis(server=server),
    )
    yield app
