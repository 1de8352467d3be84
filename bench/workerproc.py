"""One benchmark worker: ``rstick worker`` with counters, as the bench starts it:

    python -m bench.workerproc worker bench.apps:app --worker-id ID --redis URL ...

It imports everything, reports ready, waits for the bench's go (so that import
time and start-up skew stay out of the figures), then runs ``rstick worker``
with the same arguments until SIGTERM. It counts its own Redis round trips (one
per command sent alone, one per pipeline) by wrapping redis-py; SIGUSR1 writes
those counts to ``$RSTICK_BENCH_STATS/<worker id>.json``.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
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

READY = "bench:ready"
GO = "bench:go:"
STATS_DIR = "RSTICK_BENCH_STATS"  # the folder the counters are written to

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


def stats_path(folder: str, worker_id: str) -> str:
    return os.path.join(folder, f"{worker_id}.json")


def option(args: list[str], name: str) -> str:
    """The value of ``name`` on the ``rstick worker`` command line."""
    return args[args.index(name) + 1]


def main() -> None:
    args = sys.argv[1:]
    url, worker_id = option(args, "--redis"), option(args, "--worker-id")
    stats = stats_path(os.environ[STATS_DIR], worker_id)
    from rstick_cli.main import cli

    importlib.import_module(args[1].partition(":")[0])  # the app, imported before the go
    serving: list[Worker] = []
    run = Worker.run

    def run_and_keep(self: Worker) -> int:
        serving.append(self)
        return run(self)

    Worker.run = run_and_keep  # type: ignore[method-assign]

    def dump(*_: Any) -> None:
        data = {
            "id": worker_id,
            "pid": os.getpid(),
            "steps_done": serving[0].steps_done if serving else None,
            "round_trips": dict(trips),
            "rstick": rstick.__file__,
        }
        tmp = stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, stats)

    signal.signal(signal.SIGUSR1, dump)
    gate = redis.Redis.from_url(url)
    gate.rpush(READY, worker_id)
    if gate.blpop([GO + worker_id], timeout=120) is None:
        sys.exit("bench worker: no go within 120 s")
    gate.close()
    count_round_trips(script_names())
    try:
        cli(args, prog_name="rstick")
    finally:
        dump()


if __name__ == "__main__":
    main()
