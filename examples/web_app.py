"""rstick in a web app: many requests waiting on their runs at once, on a few connections.

A web process enqueues runs and waits for their results while it answers
requests. This example plays the two usual kinds of server with the standard
library alone, so it runs anywhere:

- an asyncio server (FastAPI, Starlette, aiohttp): handlers on one event loop,
  each ``await app.aenqueue(...)`` then ``await ref.result(...)``, inside
  ``async with app:`` as a FastAPI lifespan holds it;
- a thread-pooled server (Flask, or Django under gunicorn threads): each request
  on a pool thread does ``app.enqueue(...).result(...)``; ``with app:`` closes
  the client when the server stops.

However many requests wait at once, the client uses a pool of ``pool_size``
connections (10) and one subscription for all its threads, and as much again on
each event loop. Start a worker, then the example, from the repository's root::

    rstick worker examples.web_app:app --worker-id w1
    python -m examples.web_app --requests 1000
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rstick import Context, Rstick

app = Rstick()  # RSTICK_REDIS_URL / RSTICK_NAMESPACE, or the worker's --redis / --namespace


@app.task()
async def thumbnail(ctx: Context, url: str, width: int) -> dict[str, Any]:
    """What a request waits for (a real one would fetch and resize ``url``)."""
    return {"url": url, "width": width, "worker": ctx.worker.id()}


async def handle_async(n: int) -> dict[str, Any]:
    """An async request handler: the body of a FastAPI route."""
    ref = await app.aenqueue("thumbnail", {"url": f"https://example.invalid/{n}.jpg", "width": 200})
    result: dict[str, Any] = await ref.result(timeout=60)
    return result


async def serve_async(requests: int) -> list[dict[str, Any]]:
    """All the requests at once on one event loop, as an async server takes them."""
    async with app:  # FastAPI: `async with app: yield` in the lifespan
        return await asyncio.gather(*(handle_async(n) for n in range(requests)))


def handle_sync(n: int) -> dict[str, Any]:
    """A sync request handler: a Flask view or a Django view."""
    ref = app.enqueue("thumbnail", {"url": f"https://example.invalid/{n}.jpg", "width": 100})
    result: dict[str, Any] = ref.result(timeout=60)
    return result


def serve_threads(requests: int, threads: int) -> list[dict[str, Any]]:
    """The requests on a pool of threads, as a threaded server takes them."""
    with app, ThreadPoolExecutor(threads) as pool:  # the pool's threads end before app closes
        return list(pool.map(handle_sync, range(requests)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per server")
    parser.add_argument("--threads", type=int, default=32, help="the threaded server's pool")
    args = parser.parse_args(argv)

    results = asyncio.run(serve_async(args.requests))
    workers = sorted({r["worker"] for r in results})
    print(f"async server: {len(results)} requests answered, by workers {', '.join(workers)}")
    results = serve_threads(args.requests, args.threads)
    workers = sorted({r["worker"] for r in results})
    print(
        f"threaded server ({args.threads} threads): {len(results)} requests answered, "
        f"by workers {', '.join(workers)}"
    )


if __name__ == "__main__":
    main()
