"""Counting a client's connections on a real Redis, by the client name it gives them
(``?client_name=`` in its URL; workers' connections carry none)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from rstick import Rstick
from rstick.testing.processes import wait_until

SETTLE = 10.0  # seconds Redis may take to see a closed socket go


def named_url(url: str, prefix: str = "rstick-test") -> tuple[str, str]:
    """``url`` with a client name of its own: (url, name)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return f"{url}?client_name={name}", name


def named_app(url: str, namespace: str, **settings: Any) -> tuple[Rstick, str]:
    """An app whose every connection carries a client name of its own."""
    named, name = named_url(url)
    return Rstick(redis_url=named, namespace=namespace, **settings), name


def connections(url: str, name: str) -> int:
    """Connections named ``name`` open on the server now."""
    r = redis.Redis.from_url(url)
    try:
        return sum(1 for c in r.client_list() if c.get("name") == name)
    finally:
        r.close()


def settled(url: str, name: str, count: int) -> int:
    """Wait until Redis has dropped the sockets closed before this call: a closed
    socket may outlive the close by one turn of its event loop."""
    wait_until(lambda: connections(url, name) <= count, SETTLE, f"at most {count} connections")
    return connections(url, name)


@contextmanager
def peak_connections(url: str, name: str) -> Iterator[list[int]]:
    """The most connections named ``name`` that CLIENT LIST showed at once while the
    block ran, sampled every 10 ms (yields a list that holds it at the end)."""
    peak = [0]
    stop = threading.Event()
    r = redis.Redis.from_url(url)

    def sample() -> None:
        while not stop.is_set():
            count = sum(1 for c in r.client_list() if c.get("name") == name)
            peak[0] = max(peak[0], count)
            stop.wait(0.01)  # leave the GIL to the client under test

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join(10)
        r.close()
