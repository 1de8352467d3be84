"""The examples' tests need a real redis-server where they use one: marked
``integration``, like tests/integration/, so that ``pytest -m "not integration"``
runs only those on fakeredis."""

from __future__ import annotations

import pytest

REAL_REDIS = {"rstick_workers", "rstick_redis_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_REDIS.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
