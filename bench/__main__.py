"""``python -m bench [WORKLOAD ...] [--quick] [--reps N] [--json] [--json-file PATH]``

rstick's figures beside raw Redis doing the same traffic, in the same run.
``--help`` lists the workloads (default: all of them). Progress goes to stderr;
the table (or, with ``--json``, the JSON) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any

from rstick.embedded import RedisServer

from .harness import say
from .report import Row, header, machine, table
from .workloads import QUICK, WORKLOADS, Bench, Sizes


def first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0]


def parse(argv: list[str] | None) -> argparse.Namespace:
    width = max(map(len, WORKLOADS))
    listed = "\n".join(
        f"  {name:<{width}}  {first_line(fn.__doc__)}" for name, fn in WORKLOADS.items()
    )
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n")[2],
        epilog=f"workloads (default: all, memory last):\n{listed}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "workloads",
        nargs="*",
        metavar="WORKLOAD",
        help="workloads to run, of those below (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: about a minute in all")
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (default 3)")
    p.add_argument("--memory-jobs", type=int, help="jobs for the memory workload")
    p.add_argument(
        "--redis-url",
        help="use this (empty, disposable!) Redis instead of "
        "starting one; it is FLUSHALLed between repetitions",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--json-file", help="also write the JSON to this file")
    args = p.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    if args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def run(url: str, args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else Sizes()
    if args.memory_jobs:
        sizes = dataclasses.replace(sizes, memory_jobs=args.memory_jobs)
    chosen = args.workloads or [w for w in WORKLOADS if w != "memory"] + ["memory"]
    bench = Bench(url, sizes, args.reps)
    info = machine(url)
    rows: list[Row] = []
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for name in chosen:
        say(f"{name} ...")
        try:
            rows += WORKLOADS[name](bench)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            say(traceback.format_exc())
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - started
    result: dict[str, Any] = {
        "machine": info,
        "quick": args.quick,
        "reps": args.reps,
        "sizes": dataclasses.asdict(sizes),
        "rows": [r.to_json() for r in rows],
        "details": bench.details,
        "errors": errors,
    }
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(header(info))
        print(
            f"{args.reps} repetitions each{' (quick sizes)' if args.quick else ''}; "
            f"{info['seconds']:.0f}s in all\n"
        )
        print(table(rows))
        for name, err in errors.items():
            print(f"\n{name} FAILED: {err}")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.redis_url:
        return run(args.redis_url, args)
    with RedisServer() as server:
        return run(server.url, args)


if __name__ == "__main__":
    sys.exit(main())
