"""The huey side of the huey row (``peer.py``): the same step as rstick's
``stamp_incr``, as a huey task. Its consumer imports ``huey`` from here, with the
Redis URL in ``$RSTICK_BENCH_HUEY_REDIS``."""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from huey import RedisHuey

from .apps import PEER_COUNTER, PEER_LATENCIES


def make(url: str) -> tuple[RedisHuey, Any]:
    """A huey on ``url`` and its task (calling the task enqueues a job)."""
    queue = RedisHuey("rstick-bench", url=url, results=False)
    r = redis.Redis.from_url(url)

    @queue.task()
    def stamp_incr(t: float) -> None:
        late = time.time() - t
        r.incr(PEER_COUNTER)
        r.rpush(PEER_LATENCIES, late)

    return queue, stamp_incr


huey, stamp_incr = make(os.environ.get("RSTICK_BENCH_HUEY_REDIS", "redis://127.0.0.1:6379/0"))
