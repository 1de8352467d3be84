"""Redis's clock in unit tests: the one seam through which tests move time.

rstick compares no two processes' clocks: every deadline, heartbeat and delay is
Redis's time, read by the scripts with TIME. On fakeredis that is Python's
``time.time()`` in a few of its modules; ``FakeClock`` stands in for it there, so
that a test moves time with ``advance`` and never sleeps, and TIME, stream ids
and key expiry all agree.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

# The fakeredis modules that read the wall clock: TIME, stream ids, expiry.
_MODULES = (
    "fakeredis.commands_mixins.server_mixin",
    "fakeredis.model._stream",
    "fakeredis._socket._base",
    "fakeredis._helpers",
)


class FakeClock:
    """Stands in for the ``time`` module in fakeredis: ``time()`` is ``now``."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def ms(self) -> int:
        """``now`` in milliseconds, as the scripts see it."""
        return int(self.now * 1000)

    def __getattr__(self, name: str) -> Any:  # sleep, monotonic...: the real ones
        return getattr(time, name)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module in _MODULES:
            monkeypatch.setattr(f"{module}.time", self)
