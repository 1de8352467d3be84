"""What a worker checks of the Redis server once, at start: that it keeps what rstick
writes.

- An ``allkeys-*`` eviction policy lets Redis drop any key when memory is full:
  queued runs, running runs and their streams vanish without a trace. A worker
  refuses to start on it, unless told to (``allow_eviction``).
- A ``volatile-*`` policy drops keys that have a TTL: finished runs, whose
  results may go before their retention. A warning.
- No AOF and no RDB save points: a Redis restart loses every queued run. A warning.

Managed Redis often refuses CONFIG: what cannot be read is not checked, and the
worker starts.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from redis.exceptions import ResponseError

from .errors import RstickError

log = logging.getLogger("rstick.preflight")


class UnsafeRedis(RstickError):
    """The server would lose runs silently; the message says why and how to override."""


_checked: weakref.WeakSet[Any] = weakref.WeakSet()  # workers whose start checked the server


async def check_server_once(worker: Any, redis: Any, *, allow_eviction: bool) -> None:
    """``check_server`` at the first start of ``worker`` that reaches Redis: a start
    retried after an outage does not warn again."""
    if worker in _checked:
        return
    await check_server(redis, allow_eviction=allow_eviction)
    _checked.add(worker)


async def check_server(redis: Any, *, allow_eviction: bool = False) -> list[str]:
    """Check the server's eviction policy and persistence; log a warning for each
    risk and return the warnings. Raises UnsafeRedis on an ``allkeys-*`` policy
    unless ``allow_eviction``."""
    info = await _info(redis)
    policy = str(info.get("maxmemory_policy", ""))
    warnings = []
    if policy.startswith("allkeys-"):
        if not allow_eviction:
            raise UnsafeRedis(
                f"Redis evicts keys under maxmemory-policy {policy}: queued and running runs "
                "would vanish silently when memory fills. Set maxmemory-policy noeviction "
                "(or volatile-*), or start the worker with --allow-eviction "
                "(Worker(..., allow_eviction=True)) to accept it"
            )
        warnings.append(
            f"Redis evicts keys under maxmemory-policy {policy} (allowed): runs may vanish "
            "when memory fills"
        )
    elif policy.startswith("volatile-"):
        warnings.append(
            f"Redis evicts keys that have a TTL under maxmemory-policy {policy}: finished "
            "runs' results may go before their retention when memory fills"
        )
    if await _persistence_off(redis, info):
        warnings.append(
            "Redis persistence is off (no AOF, no RDB save points): a Redis restart loses "
            "every queued and running run; run Redis with appendonly yes"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


async def _info(redis: Any) -> dict[str, Any]:
    try:
        info = await redis.info()
    except ResponseError:  # INFO renamed or refused (some managed services)
        return {}
    return info if isinstance(info, dict) else {}


async def _persistence_off(redis: Any, info: dict[str, Any]) -> bool:
    """True only when the server says so: AOF off and no save points."""
    aof = info.get("aof_enabled")
    if (aof.decode() if isinstance(aof, bytes) else str(aof)) != "0":
        return False
    try:
        save = await redis.config_get("save")
    except ResponseError:  # CONFIG refused: no way to tell, no warning
        return False
    value = save.get("save", save.get(b"save")) if isinstance(save, dict) else None
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode()
    return not str(value).strip()
