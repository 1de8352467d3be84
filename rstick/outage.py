"""Which errors mean "Redis is unavailable" rather than "this command is wrong".

An outage is Redis down or unreachable, and also Redis up but refusing writes:
out of memory under ``noeviction`` (OOM), a replica after a failover (READONLY),
loading its data (LOADING), stuck in a script (BUSY), or without its master
(MASTERDOWN). Through any of them a worker keeps its steps and their outcomes,
retries, and is never judged dead for it (see ``beat.lua``'s grace). A wrong
password is no outage: retrying cannot help.
"""

from __future__ import annotations

import re

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

AUTH_ERRORS = (AuthenticationError, AuthenticationWrongNumberOfArgsError, AuthorizationError)

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    ClusterDownError,  # MASTERDOWN too
    TryAgainError,
)
# Error codes as the worker's own connection (blocking.py) reports them, or as Redis
# 6.2 wraps them when a script met them: "Error running script (...): -OOM ...".
_CODES = re.compile(r"(^|-)(OOM|READONLY|LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN) ")


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, AUTH_ERRORS):
        return False
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, ResponseError) and _CODES.search(str(exc)) is not None


def describe_outage(exc: BaseException) -> str:
    """``OutOfMemoryError: command not allowed when used memory > 'maxmemory'``"""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
