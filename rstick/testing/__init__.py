"""Testing rstick apps: real worker processes, a real Redis, and (in the pytest
plugin) fixtures that drive workers on fakeredis with a clock the test moves.

- ``WorkerProcesses`` (``processes.py``): start, signal and stop ``rstick worker``
  processes; ``rstick demo``, the benchmarks and the integration tests use it.
- ``RedisServer`` (``rstick.embedded``): a throwaway redis-server on a free
  loopback port, killed by pid.
- ``FakeClock`` (``clock.py``) and ``LocalRunner`` (``local.py``): workers in the
  test's own process on fakeredis (``pip install 'rstick[testing]'``).
- ``pytest_plugin.py``: the fixtures ``rstick_local``, ``rstick_redis_url`` and
  ``rstick_workers``, registered with pytest when rstick is installed.

Names are imported when first used, so that loading the pytest plugin (which
imports this package) imports neither fakeredis nor the process harness.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstick.embedded import RedisServer
    from rstick.testing.clock import FakeClock
    from rstick.testing.local import LocalRunner
    from rstick.testing.process import WorkerProcess, wait_until
    from rstick.testing.processes import WorkerProcesses

_WHERE = {
    "RedisServer": "rstick.embedded",
    "FakeClock": "rstick.testing.clock",
    "LocalRunner": "rstick.testing.local",
    "WorkerProcess": "rstick.testing.process",
    "WorkerProcesses": "rstick.testing.processes",
    "wait_until": "rstick.testing.process",
}

__all__ = [
    "FakeClock",
    "LocalRunner",
    "RedisServer",
    "WorkerProcess",
    "WorkerProcesses",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
