"""``python -m bench.chaos [--runs N] [--seconds S] ...``: the chaos test, longer.

Starts a durable redis-server (appendonly, fsync always), N ``rstick worker``
processes of the chaos app and one of an older deploy without its sticky
workflows, enqueues SOFT, HARD and non-sticky 3-step runs and now and then one
whose sync steps hang, injects the faults below while they flow, then checks
every promise of the README's failure model (see
``tests/integration/harness/chaos_checks.py``) and prints the counts. Exit
status 1 if a promise was broken. Progress goes to stderr, the figures to stdout.

Faults, each on by default (its switch to turn it off on the right):

  kills         SIGKILL a random worker every few seconds;     --no-kills
                it comes back under its id or a new one
  pauses        SIGSTOP a worker past its ttl (declared dead,  --no-pauses
                it must rejoin) or within it (nothing may
                move), then SIGCONT
  skewed clock  the last worker runs under Debian's faketime,  --no-skew
                its wall clock --skew seconds off
  missing code  worker p1 serves only Plain3 and the tasks;    --no-partial
                once, every other worker is stopped (SIGTERM)  --no-code-gap
                for --code-gap seconds
  redis crash   SIGKILL redis-server, start it again           --no-redis-restart
  memory full   maxmemory under Redis's use (noeviction) for   --no-memory-full
                --memory-full seconds, longer than the ttl
  redis pause   CLIENT PAUSE ALL for --redis-pause seconds,    --no-redis-pause
                longer than the ttl: every command waits
  hung steps    a Hang run every --hang-every seconds: its     --no-hangs
                sync steps sleep --hang-for seconds, far past
                their 0.3 s timeout
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.harness.chaos_checks import counts, verify
from tests.integration.harness.chaos_storm import Config, Storm


def pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    values = (float(low), float(high or low))
    if values[0] > values[1] or values[0] < 0:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX with 0 <= MIN <= MAX, got {text!r}")
    return values


def show(values: tuple[float, float] | None) -> str:
    assert values is not None
    return f"{values[0]:g},{values[1]:g}"


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def timed_fault(
    f: Any,  # the parser group of the faults
    name: str,
    *,
    off: str,
    seconds: tuple[float, str],
    at: tuple[float | None, str],
) -> None:
    """A fault that happens once, for some seconds: --no-NAME, --NAME S (how long,
    and what it is) and --NAME-at (when, as a share of the storm)."""
    f.add_argument(f"--no-{name}", action="store_true", help=off)
    f.add_argument(
        f"--{name}", type=float, default=seconds[0], metavar="S", help=f"{seconds[1]} (%(default)s)"
    )
    f.add_argument(
        f"--{name}-at",
        type=share,
        default=at[0],
        help=f"{at[1]}, as a share of the storm (%(default)s)",
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=1000, help="runs to enqueue (default 1000)")
    p.add_argument("--workers", type=int, default=d.workers, help="workers of the full app (4)")
    p.add_argument("--seconds", type=float, default=90.0, help="length of the storm (90)")
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
    p.add_argument("--seed", type=int, help="random seed (faults are timed, so not exact)")
    p.add_argument("--keep", metavar="DIR", help="keep worker logs and step logs in DIR")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")

    f = p.add_argument_group("faults")
    f.add_argument("--no-kills", action="store_true", help="never SIGKILL a worker")
    f.add_argument(
        "--kill-every",
        type=pair,
        default=d.kill_every,
        metavar="MIN,MAX",
        help=f"seconds between two kills (default {show(d.kill_every)})",
    )
    f.add_argument(
        "--down",
        type=pair,
        default=d.down,
        metavar="MIN,MAX",
        help=f"seconds a killed worker stays away (default {show(d.down)})",
    )
    f.add_argument(
        "--new-id",
        type=share,
        default=d.new_id,
        help="chance a killed worker returns under a new id (%(default)s)",
    )
    f.add_argument("--no-pauses", action="store_true", help="never SIGSTOP a worker")
    f.add_argument(
        "--pause-every",
        type=pair,
        default=d.pause_every,
        metavar="MIN,MAX",
        help=f"seconds between two pauses (default {show(d.pause_every)})",
    )
    f.add_argument(
        "--past-ttl",
        type=float,
        default=d.past_ttl,
        metavar="S",
        help="a long pause lasts the ttl and this (%(default)s); a short one half the ttl",
    )
    f.add_argument(
        "--long-share",
        type=share,
        default=d.long_share,
        help="share of the pauses past the ttl (%(default)s)",
    )
    f.add_argument("--no-skew", action="store_true", help="no worker under faketime")
    f.add_argument(
        "--skew",
        type=float,
        default=d.skew,
        metavar="S",
        help="the skewed worker's clock offset, seconds (%(default)s)",
    )
    f.add_argument(
        "--no-partial", action="store_true", help="no worker without the sticky workflows"
    )
    timed_fault(
        f,
        "code-gap",
        off="never stop every worker with code",
        seconds=(d.code_gap, "seconds only the worker without the code is up"),
        at=(d.code_gap_at, "when the code gap opens"),
    )
    f.add_argument("--no-redis-restart", action="store_true", help="leave Redis running")
    f.add_argument(
        "--redis-restart-at",
        type=share,
        default=d.redis_restart_at,
        help="when Redis crashes, as a share of the storm (%(default)s)",
    )
    f.add_argument(
        "--redis-down",
        type=float,
        default=d.redis_down,
        metavar="S",
        help="seconds Redis stays down (%(default)s)",
    )
    timed_fault(
        f,
        "memory-full",
        off="never fill Redis's memory",
        seconds=(d.memory_full, "seconds Redis refuses writes, more than --worker-ttl"),
        at=(d.memory_full_at, "when Redis's memory fills"),
    )
    timed_fault(
        f,
        "redis-pause",
        off="never pause Redis",
        seconds=(d.redis_pause, "seconds Redis holds every command, more than --worker-ttl"),
        at=(d.redis_pause_at, "when Redis pauses"),
    )
    f.add_argument("--no-hangs", action="store_true", help="no step hangs past its timeout")
    f.add_argument(
        "--hang-every",
        type=float,
        default=d.hang_every,
        metavar="S",
        help="seconds between two runs whose steps hang (%(default)s)",
    )
    f.add_argument(
        "--hang-for",
        type=float,
        default=d.hang_for,
        metavar="S",
        help="seconds a hung step sleeps (%(default)s; its timeout is 0.3)",
    )
    args = p.parse_args(argv)
    if args.runs < 1 or args.workers < 2 or args.concurrency < 1:
        p.error("need --runs >= 1, --workers >= 2 and --concurrency >= 1")
    if args.worker_ttl <= args.heartbeat:
        p.error("--worker-ttl must be longer than --heartbeat")
    if not args.no_memory_full and args.memory_full <= args.worker_ttl:
        p.error("--memory-full must be longer than --worker-ttl: that is the fault")
    if not args.no_redis_pause and args.redis_pause <= args.worker_ttl:
        p.error("--redis-pause must be longer than --worker-ttl: that is the fault")
    if not args.no_pauses and args.past_ttl <= 0:
        p.error("--past-ttl must be positive: a long pause lasts longer than the ttl")
    if not args.no_hangs and (args.hang_every <= 0 or args.hang_for <= 0.3):
        p.error("--hang-every must be positive and --hang-for longer than the 0.3 s timeout")
    if not args.no_skew and not shutil.which("faketime"):
        p.error("faketime is not installed (Debian: apt-get install faketime); or --no-skew")
    return args


def config(args: argparse.Namespace) -> Config:
    return Config(
        runs=args.runs,
        workers=args.workers,
        seconds=args.seconds,
        kill_every=None if args.no_kills else args.kill_every,
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
        pause_every=None if args.no_pauses else args.pause_every,
        past_ttl=args.past_ttl,
        long_share=args.long_share,
        skew=None if args.no_skew else args.skew,
        partial=not args.no_partial,
        code_gap_at=None if args.no_code_gap or args.no_partial else args.code_gap_at,
        code_gap=args.code_gap,
        memory_full_at=None if args.no_memory_full else args.memory_full_at,
        memory_full=args.memory_full,
        redis_pause_at=None if args.no_redis_pause else args.redis_pause_at,
        redis_pause=args.redis_pause,
        hang_every=None if args.no_hangs else args.hang_every,
        hang_for=args.hang_for,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rstick-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        outcome = Storm(config(args), folder, say).run()
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
