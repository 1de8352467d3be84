"""``python -m tests.bench.chaos [--runs N] [--seconds S] ...``: the chaos test, longer.

Starts a durable redis-server (appendonly, fsync always) and N ``rstick worker``
processes, enqueues SOFT, HARD and non-sticky 3-step runs, SIGKILLs a random
worker every few seconds and brings it back (under the same id, or sometimes a
new one), crashes Redis once, then checks every promise of crash safety (see
``tests/integration/chaos_checks.py``) and prints the counts. Exit status 1 if
a promise was broken. Progress goes to stderr, the figures to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.chaos_checks import counts, verify
from tests.integration.chaos_storm import Config, Storm


def pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    values = (float(low), float(high or low))
    if values[0] > values[1] or values[0] < 0:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX with 0 <= MIN <= MAX, got {text!r}")
    return values


def show(values: tuple[float, float]) -> str:
    return f"{values[0]:g},{values[1]:g}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.chaos",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=1000, help="runs to enqueue (default 1000)")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (4)")
    p.add_argument("--seconds", type=float, default=90.0, help="length of the storm (90)")
    p.add_argument(
        "--kill-every",
        type=pair,
        default=d.kill_every,
        metavar="MIN,MAX",
        help=f"seconds between two kills (default {show(d.kill_every)})",
    )
    p.add_argument(
        "--down",
        type=pair,
        default=d.down,
        metavar="MIN,MAX",
        help=f"seconds a killed worker stays away (default {show(d.down)})",
    )
    p.add_argument(
        "--new-id",
        type=float,
        default=d.new_id,
        help="chance a killed worker returns under a new id (%(default)s)",
    )
    p.add_argument(
        "--redis-restart-at",
        type=float,
        default=d.redis_restart_at,
        help="when Redis crashes, as a share of the storm (%(default)s)",
    )
    p.add_argument("--no-redis-restart", action="store_true", help="leave Redis alone")
    p.add_argument(
        "--redis-down",
        type=float,
        default=d.redis_down,
        help="seconds Redis stays down (%(default)s)",
    )
    p.add_argument(
        "--concurrency", type=int, default=d.concurrency, help="steps per worker (%(default)s)"
    )
    p.add_argument("--heartbeat", type=float, default=d.heartbeat, help="seconds (%(default)s)")
    p.add_argument("--worker-ttl", type=float, default=d.worker_ttl, help="seconds (%(default)s)")
    p.add_argument(
        "--step-sleep",
        type=pair,
        default=d.step_sleep,
        metavar="MIN,MAX",
        help=f"seconds each step works (default {show(d.step_sleep)})",
    )
    p.add_argument(
        "--flaky",
        type=float,
        default=d.flaky,
        help="share of runs whose step b fails once (%(default)s)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=d.settle,
        help="at most this long for the runs to finish after the storm (%(default)s)",
    )
    p.add_argument("--seed", type=int, help="random seed (kills are timed, so not exact)")
    p.add_argument("--keep", metavar="DIR", help="keep worker logs and step logs in DIR")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 2 or args.concurrency < 1:
        p.error("need --runs >= 1, --workers >= 2 and --concurrency >= 1")
    if args.worker_ttl <= args.heartbeat:
        p.error("--worker-ttl must be longer than --heartbeat")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    config = Config(
        runs=args.runs,
        workers=args.workers,
        seconds=args.seconds,
        kill_every=args.kill_every,
        down=args.down,
        new_id=args.new_id,
        redis_restart_at=None if args.no_redis_restart else args.redis_restart_at,
        redis_down=args.redis_down,
        min_alive=min(2, args.workers - 1),
        concurrency=args.concurrency,
        heartbeat=args.heartbeat,
        worker_ttl=args.worker_ttl,
        step_sleep=args.step_sleep,
        flaky=args.flaky,
        settle=args.settle,
        seed=args.seed,
    )
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rstick-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        outcome = Storm(config, folder, say).run()
        figures = counts(outcome)
        problems = [str(p) for p in verify(outcome)]
        if figures["runs hit by a false death"]:
            problems.append(f"{figures['runs hit by a false death']} runs moved from a live worker")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps({**figures, "problems": problems}, indent=2))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}")
        print(f"{len(problems)} broken promises" + (":" if problems else ""))
        for line in problems[:100]:
            print(f"  {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
