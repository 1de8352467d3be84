"""Testing rstick apps: real worker processes and a real Redis.

- ``WorkerProcesses`` (``processes.py``): start, signal and stop ``rstick worker``
  processes; ``rstick demo``, the benchmarks and the integration tests use it.
- ``RedisServer`` (``rstick.embedded``): a throwaway redis-server on a free
  loopback port, killed by pid.

Names are imported when first used: importing this package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstick.embedded import RedisServer
    from rstick.testing.process import WorkerProcess, wait_until
    from rstick.testing.processes import WorkerProcesses

_WHERE = {
    "RedisServer": "rstick.embedded",
    "WorkerProcess": "rstick.testing.process",
    "WorkerProcesses": "rstick.testing.processes",
    "wait_until": "rstick.testing.process",
}

__all__ = ["RedisServer", "WorkerProcess", "WorkerProcesses", "wait_until"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
