"""How a worker's loops wait after Redis failed them: exponential backoff, one log
line per attempt naming the URL (password hidden)."""

from __future__ import annotations

import asyncio
import logging

from .credentials import hide_password, login_failure
from .errors import LoginFailed
from .outage import describe_outage, is_outage

log = logging.getLogger("rstick.worker")

FIRST_BACKOFF, MAX_BACKOFF = 0.1, 5.0  # seconds: a loop's retries after an outage


class Backoff:
    """Exponential backoff for a loop that lost Redis: one log line per attempt, naming
    the URL (password hidden). A refused login is no outage: retrying cannot fix the
    credentials, so it raises LoginFailed."""

    def __init__(
        self, what: str, where: str, first: float = FIRST_BACKOFF, cap: float = MAX_BACKOFF
    ) -> None:
        self.what, self.where, self.first, self.cap = what, hide_password(where), first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, exc: BaseException) -> None:
        login = login_failure(self.where, exc)
        if login is not None:  # retrying cannot fix credentials
            raise LoginFailed(login)
        if is_outage(exc):
            log.warning(
                "redis unavailable at %s (%s); %s retrying in %.1fs",
                self.where,
                describe_outage(exc),
                self.what,
                self.delay,
            )
        else:
            log.warning("%s failed (%s); retrying in %.1fs", self.what, exc, self.delay)
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
