"""One benchmark worker process: ``python -m bench.workerproc ARGS_JSON``.

It imports everything, reports ready, waits for the bench's go (so that import
time and start-up skew stay out of the figures), then runs ``Worker.run()``
until SIGTERM. It counts its own Redis round trips (one per command sent alone,
one per pipeline) by wrapping redis-py; SIGUSR1 writes those counts to a file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import sys
from importlib.resources import files
from typing import Any

import redis
import redis.asyncio.client as aclient
import redis.client as sclient

import rstick
from rstick import Worker

from . import apps

READY = "bench:ready"
GO = "bench:go:"

trips: collections.Counter[str] = collections.Counter()


def script_names() -> dict[str, str]:
    """sha1 -> script name, for the scripts as rstick loads them (lib.lua first)."""
    from rstick import scripts

    source = getattr(scripts, "source", None)
    out = {}
    for path in files(scripts).iterdir():
        name = path.name.removesuffix(".lua")
        if not path.name.endswith(".lua") or source is None:
            continue
        try:
            text = source(name)
        except Exception:
            continue
        out[hashlib.sha1(text.encode()).hexdigest()] = name
    return out


def count_round_trips(names: dict[str, str]) -> None:
    def label(args: tuple[Any, ...]) -> str:
        cmd = str(args[0]).upper()
        if cmd == "EVALSHA" and len(args) > 1:
            return f"EVALSHA {names.get(str(args[1]), str(args[1])[:8])}"
        return cmd

    def wrap_command(orig: Any) -> Any:
        def execute_command(self: Any, *args: Any, **kw: Any) -> Any:
            trips[label(args)] += 1
            return orig(self, *args, **kw)

        return execute_command

    def wrap_pipeline(orig: Any) -> Any:
        def execute(self: Any, *args: Any, **kw: Any) -> Any:
            stack = self.command_stack
            if stack:
                inner = sorted({label(c[0]) for c in stack})
                trips["PIPELINE " + "+".join(inner)] += 1
            return orig(self, *args, **kw)

        return execute

    for mod in (aclient, sclient):
        mod.Redis.execute_command = wrap_command(mod.Redis.execute_command)  # type: ignore[method-assign]
        mod.Pipeline.execute = wrap_pipeline(mod.Pipeline.execute)  # type: ignore[method-assign]

    # The worker's blocking read goes on a bare connection of its own (rstick.blocking).
    try:
        from rstick.blocking import BlockingConnection
    except ImportError:
        return

    def wrap_call(orig: Any) -> Any:
        async def call(self: Any, commands: list[tuple[Any, ...]], *args: Any) -> Any:
            if len(commands) == 1:
                trips[label(commands[0])] += 1
            else:
                trips["PIPELINE " + "+".join(sorted({label(c) for c in commands}))] += 1
            return await orig(self, commands, *args)

        return call

    BlockingConnection.call = wrap_call(BlockingConnection.call)  # type: ignore[method-assign]


def main() -> None:
    opts = json.loads(sys.argv[1])
    app = apps.build(opts["url"], opts.get("retention", 86400.0))
    kwargs = {"worker_id": opts["id"], "concurrency": opts["concurrency"]}
    kwargs.update(opts.get("worker_kwargs", {}))
    worker = Worker(app, **kwargs)

    def dump(*_: Any) -> None:
        data = {
            "id": opts["id"],
            "pid": os.getpid(),
            "steps_done": getattr(worker, "steps_done", None),
            "round_trips": dict(trips),
            "rstick": rstick.__file__,
        }
        tmp = opts["stats"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, opts["stats"])

    signal.signal(signal.SIGUSR1, dump)
    gate = redis.Redis.from_url(opts["url"])
    gate.rpush(READY, opts["id"])
    if gate.blpop([GO + opts["id"]], timeout=120) is None:
        sys.exit("bench worker: no go within 120 s")
    gate.close()
    count_round_trips(script_names())
    worker.run()
    dump()


if __name__ == "__main__":
    main()
